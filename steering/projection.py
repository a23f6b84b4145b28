"""The one projection that caps and cap monitors measure, and the one place their settings are checked.

A cap keeps a projection at least (floor) or at most (ceiling) tau. What it projects is either the
residual on a unit direction, <h, v>, or the SAE feature activations on a unit feature-space axis,
<encode(h), a>; measured per token (Lu et al.) or as the mean over the last W tokens
(`steering.window`). `Projection` is that choice as a value: `steering.Cap`, `steering.SAECap` and
`axis.capping.CapMonitor` all measure through `Projection.measurer`, so what the monitor counts is
exactly what the cap acts on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float

from saes.access import decoder_rows, encoder_data, read_sae
from steering.window import WindowMean

MODES = ("floor", "ceiling")


def check_mode(mode, what: str = "cap") -> str:
    if mode not in MODES:
        raise ValueError(f"{what}: mode={mode!r}, use 'floor' (raise projections below tau) or 'ceiling'.")
    return mode


def check_percentile(p, what: str = "percentile") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
        raise ValueError(f"{what} must be a number within 0-100, got {p!r}.")
    return float(p)


def check_window(window, gain) -> tuple[int, float]:
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window={window!r}: use 0 (each token's own projection) or a positive number of tokens.")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain={gain!r}: use a finite positive number (1 lifts the projection exactly to tau).")
    return window, float(gain)


def shortfall(measured: Float[torch.Tensor, "b s"], tau: float, mode: str) -> Float[torch.Tensor, "b s"]:
    """How far the measured projection lies on the wrong side of tau (0 where it does not)."""
    return F.relu(tau - measured) if mode == "floor" else F.relu(measured - tau)


@dataclass(eq=False)
class Projection:
    """<h, v> for a unit residual direction (sae=None), or <encode(h), a> for a unit feature-space
    axis of `sae`; per token (window=0) or the mean over each row's last `window` tokens."""

    direction: Float[torch.Tensor, " d"]  # normalised here
    sae: object | None = None  # a loaded SAE, already on the model's device
    window: int = 0

    def __post_init__(self):
        self.direction = F.normalize(self.direction.detach().float(), dim=0)
        if self.sae is not None and len(self.direction) != self.sae.cfg.d_sae:
            raise ValueError(f"A feature-space axis of size {len(self.direction)} for an SAE with "
                             f"{self.sae.cfg.d_sae} features.")

    @property
    def d_in(self) -> int:
        """Width of the activations measured: the direction's, or the SAE's input."""
        return int(self.sae.cfg.d_in) if self.sae is not None else len(self.direction)

    def parts(self, device: torch.device, dtype: torch.dtype) -> tuple[tuple[torch.Tensor, ...], tuple]:
        """What `per_token` reads, as (tensors, static settings): the data form a compiled step traces."""
        if self.sae is None:
            return (self.direction.to(device, dtype),), ("raw",)
        enc, source = encoder_data(self.sae)
        return (*enc, self.direction.to(self.sae.W_dec.device, self.sae.W_dec.dtype)), source

    def measurer(self, device: torch.device, dtype: torch.dtype
                 ) -> Callable[[Float[torch.Tensor, "b s d"]], Float[torch.Tensor, "b s"]]:
        """A function h -> measured projection; each call gives one with its own window history."""
        window = WindowMean(self.window) if self.window else None
        params, static = self.parts(device, dtype)
        if window is None:
            return lambda x: per_token(x, params, static)  # noqa: E731

        def measure(x):
            p = per_token(x, params, static)
            mean, has = window(p)
            return torch.where(has, mean.to(p.dtype), p)
        return measure

    def residual_direction(self, device: torch.device, dtype: torch.dtype) -> Float[torch.Tensor, " d_model"]:
        """What one unit of the projection adds to the residual: v, or the axis decoded through W_dec."""
        if self.sae is None:
            return self.direction.to(device, dtype)
        rows = decoder_rows(self.sae)
        return self.direction.to(rows.device, rows.dtype) @ rows


def per_token(x: Float[torch.Tensor, "b s d"], params: tuple[torch.Tensor, ...], static: tuple) -> Float[torch.Tensor, "b s"]:
    """Each token's projection from `Projection.parts`: <h, v>, or <encode(h), a> through `read_sae`."""
    if static[0] == "raw":
        return x @ params[0]
    a = params[-1]
    return read_sae(x.to(a.dtype), params[:-1], static, axis=a)[2]
