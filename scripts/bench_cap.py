"""Generation speed with activation capping on vs off: raw basis (steering.Cap on a band of layers)
and SAE basis (steering.SAECap at the SAE's layer), in one run; also the windowed raw cap
(steering.window: the mean over the last --window tokens, kept across KV-cached steps).

The four sides sample the same prompts with a fixed number of new tokens and alternate (uncapped,
raw, sae, windowed, then rotated: `lm.benchmark.interleaved`) so machine noise hits all of them;
each ratio is the median over repeats of the paired ratio, until known to --tol or --budget-s is spent. Cap cost
does not depend on the direction's values, so without --axis random unit directions are used, and
without an SAE (--sae, the axis's own, or steering's default) a random SAELens SAE of 8 x d_model
latents. With --recipe (default: the shipped axis's cap.json, `axis.cap_recipe`) a fifth side runs the
shipped cap recipe. Prints one JSON line last; "ratio" is the shipped recipe's ratio when there is
one, else the raw-basis ratio (target >= 0.98).
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from lm.benchmark import interleaved, paired_ratio
from lm.generate import GenerationConfig, generate
from lm.model import load_model
from steering import DEFAULT_SAE, Cap, SAECap, Steering, load, load_sae

from axis.artifact import AssistantAxis
from axis.cap_recipe import RECIPE, SHIPPED_AXIS
from axis.capping import CapConfig, capping, parse_band

SHIPPED_CAP = SHIPPED_AXIS / RECIPE


def random_sae(d_model: int, layer: int, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_model, d_sae=8 * d_model)
    cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    torch.manual_seed(seed)
    return StandardSAE(cfg).eval().requires_grad_(False)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default=None)
    ap.add_argument("--axis", default=None, help="saved axis (default: random directions)")
    ap.add_argument("--sae", default=None)
    ap.add_argument("--band", default="auto")
    ap.add_argument("--percentile", type=float, default=75.0)
    ap.add_argument("--window", type=int, default=256, help="for the windowed raw cap")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20, help="most timed rounds")
    ap.add_argument("--tol", type=float, default=0.005, help="stop once each median ratio's standard error is below")
    ap.add_argument("--budget-s", type=float, default=40.0, help="stop after this many seconds of timed rounds")
    ap.add_argument("--recipe", default=str(SHIPPED_CAP), help="a cap recipe (steering.load); 'none' to skip")
    ap.add_argument("--decode", default="eager", choices=("eager", "compiled", "auto"), help="our engine (bench_decode: compiled)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)

    model = load_model(args.model, device=args.device)
    n_layers, d = model.cfg.n_layers, model.cfg.d_model
    band = parse_band(args.band, n_layers)
    sae_dir = args.sae or (DEFAULT_SAE if (Path(DEFAULT_SAE) / "cfg.json").is_file() and args.model != "tiny" else None)
    if args.axis:
        axis = AssistantAxis.load(args.axis, model)
        raw, _ = capping(axis, CapConfig(band, args.percentile, "floor", "raw"))
        windowed, _ = capping(axis, CapConfig(band, args.percentile, "floor", "raw", args.window))
        if axis.feature is not None and not args.sae:
            sae_cap, _ = capping(axis, CapConfig([], args.percentile, "floor", "sae"))
        else:
            sae = load_sae(sae_dir) if sae_dir else random_sae(d, n_layers // 2)
            sae_cap = Steering([SAECap(sae, torch.randn(sae.cfg.d_sae), 0.0)])
    else:
        g = torch.Generator().manual_seed(0)
        dirs = [torch.randn(d, generator=g) for _ in band]
        raw = Steering([Cap(f"blocks.{l}.hook_resid_post", v, 0.0) for l, v in zip(band, dirs)])
        windowed = Steering([Cap(f"blocks.{l}.hook_resid_post", v, 0.0, window=args.window) for l, v in zip(band, dirs)])
        sae = load_sae(sae_dir) if sae_dir else random_sae(d, n_layers // 2)
        sae_cap = Steering([SAECap(sae, torch.randn(sae.cfg.d_sae, generator=g), 0.0)])
    n, bs = args.new_tokens, args.batch_size
    prompts = [f"Tell me one surprising fact about topic number {i}." for i in range(bs)]
    cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, temperature=0.7, top_p=0.9, batch_size=bs,
                           decode=args.decode)
    sides = {"uncapped": [], "raw": raw.hooks(model), "sae": sae_cap.hooks(model), "windowed": windowed.hooks(model)}
    recipe = args.recipe if args.recipe != "none" and Path(args.recipe).is_file() and args.model != "tiny" else None
    if recipe:
        sides["shipped"] = load(recipe).hooks(model)

    def run(hooks):
        return lambda: generate(model, prompts, cfg, fwd_hooks=hooks, progress=False, seed=0)

    capped = tuple(k for k in sides if k != "uncapped")
    times = interleaved({k: run(hooks) for k, hooks in sides.items()}, args.repeats,
                        pairs=[(k, "uncapped") for k in capped], tol=args.tol, budget_s=args.budget_s)
    tps = {k: bs * n / statistics.median(v) for k, v in times.items()}
    ratios = {k: paired_ratio(times[k], times["uncapped"]) for k in capped}
    head = "shipped" if recipe else "raw"
    print(json.dumps({
        "ratio": ratios[head]["median"], "ratio_spread": ratios[head], "ratio_of": head, "recipe": recipe,
        **({"shipped_tok_s": round(tps["shipped"], 2)} if recipe else {}),
        "raw_ratio": ratios["raw"]["median"],
        "sae_ratio": ratios["sae"]["median"], "sae_ratio_spread": ratios["sae"],
        "windowed_ratio": ratios["windowed"]["median"], "windowed_ratio_spread": ratios["windowed"],
        "uncapped_tok_s": round(tps["uncapped"], 2), "raw_tok_s": round(tps["raw"], 2), "sae_tok_s": round(tps["sae"], 2),
        "windowed_tok_s": round(tps["windowed"], 2), "window": args.window,
        "band": [band[0], band[-1]], "sae_hook": sides["sae"][0][0],
        "batch_size": bs, "new_tokens": n, "axis": args.axis, "sae": str(sae_dir) if sae_dir else "random",
    }))


if __name__ == "__main__":
    main()
