"""Activation capping along the Assistant Axis, and a count of how often the cap actually fires.

Lu et al. (2026) cap every token on a band of layers, h += v * relu(tau - <h, v>), with v the unit
axis and tau a percentile of per-rollout mean projections pooled over role and default rollouts;
their best setting is a floor at the 75th percentile along +axis, on layers at ~70-90% depth. The
interventions themselves are `steering.Cap` / `steering.SAECap`; this module picks band and tau.

`CapConfig.window`/`gain` are our extension (steering.window): measure the mean projection over
the last W tokens, the statistic tau is calibrated on, and push every token by gain x its shortfall.
window=0, gain=1 is the paper's cap. `calibration="token"` takes tau from per-token projections
(axis.calibration), what a per-token cap compares; `trigger` (a lower percentile) makes the cap
conditional: it engages once the measure falls below the trigger and releases back at tau.

A good cap is gentle: it should be inactive on most tokens of ordinary assistant answers. We count
that with a plain TransformerLens hook registered just before each cap at the same hook point
(hooks run in registration order), which sees the pre-cap projection and records where
<h, v> < tau; upstream caps are active meanwhile, so the count is the one of the capped model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Bool

from lm.batch import pad
from lm.chat import render
from lm.harvest import forward_batch
from steering import Cap, SAECap, Steering
from steering.caps import cap_shortfall
from steering.projection import check_mode, check_percentile, check_window
from steering.window import carry, text_tokens

from axis.artifact import AssistantAxis
from axis.compute import check_calibration, unit


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
    calibration: str = "rollout"  # tau from per-rollout means (the paper) or per-token projections (axis.calibration)
    trigger: float | None = None  # conditional cap: engage below this percentile, release back at tau

    def to_dict(self) -> dict:
        return asdict(self)


def cap_interventions(axis: AssistantAxis, cfg: CapConfig, sae=None) -> list[Cap | SAECap]:
    """One cap per band layer (raw basis, or SAE basis through each layer's band SAE), or one SAE-basis
    cap at the axis's own SAE; tau is the config's percentile of the stored rollout projections."""
    pct = check_percentile(cfg.percentile)
    trig = None if cfg.trigger is None else check_percentile(cfg.trigger, "trigger")
    if trig is not None and (trig > pct if cfg.mode == "floor" else trig < pct):
        raise ValueError(f"trigger percentile {trig:g} must lie {'below' if cfg.mode == 'floor' else 'above'} "
                         f"the cap percentile {pct:g}: the cap engages past the trigger and releases at tau.")
    w, g = check_window(cfg.window, cfg.gain)
    check_mode(cfg.mode)
    cal = check_calibration(cfg.calibration)
    if cfg.basis == "raw":
        layers = axis.check_layers(cfg.layers or default_band(axis.n_layers))
        return [Cap(f"blocks.{l}.hook_resid_post", axis.unit(l), axis.tau(l, pct, cal), cfg.mode, window=w, gain=g,
                    trigger=None if trig is None else axis.tau(l, trig, cal)) for l in layers]
    if cfg.basis == "sae":
        if cfg.layers:  # one SAE per band layer (AssistantAxis.feature_band)
            fas = [(axis.feature_at(l), None) for l in axis.check_layers(cfg.layers)]
        elif axis.feature is None:
            raise ValueError("This axis has no SAE-basis axis; compute it with scripts/compute_axis.py --sae DIR.")
        else:
            fas = [(axis.feature, sae)]
        return [SAECap(fa.get_sae(s), unit(fa.feature_axis), fa.tau(pct, cal), cfg.mode, hook=fa.hook_name, window=w,
                       gain=g, trigger=None if trig is None else fa.tau(trig, cal)) for fa, s in fas]
    raise ValueError(f"basis must be 'raw' or 'sae', got {cfg.basis!r}.")


def capping(axis: AssistantAxis, cfg: CapConfig, sae=None) -> tuple[Steering, list[Cap | SAECap]]:
    """The steering object for a cap config, and its caps (what the activity monitor watches)."""
    caps = cap_interventions(axis, cfg, sae)
    return Steering(caps), caps


class CapMonitor:
    """Per capped hook, which tokens of the last forward the cap pushed (shortfall > 0, and engaged
    for a conditional cap).

    It runs each cap's own rule (`steering.caps.cap_shortfall` on the cap's kernel) with a state of
    its own, so it counts exactly where the cap acts."""

    def __init__(self, caps: list[Cap | SAECap]):
        self.caps = caps
        self.active: dict[str, Bool[torch.Tensor, "b s"]] = {}
        self.watched: list[str] = []  # the hook points watched, set by hooks()

    def _hook(self, model, cap):
        k = cap.kernel(model)
        owner = object()  # the monitor's own window and switch history, apart from the cap's

        def count(x, hook):
            b, s = x.shape[:2]
            valid = text_tokens(b, s, x.device)
            with torch.no_grad():
                short = carry(owner, b, x.device, k.init_state,
                              lambda state: cap_shortfall(x, k.params, state, valid, *k.static))
            self.active[k.hook] = (short > 0).cpu()
            return x
        return k.hook, count

    def hooks(self, model, steering: Steering) -> list:
        """Monitor hooks interleaved before the caps they watch (same hook point, registered first)."""
        mine = dict(self._hook(model, c) for c in self.caps)
        self.watched = list(mine)
        if len(mine) != len(self.caps):
            raise ValueError("CapMonitor: two caps on one hook point; monitor them separately.")
        out = []
        for name, fn in steering.hooks(model):
            if name in mine:
                out.append((name, mine.pop(name)))
            out.append((name, fn))
        if mine:
            raise ValueError(f"No cap at hook(s) {sorted(mine)} to monitor.")
        return out


def cap_activity(model, steering: Steering, caps: list[Cap | SAECap], conversations: list[list[dict]],
                 batch_size: int = 8) -> dict:
    """Fraction of assistant-response tokens on which each cap fired, with all caps applied
    (teacher-forced on the given conversations, e.g. the capped model's own answers)."""
    mon = CapMonitor(caps)
    hooks = mon.hooks(model, steering)
    names = mon.watched
    last = max(int(h.split(".")[1]) for h in names)
    tok = model.tokenizer
    fired = {h: 0 for h in names}
    total = anywhere = 0
    for b in range(0, len(conversations), batch_size):
        rs = [render(tok, c) for c in conversations[b:b + batch_size]]
        ids, _, mask = pad([r.ids for r in rs], tok.pad_token_id, masks=[r.response_mask for r in rs])
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
