"""Generation speed with a no-op hook at a middle layer vs bare HF `generate`, batch 1 and 32.

Both sides sample the same prompts with the same settings and a fixed number of new tokens;
runs alternate (ours bare, bare ours, ...: `lm.benchmark.interleaved`) so machine noise hits both,
until the median paired ratio is known to --tol or each batch size's share of --budget-s is spent.
Prints one JSON line last; "ratio" is the worse batch size's.
"""

import argparse
import json
import statistics

import torch

from lm.batch import pad
from lm.benchmark import interleaved, paired_ratio
from lm.chat import render
from lm.generate import GenerationConfig, generate
from lm.model import EMBEDDED, load_bare_hf, load_model


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--repeats", type=int, default=20, help="most timed rounds per batch size")
    ap.add_argument("--tol", type=float, default=0.005, help="stop once the median ratio's standard error is below")
    ap.add_argument("--budget-s", type=float, default=40.0, help="seconds of timed rounds, shared by the batch sizes")
    ap.add_argument("--decode", default="eager", choices=("eager", "compiled", "auto"), help="our engine (bench_decode: compiled)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)

    model = load_model(args.model)
    bare = load_bare_hf(args.model, model)
    tok = model.tokenizer
    layer = model.cfg.n_layers // 2
    noop = [(f"blocks.{layer}.hook_resid_post", lambda x, hook: x)]
    n = args.new_tokens
    result = {"new_tokens": n, "hook": noop[0][0]}
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    spreads = []
    for bs in sizes:
        prompts = [f"Tell me one surprising fact about topic number {i}." for i in range(bs)]
        cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, temperature=0.7, top_p=0.9, batch_size=bs,
                           decode=args.decode)
        ids, att, _ = pad([render(tok, [{"role": "user", "content": p}], True).ids for p in prompts],
                          tok.pad_token_id, side="left")

        def ours():
            generate(model, prompts, cfg, fwd_hooks=noop, progress=False, seed=0)

        def theirs():
            torch.manual_seed(0)
            bare.generate(input_ids=ids, attention_mask=att, max_new_tokens=n, min_new_tokens=n, do_sample=True,
                          temperature=0.7, top_p=0.9, top_k=0, pad_token_id=tok.pad_token_id)

        # min_repeats 3: a batch-32 round is ~10 s on 2 cores; the budget keeps the bench near a minute
        times = interleaved({"ours": ours, "bare": theirs}, args.repeats, pairs=[("ours", "bare")], tol=args.tol,
                            min_repeats=3, budget_s=args.budget_s / len(sizes))
        r = paired_ratio(times["ours"], times["bare"])
        result[f"batch{bs}_ours_tok_s"] = round(bs * n / statistics.median(times["ours"]), 2)
        result[f"batch{bs}_bare_tok_s"] = round(bs * n / statistics.median(times["bare"]), 2)
        result[f"batch{bs}_ratio"], result[f"batch{bs}_ratio_spread"] = r["median"], r
        spreads.append(r)
    worst = min(spreads, key=lambda r: r["median"])
    result["ratio"], result["ratio_spread"] = worst["median"], worst
    print(json.dumps(result))


if __name__ == "__main__":
    main()
