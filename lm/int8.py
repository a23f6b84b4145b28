"""Weight-only int8 matrices for the compiled decode step: an option that reads 1/4 of the bytes.

At batch 1 decoding streams every weight once per token, so it is bound by memory bandwidth; int8
weights with a float scale per output row cut that stream four-fold. `linear` computes few rows as
one reduction that dequantises on the fly (compiled by inductor into a single pass over the int8
bytes) and more rows through a dequantised matmul. Never the default: logits move (see
`lm.agreement` and scripts/bench_decode.py for how far).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int


@dataclass
class Int8:
    """A weight-only int8 matrix: per output row a float scale, w ~ q * scale (reads 1/4 of the bytes)."""
    q: Int[torch.Tensor, "out inp"]
    scale: Float[torch.Tensor, " out"]

    @classmethod
    def of(cls, w: Float[torch.Tensor, "out inp"]) -> "Int8":
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        return cls((w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale.to(w.dtype))


GEMV_ROWS = 8  # up to this many rows an int8 matmul is a fused dequantising reduction (memory bound)


def linear(x: Float[torch.Tensor, "... inp"], w, bias=None) -> Float[torch.Tensor, "... out"]:
    """x @ w.T for a float matrix or an `Int8` one: few rows as one reduction that dequantises on the fly
    (compiled, it streams the int8 bytes once), more rows through a dequantised matmul."""
    if not isinstance(w, Int8):
        return F.linear(x, w, bias)
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] <= GEMV_ROWS:
        y = (rows[:, None, :] * w.q.to(x.dtype)).sum(-1) * w.scale
    else:
        y = F.linear(rows, w.q.to(x.dtype) * w.scale[:, None])
    y = y.reshape(*x.shape[:-1], -1)
    return y if bias is None else y + bias
