"""The amplification experiments of Scaling Monosemanticity on the embedded model.

- golden_gate: clamp the Golden Gate Bridge latent to 10x its max activation on every token and
  ask "What is your physical form?" plus unrelated questions (steering/data/unrelated_questions.json);
- sycophancy: clamp the sycophantic-praise latent to 5x while an overconfident user states a
  dubious claim (steering/data/dubious_claims.json).

Each experiment sweeps the clamp strength (default 0,1,2,5,10,20,50 x max activation) next to the
raw difference-of-means direction added at the matched norm and a random direction of that norm
(`steering.amplification`), and writes under --out/<experiment>/: results.json,
conditions/*.json, dose_response.png, summary.md (side-by-side answers) and headline.json (the
paper-strength numbers against the issue's targets). Last stdout line: one JSON object with the
headline numbers. Latent ids and max activations come from <sae>/concepts.json unless given.

    steerlens clamp --out runs/clamp
    steerlens clamp --model tiny --sae <dir> --gg-latent 7 --gg-max-act 2 --n-prompts 2 \
        --max-new-tokens 4 --strengths 0,10 --experiments golden_gate      # smoke run, any SAELens SAE
"""

from __future__ import annotations

import json
from pathlib import Path

from saes.access import DEFAULT_SAE
from steering.amplification import EXPERIMENTS, STRENGTHS

from steerlens.commands.common import add_model_args, add_sweep_args, add_wandb_args, split_list
from steerlens.errors import UsageError


def add_arguments(ap) -> None:
    add_model_args(ap)
    ap.add_argument("--sae", default=str(DEFAULT_SAE), help="SAELens SAE directory (with concepts.json)")
    ap.add_argument("--experiments", default="golden_gate,sycophancy", help=f"comma-separated, of {sorted(EXPERIMENTS)}")
    ap.add_argument("--gg-latent", type=int, help="Golden Gate latent id (default: concepts.json)")
    ap.add_argument("--gg-max-act", type=float, help="its max activation (default: concepts.json)")
    ap.add_argument("--syc-latent", type=int, help="sycophantic-praise latent id (default: concepts.json)")
    ap.add_argument("--syc-max-act", type=float)
    add_sweep_args(ap, ",".join(f"{x:g}" for x in STRENGTHS))
    add_wandb_args(ap, default_mode="disabled", project=False)
    ap.add_argument("--out", default="runs/clamp")


def check_inputs(args) -> list[str]:
    """The experiment names, after checking them and the SAE (before the model loads)."""
    names = split_list(args.experiments)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise UsageError(f"Unknown experiments {unknown}; choose from {sorted(EXPERIMENTS)}.")
    if not Path(args.sae, "cfg.json").is_file():
        raise UsageError(f"No trained SAE at {args.sae} (cfg.json missing). Train the default SAE first "
                         "(steerlens train), or pass --sae DIR of a SAELens SAE.")
    return names


def run(args, model=None) -> dict:
    from lm.io import write_json
    from lm.model import load_model
    from steering.amplification import AmplificationConfig, run_amplification

    from steerlens.commands.common import sweep_settings

    names = check_inputs(args)
    strengths, families, gen = sweep_settings(args)
    model = model or load_model(args.model, device=args.device)
    result = {}
    for name in names:
        flag = {"golden_gate": "gg", "sycophancy": "syc"}[name]
        cfg = AmplificationConfig(
            sae=args.sae, latent=getattr(args, f"{flag}_latent"), max_activation=getattr(args, f"{flag}_max_act"),
            strengths=strengths, families=families, n_prompts=args.n_prompts,
            generation=gen, neutral_texts=args.neutral_texts, neutral_max_tokens=args.neutral_max_tokens,
            seed=args.seed, wandb=args.wandb)
        result[name] = run_amplification(model, name, Path(args.out) / name, cfg)
    write_json(Path(args.out) / "headline.json", result)
    print(json.dumps(result))
    return result
