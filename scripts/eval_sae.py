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
from saes.config import TrainConfig
from saes.data import split_rows
from saes.eval import EvalConfig, evaluate_sae, plot_density
from saes.io import load_sae


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
    sae = load_sae(sae_dir, device=args.device or "cpu")
    trained = json.loads((sae_dir / "train_config.json").read_text()) if (sae_dir / "train_config.json").is_file() else {}
    meta = sae.cfg.metadata
    cfg = TrainConfig.from_dict({k: v for k, v in trained.items() if k in TrainConfig.__dataclass_fields__})
    cfg.model = args.model or trained.get("model") or meta.model_name or cfg.model
    cfg.data = args.data or cfg.data
    cfg.context_size = args.context_size or trained.get("context_size") or meta.context_size or cfg.context_size
    cfg.eval_tokens = args.tokens or cfg.eval_tokens
    model = load_model(cfg.model, device=args.device)
    eval_rows, _ = split_rows(cfg, model.tokenizer, heldout_only=True)
    ecfg = EvalConfig(batch_size=args.batch_size, exclude_first=cfg.exclude_first)
    metrics = evaluate_sae(sae.to(next(model.parameters()).device), model, eval_rows, args.hook, ecfg)
    out = Path(args.out) if args.out else sae_dir / "eval.json"
    plot_density(metrics, out.with_suffix(".png"), title=sae_dir.name)
    metrics.pop("feature_density")
    metrics.update(model=cfg.model, data=cfg.data, sae=str(sae_dir))
    write_json(out, metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
