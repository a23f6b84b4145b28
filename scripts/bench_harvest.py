"""Harvest throughput vs a bare forward through the same layers (no hooks, no caching), same batches.

The bare side is the stock HF model with its decoder list cut after the hooked layer; ours is
`lm.harvest.harvest` (hooks, sink exclusion, copy to CPU). The sides alternate (`lm.benchmark.interleaved`)
until the median paired ratio is known to --tol or --budget-s is spent. Prints one JSON line last.
"""

import argparse
import json
import statistics

import torch

from lm.benchmark import interleaved, paired_ratio
from lm.harvest import HarvestConfig, harvest
from lm.model import EMBEDDED, load_bare_hf, load_model


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20, help="most timed rounds")
    ap.add_argument("--tol", type=float, default=0.005, help="stop once the median ratio's standard error is below")
    ap.add_argument("--budget-s", type=float, default=40.0, help="stop after this many seconds of timed rounds")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)

    model = load_model(args.model)
    bare = load_bare_hf(args.model, model)
    bare.model.layers = bare.model.layers[: args.layer + 1]
    g = torch.Generator().manual_seed(0)
    rows = args.batch_size * args.batches
    tokens = torch.randint(100, model.cfg.d_vocab - 100, (rows, args.seq), generator=g)
    hook = f"blocks.{args.layer}.hook_resid_post"
    cfg = HarvestConfig(batch_size=args.batch_size)

    def ours():
        harvest(model, tokens, [hook], cfg, progress=False)

    def theirs():
        for b in range(0, rows, args.batch_size):
            bare.model(input_ids=tokens[b:b + args.batch_size], use_cache=False)

    times = interleaved({"ours": ours, "bare": theirs}, args.repeats, pairs=[("ours", "bare")], tol=args.tol,
                        budget_s=args.budget_s)
    n = rows * args.seq
    r = paired_ratio(times["ours"], times["bare"])
    ours_s, bare_s = (statistics.median(times[k]) for k in ("ours", "bare"))
    print(json.dumps({"ratio": r["median"], "ratio_spread": r, "ours_tok_s": round(n / ours_s, 1),
                      "baseline_tok_s": round(n / bare_s, 1), "hook": hook, "tokens": n}))


if __name__ == "__main__":
    main()
