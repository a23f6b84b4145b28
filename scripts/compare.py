"""W&B-tracked comparison of steering conditions on the same prompts and seeds (offline by default).

Conditions are either a JSON file (a list of `Condition.to_dict()` records: name, family,
strength, steering) or, by default, the amplification sweep for one concept: baseline, SAE clamp
at each strength, raw difference-of-means add and random add at matched norms. Every condition
becomes one W&B run in one group (config, metrics, a table of generations, the dose-response
plot); results.json, conditions/*.json, dose_response.png and summary.md are written beside the
runs in --out. `wandb sync <out>/wandb/offline-run-*` uploads the runs later. Last stdout line:
one JSON object with each condition's metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from features import concept_latent, load_concept
from lm.io import read_json
from lm.model import EMBEDDED, load_model
from lm.tracking import MODES
from saes.access import DEFAULT_SAE
from steering.compare import run_comparison
from steering.experiment import Condition, ConceptEvalConfig, sweep_conditions
from steering.metrics import load_data

try:  # imported as scripts.compare (tests), or run as scripts/compare.py with scripts/ on sys.path
    from scripts._flags import add_sweep_args, sweep_settings
except ModuleNotFoundError:
    from _flags import add_sweep_args, sweep_settings


def parse(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--concept", default="golden_gate_bridge", help="features/concepts/<name>.json")
    ap.add_argument("--prompts", default="unrelated_questions", help="steering/data/<name>.json or a JSON list file")
    ap.add_argument("--conditions", help="JSON file of conditions; default: the sweep below")
    ap.add_argument("--sae", default=str(DEFAULT_SAE))
    ap.add_argument("--latent", type=int, help="default: <sae>/concepts.json")
    ap.add_argument("--max-activation", type=float, help="default: <sae>/concepts.json")
    add_sweep_args(ap, "0,1,2,5,10,20,50")
    ap.add_argument("--mode", choices=MODES, default="offline", help="W&B mode")
    ap.add_argument("--project", default="steerlens")
    ap.add_argument("--group", default=None)
    ap.add_argument("--out", default="runs/compare")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, model=None) -> dict:
    args = parse(argv)
    path = Path(args.prompts)
    prompts = read_json(path) if path.suffix == ".json" else load_data(args.prompts)
    prompts = prompts[:args.n_prompts]
    model = model or load_model(args.model)
    strengths, families, gen = sweep_settings(args)
    if args.conditions:
        conds = [Condition.from_dict(d) for d in read_json(args.conditions)]
    else:
        latent, max_act = concept_latent(args.sae, args.concept, args.latent, args.max_activation)
        conds = sweep_conditions(model, args.sae, latent, max_act, strengths, load_concept(args.concept), families,
                                 args.seed)
    cfg = ConceptEvalConfig(args.concept, prompts, gen, args.neutral_texts, args.neutral_max_tokens)
    record = run_comparison(model, conds, cfg, args.out, project=args.project, group=args.group, mode=args.mode)
    out = {r["condition"]["name"]: {k: r["metrics"][k] for k in ("concept_rate", "description_logprob", "ppl", "kl_neutral")}
           for r in record["results"]}
    print(json.dumps({"group": record["config"]["group"], "out": str(args.out), "conditions": out}))
    return record


if __name__ == "__main__":
    main()
