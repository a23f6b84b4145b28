"""W&B-tracked comparison of steering conditions, with a local copy of everything.

Every condition is scored on the same prompts and seeds (`steering.experiment.Evaluator`) and
becomes one W&B run in a shared group, logging its config, its metrics (history and summary), a
`wandb.Table` of prompts and generations and the group's dose-response plot. W&B runs offline by
default (`wandb/offline-run-*` under the output directory; `wandb sync` uploads them later). The
same results are written beside the runs, so nothing depends on a W&B server:

    out/results.json           config + every condition's metrics and generations
    out/conditions/<name>.json one condition
    out/dose_response.png      metrics against strength, one curve per family
    out/summary.md             metrics table and side-by-side answers
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from lm.io import write_json
from lm.model import model_hash
from steering.experiment import (Condition, EvalConfig, Evaluator, collapse_strength, metrics_table,
                                 plot_dose_response, side_by_side)

MODES = ("offline", "online", "disabled")


def run_comparison(model, conditions: list[Condition], cfg: EvalConfig, out_dir: str | Path, *,
                   project: str = "steerlens", group: str | None = None, mode: str = "offline",
                   title: str = "", side_by_side_names: list[str] | None = None, extra: dict | None = None,
                   progress: bool = True) -> dict:
    """Evaluate `conditions`, write the local report, log one W&B run per condition; returns the record."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {MODES} (offline needs no server).")
    names = [c.name for c in conditions]
    if not conditions or len(set(names)) != len(names):
        raise ValueError(f"Conditions need unique names, got {names}.")
    out = Path(out_dir)
    group = group or f"{cfg.concept}-{time.strftime('%Y%m%d-%H%M%S')}"
    evaluator = Evaluator(model, cfg)
    results = []
    for cond in tqdm(conditions, desc="conditions", disable=not progress):
        r = evaluator(cond)
        results.append(r)
        write_json(out / "conditions" / f"{cond.name}.json", r)
    summary = {}
    for fam in sorted({c.family for c in conditions} - {"baseline"}):
        summary[f"collapse_strength/{fam}"] = collapse_strength(results, fam)
    record = {"config": {"eval": cfg.to_dict(), "model": model_hash(model), "project": project, "group": group,
                         "mode": mode, **(extra or {})},
              "summary": summary, "results": results}
    plot = out / "dose_response.png"
    plot_dose_response(results, plot, title or cfg.concept)
    shown = side_by_side_names or [n for n in names if n == "baseline"] + [n for n in names if n != "baseline"][:2]
    (out / "summary.md").write_text(
        f"# {title or cfg.concept}\n\nModel `{model_hash(model)}`, W&B group `{group}` ({mode}).\n\n"
        f"## Metrics\n\n{metrics_table(results)}\n\nFluency collapse (answer perplexity > 2x unsteered): "
        f"{summary}\n\n![dose-response](dose_response.png)\n\n## Answers\n\n{side_by_side(results, shown)}\n",
        encoding="utf-8")
    if mode != "disabled":
        record["wandb_runs"] = _log_wandb(results, record["config"], plot, out, project, group, mode)
    write_json(out / "results.json", record)
    return record


def _log_wandb(results, config, plot, out: Path, project, group, mode) -> list[str]:
    """One run per condition; returns each run's local directory (…/wandb/offline-run-*/files)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    settings = wandb.Settings(silent=True, console="off", disable_git=True, save_code=False,
                              x_disable_stats=True, x_disable_meta=True, x_save_requirements=False)
    dirs = []
    for r in results:
        c, m = r["condition"], r["metrics"]
        run = wandb.init(project=project, group=group, name=c["name"], job_type="steering", dir=str(out),
                         mode=mode, config={**config, "condition": c}, reinit="finish_previous", settings=settings)
        try:
            scalars = {k: v for k, v in m.items() if isinstance(v, (int, float))}
            table = wandb.Table(columns=["prompt", "answer", "concept_hit", "ppl"],
                                data=[[g["prompt"], g["answer"], g["hit"], g["ppl"]] for g in r["generations"]])
            run.log({**scalars, "generations": table, "dose_response": wandb.Image(str(plot))})
            run.summary.update({**scalars, "family": c["family"], "strength": c["strength"]})
            dirs.append(str(Path(run.dir).parent))
        finally:
            run.finish()
    wandb.teardown()  # wandb-core closes run logs asynchronously; this waits until they are on disk
    return dirs


def read_offline_run(run_dir: str | Path) -> dict:
    """Config, final summary and history rows of a run, read from its `run-*.wandb` transaction log.

    Offline runs keep everything in that log (a LevelDB-style record log of protobuf `Record`s)
    and W&B 0.31 ships no Python reader for it; this lets tests and reports check what was logged.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"No run-*.wandb log in {run_dir}; pass a wandb/offline-run-* directory.")
    data, block, pos, chunks, buf = files[0].read_bytes(), 32768, 7, [], b""  # 7-byte ':W&B' header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a record header: padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        piece, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = piece if kind in (1, 2) else buf + piece  # full / first / middle / last
        if kind in (1, 4):
            chunks.append(buf)

    def key(item):
        return ".".join(item.nested_key) if item.nested_key else item.key

    run = {"name": None, "group": None, "config": {}, "summary": {}, "history": []}
    for raw in chunks:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run["name"], run["group"] = rec.run.display_name, rec.run.run_group
        if kind in ("run", "config"):
            cfg = rec.run.config if kind == "run" else rec.config
            run["config"].update({key(u): json.loads(u.value_json) for u in cfg.update})
        elif kind == "summary":
            run["summary"].update({key(u): json.loads(u.value_json) for u in rec.summary.update})
        elif kind == "history":
            run["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
    return run
