"""Evaluate an SAE on held-out tokens: L0, FVU, explained variance, CE-loss recovered, delta LM loss,
dead/dense latent fractions; writes JSON and a feature-density histogram PNG beside it.

    python scripts/eval_sae.py saes/pretrained/smollm2-default
    python scripts/eval_sae.py /tmp/sae --data notes.txt --tokens 4096 --out /tmp/sae_eval.json

With a `train_config.json` beside the SAE (ours), the model, data and held-out split are the ones
training held out; flags override them. The metrics are printed as JSON on the last line.
"""

import argparse
import json
from pathlib import Path

from lm.io import write_json
from lm.model import load_model
from saes.eval import EvalConfig, evaluate_dir, plot_density


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sae", help="SAE directory (cfg.json + sae_weights.safetensors)")
    ap.add_argument("--model", help="model name (default: from train_config.json)")
    ap.add_argument("--data", help="text source (default: from train_config.json, else 'default')")
    ap.add_argument("--hook", help="hook to splice at (default: the SAE's hook_name)")
    ap.add_argument("--tokens", type=int, help="held-out tokens to evaluate on")
    ap.add_argument("--context-size", type=int)
    ap.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", help="metrics JSON path (default: <sae>/eval.json); the PNG goes beside it")
    args = ap.parse_args(argv)

    sae_dir = Path(args.sae)
    model = load_model(args.model, device=args.device) if args.model else None
    metrics, _ = evaluate_dir(sae_dir, model, args.data, args.tokens, args.hook, args.batch_size,
                              args.context_size, args.device)
    out = Path(args.out) if args.out else sae_dir / "eval.json"
    plot_density(metrics, out.with_suffix(".png"), title=sae_dir.name)
    metrics.pop("feature_density")
    write_json(out, metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
