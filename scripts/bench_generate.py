"""Generation speed with a no-op hook at a middle layer vs bare HF `generate`, batch 1 and 32.

Both sides sample the same prompts with the same settings and a fixed number of new tokens;
runs alternate (ours, bare, ours, bare, ...) so machine noise hits both. Prints one JSON line last.
"""

import argparse
import json
import time

import torch

from lm.batch import pad
from lm.chat import render
from lm.generate import GenerationConfig, generate
from lm.model import EMBEDDED, load_bare_hf, load_model


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)

    model = load_model(args.model)
    bare = load_bare_hf(args.model, model)
    tok = model.tokenizer
    layer = model.cfg.n_layers // 2
    noop = [(f"blocks.{layer}.hook_resid_post", lambda x, hook: x)]
    n = args.new_tokens
    result = {"new_tokens": n, "hook": noop[0][0]}
    ratios = []
    for bs in map(int, args.batch_sizes.split(",")):
        prompts = [f"Tell me one surprising fact about topic number {i}." for i in range(bs)]
        cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, temperature=0.7, top_p=0.9, batch_size=bs)
        ids, att, _ = pad([render(tok, [{"role": "user", "content": p}], True).ids for p in prompts],
                          tok.pad_token_id, side="left")

        def ours():
            generate(model, prompts, cfg, fwd_hooks=noop, progress=False, seed=0)

        def theirs():
            torch.manual_seed(0)
            bare.generate(input_ids=ids, attention_mask=att, max_new_tokens=n, min_new_tokens=n, do_sample=True,
                          temperature=0.7, top_p=0.9, top_k=0, pad_token_id=tok.pad_token_id)

        times = {"ours": [], "bare": []}
        ours(); theirs()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("ours", ours), ("bare", theirs)):
                t = time.perf_counter(); fn(); times[name].append(time.perf_counter() - t)
        ours_tps = bs * n / min(times["ours"])
        bare_tps = bs * n / min(times["bare"])
        result[f"batch{bs}_ours_tok_s"] = round(ours_tps, 2)
        result[f"batch{bs}_bare_tok_s"] = round(bare_tps, 2)
        result[f"batch{bs}_ratio"] = round(ours_tps / bare_tps, 3)
        ratios.append(ours_tps / bare_tps)
    result["ratio"] = round(min(ratios), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
