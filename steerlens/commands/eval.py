"""Evaluate an SAE on held-out tokens: L0, FVU, explained variance, CE-loss recovered, delta LM loss,
dead/dense latent fractions; writes JSON and a feature-density histogram PNG beside it.

    steerlens eval saes/pretrained/smollm2-default
    steerlens eval /tmp/sae --data notes.txt --tokens 4096 --out /tmp/sae_eval.json
    steerlens eval saes/pretrained/smollm2-default --saebench       # + SAEBench core JSON beside it
    steerlens eval sae_lens:RELEASE/SAE_ID --model NAME --data SOURCE   # an SAELens registry SAE

With a `train_config.json` beside the SAE (ours), the model, data and held-out split are the ones
training held out; flags override them. The metrics are printed as JSON on the last line.
"""

from __future__ import annotations

import json
from pathlib import Path

from steerlens.commands.common import add_model_args
from steerlens.errors import UsageError


def add_arguments(ap) -> None:
    from saes.eval import EvalConfig

    ap.add_argument("sae", help="SAE directory (cfg.json + sae_weights.safetensors) or sae_lens:RELEASE/SAE_ID")
    add_model_args(ap, default=None, default_help="from train_config.json")
    ap.add_argument("--data", help="text source (default: from train_config.json, else 'default')")
    ap.add_argument("--hook", help="hook to splice at (default: the SAE's hook_name)")
    ap.add_argument("--tokens", type=int, help="held-out tokens to evaluate on")
    ap.add_argument("--context-size", type=int)
    ap.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    ap.add_argument("--out", help="metrics JSON path (default: <sae>/eval.json); the PNG goes beside it")
    ap.add_argument("--saebench", nargs="?", const=True, default=None, metavar="PATH",
                    help="also write SAEBench-style core metrics (default path: saebench_core.json beside --out)")


def run(args) -> dict:
    from lm.io import write_json
    from lm.model import load_model
    from saes.eval import evaluate_dir, plot_density

    sae_dir = Path(args.sae)
    if args.sae.startswith("sae_lens:") and not args.out:
        raise UsageError("a registry SAE has no directory to write eval.json into; give --out PATH.json")
    out = Path(args.out) if args.out else sae_dir / "eval.json"
    saebench = out.with_name("saebench_core.json") if args.saebench is True else args.saebench
    model = load_model(args.model, device=args.device) if args.model else None
    metrics, _ = evaluate_dir(args.sae, model, args.data, args.tokens, args.hook, args.batch_size,
                              args.context_size, args.device, saebench=saebench)
    plot_density(metrics, out.with_suffix(".png"), title=sae_dir.name)
    metrics.pop("feature_density")
    write_json(out, metrics)
    print(json.dumps(metrics))
    return metrics
