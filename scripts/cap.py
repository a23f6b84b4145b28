"""Evaluate activation capping on the Assistant Axis without an external judge (W&B offline).

For the uncapped model and every cap setting (raw basis: each band x percentile; SAE basis: each
percentile) it measures identity under persona prompts, the refusal rate on persona jailbreaks,
capability (NLL, multiple choice, neutral-text KL, each relative to uncapped) and how often each
cap fires; then steering along the axis and the drift plot with capping on
(`axis.evaluate.evaluate_caps`, which documents every measure and file).

    .venv/bin/python scripts/cap.py --axis axis/pretrained/smollm2-default --out runs/cap/smollm2
    .venv/bin/python scripts/cap.py --model tiny --axis runs/axis/tiny --small     # smoke test
    .venv/bin/python scripts/cap.py ... --parts steering --strengths -0.5 0 0.5   # redo one part, keep the rest
    .venv/bin/python scripts/cap.py ... --bands 15 --windows 32 --gains 4 8      # windowed caps (steering.projection)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lm.generate import GenerationConfig
from lm.model import load_model
from steering.projection import check_window

from axis.artifact import AssistantAxis
from axis.cap_sweep import CapSweep, cap_conditions
from axis.evaluate import PARTS, CapEvalConfig, cap_summary, evaluate_caps

SMALL = dict(n_personas=2, n_identity_questions=2, n_plain=2, n_jailbreaks=3, n_mc=4, n_nll=3, n_neutral=2,
             max_new_tokens=8, strengths=[-1.0, 0.0, 1.0], n_steer_personas=1, drift_per_domain=1, drift_turns=2,
             drift_new_tokens=8)


def parse_args(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model name, HF dir, or 'tiny'")
    ap.add_argument("--device", default=None)
    ap.add_argument("--axis", required=True, help="a saved axis directory (scripts/compute_axis.py)")
    ap.add_argument("--sae", default=None, help="SAE for the SAE-basis cap (default: the axis's own)")
    ap.add_argument("--no-sae", action="store_true", help="skip SAE-basis capping")
    ap.add_argument("--sae-bands", nargs="*", default=["auto"],
                    help="bands for SAE-basis caps through the axis's band SAEs (compute_axis.py --band-sae); "
                         "'auto' = the layers that have one, none = only the single SAE")
    ap.add_argument("--out", default="runs/cap/latest")
    ap.add_argument("--bands", nargs="+", default=["auto"], help="'auto', 'START-END' or 'L1,L2'; several = sweep")
    ap.add_argument("--percentiles", nargs="+", type=float, default=[75.0], help="several = sweep")
    ap.add_argument("--mode", default="floor", choices=["floor", "ceiling"])
    ap.add_argument("--windows", nargs="+", type=int, default=[0],
                    help="0 = each token's projection (the paper); W = mean over the last W tokens; several = sweep")
    ap.add_argument("--gains", nargs="+", type=float, default=[1.0],
                    help="push = gain x shortfall below tau (1 = the paper); several = sweep")
    ap.add_argument("--n-personas", type=int, default=12)
    ap.add_argument("--n-identity-questions", type=int, default=5)
    ap.add_argument("--n-plain", type=int, default=15, help="identity questions without persona (steering)")
    ap.add_argument("--n-jailbreaks", type=int, default=60)
    ap.add_argument("--n-mc", type=int, default=120)
    ap.add_argument("--n-nll", type=int, default=40)
    ap.add_argument("--n-neutral", type=int, default=16)
    ap.add_argument("--neutral-tokens", type=int, default=96)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steer-layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--strengths", nargs="+", type=float, default=[-2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2],
                    help="multiples of the mean residual norm at the steering layer")
    ap.add_argument("--n-steer-personas", type=int, default=4)
    ap.add_argument("--drift-per-domain", type=int, default=3)
    ap.add_argument("--drift-turns", type=int, default=8)
    ap.add_argument("--drift-new-tokens", type=int, default=64)
    ap.add_argument("--drift-layer", type=int, default=None, help="default: the axis's monitor layer")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                    help="what to run; results of other parts already in --out are kept")
    ap.add_argument("--small", action="store_true", help="tiny settings for a smoke test")
    ap.add_argument("--no-wandb", action="store_true")
    ap.add_argument("--wandb-project", default="steerlens")
    args = ap.parse_args(argv)
    if args.small:  # tiny settings, except where a flag was given explicitly
        for k, v in SMALL.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    for p in args.percentiles:
        if not 0 <= p <= 100:
            ap.error(f"--percentiles: {p} is outside 0-100.")
    try:  # the rule CapConfig applies, checked before the model loads
        for w in args.windows:
            for g in args.gains:
                check_window(w, g)
    except ValueError as e:
        ap.error(f"--windows/--gains: {e}")
    return args


def settings(args) -> tuple[CapSweep, CapEvalConfig]:
    sweep = CapSweep(args.bands, args.percentiles, args.mode, args.windows, args.gains, not args.no_sae,
                     args.sae_bands, args.sae)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           seed=args.seed, batch_size=args.batch_size)
    cfg = CapEvalConfig(
        n_personas=args.n_personas, n_identity_questions=args.n_identity_questions, n_plain=args.n_plain,
        n_jailbreaks=args.n_jailbreaks, n_mc=args.n_mc, n_nll=args.n_nll, n_neutral=args.n_neutral,
        neutral_tokens=args.neutral_tokens, generation=gen, steer_layer=args.steer_layer, strengths=args.strengths,
        n_steer_personas=args.n_steer_personas, drift_per_domain=args.drift_per_domain,
        drift_turns=args.drift_turns, drift_new_tokens=args.drift_new_tokens, drift_layer=args.drift_layer,
        parts=args.parts, wandb=not args.no_wandb, wandb_project=args.wandb_project,
        run_name=f"cap-{Path(args.axis).name}-{'+'.join(args.parts)}")
    return sweep, cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sweep, cfg = settings(args)
    model = load_model(args.model, device=args.device)
    axis = AssistantAxis.load(args.axis, model)
    result = evaluate_caps(model, axis, cap_conditions(axis, sweep), cfg, args.out,
                           extra={"axis": str(args.axis), "model": args.model})
    print(json.dumps({"out": str(args.out), "parts": args.parts, **cap_summary(result)}))
    return result


if __name__ == "__main__":
    main()
