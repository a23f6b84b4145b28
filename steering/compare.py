"""W&B-tracked comparison of steering conditions, with a local copy of everything.

Every condition is scored on the same prompts and seeds (`steering.experiment.Evaluator`), gets
the AxBench-style scores against the unsteered baseline (`steering.experiment.scored`; the headline
is their harmonic mean) and becomes one W&B run in a shared group, logging its config, its metrics
and scores (history and summary), a `wandb.Table` of prompts and generations and the group's
dose-response plot. W&B runs offline by default (`wandb/offline-run-*` under the output directory;
`wandb sync` uploads them later). The same results are written beside the runs, so nothing depends
on a W&B server:

    out/results.json           config + every condition's metrics, scores and generations
    out/conditions/<name>.json one condition
    out/dose_response.png      metrics against strength, one curve per family
    out/summary.md             metrics table and side-by-side answers
"""

from __future__ import annotations

import time
from pathlib import Path

from lm.io import write_json
from lm.model import model_hash
from lm.tracking import MODES, finish_run, start_run
from steering.experiment import (Condition, ConceptEvalConfig, Evaluator, check_names, collapse_strength,
                                 metrics_table, plot_dose_response, run_conditions, scored, side_by_side)


def run_comparison(model, conditions: list[Condition], cfg: ConceptEvalConfig, out_dir: str | Path, *,
                   project: str = "steerlens", group: str | None = None, mode: str = "offline",
                   title: str = "", side_by_side_names: list[str] | None = None, extra: dict | None = None,
                   progress: bool = True) -> dict:
    """Evaluate `conditions`, write the local report, log one W&B run per condition; returns the record."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {MODES} (offline needs no server).")
    check_names(conditions)
    if not any(c.family == "baseline" for c in conditions):
        raise ValueError("run_comparison scores every condition against the unsteered answers: add "
                         "Condition('baseline') to the conditions.")
    names = [c.name for c in conditions]
    out = Path(out_dir)
    group = group or f"{cfg.concept}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = scored(run_conditions(conditions, Evaluator(model, cfg), each_dir=out / "conditions", progress=progress))
    for r in results:  # again, now with their scores
        write_json(out / "conditions" / f"{r['condition']['name']}.json", r)
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
        f"## Metrics\n\n{metrics_table(results)}\n\nScores are judge-free and relative to the unsteered answers "
        f"(`steering.metrics`): concept = concept rate, fluency = min(1, unsteered fluency_ppl / fluency_ppl, "
        f"distinct2 / unsteered distinct2), relevance = clip(relevance / unsteered relevance, 0, 1), harmonic = "
        f"their harmonic mean.\n\nFluency collapse (answer perplexity > 2x unsteered): "
        f"{summary}\n\n![dose-response](dose_response.png)\n\n## Answers\n\n{side_by_side(results, shown)}\n",
        encoding="utf-8")
    if mode != "disabled":
        record["wandb_runs"] = _log_wandb(results, record["config"], plot, out, project, group, mode)
    write_json(out / "results.json", record)
    return record


def _log_wandb(results, config, plot, out: Path, project, group, mode) -> list[str]:
    """One run per condition; returns each run's local directory (…/wandb/offline-run-*/files)."""
    import wandb

    dirs = []
    for r in results:
        c, m = r["condition"], r["metrics"]
        run = start_run(project=project, group=group, name=c["name"], job_type="steering", dir=str(out),
                        mode=mode, config={**config, "condition": c})
        try:
            scalars = {k: v for k, v in m.items() if isinstance(v, (int, float))}
            scalars.update({f"score/{k}": v for k, v in r.get("scores", {}).items()})
            table = wandb.Table(columns=["prompt", "answer", "concept_hit", "ppl", "fluency_ppl", "relevance"],
                                data=[[g["prompt"], g["answer"], g["hit"], g["ppl"], g["fluency_ppl"], g["relevance"]]
                                      for g in r["generations"]])
            run.log({**scalars, "generations": table, "dose_response": wandb.Image(str(plot))})
            run.summary.update({**scalars, "family": c["family"], "strength": c["strength"]})
            dirs.append(str(Path(run.dir).parent))
        finally:
            finish_run(run, teardown=False)
    finish_run(teardown=True)
    return dirs
