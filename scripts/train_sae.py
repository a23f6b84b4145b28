"""Train SAEs from a recipe plus overrides; write them in SAELens format with config, metrics and plot.

    python scripts/train_sae.py --recipe smollm2-default --out saes/pretrained/smollm2-default
    python scripts/train_sae.py --recipe tiny --data notes.txt --hooks blocks.1.hook_resid_post,blocks.2.hook_resid_post --d-sae 256,512 --out /tmp/sae
    torchrun --nproc-per-node 2 scripts/train_sae.py --recipe tiny --data notes.txt --out /tmp/sae   # DDP
    python scripts/train_sae.py ... --resume          # continue a killed run from its last checkpoint

Every TrainConfig field is an option (`--train-tokens 2e6`, lists comma-separated). The resolved
config is printed first; the SAE directories are printed as JSON on the last line.
"""

import argparse
import json
import os
from dataclasses import fields

from saes.config import RECIPES, TrainConfig, parse_override, resolve
from saes.train import train_sae


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="smollm2-default", help=f"one of {sorted(RECIPES)} or a .json/.yaml file")
    ap.add_argument("--out", required=True, help="output directory (one SAE) or parent (several)")
    ap.add_argument("--resume", nargs="?", const=True, default=False,
                    help="continue the interrupted run in --out (or from the given checkpoint directory)")
    ap.add_argument("--overwrite", action="store_true", help="replace an SAE already in --out")
    ap.add_argument("--no-wandb", action="store_true", help="no W&B logging (default: offline unless configured)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    for f in fields(TrainConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="V",
                        help=f"override {f.name}")
    args = ap.parse_args(argv)
    overrides = {f.name: parse_override(f.name, getattr(args, f.name)) for f in fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    cfg = resolve(args.recipe, **overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(cfg.to_dict(), indent=2), flush=True)
    paths = train_sae(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                      log_to_wandb=not args.no_wandb, evaluate=not args.no_eval)
    if paths:
        print(json.dumps({name: str(p) for name, p in paths.items()}))


if __name__ == "__main__":
    main()
