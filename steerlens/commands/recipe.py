"""Tune a feature-steering recipe on dev prompts and ship it with its dev and test figures.

For one experiment (golden_gate, sycophancy), the concept's steering latent in each --saes SAE
(concepts.json, from `steerlens find --steer-eval`) is amplified alone, projection-clamped and
steered in all SAEs at once over a strength grid (`steering.tuning`); the candidate that meets the
targets on the dev prompts with the best harmonic mean is written to --out/<experiment>.json (SAE
paths relative to it) and measured on the held-out test prompts; <experiment>.results.json holds
both, every candidate's dev figures, the strengths in both units and this command line.

    steerlens recipe --experiment golden_gate \\
        --saes saes/pretrained/smollm2-late/blocks.20.hook_resid_post-4608,saes/pretrained/smollm2-late/blocks.24.hook_resid_post-4608
    steerlens recipe --experiment sycophancy --saes DIR --add-strengths 1,2,3 --out /tmp/recipes
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from steering.amplification import EXPERIMENTS

from steerlens.commands.common import add_model_args, split_list
from steerlens.errors import UsageError


def add_arguments(ap) -> None:
    add_model_args(ap)
    ap.add_argument("--experiment", required=True, choices=sorted(EXPERIMENTS))
    ap.add_argument("--saes", required=True, help="comma-separated SAE directories (each with concepts.json)")
    ap.add_argument("--add-strengths", default="0.5,1,1.5,2", help="x a_max, one SAE at a time")
    ap.add_argument("--project-strengths", default="0.25,0.5", help="x the layer's median residual norm")
    ap.add_argument("--multi-strengths", default="0.5,0.75,1", help="x a_max, in every SAE at once")
    ap.add_argument("--direction-strengths", default="0.25,0.3,0.35",
                    help="raw keyword direction in SAE features, x median residual norm, one SAE at a time")
    ap.add_argument("--direction-multi", default="0.15,0.2", help="the same in every SAE at once")
    ap.add_argument("--combo-strengths", default="0.3,0.4,0.5",
                    help="x a_max each, the SAE's best-measured latents (--combo-k) amplified together")
    ap.add_argument("--combo-k", type=int, default=3)
    ap.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    ap.add_argument("--n-dev", type=int, default=None, help="first N dev prompts (default all)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default="steering/recipes", help="directory for <experiment>.json and .results.json")
    ap.add_argument("--work", default=None, help="scratch directory (default: runs/recipe/<experiment>)")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in split_list(text)]
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a comma-separated list of numbers, e.g. 0.5,1,2")


def run(args, model=None) -> dict:
    from lm.generate import GenerationConfig
    from lm.model import load_model
    from steering.amplification import prompts_for
    from steering.intervention import load
    from steering.metrics import load_data
    from steering.recipe import save_recipe
    from steering.tuning import TuneConfig, tune_recipe

    saes = split_list(args.saes)
    missing = [s for s in saes if not Path(s, "concepts.json").is_file()]
    if missing:
        raise UsageError(f"{missing} hold no concepts.json; run `steerlens find --steer-eval --write-concepts` on them first.")
    spec = EXPERIMENTS[args.experiment]
    cfg = TuneConfig(spec["concept"], saes, add_strengths=_floats(args.add_strengths, "--add-strengths"),
                     project_strengths=_floats(args.project_strengths, "--project-strengths"),
                     multi_strengths=_floats(args.multi_strengths, "--multi-strengths"),
                     direction_strengths=_floats(args.direction_strengths, "--direction-strengths"),
                     direction_multi=_floats(args.direction_multi, "--direction-multi"), positions=args.positions,
                     combo_k=args.combo_k, combo_strengths=_floats(args.combo_strengths, "--combo-strengths"),
                     generation=GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0.0,
                                                 repetition_penalty=1.1))
    model = model or load_model(args.model, device=args.device)
    work = Path(args.work or Path("runs/recipe") / args.experiment)
    dev = load_data(spec["dev"])[:args.n_dev]
    test = prompts_for(spec, "test", None)[len(spec["lead"]):]
    argv = sys.argv[sys.argv.index("recipe") + 1:] if "recipe" in sys.argv else sys.argv[1:]
    record = tune_recipe(model, cfg, dev, test, work, command=" ".join(["steerlens", "recipe"] + [shlex.quote(a) for a in argv]))
    path = save_recipe(load(work / "recipe.json"), Path(args.out) / f"{args.experiment}.json", record)
    summary = {"recipe": str(path), "chosen": record["chosen"], "dev": record["dev"]["chosen"],
               "test": record["test"]["chosen"]}
    print(json.dumps(summary, default=str))
    return summary
