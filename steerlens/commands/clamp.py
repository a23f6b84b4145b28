"""The amplification experiments of Scaling Monosemanticity on the embedded model, AxBench-style.

- golden_gate: "What is your physical form?" plus unrelated questions;
- sycophancy: an overconfident user states a dubious claim.

Each experiment compares, on the same prompts (--split test: held out from tuning; dev: the tuning
prompts): the shipped feature-steering recipe (steering/recipes/<experiment>.json, or --recipe), the
paper's literal clamp of the best input latent of --sae (10x / 5x its max activation; --strengths
adds a dose-response sweep), the raw difference-of-means direction at the recipe's layers and norms,
and a system prompt (`steering.amplification`). It writes under --out/<experiment>/: results.json,
conditions/*.json, dose_response.png, summary.md (side-by-side answers) and headline.json (scores,
strength units, the recipe's targets). Last stdout line: one JSON object with the headlines.

    steerlens clamp --out runs/clamp
    steerlens clamp --experiments golden_gate --split dev --strengths 1,2,5,20
    steerlens clamp --model tiny --sae <dir> --gg-latent 7 --gg-max-act 2 --families paper_clamp \
        --n-prompts 1 --max-new-tokens 4 --experiments golden_gate      # smoke run, any SAELens SAE
"""

from __future__ import annotations

import json
from pathlib import Path

from saes.access import DEFAULT_SAE
from steering.amplification import EXPERIMENTS, FAMILIES

from steerlens.commands.common import add_eval_args, add_model_args, add_wandb_args, split_list
from steerlens.errors import UsageError


def add_arguments(ap) -> None:
    add_model_args(ap)
    ap.add_argument("--sae", default=str(DEFAULT_SAE), help="the literal clamp's SAELens SAE directory (with concepts.json)")
    ap.add_argument("--experiments", default="golden_gate,sycophancy", help=f"comma-separated, of {sorted(EXPERIMENTS)}")
    ap.add_argument("--recipe", default=None, help="recipe name or file (default: the experiment's shipped recipe)")
    ap.add_argument("--gg-latent", type=int, help="Golden Gate input latent for the literal clamp (default: concepts.json)")
    ap.add_argument("--gg-max-act", type=float, help="its max activation (default: concepts.json)")
    ap.add_argument("--syc-latent", type=int, help="sycophantic-praise input latent (default: concepts.json)")
    ap.add_argument("--syc-max-act", type=float)
    ap.add_argument("--strengths", default="", help="extra literal-clamp strengths, x max activation (e.g. 1,2,5,20)")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {FAMILIES}")
    ap.add_argument("--split", choices=["test", "dev"], default="test", help="held-out test prompts or dev prompts")
    add_eval_args(ap, max_new_tokens=48, neutral_texts=4)
    add_wandb_args(ap, default_mode="disabled", project=False)
    ap.add_argument("--out", default="runs/clamp")


def check_inputs(args) -> list[str]:
    """The experiment names, after checking them and the SAE (before the model loads)."""
    names = split_list(args.experiments)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise UsageError(f"Unknown experiments {unknown}; choose from {sorted(EXPERIMENTS)}.")
    bad = [f for f in split_list(args.families) if f not in FAMILIES]
    if bad:
        raise UsageError(f"--families: unknown {bad}; choose from {FAMILIES}.")
    if "paper_clamp" in split_list(args.families) and not Path(args.sae, "cfg.json").is_file():
        raise UsageError(f"No trained SAE at {args.sae} (cfg.json missing). Train the default SAE first "
                         "(steerlens train), or pass --sae DIR of a SAELens SAE.")
    try:
        [float(x) for x in split_list(args.strengths)]
    except ValueError:
        raise UsageError(f"--strengths: {args.strengths!r} is not a comma-separated list of numbers, e.g. 1,2,5")
    return names


def run(args, model=None) -> dict:
    from lm.generate import GenerationConfig
    from lm.io import write_json
    from lm.model import load_model
    from steering.amplification import AmplificationConfig, run_amplification

    names = check_inputs(args)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                           batch_size=args.batch_size, repetition_penalty=args.repetition_penalty)
    model = model or load_model(args.model, device=args.device)
    result = {}
    for name in names:
        flag = {"golden_gate": "gg", "sycophancy": "syc"}[name]
        cfg = AmplificationConfig(
            recipe=args.recipe, sae=args.sae, latent=getattr(args, f"{flag}_latent"),
            max_activation=getattr(args, f"{flag}_max_act"), strengths=[float(x) for x in split_list(args.strengths)],
            families=split_list(args.families), split=args.split, n_prompts=args.n_prompts, generation=gen,
            neutral_texts=args.neutral_texts, neutral_max_tokens=args.neutral_max_tokens, seed=args.seed,
            wandb=args.wandb)
        result[name] = run_amplification(model, name, Path(args.out) / name, cfg)
    write_json(Path(args.out) / "headline.json", result)
    print(json.dumps(result))
    return result
