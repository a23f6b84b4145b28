"""Activation capping along the Assistant Axis, and a count of how often the cap actually fires.

Lu et al. (2026) cap every token on a band of layers, h += v * relu(tau - <h, v>), with v the unit
axis and tau a percentile of per-rollout mean projections pooled over role and default rollouts;
their best setting is a floor at the 75th percentile along +axis, on layers at ~70-90% depth. The
interventions themselves are `steering.Cap` / `steering.SAECap`; this module picks band and tau.

`CapConfig.window`/`gain` are our extension (steering.window): measure the mean projection over
the last W tokens, the statistic tau is calibrated on, and push every token by gain x its shortfall.
window=0, gain=1 is the paper's cap.

A good cap is gentle: it should be inactive on most tokens of ordinary assistant answers. We count
that with a plain TransformerLens hook registered just before each cap at the same hook point
(hooks run in registration order), which sees the pre-cap projection and records where
<h, v> < tau; upstream caps are active meanwhile, so the count is the one of the capped model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Bool, Float

from lm.chat import render
from lm.harvest import forward_batch
from steering import Cap, SAECap, Steering
from steering.window import WindowMean, check_window, shortfall

from axis.artifact import AssistantAxis
from axis.compute import unit


def default_band(n_layers: int) -> list[int]:
    """Layers at 72-88% depth, the region of the paper's best bands (Qwen 46-53/64, Llama 56-71/80)."""
    lo, hi = round(0.72 * (n_layers - 1)), round(0.88 * (n_layers - 1))
    return list(range(lo, max(hi, lo) + 1))


def parse_band(text: str | None, n_layers: int) -> list[int]:
    """'auto' / None -> default_band; '21-26' -> inclusive range; '10,12,14' -> those layers."""
    if text in (None, "", "auto"):
        return default_band(n_layers)
    try:
        if "-" in text:
            a, b = (int(x) for x in text.split("-"))
            layers = list(range(a, b + 1))
        else:
            layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"Band {text!r}: write 'START-END' (inclusive), 'L1,L2,...' or 'auto'.") from None
    bad = [l for l in layers if not 0 <= l < n_layers]
    if not layers or bad:
        raise ValueError(f"Band {text!r}: layers must lie in 0..{n_layers - 1} (got {bad or 'none'}).")
    return layers


@dataclass
class CapConfig:
    layers: list[int] = field(default_factory=list)  # empty = default_band
    percentile: float = 75.0  # of pooled per-rollout projections along +axis
    mode: str = "floor"
    basis: str = "raw"  # "raw": steering.Cap per band layer | "sae": steering.SAECap at the axis's SAE
    # layer, or with `layers` set, at each of those layers through its band SAE
    window: int = 0  # 0: each token's projection (the paper); W: mean over the last W tokens (steering.window)
    gain: float = 1.0  # push = gain x shortfall below tau (1 = the paper's lift to tau)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CapSpec:
    """What one cap does, kept beside the intervention so the monitor can count its activity."""
    hook: str
    direction: Float[torch.Tensor, " d"]  # unit, in the basis the cap projects on
    tau: float
    mode: str
    sae: object | None = None  # set for SAE-basis caps: project encode(h) instead of h
    window: int = 0
    gain: float = 1.0


def check_percentile(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
        raise ValueError(f"percentile must be a number within 0-100, got {p!r}.")
    return float(p)


def cap_specs(axis: AssistantAxis, cfg: CapConfig, sae=None) -> list[CapSpec]:
    pct = check_percentile(cfg.percentile)
    w, g = check_window(cfg.window, cfg.gain)
    if cfg.mode not in ("floor", "ceiling"):
        raise ValueError(f"mode must be 'floor' or 'ceiling', got {cfg.mode!r}.")
    if cfg.basis == "raw":
        layers = axis.check_layers(cfg.layers or default_band(axis.n_layers))
        return [CapSpec(f"blocks.{l}.hook_resid_post", axis.unit(l), axis.tau(l, pct), cfg.mode, None, w, g)
                for l in layers]
    if cfg.basis == "sae":
        if cfg.layers:  # one SAE per band layer (AssistantAxis.feature_band)
            fas = [axis.feature_at(l) for l in axis.check_layers(cfg.layers)]
            return [CapSpec(fa.hook_name, unit(fa.feature_axis), fa.tau(pct), cfg.mode, fa.get_sae(), w, g)
                    for fa in fas]
        fa = axis.feature
        if fa is None:
            raise ValueError("This axis has no SAE-basis axis; compute it with scripts/compute_axis.py --sae DIR.")
        return [CapSpec(fa.hook_name, unit(fa.feature_axis), fa.tau(pct), cfg.mode, fa.get_sae(sae), w, g)]
    raise ValueError(f"basis must be 'raw' or 'sae', got {cfg.basis!r}.")


def intervention(specs: list[CapSpec]) -> Steering:
    caps = [SAECap(s.sae, s.direction, s.tau, s.mode, window=s.window, gain=s.gain) if s.sae is not None
            else Cap(s.hook, s.direction, s.tau, s.mode, window=s.window, gain=s.gain) for s in specs]
    return Steering(caps)


def capping(axis: AssistantAxis, cfg: CapConfig, sae=None) -> tuple[Steering, list[CapSpec]]:
    """The steering object for a cap config, and the specs the activity monitor needs."""
    specs = cap_specs(axis, cfg, sae)
    return intervention(specs), specs


class CapMonitor:
    """Per capped hook, which tokens of the last forward had their projection on the wrong side of tau."""

    def __init__(self, specs: list[CapSpec]):
        self.specs = specs
        self.active: dict[str, Bool[torch.Tensor, "b s"]] = {}

    def _hook(self, spec: CapSpec):
        measure = WindowMean(spec.window) if spec.window else None

        def count(x, hook):
            with torch.no_grad():
                if spec.sae is not None:
                    p = next(spec.sae.parameters())
                    proj = spec.sae.encode(x.to(p.dtype)) @ spec.direction.to(p.device, p.dtype)
                else:
                    proj = x @ spec.direction.to(x.device, x.dtype)
            self.active[spec.hook] = (shortfall(proj, spec.tau, spec.mode, measure) > 0).cpu()
            return x
        return count

    def hooks(self, model, steering: Steering) -> list:
        """Monitor hooks interleaved before the caps they watch (same hook point, registered first)."""
        mine = {s.hook: (s.hook, self._hook(s)) for s in self.specs}
        out = []
        for name, fn in steering.hooks(model):
            if name in mine:
                out.append(mine.pop(name))
            out.append((name, fn))
        if mine:
            raise ValueError(f"No cap at hook(s) {sorted(mine)} to monitor.")
        return out


def cap_activity(model, steering: Steering, specs: list[CapSpec], conversations: list[list[dict]],
                 batch_size: int = 8) -> dict:
    """Fraction of assistant-response tokens on which each cap fired, with all caps applied
    (teacher-forced on the given conversations, e.g. the capped model's own answers)."""
    mon = CapMonitor(specs)
    hooks = mon.hooks(model, steering)
    last = max(int(s.hook.split(".")[1]) for s in specs)
    tok = model.tokenizer
    fired = {s.hook: 0 for s in specs}
    total = anywhere = 0
    for b in range(0, len(conversations), batch_size):
        rs = [render(tok, c) for c in conversations[b:b + batch_size]]
        n = max(len(r.ids) for r in rs)
        ids = torch.full((len(rs), n), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rs), n), dtype=torch.bool)
        for i, r in enumerate(rs):
            ids[i, :len(r.ids)], mask[i, :len(r.ids)] = r.ids, r.response_mask
        with model.hooks(fwd_hooks=hooks):
            forward_batch(model, ids, [f"blocks.{last}.hook_resid_post"])
        total += int(mask.sum())
        any_hook = torch.zeros_like(mask)
        for h in fired:
            fired[h] += int((mon.active[h] & mask).sum())
            any_hook |= mon.active[h]
        anywhere += int((any_hook & mask).sum())
    per_hook = {h: c / max(total, 1) for h, c in fired.items()}
    return {"per_hook": per_hook, "mean": sum(per_hook.values()) / max(len(per_hook), 1),
            "any_hook": anywhere / max(total, 1), "n_tokens": total}
