"""The cap conditions of a capping sweep: uncapped, then every band x percentile x window shape.

Raw-basis caps sweep `bands`; SAE-basis caps run at the axis's own SAE and, through the band SAEs
(`scripts/compute_axis.py --band-sae`), on each of `sae_bands`. Each cap is a
`steering.experiment.Condition` carrying its `CapConfig` (as a dict), so `axis.evaluate` runs it
through the same sweep loop as the steering comparisons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from steering.experiment import Condition

from axis.artifact import AssistantAxis
from axis.capping import CapConfig, capping, parse_band


@dataclass
class CapSweep:
    bands: list[str] = field(default_factory=lambda: ["auto"])  # 'auto', 'START-END' or 'L1,L2'
    percentiles: list[float] = field(default_factory=lambda: [75.0])
    mode: str = "floor"
    windows: list[int] = field(default_factory=lambda: [0])  # 0: each token's projection (the paper)
    gains: list[float] = field(default_factory=lambda: [1.0])  # push = gain x shortfall below tau
    calibrations: list[str] = field(default_factory=lambda: ["rollout"])  # "rollout" (the paper) | "token"
    triggers: list[float | None] = field(default_factory=lambda: [None])  # None: always on; P: conditional below pP
    sae_basis: bool = True  # also cap in the SAE basis (when the axis has one)
    sae_bands: list[str] = field(default_factory=lambda: ["auto"])  # 'auto': every layer with a band SAE
    sae: str | None = None  # SAE for the single SAE-basis cap (None: the axis's own)
    configs: list[dict] = field(default_factory=list)  # explicit CapConfig records, run after the product

    def to_dict(self) -> dict:
        return asdict(self)


def band_name(layers: list[int]) -> str:
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    return f"L{layers[0]}-{layers[-1]}" if contiguous and len(layers) > 1 else "L" + ",".join(map(str, layers))


def sae_bands(axis: AssistantAxis, sweep: CapSweep) -> list[list[int]]:
    """SAE-basis cap bands: 'auto' is every layer with a band SAE, as one band."""
    if not sweep.sae_basis:
        return []
    have = [fa.layer for fa in axis.feature_band]
    bands = []
    for b in sweep.sae_bands:
        if b == "auto":
            bands += [have] if have else []
        else:
            layers = parse_band(b, axis.n_layers)
            for l in layers:
                axis.feature_at(l)  # fails early, naming the missing SAE
            bands.append(layers)
    return bands


def condition_name(kind: str, where: str, p: float, window: int, gain: float, calibration: str,
                   trigger: float | None) -> str:
    """e.g. 'raw L21-26 p75', 'sae blocks.24.hook_resid_post p50 w16 g2 token if<p10'."""
    return (f"{kind} {where} p{p:g}" + (f" w{window}" if window else "") + (f" g{gain:g}" if gain != 1 else "")
            + (" token" if calibration == "token" else "") + (f" if<p{trigger:g}" if trigger is not None else ""))


def cap_condition(axis: AssistantAxis, name: str, cc: CapConfig, sae=None) -> Condition:
    steering, _ = capping(axis, cc, sae)
    return Condition(name, steering, f"{cc.basis}_cap", cc.percentile, cc.to_dict())


def cap_conditions(axis: AssistantAxis, sweep: CapSweep) -> list[Condition]:
    """Condition('uncapped'), then raw caps per band, the single SAE cap, SAE caps per band SAE band."""
    if sweep.sae_basis and axis.feature is None:
        print("note: this axis has no SAE-basis axis (compute_axis.py --sae); skipping SAE-basis capping")
    shapes = [(w, g, c, t) for w in sweep.windows for g in sweep.gains for c in sweep.calibrations
              for t in sweep.triggers]

    def named(kind: str, where: str, layers: list[int], p: float) -> list[Condition]:
        return [cap_condition(axis, condition_name(kind, where, p, w, g, c, t),
                              CapConfig(layers, p, sweep.mode, kind, w, g, c, t), sweep.sae)
                for w, g, c, t in shapes if t is None or (t < p if sweep.mode == "floor" else t > p)]
    conds = [Condition("uncapped")]
    for b in [parse_band(b, axis.n_layers) for b in sweep.bands]:
        conds += [c for p in sweep.percentiles for c in named("raw", band_name(b), b, p)]
    if sweep.sae_basis and axis.feature is not None:
        conds += [c for p in sweep.percentiles for c in named("sae", axis.feature.hook_name, [], p)]
    for b in sae_bands(axis, sweep):
        conds += [c for p in sweep.percentiles for c in named("sae", band_name(b), b, p)]
    for rec in sweep.configs:
        cc = CapConfig(**rec)
        own = "auto" if cc.basis == "raw" else axis.feature.hook_name if axis.feature else "none"
        where = band_name(cc.layers) if cc.layers else own
        conds.append(cap_condition(axis, condition_name(cc.basis, where, cc.percentile, cc.window, cc.gain,
                                                        cc.calibration, cc.trigger), cc, sweep.sae))
    return conds
