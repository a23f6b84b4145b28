"""Command-line flags that several scripts share (argparse lives only in scripts/)."""

from __future__ import annotations

from lm.generate import GenerationConfig
from steering.experiment import FAMILIES


def add_sweep_args(ap, strengths: str) -> None:
    """The flags scripts/clamp.py and scripts/compare.py share: sweep, generation, scoring."""
    ap.add_argument("--strengths", default=strengths, help="comma-separated multiples of the max activation")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--n-prompts", type=int, default=None, help="first N prompts only (default all)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neutral-texts", type=int, default=8)
    ap.add_argument("--neutral-max-tokens", type=int, default=96)


def sweep_settings(args) -> tuple[list[float], list[str], GenerationConfig]:
    """(strengths, families, generation config) from the flags of `add_sweep_args`."""
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                           batch_size=args.batch_size, repetition_penalty=args.repetition_penalty)
    return ([float(x) for x in args.strengths.split(",") if x.strip()],
            [f for f in args.families.split(",") if f], gen)
