"""Caps: keep a projection at least (floor) or at most (ceiling) tau, moving only where it is not.

- `Cap`: h += v * relu(tau - <h, v>) on a unit residual direction (Lu et al. 2026, floor mode);
- `SAECap`: the same on <encode(h), a> for a unit SAE feature-space axis, the push decoded through
  W_dec so the SAE's error term stays untouched.

`window=0` measures each token's own projection (the paper); `window=W` measures the mean over the
last W tokens and moves every token by `gain` times its shortfall. `trigger=T` makes the cap
conditional (ours): it stays off until the measure crosses T (below it, for a floor), then pulls
toward tau until the measure is back at tau (hysteresis, per row, `steering.window.hysteresis`), so
it leaves ordinary Assistant text alone and acts only once the persona has drifted. All measure
through `steering.projection.Projection`; `cap_shortfall` is the one rule of where and how much a
cap pushes, run by the cap's kernel and by `axis.capping.CapMonitor`, which counts where it fires.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float

from lm.kernel import Kernel, no_state
from steering.intervention import Intervention, check_finite, check_hook, check_vector, model_place
from steering.positions import Positions, check_positions, edit_hook
from steering.projection import Projection, check_mode, check_window, per_token, shortfall
from steering.sae_edits import prepare_sae, sae_field
from steering.window import empty_window, hysteresis, window_mean


class _CapBase(Intervention):
    """hooks() for every cap: measure, shortfall, push along the residual direction of one unit."""

    def _settings(self, what: str) -> None:
        self.tau = check_finite(self.tau, f"{what}.tau")
        self.mode = check_mode(self.mode, what)
        self.positions = check_positions(self.positions)
        try:
            self.window, self.gain = check_window(self.window, self.gain)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        if (self.window or self.trigger is not None) and self.positions != "all":
            raise ValueError(f"{what}: a windowed or conditional cap follows consecutive tokens, so it "
                             f"needs positions='all' (got {self.positions!r}).")
        if self.trigger is not None:
            self.trigger = check_finite(self.trigger, f"{what}.trigger")
            if (self.trigger > self.tau) if self.mode == "floor" else (self.trigger < self.tau):
                side = "at or below" if self.mode == "floor" else "at or above"
                raise ValueError(f"{what}: trigger={self.trigger:g} must lie {side} tau={self.tau:g} (the cap engages "
                                 "past the trigger and releases once the measure is back at tau).")

    def bind(self, model) -> tuple[str, Projection]:
        """(hook name, projection) on `model`, after checking that the cap fits it."""
        raise NotImplementedError

    def kernel(self, model) -> Kernel:
        """The cap as data: `cap_edit` with tau, gain, trigger, push direction and the projection's tensors."""
        return self._kernel(model, *self.bind(model))

    def _kernel(self, model, hook: str, proj: Projection) -> Kernel:
        device, dtype = model_place(model)
        mparams, mstatic = proj.parts(device, dtype)
        push = proj.residual_direction(device, dtype)
        amount = (1.0 if self.mode == "floor" else -1.0) * self.gain
        trigger = self.tau if self.trigger is None else self.trigger
        values = torch.tensor([self.tau, amount, trigger], dtype=torch.float32, device=push.device)
        cond = self.trigger is not None
        static = (self.mode, self.window, cond, *mstatic)
        stateful = self.window or cond
        init = (lambda b, dev, w=self.window, c=cond: cap_state(b, w, c, dev)) if stateful else no_state
        return Kernel(hook, cap_edit, (values, push, *mparams), static, init_state=init)

    def hooks(self, model):
        hook, proj = self.bind(model)
        return [(hook, edit_hook(self._kernel(model, hook, proj), self.positions, proj.d_in, type(self).__name__))]


def cap_state(batch: int, window: int, conditional: bool, device) -> tuple:
    """A windowed cap's last W projections, then a conditional cap's engaged flag per row."""
    win = empty_window(batch, window, device) if window else ()
    return (*win, *((torch.zeros(batch, dtype=torch.bool, device=device),) if conditional else ()))


def cap_shortfall(x, params, state, valid, mode, window, conditional, *measure):
    """Where and how far each token's measure lies past tau, 0 where the cap does not act; and the
    new state. Measure per token or windowed; a conditional cap acts only while engaged."""
    values, _, *mparams = params
    p = per_token(x, tuple(mparams), measure)
    if window:
        mean, has, win = window_mean(p, valid, state[:2], window)
        p = torch.where(has, mean.to(p.dtype), p)
        state = (*win, *state[2:])
    short = shortfall(p, values[0].to(p.dtype), mode)
    if conditional:
        v = valid if valid is not None else torch.ones_like(p, dtype=torch.bool)
        on, last = hysteresis(p, v, state[-1], values[2].to(p.dtype), values[0].to(p.dtype), mode)
        short = torch.where(on, short, torch.zeros_like(short))
        state = (*state[:-1], last)
    return short, state


def cap_edit(x, params, state, valid, *static):
    """The kernel of every cap: the shortfall (`cap_shortfall`) times the signed gain along the push.
    params = ([tau, signed gain, trigger], push direction, *the projection's tensors)."""
    short, state = cap_shortfall(x, params, state, valid, *static)
    values, push = params[0], params[1]
    return x + (values[1] * short.unsqueeze(-1) * push).to(x.dtype), state


@dataclass(eq=False)
class Cap(_CapBase):
    """Keep <h, v> on a unit residual direction v at least (floor) or at most (ceiling) tau."""

    hook: str
    direction: Float[torch.Tensor, " d"]
    tau: float
    mode: str = "floor"
    positions: Positions = "all"
    window: int = 0
    gain: float = 1.0
    trigger: float | None = None  # conditional: engage past this, release back at tau

    def __post_init__(self):
        self.direction = check_vector(self.direction, "Cap.direction", nonzero=True)
        self._settings("Cap")

    def bind(self, model):
        check_hook(model, self.hook, len(self.direction), "Cap")
        return self.hook, Projection(self.direction, window=self.window)

    def to_dict(self):
        return {"type": "Cap", "hook": self.hook, "direction": self.direction.tolist(), "tau": self.tau,
                "mode": self.mode, "positions": self.positions, "window": self.window, "gain": self.gain,
                "trigger": self.trigger}


@dataclass(eq=False)
class SAECap(_CapBase):
    """Cap the projection of SAE feature activations on a unit feature-space axis, keep the SAE error."""

    sae: object
    feature_axis: Float[torch.Tensor, " d_sae"]
    tau: float
    mode: str = "floor"
    positions: Positions = "all"
    hook: str | None = None
    window: int = 0  # as in Cap
    gain: float = 1.0
    trigger: float | None = None

    def __post_init__(self):
        self.feature_axis = check_vector(self.feature_axis, "SAECap.feature_axis", nonzero=True)
        self._settings("SAECap")

    def bind(self, model):
        sae, hook = prepare_sae(self.sae, model, self.hook, "SAECap")
        if len(self.feature_axis) != sae.cfg.d_sae:
            raise ValueError(f"SAECap: feature_axis has size {len(self.feature_axis)}, the SAE has "
                             f"{sae.cfg.d_sae} features.")
        return hook, Projection(self.feature_axis, sae=sae, window=self.window)

    def to_dict(self):
        return {"type": "SAECap", "sae": sae_field(self.sae), "feature_axis": self.feature_axis.tolist(),
                "tau": self.tau, "mode": self.mode, "positions": self.positions, "hook": self.hook,
                "window": self.window, "gain": self.gain, "trigger": self.trigger}
