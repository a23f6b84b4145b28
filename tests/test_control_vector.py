"""llama.cpp / repeng control vectors: ours -> GGUF -> ours, read through the gguf package, bad input refused."""

from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch

from steering import Ablate, Add, Steering
from steering.control_vector import control_directions, model_hint, read_control_vector, write_control_vector

D = 64  # the tiny model's d_model (4 blocks)


def vec(seed, d=D):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def stub(d_model=D, n_layers=4):
    return SimpleNamespace(cfg=SimpleNamespace(d_model=d_model, n_layers=n_layers))


def field(reader, key):
    return reader.get_field(key).contents()


def test_round_trip_through_the_gguf_reader(tmp_path):
    v1, v3 = vec(1), vec(3)
    steer = Steering([Add("blocks.1.hook_resid_post", v1, alpha=2.5), Add("blocks.3.hook_resid_post", v3)])
    path = write_control_vector(steer, tmp_path / "cv.gguf", "llama", n_layers=4)
    r = gguf.GGUFReader(str(path))
    assert field(r, "general.architecture") == "controlvector"
    assert field(r, "controlvector.model_hint") == "llama" and field(r, "controlvector.layer_count") == 3
    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == ["direction.1", "direction.3"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [D] for t in tensors.values())
    np.testing.assert_allclose(np.asarray(tensors["direction.1"].data), (2.5 * v1).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(tensors["direction.3"].data), v3.numpy())

    back = read_control_vector(path, model=stub())
    assert [(a.hook, a.alpha, a.positions) for a in back.interventions] == \
        [("blocks.1.hook_resid_post", 1.0, "all"), ("blocks.3.hook_resid_post", 1.0, "all")]
    want = control_directions(steer)
    for k, v in control_directions(back).items():
        torch.testing.assert_close(v, want[k], rtol=1e-6, atol=0)
    half = read_control_vector(path, scale=0.5)
    assert [a.alpha for a in half.interventions] == [0.5, 0.5]
    again = write_control_vector(back, tmp_path / "again.gguf", "llama", n_layers=4)
    assert again.read_bytes() == path.read_bytes()  # ours -> GGUF -> ours -> GGUF: the same file


def test_read_vector_steers_the_model_as_the_original(tiny, tmp_path):
    steer = Steering([Add("blocks.1.hook_resid_post", vec(1), alpha=3.0), Add("blocks.2.hook_resid_post", vec(2))])
    path = write_control_vector(steer, tmp_path / "cv.gguf", model_hint(tiny), tiny.cfg.n_layers)
    back = read_control_vector(path, model=tiny)
    ids = tiny.tokenizer("The bridge over the bay", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = tiny(ids)
        with steer.apply(tiny):
            want = tiny(ids)
        with back.apply(tiny):
            got = tiny(ids)
    assert not torch.allclose(plain, want)
    torch.testing.assert_close(got, want)
    assert model_hint(tiny) == "llama"


def test_adds_at_one_block_sum_and_a_single_add_works(tmp_path):
    a, b = vec(1), vec(2)
    both = Steering([Add("blocks.2.hook_resid_post", a), Steering([Add("blocks.2.hook_resid_post", b, alpha=-1.0)])])
    torch.testing.assert_close(control_directions(both)[2], a - b)
    one = read_control_vector(write_control_vector(Add("blocks.2.hook_resid_post", a), tmp_path / "one.gguf",
                                                   "llama", 4))
    assert len(one.interventions) == 1
    torch.testing.assert_close(one.interventions[0].vector, a)


@pytest.mark.parametrize("steer, message", [
    (Ablate("blocks.1.hook_resid_post", vec(1)), "only raw adds; Ablate"),
    (Steering([Add("blocks.1.hook_resid_post", vec(1)), Ablate("blocks.2.hook_resid_post", vec(2))]), "Ablate"),
    (Add("blocks.0.hook_resid_post", vec(1)), "cannot steer block 0"),
    (Add("blocks.2.hook_resid_pre", vec(1)), "blocks.N.hook_resid_post"),
    (Add("blocks.2.attn.hook_z", vec(1)), "is another hook"),
    (Add("blocks.2.hook_resid_post", vec(1), positions="generated"), "only positions='all'"),
    (Steering([Add("blocks.1.hook_resid_post", vec(1)), Add("blocks.2.hook_resid_post", vec(2, d=32))]),
     "different sizes"),
    (Steering([]), "holds no Add"),
    (Add("blocks.4.hook_resid_post", vec(1)), "do not exist in a model with 4 blocks"),
])
def test_write_refuses_what_llama_cpp_cannot_express(tmp_path, steer, message):
    with pytest.raises(ValueError, match=message):
        write_control_vector(steer, tmp_path / "cv.gguf", "llama", n_layers=4)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_write_refuses_an_existing_target_unless_overwrite(tmp_path):
    target = tmp_path / "cv.gguf"
    target.write_bytes(b"keep me")
    add = Add("blocks.1.hook_resid_post", vec(1))
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_control_vector(add, target, "llama", 4)
    assert target.read_bytes() == b"keep me"
    write_control_vector(add, target, "llama", 4, overwrite=True)
    torch.testing.assert_close(read_control_vector(target).interventions[0].vector, vec(1))
    with pytest.raises(ValueError, match="n_layers"):
        write_control_vector(add, tmp_path / "x.gguf", "llama", n_layers=True)


def test_read_refuses_vectors_for_another_model(tmp_path):
    path = write_control_vector(Add("blocks.3.hook_resid_post", vec(1)), tmp_path / "cv.gguf", "llama", 8)
    with pytest.raises(ValueError, match="d_model=64; the model has d_model=576"):
        read_control_vector(path, model=stub(d_model=576, n_layers=8))
    with pytest.raises(ValueError, match="for a model with 8 layers .*the model has 4 layers"):
        read_control_vector(path, model=stub(n_layers=4))
    deep = write_control_vector(Add("blocks.6.hook_resid_post", vec(1)), tmp_path / "deep.gguf", "llama", 8)
    with pytest.raises(ValueError, match="steers block 6; the model has 4 blocks"):
        read_control_vector(deep, model=stub(n_layers=4))
    assert len(read_control_vector(path, model=stub(n_layers=8)).interventions) == 1


def _raw_gguf(path, arch, tensors):
    w = gguf.GGUFWriter(str(path), arch)
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_read_refuses_files_that_are_not_control_vectors(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"definitely not gguf" * 10)
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_control_vector(tmp_path / "junk.gguf")
    f32 = np.ones(D, dtype=np.float32)
    with pytest.raises(ValueError, match="architecture 'llama', not a control vector"):
        read_control_vector(_raw_gguf(tmp_path / "m.gguf", "llama", {"direction.1": f32}))
    with pytest.raises(ValueError, match="direction.0 is invalid"):
        read_control_vector(_raw_gguf(tmp_path / "z.gguf", "controlvector", {"direction.0": f32}))
    with pytest.raises(ValueError, match="1-D F32"):
        read_control_vector(_raw_gguf(tmp_path / "h.gguf", "controlvector", {"direction.1": f32.astype(np.float16)}))
    with pytest.raises(ValueError, match="not a control-vector direction"):
        read_control_vector(_raw_gguf(tmp_path / "w.gguf", "controlvector", {"token_embd.weight": f32}))
    with pytest.raises(ValueError, match="no direction.N"):
        read_control_vector(_raw_gguf(tmp_path / "e.gguf", "controlvector", {}))
    with pytest.raises(ValueError, match="scale must be a finite number"):
        read_control_vector(tmp_path / "e.gguf", scale=float("inf"))
    # repeng's files (uint32 layer_count = number of directions) read like llama.cpp's
    w = gguf.GGUFWriter(str(tmp_path / "repeng.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", 2)
    w.add_tensor("direction.1", f32)
    w.add_tensor("direction.2", 2 * f32)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    got = read_control_vector(tmp_path / "repeng.gguf", model=stub())
    assert [a.hook for a in got.interventions] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
