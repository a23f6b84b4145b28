"""Decode speed: bare HF `generate` vs our eager engine vs our compiled step, unsteered and steered.

Sides, per batch size (1 and 32 by default), all sampling the same prompts with the same settings
and a fixed number of new tokens, interleaved round by round (`lm.benchmark.interleaved`):
  hf            bare HF `generate` on a stock model with the same weights, no hooks;
  eager[_steer] `lm.generate(decode="eager")`: HF `generate` on the hooked fast path;
  comp[_steer]  `lm.generate(decode="compiled")`: the compiled static-cache step (`lm.decode`);
"_steer" adds a steering of Add + SAE Clamp (Arad "add" mode) + windowed Cap, the three edit kinds;
  int8[_steer]  the compiled step with weight-only int8 matrices (batch 1 only: it reads 1/4 of the
                bytes where decoding is memory bound), and its agreement with float32: top-1 and
                logit differences teacher-forced on float32 greedy replies, and greedy replies equal.
It also measures, in the same run, the limits: at batch 1 the time to stream every weight matrix
once through a GEMV (memory bound), at batch 32 the time of the same matmuls at that batch
(compute bound); `*_of_limit` is the side's tok/s over the limit's. Compile time (first calls) is
reported and excluded. Prints one JSON line last.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from lm.batch import pad
from lm.benchmark import interleaved, paired_ratio
from lm.chat import render
from lm.agreement import int8_agreement
from lm.decode import COMPILES
from lm.layout import decode_model
from lm.fastpath import fast_path
from lm.generate import GenerationConfig, generate
from lm.model import EMBEDDED, load_bare_hf, load_model
from saes.access import DEFAULT_SAE, load_sae, sae_hook
from steering import Add, Cap, Clamp, Steering


def weight_bound(dm, batch: int, repeats: int = 5) -> float:
    """Seconds per token-step of only the weight matmuls (every layer's, then the unembedding) at `batch`."""
    mats = [w for layer in dm.layers for w in (layer.wqkv, layer.wo, layer.wgu, layer.wdown)] + [dm.lm_head]
    xs = {w.shape[1]: torch.randn(batch, w.shape[1]) for w in mats}
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for w in mats:
            F.linear(xs[w.shape[1]], w)
        best = min(best, time.perf_counter() - t)
    return best


def steering_for(model, sae_dir):
    sae = load_sae(sae_dir)
    hook = sae_hook(sae)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    return Steering([Add(hook, v, 4.0), Clamp(sae_dir, {0: 0.5}, mode="add"),
                     Cap(f"blocks.{int(hook.split('.')[1]) + 4}.hook_resid_post", v, tau=2.0, window=8)])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--sae", default=str(DEFAULT_SAE))
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--new-tokens", default="32,32", help="new tokens per batch size")
    ap.add_argument("--repeats", type=int, default=8, help="most timed rounds per batch size")
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--budget-s", type=float, default=90.0, help="seconds of timed rounds, shared by the batch sizes")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)

    model = load_model(args.model)
    bare = load_bare_hf(args.model, model)
    tok = model.tokenizer
    steer = steering_for(model, args.sae).hooks(model)
    dm = decode_model(fast_path(model).hf)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    lengths = [int(n) for n in args.new_tokens.split(",")]
    result = {"threads": torch.get_num_threads(), "steering": "Add + Clamp(add) + Cap(window=8)"}
    for bs, n in zip(sizes, lengths):
        prompts = [f"Tell me one surprising fact about topic number {i}." for i in range(bs)]
        ids, att, _ = pad([render(tok, [{"role": "user", "content": p}], True).ids for p in prompts],
                          tok.pad_token_id, side="left")

        def ours(decode, hooks, weights="float"):
            cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, temperature=0.7, top_p=0.9, batch_size=bs,
                                   decode=decode, weights=weights)
            return lambda: generate(model, prompts, cfg, fwd_hooks=hooks, progress=False, seed=0)

        def hf():
            torch.manual_seed(0)
            bare.generate(input_ids=ids, attention_mask=att, max_new_tokens=n, min_new_tokens=n, do_sample=True,
                          temperature=0.7, top_p=0.9, top_k=0, pad_token_id=tok.pad_token_id)

        sides = {"hf": hf, "eager": ours("eager", []), "eager_steer": ours("eager", steer),
                 "comp": ours("compiled", []), "comp_steer": ours("compiled", steer)}
        if bs == 1:
            sides.update(int8=ours("compiled", [], "int8"), int8_steer=ours("compiled", steer, "int8"))
        t = time.perf_counter()
        before = dict(COMPILES)
        [fn() for name, fn in sides.items() if name.startswith(("comp", "int8"))]
        compile_s = time.perf_counter() - t
        pairs = [("comp_steer", "hf"), ("comp", "hf")]
        times = interleaved(sides, args.repeats, pairs=pairs, tol=args.tol, min_repeats=3,
                            budget_s=args.budget_s / len(sizes))
        bound = bs / weight_bound(dm, bs)
        pre = f"batch{bs}"
        for name, ts in times.items():
            tps = bs * n / statistics.median(ts)
            result[f"{pre}_{name}_tok_s"] = round(tps, 2)
            result[f"{pre}_{name}_of_limit"] = round(tps / bound, 3)
        extra = [("int8_steer", "hf"), ("int8_steer", "comp_steer")] if bs == 1 else []
        for a, b in pairs + [("eager_steer", "hf"), ("eager", "hf")] + extra:
            r = paired_ratio(times[a], times[b])
            result[f"{pre}_{a}_vs_{b}"], result[f"{pre}_{a}_vs_{b}_spread"] = r["median"], r
        result[f"{pre}_limit_tok_s"] = round(bound, 2)
        result[f"{pre}_limit"] = "weight GEMV stream (memory bound)" if bs == 1 else "weight matmuls (compute bound)"
        result[f"{pre}_new_tokens"] = n
        result[f"{pre}_first_calls_s"] = round(compile_s, 1)
        result[f"{pre}_compiles"] = {str(i): round(s, 1) for i, s in enumerate(v for k, v in COMPILES.items()
                                                                                 if k not in before)}
    result["int8_vs_float32"] = int8_agreement(model, [f"Tell me one surprising fact about topic number {i}."
                                                       for i in range(8)])
    worst = min(sizes, key=lambda bs: result[f"batch{bs}_comp_steer_vs_hf"])
    result["ratio"] = result[f"batch{worst}_comp_steer_vs_hf"]
    result["ratio_spread"] = result[f"batch{worst}_comp_steer_vs_hf_spread"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
