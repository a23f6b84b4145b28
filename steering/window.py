"""A cap's measured projection: each token's own, or the mean over the last W tokens.

Lu et al. calibrate tau on per-rollout *mean* projections but compare it with each token's. A
token's projection spreads several times wider than a rollout mean, so a per-token floor fires on
ordinary assistant tokens too (12-26% of them on SmolLM2 at p75). A windowed cap compares like with
like: the mean projection over the last W tokens (left padding and each row's first token, the
attention sink, excluded), and pushes every token by `gain` times that mean's shortfall below tau.

Under KV-cached generation each forward sees only the new tokens, so the last W projections of
each row are kept in the generation's `DecodeState` (one per batch, so nothing leaks between
batches or calls); `lm.generate` publishes each row's first real position there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from lm.generate import decode_state


def check_window(window, gain) -> tuple[int, float]:
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window={window!r}: use 0 (each token's own projection) or a positive number of tokens.")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain={gain!r}: use a finite positive number (1 lifts the projection exactly to tau).")
    return window, float(gain)


class WindowMean:
    """Callable `proj [b, s] -> (mean over the last W valid tokens [b, s], has_any [b, s])`."""

    def __init__(self, window: int):
        self.window = window

    def __call__(self, p: Float[torch.Tensor, "b s"]) -> tuple[Float[torch.Tensor, "b s"], Bool[torch.Tensor, "b s"]]:
        st = decode_state()
        b, s = p.shape
        w = self.window
        start = st.offset if st is not None else 0
        first = st.extra.get("first_token") if st is not None else None
        pos = torch.arange(start, start + s, device=p.device)
        first = torch.zeros(b, dtype=torch.long, device=p.device) if first is None else first.to(p.device)
        valid = pos[None, :] > first[:, None]  # drop left padding and the attention sink
        hist = st.extra.get(self) if st is not None and start > 0 else None
        hp, hv = hist if hist is not None else (p.new_zeros(b, w, dtype=torch.float32), valid.new_zeros(b, w))
        vals = torch.cat([hp, torch.where(valid, p.float(), 0.0)], dim=1)
        keep = torch.cat([hv, valid], dim=1)
        cs = F.pad(vals.cumsum(1), (1, 0))
        cn = F.pad(keep.float().cumsum(1), (1, 0))
        end = torch.arange(w + 1, w + s + 1, device=p.device)  # window of token j: combined (j, j + w]
        sums, counts = cs[:, end] - cs[:, end - w], cn[:, end] - cn[:, end - w]
        if st is not None:
            st.extra[self] = (vals[:, -w:], keep[:, -w:])
        return sums / counts.clamp(min=1), counts > 0


def shortfall(p: Float[torch.Tensor, "b s"], tau: float, mode: str, measure: WindowMean | None = None
              ) -> Float[torch.Tensor, "b s"]:
    """How far the measured projection lies on the wrong side of tau (0 where it does not)."""
    if measure is not None:
        mean, has = measure(p)
        p = torch.where(has, mean.to(p.dtype), p)
    return F.relu(tau - p) if mode == "floor" else F.relu(p - tau)
