"""SAE training on the tiny model: formats, several SAEs per pass, architectures, W&B offline,
kill -9 and resume, torchrun DDP vs one process, stream mode, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lm.io import read_json
from saes import holds_sae, load_sae, resolve, train_sae
from saes.train import STATE, WORK, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# The DDP and resume runs share this config with the in-process reference run.
REF = dict(d_sae=[512], train_tokens=256 * 128, checkpoint_every=8)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """~25k tokens of English questions (the prompt bank) as a .txt source."""
    rows = [json.loads(line) for line in (ROOT / "lm/data/prompt_bank.jsonl").read_text().splitlines() if line]
    path = tmp_path_factory.mktemp("data") / "prompts.txt"
    path.write_text("\n\n".join(f"{r['prompt']} {r.get('followup', '')}" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def reference(tiny, text, tmp_path_factory):
    """An uninterrupted single-process run of the REF config: {param: tensor}."""
    out = tmp_path_factory.mktemp("ref") / "sae"
    train_sae(resolve("tiny", data=text, **REF), out, model=tiny, log_to_wandb=False, evaluate=False, progress=False)
    return load_file(str(out / "sae_weights.safetensors"))


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "WANDB_MODE": "disabled", "WANDB_DIR": str(tmp_path)}


def _cli(text, out, *extra):
    return ["scripts/train_sae.py", "--recipe", "tiny", "--data", text, "--out", str(out), "--no-wandb",
            "--no-eval", "--d-sae", "512", "--train-tokens", str(REF["train_tokens"]),
            "--checkpoint-every", str(REF["checkpoint_every"]), *extra]


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-3, msg=k)


def test_several_saes_one_pass_saelens_format_and_wandb(tiny, text, tmp_path, monkeypatch):
    from sae_lens import SAE

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    cfg = resolve("tiny", data=text, hooks=hooks, d_sae=[128, 256], train_tokens=4096, eval_tokens=128)
    paths = train_sae(cfg, tmp_path / "multi", model=tiny, progress=False)
    assert set(paths) == {f"{h}-{w}" for h in hooks for w in (128, 256)}
    for name, path in paths.items():
        hook, width = name.rsplit("-", 1)
        for f in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "train_config.json",
                  "metrics.json", "density.png"):
            assert (path / f).is_file(), f
        sae = SAE.load_from_disk(str(path))
        assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (64, int(width), hook)
        assert list(sae.cfg.metadata.seqpos_slice) == [1, None]
        m = read_json(path / "metrics.json")
        assert 0 < m["l0"] <= 8 and 0 <= m["fvu"] < 1.5 and m["training"]["steps"] == 16
        assert abs(m["fvu"] + m["explained_variance"] - 1) < 1e-9
        assert read_json(path / "train_config.json")["hook"] == hook
        assert load_file(str(path / "sparsity.safetensors"))["sparsity"].shape == (int(width),)
    assert not (tmp_path / "multi" / WORK).exists()  # checkpoints and activation cache cleaned up
    runs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # offline by default, no network
    assert runs and runs[0].stat().st_size > 0


@pytest.mark.parametrize("arch,saved_as", [("standard", "standard"), ("batchtopk", "jumprelu"),
                                           ("jumprelu", "jumprelu")])
def test_architectures_by_name(tiny, text, tmp_path, arch, saved_as):
    cfg = resolve("tiny", data=text, architecture=arch, train_tokens=2048, harvest_tokens=1024,
                  d_sae=[], expansion_factor=[2])
    (path,) = train_sae(cfg, tmp_path / arch, model=tiny, log_to_wandb=False, evaluate=False, progress=False).values()
    sae = load_sae(path)
    assert sae.cfg.architecture() == saved_as and sae.cfg.d_sae == 128
    assert read_json(path / "cfg.json")["metadata"]["training_architecture"] == arch


def test_kill_and_resume_continues_same_data_order(tiny, text, tmp_path, reference):
    out = tmp_path / "run"
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen([sys.executable, *_cli(text, out)], cwd=ROOT, env=_env(tmp_path), stdout=log, stderr=log)
    deadline = time.time() + 240
    while not list((out / WORK / "checkpoints").glob(f"*/{STATE}")):
        assert proc.poll() is None, f"run ended before its first checkpoint: {(tmp_path / 'log.txt').read_text()[-2000:]}"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not holds_sae(out)  # it died mid-run
    step = read_json(latest_checkpoint(out / WORK, STATE) / STATE)["step"]
    assert 0 < step < REF["train_tokens"] // 256 and step % REF["checkpoint_every"] == 0

    cfg = resolve("tiny", data=text, **REF)
    with pytest.raises(FileExistsError, match="--resume"):
        train_sae(cfg, out, model=tiny, log_to_wandb=False)
    other = resolve("tiny", data=text, **{**REF, "lr": 5e-4})
    with pytest.raises(ValueError, match="another config.*lr"):
        train_sae(other, out, resume=True, model=tiny, log_to_wandb=False)
    with pytest.raises(ValueError, match="another config.*lr"):  # an explicit checkpoint directory
        train_sae(other, tmp_path / "elsewhere", resume=latest_checkpoint(out / WORK, STATE), model=tiny)
    (path,) = train_sae(cfg, out, resume=True, model=tiny, log_to_wandb=False, evaluate=False, progress=False).values()
    assert read_json(path / "metrics.json")["training"]["steps"] == REF["train_tokens"] // 256
    _close(load_file(str(path / "sae_weights.safetensors")), reference, atol=1e-6)


def test_torchrun_two_ranks_match_one_process(text, tmp_path, reference):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *_cli(text, out)]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"blocks.1.hook_resid_post-512": str(out)}
    assert read_json(out / "train_config.json")["world_size"] == 2
    _close(load_file(str(out / "sae_weights.safetensors")), reference, atol=1e-4)


def test_stream_mode_through_saelens_runners(tiny, text, tmp_path):
    one = resolve("tiny", data=text, data_mode="stream", train_tokens=2048)
    (p1,) = train_sae(one, tmp_path / "one", model=tiny, log_to_wandb=False, evaluate=False, progress=False).values()
    two = resolve("tiny", data=text, data_mode="stream", train_tokens=2048,
                  hooks=["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"])
    paths = train_sae(two, tmp_path / "two", model=tiny, log_to_wandb=False, evaluate=False, progress=False)
    for path in [p1, *paths.values()]:
        sae = load_sae(path)
        assert sae.cfg.d_sae == 256 and list(sae.cfg.metadata.seqpos_slice) == [1, None]
    assert {load_sae(p).cfg.metadata.hook_name for p in paths.values()} == set(two.hooks)


def test_stream_mode_resumes_from_saelens_checkpoint(tiny, text, tmp_path, monkeypatch):
    from sae_lens import LanguageModelSAETrainingRunner
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = resolve("tiny", data=text, data_mode="stream", train_tokens=4096, checkpoint_every=4)
    save = LanguageModelSAETrainingRunner.save_checkpoint

    def crash_after_saving(self, checkpoint_path):
        save(self, checkpoint_path)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(LanguageModelSAETrainingRunner, "save_checkpoint", crash_after_saving)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(cfg, tmp_path / "s", model=tiny, log_to_wandb=False, evaluate=False, progress=False)
    monkeypatch.setattr(LanguageModelSAETrainingRunner, "save_checkpoint", save)
    loaded = []
    load = SAETrainer.load_trainer_state
    monkeypatch.setattr(SAETrainer, "load_trainer_state", lambda self, p: (loaded.append(self), load(self, p))[1])
    (path,) = train_sae(cfg, tmp_path / "s", resume=True, model=tiny, log_to_wandb=False, evaluate=False,
                        progress=False).values()
    assert loaded and loaded[0].n_training_samples == 4096  # restarted from the checkpoint, ran to the end
    assert load_sae(path).cfg.d_sae == 256


def test_bad_input(tiny, text, tmp_path):
    with pytest.raises(KeyError, match="Unknown recipe"):
        resolve("no-such-recipe")
    with pytest.raises(ValueError, match="Unknown architecture"):
        resolve("tiny", architecture="gated-ish")
    with pytest.raises(KeyError, match="Unknown key.*widht"):
        resolve("tiny", widht=3)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("recipe: tiny\nlearning_rate: 0.1\n")
    with pytest.raises(KeyError, match="learning_rate"):
        resolve(recipe)
    kw = dict(model=tiny, log_to_wandb=False, progress=False)
    with pytest.raises(ValueError, match="d_in=32 does not match blocks.1.hook_resid_post, whose width is 64"):
        train_sae(resolve("tiny", data=text, d_in=32), tmp_path / "a", **kw)
    with pytest.raises(ValueError, match="k=300 exceeds the SAE width 256"):
        train_sae(resolve("tiny", data=text, k=300), tmp_path / "b", **kw)
    with pytest.raises(FileNotFoundError, match="Nothing to resume"):
        train_sae(resolve("tiny", data=text), tmp_path / "c", resume=True, **kw)
    full = tmp_path / "full"
    full.mkdir()
    (full / "cfg.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds an SAE.*--overwrite"):
        train_sae(resolve("tiny", data=text), full, **kw)


@pytest.mark.slow
def test_smollm2_default_recipe_runs_end_to_end(smollm, text, tmp_path):
    """The shipped recipe's hook and shapes on the real model, with token counts cut to seconds."""
    cfg = resolve("smollm2-default", data=text, harvest_tokens=2040, train_tokens=4096, eval_tokens=510,
                  lr_decay_steps=0)
    (path,) = train_sae(cfg, tmp_path / "s", model=smollm, log_to_wandb=False, progress=False).values()
    sae = load_sae(path)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (576, 4608, "blocks.15.hook_resid_post")
    m = read_json(path / "metrics.json")
    assert m["n_tokens"] == 510 and 0 < m["l0"] <= 32 and m["ce_loss_zero_ablation"] > m["ce_loss_clean"]
    assert (path / "density.png").is_file()


def test_cli_overrides_parse():
    from saes.config import parse_override

    assert parse_override("hooks", "blocks.1.hook_resid_post,blocks.2.hook_resid_post") == [
        "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert resolve("tiny", train_tokens=parse_override("train_tokens", "1e4")).train_tokens == 10_000
    assert parse_override("d_sae", "128,256") == [128, 256] and parse_override("exclude_first", "false") is False
