"""SAE evaluation with SAEs whose answers are known, the SAELens round trip of what we save,
the eval script, the default-SAE helper, and the training benchmark's output."""

import json

import pytest
import torch
import torch.nn.functional as F

import saes.pretrained
from saes import EvalConfig, evaluate_sae, load_sae, plot_density, save_sae
from scripts import bench_sae_train, eval_sae
from tests.helpers import HOOK, identity_sae, identity_sae_dir


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(200, 40_000, (6, 24), generator=torch.Generator().manual_seed(0))


def test_identity_sae_recovers_everything(tiny, tokens):
    m = evaluate_sae(identity_sae(), tiny, tokens, progress=False)
    assert m["fvu"] < 1e-6 and abs(m["explained_variance"] - 1) < 1e-6
    assert abs(m["ce_loss_with_sae"] - m["ce_loss_clean"]) < 1e-5 and abs(m["ce_loss_recovered"] - 1) < 1e-3
    assert abs(m["delta_lm_loss"]) < 1e-5
    assert m["n_tokens"] == 6 * 23  # first position excluded
    assert m["l0"] == 64  # exactly one of relu(x_i), relu(-x_i) fires per dimension
    assert m["dead_fraction"] == 0 and m["dense_fraction"] == 1


def test_zero_sae_equals_zero_ablation_from_position_1(tiny, tokens):
    m = evaluate_sae(identity_sae(zero=True), tiny, tokens, progress=False)
    assert abs(m["ce_loss_recovered"]) < 1e-6 and m["ce_loss_with_sae"] == m["ce_loss_zero_ablation"]
    assert m["dead_fraction"] == 0

    def ablate(x, hook):  # by hand: zero positions >= 1, score predictions made from positions >= 1
        x = x.clone()
        x[:, 1:] = 0
        return x

    with torch.no_grad(), tiny.hooks(fwd_hooks=[(HOOK, ablate)]):
        logits = tiny(tokens)
    ce = F.cross_entropy(logits[:, 1:-1].flatten(0, 1), tokens[:, 2:].flatten())
    assert abs(ce.item() - m["ce_loss_zero_ablation"]) < 1e-4
    all_pos = evaluate_sae(identity_sae(), tiny, tokens, cfg=EvalConfig(exclude_first=False), progress=False)
    assert all_pos["n_tokens"] == 6 * 24


def test_eval_refuses_a_mismatched_sae(tiny, tokens):
    with pytest.raises(ValueError, match="d_in is 32 but blocks.1.hook_resid_post has width 64"):
        evaluate_sae(identity_sae(32), tiny, tokens, progress=False)
    with pytest.raises(KeyError, match="Unknown hook"):
        evaluate_sae(identity_sae(), tiny, tokens, hook="blocks.9.hook_nope", progress=False)


@pytest.mark.parametrize("arch", ["topk", "standard", "jumprelu", "batchtopk"])
def test_saved_sae_loads_in_saelens_with_same_outputs(tmp_path, arch):
    from sae_lens import SAE
    from sae_lens.registry import get_sae_training_class

    cls, cfg_cls = get_sae_training_class(arch)
    extra = {"k": 4} if "topk" in arch else {}
    torch.manual_seed(0)
    sae = cls(cfg_cls(d_in=16, d_sae=48, **extra))
    with torch.no_grad():
        for name, p in sae.named_parameters():  # leave thresholds positive
            if name.startswith(("W_", "b_")):
                p.add_(0.05 * torch.randn_like(p))
    sae.fold_activation_norm_scaling_factor(0.7)
    save_sae(sae, tmp_path, sparsity=torch.full((48,), -2.0), extra_json={"train_config.json": {"arch": arch}})
    loaded = SAE.load_from_disk(str(tmp_path))
    x = torch.randn(32, 16)
    sae.eval()
    with torch.no_grad():
        if arch == "batchtopk":  # saved as JumpReLU with the learned threshold, as SAELens intends
            assert loaded.cfg.architecture() == "jumprelu"
        else:
            torch.testing.assert_close(loaded.encode(x), sae.encode(x), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(loaded(x), sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "train_config.json"]


def test_eval_script_and_density_plot(tiny, tmp_path):
    sae_dir, text = identity_sae_dir(tmp_path)
    eval_sae.main([str(sae_dir)])
    m = json.loads((sae_dir / "eval.json").read_text())
    assert m["n_tokens"] == 8 * 15 and m["fvu"] < 1e-6 and m["model"] == "tiny"
    assert (sae_dir / "eval.png").read_bytes()[:4] == b"\x89PNG"
    png = plot_density({"feature_density": [0.0, 0.2, 1e-3], "l0": 1.2, "eval_config": {"dense_threshold": 0.1}},
                       tmp_path / "d.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_default_sae_path(tmp_path, monkeypatch):
    monkeypatch.setattr(saes.pretrained, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="train_sae.py --recipe smollm2-default"):
        saes.pretrained.default_sae_path()
    save_sae(identity_sae(), tmp_path / "smollm2-default")
    assert saes.pretrained.default_sae_path() == tmp_path / "smollm2-default"
    assert load_sae(saes.pretrained.default_sae_path()).cfg.d_sae == 128
    with pytest.raises(FileNotFoundError, match="not an SAE directory"):
        load_sae(tmp_path)


def test_bench_sae_train_prints_json(capsys):
    bench_sae_train.main(["--d-in", "32", "--d-sae", "128", "--batch-size", "64", "--cached-tokens", "512",
                          "--steps", "2", "--repeats", "1"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tokens_per_s"] > 0 and out["ratio"] > 0 and out["shape"]["d_sae"] == 128
    assert abs(out["achieved_gflop_s"] / out["mm_gflop_s"] - out["ratio"]) < 1e-9
