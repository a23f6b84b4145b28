"""Harvest throughput vs a bare forward through the same layers (no hooks, no caching), same batches.

The bare side is the stock HF model with its decoder list cut after the hooked layer; ours is
`lm.harvest.harvest` (hooks, sink exclusion, copy to CPU). Runs alternate to share machine noise.
Prints one JSON line last.
"""

import argparse
import json
import time

import torch

from lm.harvest import HarvestConfig, harvest
from lm.model import EMBEDDED, load_bare_hf, load_model


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
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

    ours(); theirs()
    times = {"ours": [], "bare": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("bare", theirs)):
            t = time.perf_counter(); fn(); times[name].append(time.perf_counter() - t)
    n = rows * args.seq
    ours_tps, bare_tps = n / min(times["ours"]), n / min(times["bare"])
    print(json.dumps({"ratio": round(ours_tps / bare_tps, 3), "ours_tok_s": round(ours_tps, 1),
                      "baseline_tok_s": round(bare_tps, 1), "hook": hook, "tokens": n}))


if __name__ == "__main__":
    main()
