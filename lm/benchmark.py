"""Interleaved, paired timing for `scripts/bench_*.py`: ratios that hold still from run to run.

Why: on a shared 2-core machine the load drifts over seconds, so the best of 3 runs of each side,
taken in blocks, swung by more than the margins the benches are judged by (0.87-0.96 against a
0.97 target). Here every repeat calls each side once, in a rotating order (a b, b a, a b, ...;
a b c, b c a, c a b, ... for more sides) so no side always runs first; each ratio is taken within
one repeat, where both sides ran under the same load, and its median over the repeats is reported
with its spread. With `tol`, repeats go on until every median is known to about +-tol.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Sequence


def speed_ratios(times: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per-repeat speed of a side relative to the baseline, baseline_i / times_i (> 1: faster)."""
    if len(times) != len(baseline) or not times:
        raise ValueError(f"need paired, non-empty timings; got {len(times)} and {len(baseline)}")
    return [b / t for t, b in zip(times, baseline)]


def spread(values: Sequence[float], digits: int | None = 3) -> dict:
    """Median, min, max, interquartile range and count of `values`, and `se`: the median's standard
    error estimated from the IQR (sigma ~ IQR / 1.349, se ~ 1.2533 sigma / sqrt(n)), robust to the
    odd run that another process slowed down."""
    v = sorted(values)
    iqr = 0.0
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
        iqr = q3 - q1
    out = {"median": statistics.median(v), "min": v[0], "max": v[-1], "iqr": iqr,
           "se": 1.2533 * iqr / 1.349 / math.sqrt(len(v)), "n": len(v)}
    return {k: x if digits is None or k == "n" else round(x, digits) for k, x in out.items()}


def paired_ratio(times: Sequence[float], baseline: Sequence[float], digits: int | None = 3) -> dict:
    """`spread` of the per-repeat speed ratios of `times` over `baseline` (same repeats, same order)."""
    return spread(speed_ratios(times, baseline), digits)


def interleaved(
    sides: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    *,
    pairs: Sequence[tuple[str, str]] = (),
    tol: float = 0.0,
    min_repeats: int = 5,
    budget_s: float = math.inf,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each side: `warmup` untimed rounds, then up to `repeats` rounds of one call
    of every side in a rotating order. After `min_repeats` rounds it stops early once `budget_s`
    seconds of timed rounds are spent, or, with `tol` > 0, once every (side, baseline) in `pairs`
    has its median speed ratio known to `tol` (`se` of `paired_ratio`)."""
    if repeats < 1 or not sides:
        raise ValueError("interleaved needs at least one side and one repeat")
    unknown = {n for pair in pairs for n in pair} - set(sides)
    if unknown:
        raise KeyError(f"pairs name unknown sides {sorted(unknown)}; sides are {list(sides)}")
    names = list(sides)
    for _ in range(warmup):
        for n in names:
            sides[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = clock()
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t = clock()
            sides[n]()
            times[n].append(clock() - t)
        if r + 1 < min(min_repeats, repeats):
            continue
        if clock() - start >= budget_s:
            break
        if tol > 0 and pairs and all(paired_ratio(times[a], times[b], None)["se"] <= tol for a, b in pairs):
            break
    return times
