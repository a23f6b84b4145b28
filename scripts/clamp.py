"""The amplification experiments of Scaling Monosemanticity on the embedded model (CLI).

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

Small smoke run on the tiny model with any SAELens SAE:
    scripts/clamp.py --model <tiny dir> --sae <dir> --gg-latent 7 --gg-max-act 2 --n-prompts 2 \\
        --max-new-tokens 4 --strengths 0,10 --experiments golden_gate
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lm.io import write_json
from lm.model import EMBEDDED, load_model
from lm.tracking import MODES
from saes.access import DEFAULT_SAE
from steering.amplification import EXPERIMENTS, STRENGTHS, AmplificationConfig, run_amplification

try:  # imported as scripts.clamp (tests), or run as scripts/clamp.py with scripts/ on sys.path
    from scripts._flags import add_sweep_args, sweep_settings
except ModuleNotFoundError:
    from _flags import add_sweep_args, sweep_settings


def parse(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--sae", default=str(DEFAULT_SAE), help="SAELens SAE directory (with concepts.json)")
    ap.add_argument("--experiments", default="golden_gate,sycophancy")
    ap.add_argument("--gg-latent", type=int, help="Golden Gate latent id (default: concepts.json)")
    ap.add_argument("--gg-max-act", type=float, help="its max activation (default: concepts.json)")
    ap.add_argument("--syc-latent", type=int, help="sycophantic-praise latent id (default: concepts.json)")
    ap.add_argument("--syc-max-act", type=float)
    add_sweep_args(ap, ",".join(f"{x:g}" for x in STRENGTHS))
    ap.add_argument("--wandb", choices=MODES, default="disabled", help="also log W&B runs (scripts/compare.py does)")
    ap.add_argument("--out", default="runs/clamp")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, model=None) -> dict:
    args = parse(argv)
    names = [n for n in args.experiments.split(",") if n]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"Unknown experiments {unknown}; choose from {sorted(EXPERIMENTS)}.")
    if not Path(args.sae, "cfg.json").is_file():
        raise SystemExit(f"No trained SAE at {args.sae} (cfg.json missing). Train the default SAE first "
                         "(saes/), or pass --sae DIR of a SAELens SAE.")
    model = model or load_model(args.model)
    strengths, families, gen = sweep_settings(args)
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


if __name__ == "__main__":
    main()
