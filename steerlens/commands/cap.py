"""Evaluate activation capping on the Assistant Axis without an external judge (W&B offline).

For the uncapped model and every cap setting (raw basis: each band x percentile; SAE basis: each
percentile) it measures identity under persona prompts, the refusal rate on persona jailbreaks,
capability (NLL, multiple choice, neutral-text KL, each relative to uncapped) and how often each
cap fires; then steering along the axis and the drift plot with capping on
(`axis.evaluate.evaluate_caps`, which documents every measure and file).

    steerlens cap --axis axis/pretrained/smollm2-default --out runs/cap/smollm2
    steerlens cap --model tiny --axis runs/axis/tiny --small     # smoke test
    steerlens cap ... --parts steering --strengths -0.5 0 0.5   # redo one part, keep the rest
    steerlens cap ... --bands 15 --windows 32 --gains 4 8      # windowed caps (steering.projection)
    steerlens cap ... --windows 16 --percentiles 50 --triggers 10 --calibrations token   # conditional
    steerlens cap ... --configs '{"layers": [15], "percentile": 90, "window": 256, "trigger": 67}' --parts engagement
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from axis.compute import CALIBRATIONS
from axis.evaluate import DEFAULT_PARTS, PARTS, SPLITS

from steerlens.commands.common import add_model_args, add_wandb_args
from steerlens.errors import UsageError

SMALL = dict(n_personas=2, n_identity_questions=2, n_plain=2, n_default_samples=1, n_jailbreaks=3, n_mc=4, n_nll=3, n_neutral=2,
             max_new_tokens=8, strengths=[-1.0, 0.0, 1.0], n_steer_personas=1, drift_per_domain=1, drift_turns=2,
             drift_new_tokens=8)
COUNTS = dict(n_personas=12, n_identity_questions=5, n_plain=15, n_default_samples=3, n_jailbreaks=60, n_mc=120, n_nll=40, n_neutral=16,
              neutral_tokens=96, max_new_tokens=64)
BAND = re.compile(r"auto|\s*\d+\s*-\s*\d+\s*|\s*\d+\s*(,\s*\d+\s*)*|")
HELP = {"n_plain": "identity questions without persona (steering)",
        "n_default_samples": "samples per identity question under the default system prompt (caps)"}


def add_cap_args(ap) -> None:
    ap.add_argument("--axis", required=True, help="a saved axis directory (steerlens axis)")
    ap.add_argument("--sae", default=None, help="SAE for the SAE-basis cap (default: the axis's own)")
    ap.add_argument("--no-sae", action="store_true", help="skip SAE-basis capping")
    ap.add_argument("--sae-bands", nargs="*", default=["auto"],
                    help="bands for SAE-basis caps through the axis's band SAEs (steerlens axis --band-sae); "
                         "'auto' = the layers that have one, none = only the single SAE")
    ap.add_argument("--bands", nargs="+", default=["auto"], help="'auto', 'START-END' or 'L1,L2'; several = sweep")
    ap.add_argument("--percentiles", nargs="+", type=float, default=[75.0], help="several = sweep")
    ap.add_argument("--mode", default="floor", choices=["floor", "ceiling"], help="cap from below or above")
    ap.add_argument("--windows", nargs="+", type=int, default=[0],
                    help="0 = each token's projection (the paper); W = mean over the last W tokens; several = sweep")
    ap.add_argument("--gains", nargs="+", type=float, default=[1.0],
                    help="push = gain x shortfall below tau (1 = the paper); several = sweep")
    ap.add_argument("--calibrations", nargs="+", default=["rollout"], choices=CALIBRATIONS,
                    help="tau from per-rollout means (the paper) or per-token projections; several = sweep")
    ap.add_argument("--triggers", nargs="+", type=trigger, default=[None], metavar="P|none",
                    help="conditional caps: engage below the P-th percentile, release at tau; 'none' = always on")


def trigger(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def add_arguments(ap) -> None:
    add_model_args(ap)
    add_cap_args(ap)
    ap.add_argument("--out", default="runs/cap/latest")
    for name, default in COUNTS.items():
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=default, help=HELP.get(name))
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
    ap.add_argument("--parts", nargs="+", default=list(DEFAULT_PARTS), choices=PARTS,
                    help="what to run (default: %(default)s); results of other parts already in --out are kept; "
                         "engagement: where the first raw cap's switch engages on unsteered chats, window over all "
                         "text vs over the assistant's turns (axis.engagement)")
    ap.add_argument("--engagement-triggers", nargs="+", type=float, default=[10, 25, 50, 60, 67, 75],
                    help="trigger percentiles the engagement part replays")
    ap.add_argument("--split", default="all", choices=SPLITS,
                    help="dev = first half of the personas and jailbreaks and even prompts of the ordinary-answer "
                         "bank (tune here), test = the other halves")
    ap.add_argument("--configs", nargs="+", type=json.loads, default=[], metavar="JSON",
                    help="explicit cap configs (axis.capping.CapConfig fields), e.g. "
                         "'{\"layers\": [15], \"percentile\": 90, \"window\": 256, \"gain\": 4, \"trigger\": 75}'")
    ap.add_argument("--ship", default=None, metavar="AXIS_DIR",
                    help="tune: sweep on the dev split, choose (axis.cap_recipe), check on test, write AXIS_DIR/cap.json")
    ap.add_argument("--small", action="store_true", help="tiny settings for a smoke test")
    add_wandb_args(ap)


def check(args, ap) -> None:
    """--small fills in tiny settings where no flag was given; windows/gains and percentiles are checked
    with the rule CapConfig applies, before the model loads."""
    from steering.projection import check_window

    if args.small:
        for k, v in SMALL.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    for b in args.bands:  # the spelling only (axis.capping.parse_band's); the layer range needs the model
        if not BAND.fullmatch(b):
            raise UsageError(f"--bands: Band {b!r}: write 'START-END' (inclusive), 'L1,L2,...' or 'auto'.")
    for p in args.percentiles:
        if not 0 <= p <= 100:
            raise UsageError(f"--percentiles: {p:g} is outside 0-100.")
    for t in args.triggers:
        if t is not None and not 0 <= t <= 100:
            raise UsageError(f"--triggers: {t:g} is outside 0-100 (or write 'none').")
    try:
        for w in args.windows:
            for g in args.gains:
                check_window(w, g)
    except ValueError as e:
        raise UsageError(f"--windows/--gains: {e}") from e


def settings(args):
    """(CapSweep, CapEvalConfig) from the flags."""
    from axis.cap_sweep import CapSweep
    from axis.evaluate import CapEvalConfig
    from lm.generate import GenerationConfig

    sweep = CapSweep(bands=args.bands, percentiles=args.percentiles, mode=args.mode, windows=args.windows,
                     gains=args.gains, calibrations=args.calibrations, triggers=args.triggers,
                     sae_basis=not args.no_sae, sae_bands=args.sae_bands, sae=args.sae,
                     configs=args.configs)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           seed=args.seed, batch_size=args.batch_size)
    cfg = CapEvalConfig(
        n_personas=args.n_personas, n_identity_questions=args.n_identity_questions, n_plain=args.n_plain,
        n_default_samples=args.n_default_samples,
        n_jailbreaks=args.n_jailbreaks, n_mc=args.n_mc, n_nll=args.n_nll, n_neutral=args.n_neutral,
        neutral_tokens=args.neutral_tokens, generation=gen, steer_layer=args.steer_layer, strengths=args.strengths,
        n_steer_personas=args.n_steer_personas, drift_per_domain=args.drift_per_domain,
        drift_turns=args.drift_turns, drift_new_tokens=args.drift_new_tokens, drift_layer=args.drift_layer,
        engagement_triggers=args.engagement_triggers, parts=args.parts, split=args.split, wandb=not args.no_wandb,
        wandb_project=args.wandb_project,
        run_name=f"cap-{Path(args.axis).name}-{'+'.join(args.parts)}")
    return sweep, cfg


def run(args) -> dict:
    from axis.artifact import AssistantAxis
    from axis.cap_sweep import cap_conditions
    from axis.evaluate import cap_summary, evaluate_caps
    from lm.model import load_model

    sweep, cfg = settings(args)
    model = load_model(args.model, device=args.device)
    axis = AssistantAxis.load(args.axis, model)
    if args.ship:
        import sys

        from axis.cap_recipe import tune_and_ship

        ev = tune_and_ship(model, axis, args.ship, cap_conditions(axis, sweep), cfg, args.out,
                           command="steerlens " + " ".join(sys.argv[1:]))
        print(json.dumps({"out": str(args.out), "shipped": str(Path(args.ship) / "cap.json"), "chosen": ev["chosen"],
                          "test": ev["test"]}))
        return ev
    result = evaluate_caps(model, axis, cap_conditions(axis, sweep), cfg, args.out,
                           extra={"axis": str(args.axis), "model": args.model})
    print(json.dumps({"out": str(args.out), "parts": args.parts, **cap_summary(result)}))
    return result
