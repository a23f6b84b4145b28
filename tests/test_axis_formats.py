"""Assistant-axis files in and out: the paper's release layout and Neuronpedia's axis format."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import save_file

from axis.artifact import AssistantAxis
from axis.compute import unit
from axis.formats import (QUANTILE_LEVELS, axis_from_file, export_axis, read_axis_file, read_axis_release,
                          read_neuronpedia_axis)

L, D = 4, 8


class Stub:
    def __init__(self, d_model, n_layers):
        self.cfg = SimpleNamespace(d_model=d_model, n_layers=n_layers)


def random_axis(roles=("pirate", "sage", "robot_2")) -> AssistantAxis:
    g = torch.Generator().manual_seed(0)
    rm = torch.randn(len(roles), L, D, generator=g)
    dm = torch.randn(L, D, generator=g) + 2
    ax = dm - rm.mean(0)
    n = 10
    is_def = torch.tensor([i < 3 for i in range(n)])
    kept = torch.ones(n, dtype=torch.bool)
    kept[5] = False
    return AssistantAxis(axis=ax, default_mean=dm, role_means=rm, role_names=list(roles),
                         projections=torch.randn(n, L, generator=g), is_default=is_def, kept=kept,
                         model="unknown", model_name="synthetic", stats={"monitor_layer": 2})


@pytest.fixture
def saved(tmp_path):
    ax = random_axis()
    return ax, ax.save(tmp_path / "axis")


def test_release_round_trip(saved, tmp_path):
    ax, path = saved
    out = export_axis(path, tmp_path / "release", "assistant-axis")
    assert sorted(p.name for p in out.iterdir()) == ["assistant_axis.pt", "default_vector.pt", "role_vectors"]
    # the release ships bare tensors, loadable without unpickling anything else
    bare = torch.load(out / "assistant_axis.pt", weights_only=True)
    assert isinstance(bare, torch.Tensor) and bare.shape == (L, D)
    rel = read_axis_release(out)
    torch.testing.assert_close(rel.axis, ax.axis, rtol=0, atol=0)
    torch.testing.assert_close(rel.default_vector, ax.default_mean, rtol=0, atol=0)
    assert sorted(rel.role_vectors) == sorted(ax.role_names)
    for i, r in enumerate(ax.role_names):
        torch.testing.assert_close(rel.role_vectors[r], ax.role_means[i], rtol=0, atol=0)
    back = axis_from_file(out, model=Stub(D, L))
    torch.testing.assert_close(back.axis, ax.axis, rtol=0, atol=0)
    order = [ax.role_names.index(r) for r in back.role_names]
    torch.testing.assert_close(back.role_means, ax.role_means[order], rtol=0, atol=0)
    torch.testing.assert_close(back.unit(1), ax.unit(1))
    with pytest.raises(ValueError, match="no stored rollout projections"):
        back.tau(1, 75)  # a foreign axis has no rollouts to take percentiles of


def test_read_axis_file_takes_every_shape_the_field_ships(tmp_path):
    t = torch.randn(L, D)
    torch.save(t, tmp_path / "bare.pt")
    torch.save({"axis": t.bfloat16(), "metadata": {"model": "x", "layers": [1, 2]}}, tmp_path / "dict.pt")
    save_file({"axis": t, "other": t[0].clone()}, str(tmp_path / "named.safetensors"))
    save_file({"assistant_axis": t}, str(tmp_path / "single.safetensors"))
    for name in ("bare.pt", "named.safetensors", "single.safetensors"):
        torch.testing.assert_close(read_axis_file(tmp_path / name), t, rtol=0, atol=0)
    got = read_axis_file(tmp_path / "dict.pt")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, t.bfloat16().float(), rtol=0, atol=0)


def touch(path):
    Path(path).touch()


class Payload:
    """A pickle that runs code when fully unpickled: it must never be."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (touch, (str(self.marker),))


def test_pickles_beyond_plain_tensors_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"axis": torch.randn(L, D), "hook": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a plain tensor or tensor dict"):
        read_axis_file(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a plain tensor or tensor dict"):
        read_axis_file(tmp_path / "junk.pt")


@pytest.mark.parametrize("obj, message", [
    (torch.randn(D), "float \\[n_layers, d_model\\]"),
    ({"vector": torch.randn(L, D)}, "no 'axis' tensor"),
    ([torch.randn(L, D)], "not a tensor or a dict"),
    (torch.full((L, D), float("nan")), "NaN or inf"),
    (torch.ones(L, D, dtype=torch.int64), "float"),
])
def test_bad_axis_files_fail_clearly(tmp_path, obj, message):
    torch.save(obj, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=message):
        read_axis_file(tmp_path / "a.pt")


def test_other_files_and_models_are_refused(tmp_path):
    (tmp_path / "a.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.pt, \.pth or \.safetensors"):
        read_axis_file(tmp_path / "a.npy")
    with pytest.raises(FileNotFoundError, match="No axis file"):
        read_axis_file(tmp_path / "missing.pt")
    torch.save(torch.randn(L, D), tmp_path / "axis.pt")
    with pytest.raises(ValueError, match=f"d_model={D}, {L} layers.*d_model=576, 30 layers"):
        axis_from_file(tmp_path / "axis.pt", model=Stub(576, 30))
    save_file({"a": torch.randn(L, D), "b": torch.randn(L, D)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="one tensor or one named 'axis'"):
        read_axis_file(tmp_path / "two.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_axis_file(tmp_path / "junk.safetensors")
    ours = random_axis().save(tmp_path / "ours")
    with pytest.raises(ValueError, match="steerlens axis directory: load it with AssistantAxis.load"):
        axis_from_file(ours)


def test_neuronpedia_round_trip_and_projection(saved, tmp_path):
    ax, path = saved
    out = export_axis(path, tmp_path / "np", "neuronpedia")
    cfg = yaml.safe_load((out / "axis.yaml").read_text())
    assert {k: cfg[k] for k in ("layer", "normalize", "center", "scale")} == \
        {"layer": 2, "normalize": False, "center": True, "scale": False}
    assert cfg["hook_name"] == "blocks.2.hook_resid_post" and cfg["quantile_levels"] == list(QUANTILE_LEVELS)
    got = read_neuronpedia_axis(out)
    torch.testing.assert_close(got.direction, ax.unit(2))
    torch.testing.assert_close(got.direction * got.config["axis_norm"], ax.axis[2])
    torch.testing.assert_close(got.scaler_mean, ax.role_means[:, 2].mean(0))
    torch.testing.assert_close(got.pca_mean, torch.zeros(D), atol=1e-6, rtol=0)
    offset = float((got.scaler_mean + got.pca_mean) @ got.direction)
    raw_q = torch.quantile(ax.pooled(2).double(), torch.tensor(QUANTILE_LEVELS, dtype=torch.float64)).float()
    torch.testing.assert_close(got.quantiles + offset, raw_q)
    x = torch.randn(5, D)
    torch.testing.assert_close(got.project(x), x @ ax.unit(2) - offset)  # ours, shifted by a constant
    layer0 = read_neuronpedia_axis(export_axis(path, tmp_path / "np0", "neuronpedia", layer=0))
    assert layer0.config["layer"] == 0
    torch.testing.assert_close(layer0.direction, ax.unit(0))


def test_export_refuses_bad_input_and_leaves_nothing(saved, tmp_path):
    ax, path = saved
    with pytest.raises(ValueError, match="Unknown axis format 'npz'.*assistant-axis"):
        export_axis(path, tmp_path / "x", "npz")
    with pytest.raises(FileNotFoundError, match="not a saved axis"):
        export_axis(tmp_path, tmp_path / "x", "neuronpedia")
    with pytest.raises(ValueError, match="out of range"):
        export_axis(path, tmp_path / "x", "neuronpedia", layer=L)
    bad = random_axis(roles=("pirate", "../escape")).save(tmp_path / "bad_axis")
    with pytest.raises(ValueError, match="cannot be file names"):
        export_axis(bad, tmp_path / "x", "assistant-axis")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_axis(path, tmp_path / "taken", "assistant-axis")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    export_axis(path, tmp_path / "taken", "assistant-axis", overwrite=True)
    assert not (tmp_path / "taken" / "keep.txt").exists()
    torch.testing.assert_close(read_axis_file(tmp_path / "taken"), ax.axis, rtol=0, atol=0)
