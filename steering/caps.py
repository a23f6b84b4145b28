"""Caps: keep a projection at least (floor) or at most (ceiling) tau, moving only where it is not.

- `Cap`: h += v * relu(tau - <h, v>) on a unit residual direction (Lu et al. 2026, floor mode);
- `SAECap`: the same on <encode(h), a> for a unit SAE feature-space axis, the push decoded through
  W_dec so the SAE's error term stays untouched.

`window=0` measures each token's own projection (the paper); `window=W` measures the mean over the
last W tokens and moves every token by `gain` times its shortfall. Both measure through
`steering.projection.Projection`; `bind(model)` gives the hook, the projection and the push
direction, which `axis.capping.CapMonitor` uses to count where a cap fires.
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
from steering.window import empty_window, window_mean


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
        if self.window and self.positions != "all":
            raise ValueError(f"{what}: a windowed cap (window={self.window}) averages consecutive tokens, so it "
                             f"needs positions='all' (got {self.positions!r}).")

    def bind(self, model) -> tuple[str, Projection]:
        """(hook name, projection) on `model`, after checking that the cap fits it."""
        raise NotImplementedError

    def hooks(self, model):
        hook, proj = self.bind(model)
        device, dtype = model_place(model)
        mparams, mstatic = proj.parts(device, dtype)
        push = proj.residual_direction(device, dtype)
        amount = (1.0 if self.mode == "floor" else -1.0) * self.gain
        values = torch.tensor([self.tau, amount], dtype=torch.float32, device=push.device)
        init = (lambda b, dev, w=self.window: empty_window(b, w, dev)) if self.window else no_state
        kernel = Kernel(hook, cap_edit, (values, push, *mparams), (self.mode, self.window, *mstatic), init_state=init)
        return [(hook, edit_hook(kernel, self.positions, proj.d_in, type(self).__name__))]


def cap_edit(x, params, state, valid, mode, window, *measure):
    """The kernel of every cap: measure (per token or windowed), shortfall against tau, push.
    params = ([tau, signed gain], push direction, *the projection's tensors)."""
    values, push, *mparams = params
    p = per_token(x, tuple(mparams), measure)
    if window:
        mean, has, state = window_mean(p, valid, state, window)
        p = torch.where(has, mean.to(p.dtype), p)
    short = shortfall(p, values[0].to(p.dtype), mode)
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

    def __post_init__(self):
        self.direction = check_vector(self.direction, "Cap.direction", nonzero=True)
        self._settings("Cap")

    def bind(self, model):
        check_hook(model, self.hook, len(self.direction), "Cap")
        return self.hook, Projection(self.direction, window=self.window)

    def to_dict(self):
        return {"type": "Cap", "hook": self.hook, "direction": self.direction.tolist(), "tau": self.tau,
                "mode": self.mode, "positions": self.positions, "window": self.window, "gain": self.gain}


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
                "window": self.window, "gain": self.gain}
