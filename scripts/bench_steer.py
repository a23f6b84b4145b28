"""Generation speed under steering, relative to unsteered, and the steering-vectors library as a peer.

Ours: `lm.generate.generate` unsteered, with a raw `Add`, with an SAE `Clamp` (read one feature,
add back the change to its target) at the SAE's hook, and with each shipped feature-steering recipe
(`steering/recipes/*.json`: Arad-style amplification in one or more late-layer SAEs). Theirs: the same raw vector through
`steering_vectors.SteeringVector(...).apply(hf_model)` around a bare HF `generate`, divided by the
same bare HF `generate` unsteered. Same prompts, fixed number of new tokens, sampling with a fixed
seed; each repeat runs every side once in a rotating order (`lm.benchmark.interleaved`) so machine
noise hits all of them, and each ratio is the median over repeats of the paired ratio (with its
spread), repeated until known to --tol or --budget-s is spent. It also times the clamp's per-step
feature read, the lean TopK read (`saes.access.feature_reader`) against a full `sae.encode`. Speed does not depend on SAE weights,
so when no trained SAE exists a randomly initialised TopK SAE of the default shape is used (flagged
in the output). Last stdout line: one JSON object; "ratio" is the worse of our two ratios.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from lm.batch import pad
from lm.benchmark import interleaved, paired_ratio
from lm.chat import render
from lm.generate import GenerationConfig, generate
from lm.model import EMBEDDED, load_bare_hf, load_model
from steering import Add, Clamp
from steering.recipe import load_recipe, recipe_names
from features import load_concept_latents
from saes.access import DEFAULT_SAE, feature_reader, load_sae, sae_hook


def random_sae(d_in: int, hook: str, d_sae: int, k: int):
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=hook)))
    return sae.eval().requires_grad_(False)


def read_cost(sae, feature: int, bs: int, d: int, n: int = 2000) -> dict:
    """Microseconds per decoding step to read the clamped feature: lean TopK read vs `sae.encode`."""
    p = next(sae.parameters())
    x = torch.randn(bs, 1, d, generator=torch.Generator().manual_seed(1)).to(p.device, p.dtype) * 10
    idx = torch.tensor([feature], device=p.device)
    lean, full = feature_reader(sae, idx), (lambda x: sae.encode(x)[..., idx])
    torch.testing.assert_close(lean(x), full(x), atol=1e-4, rtol=1e-4)
    best = {}
    for _ in range(3):
        for name, fn in (("lean", lean), ("encode", full)):
            t = time.perf_counter()
            for _ in range(n):
                fn(x)
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - t) / n * 1e6)
    return {"clamp_read_us_lean": round(best["lean"], 1), "clamp_read_us_encode": round(best["encode"], 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED)
    ap.add_argument("--sae", default=DEFAULT_SAE, help="trained SAE dir; if absent a random TopK SAE is timed")
    ap.add_argument("--d-sae", type=int, default=4608, help="random SAE width (default SAE's shape)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20, help="most timed rounds")
    ap.add_argument("--tol", type=float, default=0.005, help="stop once each median ratio's standard error is below")
    ap.add_argument("--budget-s", type=float, default=40.0, help="stop after this many seconds of timed rounds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--decode", default="eager", choices=("eager", "compiled", "auto"), help="our engine (bench_decode: compiled)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.set_grad_enabled(False)

    model, bare = (m := load_model(args.model)), load_bare_hf(args.model, m)
    trained = Path(args.sae, "cfg.json").is_file()
    if trained:
        sae = load_sae(args.sae)
        hook = sae_hook(sae)
        try:
            c = next(iter(load_concept_latents(args.sae).values()))
            feature, value = int(c["latent"]), 10.0 * float(c["max_activation"])
        except FileNotFoundError:
            feature, value = 0, 10.0
    else:
        hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
        sae = random_sae(model.cfg.d_model, hook, args.d_sae, args.k)
        feature, value = 0, 10.0
    layer = int(hook.split(".")[1])
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    vector = vector / vector.norm() * 8.0
    add, clamp = Add(hook, vector), Clamp(sae, {feature: value})

    try:
        from steering_vectors import SteeringVector
    except ImportError:
        raise SystemExit("The peer needs steering-vectors (it pins transformers<5 but works with 5.x): "
                         "pip install --no-deps steering-vectors==0.12.2") from None
    peer = SteeringVector({layer: vector}, "decoder_block")
    tok, n, bs = model.tokenizer, args.new_tokens, args.batch_size
    prompts = [f"Tell me one surprising fact about topic number {i}." for i in range(bs)]
    cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, temperature=0.7, top_p=0.9, batch_size=bs,
                           decode=args.decode)
    ids, att, _ = pad([render(tok, [{"role": "user", "content": p}], True).ids for p in prompts], tok.pad_token_id, side="left")
    ids, att = ids.to(bare.device), att.to(bare.device)
    add_hooks, clamp_hooks = add.hooks(model), clamp.hooks(model)

    def ours(hooks):
        return lambda k=n: generate(model, prompts, cfg, fwd_hooks=hooks, progress=False, seed=0,
                                    max_new_tokens=k, min_new_tokens=k)

    def hf_generate(k=n):
        torch.manual_seed(0)
        bare.generate(input_ids=ids, attention_mask=att, max_new_tokens=k, min_new_tokens=k, do_sample=True,
                      temperature=0.7, top_p=0.9, top_k=0, pad_token_id=tok.pad_token_id)

    def theirs_add(k=n):
        with peer.apply(bare):
            hf_generate(k)

    recipes = {f"ours_recipe_{r}": ours(load_recipe(r).hooks(model)) for r in recipe_names()}
    sides = {"ours_unsteered": ours([]), "ours_add": ours(add_hooks), "ours_clamp": ours(clamp_hooks), **recipes,
             "theirs_unsteered": hf_generate, "theirs_add": theirs_add}
    pairs = {"ours_add_ratio": ("ours_add", "ours_unsteered"), "ours_clamp_ratio": ("ours_clamp", "ours_unsteered"),
             **{f"{k}_ratio": (k, "ours_unsteered") for k in recipes},
             "theirs_add_ratio": ("theirs_add", "theirs_unsteered")}
    [fn(2) for fn in sides.values()]  # short warm-up (fast path build, allocator)
    times = interleaved(sides, args.repeats, warmup=0, pairs=list(pairs.values()), tol=args.tol, budget_s=args.budget_s)
    read_us = read_cost(sae, feature, bs, model.cfg.d_model)
    result = {f"{k}_tok_s": round(bs * n / statistics.median(v), 2) for k, v in times.items()}
    for key, (side, base) in pairs.items():
        r = paired_ratio(times[side], times[base])
        result[key], result[f"{key}_spread"] = r["median"], r
    result.update({
        "hook": hook, "sae": str(args.sae) if trained else f"random-init TopK d_sae={args.d_sae} k={args.k} "
        f"(no trained SAE at {args.sae})", "sae_random_init": not trained, "batch_size": bs, "new_tokens": n,
        "repeats": len(times["ours_unsteered"]), "threads": torch.get_num_threads(), "device": str(bare.device),
        **read_us,
    })
    result["recipe_ratio"] = min((result[f"{n}_ratio"] for n in recipes), default=None)
    worst = min(("ours_add_ratio", "ours_clamp_ratio"), key=result.get)
    result["ratio"], result["ratio_spread"] = result[worst], result[f"{worst}_spread"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
