"""The mean projection over each row's last W tokens, kept correct across KV-cached decoding steps.

Lu et al. calibrate tau on per-rollout *mean* projections but compare it with each token's. A
token's projection spreads several times wider than a rollout mean, so a per-token floor fires on
ordinary assistant tokens too (12-26% of them on SmolLM2 at p75). A windowed measure compares like
with like: the mean over the last W tokens, left padding and each row's first token (the attention
sink) excluded.

Under KV-cached generation each forward sees only the new tokens, so the last W projections of
each row are kept per generation batch: in `_HISTORY`, keyed by the batch's `DecodeState` (weakly,
so buffers vanish with the batch and nothing leaks between batches or calls) and by the
`WindowMean` instance (each cap and each monitor keeps its own).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from lm.generate import decode_state

_HISTORY: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


class WindowMean:
    """Callable `proj [b, s] -> (mean over the last W valid tokens [b, s], has_any [b, s])`."""

    def __init__(self, window: int):
        self.window = window

    def __call__(self, p: Float[torch.Tensor, "b s"]) -> tuple[Float[torch.Tensor, "b s"], Bool[torch.Tensor, "b s"]]:
        st = decode_state()
        b, s = p.shape
        w = self.window
        start = st.offset if st is not None else 0
        first = st.first_token if st is not None else None
        pos = torch.arange(start, start + s, device=p.device)
        first = torch.zeros(b, dtype=torch.long, device=p.device) if first is None else first.to(p.device)
        valid = pos[None, :] > first[:, None]  # drop left padding and the attention sink
        mine = _HISTORY.setdefault(st, {}) if st is not None else None
        hist = mine.get(self) if mine is not None and start > 0 else None
        hp, hv = hist if hist is not None else (p.new_zeros(b, w, dtype=torch.float32), valid.new_zeros(b, w))
        vals = torch.cat([hp, torch.where(valid, p.float(), 0.0)], dim=1)
        keep = torch.cat([hv, valid], dim=1)
        cs = F.pad(vals.cumsum(1), (1, 0))
        cn = F.pad(keep.float().cumsum(1), (1, 0))
        end = torch.arange(w + 1, w + s + 1, device=p.device)  # window of token j: combined (j, j + w]
        sums, counts = cs[:, end] - cs[:, end - w], cn[:, end] - cn[:, end - w]
        if mine is not None:
            mine[self] = (vals[:, -w:], keep[:, -w:])
        return sums / counts.clamp(min=1), counts > 0
