"""Train SAEs from a recipe plus overrides; write them in SAELens format with config, metrics and plot.

    steerlens train --recipe smollm2-default --out saes/pretrained/smollm2-default
    steerlens train --recipe tiny --data notes.txt --hooks blocks.1.hook_resid_post,blocks.2.hook_resid_post \
        --d-sae 256,512 --out /tmp/sae
    torchrun --nproc-per-node 2 -m steerlens train --recipe tiny --data notes.txt --out /tmp/sae   # DDP
    steerlens train ... --resume          # continue a killed run from its last checkpoint

Every TrainConfig field is an option (`--train-tokens 2e6`, `--model`, `--device`, `--seed`,
`--batch-size`; lists comma-separated). The resolved config is printed first; the SAE directories
are printed as JSON on the last line.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields

from saes.config import RECIPES, TrainConfig, parse_override, resolve

from steerlens.commands.common import add_overwrite_arg


def add_arguments(ap) -> None:
    ap.add_argument("--recipe", default="smollm2-default", help=f"one of {sorted(RECIPES)} or a .json/.yaml file")
    ap.add_argument("--out", required=True, help="output directory (one SAE) or parent (several)")
    ap.add_argument("--resume", nargs="?", const=True, default=False,
                    help="continue the interrupted run in --out (or from the given checkpoint directory)")
    add_overwrite_arg(ap, "an SAE already in --out")
    ap.add_argument("--no-wandb", action="store_true", help="no W&B logging (default: offline unless configured)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    for f in fields(TrainConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="V",
                        help=f"override {f.name}")


def run(args) -> None:
    from saes.train import train_sae

    overrides = {f.name: parse_override(f.name, getattr(args, f.name)) for f in fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    cfg = resolve(args.recipe, **overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(cfg.to_dict(), indent=2), flush=True)
    paths = train_sae(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                      log_to_wandb=not args.no_wandb, evaluate=not args.no_eval)
    if paths:
        print(json.dumps({name: str(p) for name, p in paths.items()}))
