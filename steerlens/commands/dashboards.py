"""Feature statistics and static HTML dashboards for an SAE over a text dataset.

    steerlens dashboards --out runs/dashboards/default
    steerlens dashboards --sae path/to/sae --data notes.txt --features 0-99,512

One batched pass over --data (cached in OUT/analysis, reused when model, SAE, data and settings
match), then OUT/features/{i}.html per latent and OUT/index.html with a search box. Open the index
in a browser straight from disk; nothing is fetched from the network.
"""

from __future__ import annotations

import time

from features.analysis import AnalysisConfig
from saes.access import DEFAULT_SAE

from steerlens.commands.common import add_config_flags, add_model_args, config_from, parse_features


def add_arguments(ap) -> None:
    ap.add_argument("--sae", default=str(DEFAULT_SAE), help="SAELens SAE directory")
    add_model_args(ap)
    ap.add_argument("--data", default="default", help="'default' corpus, .txt/.jsonl/.parquet, or HF dataset")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--out", required=True)
    ap.add_argument("--features", nargs="+", default=None, metavar="ID",
                    help="latent ids or ranges, e.g. '0-99,512' or '3 7 12' (default: all latents)")
    add_config_flags(ap, AnalysisConfig)


def run(args):
    from features.analysis import analyze, dataset_tokens
    from features.dashboard import write_dashboards
    from lm.model import load_model
    from saes.access import load_sae

    features = parse_features(args.features)  # checked before the model loads
    model = load_model(args.model, device=args.device)
    sae = load_sae(args.sae, device=str(next(model.original_model.parameters()).device))
    cfg = config_from(args, AnalysisConfig)
    tokens = dataset_tokens(args.data, model.tokenizer, args.context_size, args.max_tokens)
    t = time.time()
    stats = analyze(model, sae, tokens, cfg, cache_dir=f"{args.out}/analysis")
    print(f"stats for {stats.d_sae} latents over {stats.n_tokens} tokens in {time.time() - t:.1f} s "
          f"({int((stats.density > 0).sum())} latents fire)")
    index = write_dashboards(stats, model.tokenizer, args.out, features)
    print(f"open {index}")
    return index
