"""Feature statistics and static HTML dashboards for an SAE over a text dataset.

    .venv/bin/python scripts/feature_dashboards.py --out runs/dashboards/default
    .venv/bin/python scripts/feature_dashboards.py --sae path/to/sae --data notes.txt --features 0-99,512

One batched pass over --data (cached in OUT/analysis, reused when model, SAE, data and settings
match), then OUT/features/{i}.html per latent and OUT/index.html with a search box. Open the index
in a browser straight from disk; nothing is fetched from the network.
"""

import argparse
import dataclasses
import time

from features.analysis import AnalysisConfig, analyze, dataset_tokens
from features.dashboard import write_dashboards
from saes.access import DEFAULT_SAE, load_sae
from lm.model import EMBEDDED, load_model


def parse_features(spec: str | None) -> list[int] | None:
    """'0-9,42' -> [0..9, 42]; None -> every latent."""
    if not spec:
        return None
    out = []
    for part in spec.split(","):
        a, _, b = part.strip().partition("-")
        out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default=str(DEFAULT_SAE))
    ap.add_argument("--model", default=EMBEDDED, help="model name, local HF dir, or 'tiny'")
    ap.add_argument("--device", default=None)
    ap.add_argument("--data", default="default", help="'default' corpus, .txt/.jsonl/.parquet, or HF dataset")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--out", required=True)
    ap.add_argument("--features", default=None, help="e.g. '0-99,512' (default: all latents)")
    for f in dataclasses.fields(AnalysisConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = ap.parse_args(argv)

    model = load_model(args.model, device=args.device)
    sae = load_sae(args.sae, device=str(next(model.original_model.parameters()).device))
    cfg = AnalysisConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnalysisConfig)})
    tokens = dataset_tokens(args.data, model.tokenizer, args.context_size, args.max_tokens)
    t = time.time()
    stats = analyze(model, sae, tokens, cfg, cache_dir=f"{args.out}/analysis")
    print(f"stats for {stats.d_sae} latents over {stats.n_tokens} tokens in {time.time() - t:.1f} s "
          f"({int((stats.density > 0).sum())} latents fire)")
    index = write_dashboards(stats, model.tokenizer, args.out, parse_features(args.features))
    print(f"open {index}")


if __name__ == "__main__":
    main()
