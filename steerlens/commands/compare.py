"""W&B-tracked comparison of steering conditions on the same prompts and seeds (offline by default).

Conditions are either a JSON file (a list of `Condition.to_dict()` records: name, family,
strength, steering) or, by default, the amplification sweep for one concept: baseline, SAE clamp
at each strength, raw difference-of-means add and random add at matched norms. Every condition
becomes one W&B run in one group (config, metrics, a table of generations, the dose-response
plot); results.json, conditions/*.json, dose_response.png and summary.md are written beside the
runs in --out. `wandb sync <out>/wandb/offline-run-*` uploads the runs later. Last stdout line:
one JSON object with each condition's metrics.

    steerlens compare --concept golden_gate_bridge --out runs/compare
    steerlens compare --conditions conds.json --n-prompts 4 --no-wandb --out runs/compare/mine
"""

from __future__ import annotations

import json
from pathlib import Path

from saes.access import DEFAULT_SAE

from steerlens.commands.common import add_model_args, add_sweep_args, add_wandb_args


def add_arguments(ap) -> None:
    add_model_args(ap)
    ap.add_argument("--concept", default="golden_gate_bridge", help="features/concepts/<name>.json")
    ap.add_argument("--prompts", default="unrelated_questions", help="steering/data/<name>.json or a JSON list file")
    ap.add_argument("--conditions", help="JSON file of conditions; default: the sweep below")
    ap.add_argument("--sae", default=str(DEFAULT_SAE), help="SAELens SAE directory")
    ap.add_argument("--latent", type=int, help="default: <sae>/concepts.json")
    ap.add_argument("--max-activation", type=float, help="default: <sae>/concepts.json")
    add_sweep_args(ap, "0,1,2,5,10,20,50")
    add_wandb_args(ap, default_mode="offline", old_names=True)
    ap.add_argument("--group", default=None, help="W&B group (default: a fresh name)")
    ap.add_argument("--out", default="runs/compare")


def conditions(args, model, strengths, families) -> list:
    """The conditions file's records, or the amplification sweep for --concept."""
    from features import concept_latent, load_concept
    from lm.io import read_json
    from steering.experiment import Condition, sweep_conditions

    if args.conditions:
        return [Condition.from_dict(d) for d in read_json(args.conditions)]
    latent, max_act = concept_latent(args.sae, args.concept, args.latent, args.max_activation)
    return sweep_conditions(model, args.sae, latent, max_act, strengths, load_concept(args.concept), families,
                            args.seed)


def run(args, model=None) -> dict:
    from lm.io import read_json
    from lm.model import load_model
    from steering.compare import run_comparison
    from steering.experiment import ConceptEvalConfig
    from steering.metrics import load_data

    from steerlens.commands.common import sweep_settings

    path = Path(args.prompts)
    prompts = read_json(path) if path.suffix == ".json" else load_data(args.prompts)
    prompts = prompts[:args.n_prompts]
    strengths, families, gen = sweep_settings(args)
    model = model or load_model(args.model, device=args.device)
    conds = conditions(args, model, strengths, families)
    cfg = ConceptEvalConfig(args.concept, prompts, gen, args.neutral_texts, args.neutral_max_tokens)
    record = run_comparison(model, conds, cfg, args.out, project=args.wandb_project, group=args.group,
                            mode=args.wandb)
    out = {r["condition"]["name"]: {k: r["metrics"][k] for k in ("concept_rate", "description_logprob", "ppl",
                                                                  "kl_neutral")}
           for r in record["results"]}
    print(json.dumps({"group": record["config"]["group"], "out": str(args.out), "conditions": out}))
    return record
