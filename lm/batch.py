"""Stack token sequences of different lengths into one padded batch: the one padding helper.

Right padding suits teacher-forced scoring and harvesting (positions stay 0..n-1 for real tokens);
left padding suits KV-cached generation (every row's next token sits in the last column).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from jaxtyping import Bool, Int


class Padded(NamedTuple):
    ids: Int[torch.Tensor, "b s"]
    attention_mask: Int[torch.Tensor, "b s"]  # 1 on real tokens
    mask: Bool[torch.Tensor, "b s"] | None  # the per-token masks given (e.g. response masks), padded with False


def pad(seqs: Sequence[torch.Tensor], pad_id: int, side: str = "right",
        masks: Sequence[torch.Tensor] | None = None) -> Padded:
    """`seqs` (1-D token tensors or lists) as one [b, max_len] batch padded on `side` with `pad_id`."""
    if side not in ("right", "left"):
        raise ValueError(f"side={side!r}: pad on the 'right' (scoring, harvesting) or the 'left' (generation).")
    if not len(seqs):
        raise ValueError("pad() got no sequences.")
    if masks is not None and len(masks) != len(seqs):
        raise ValueError(f"pad(): {len(masks)} masks for {len(seqs)} sequences.")
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), int(pad_id), dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    out = torch.zeros((len(seqs), n), dtype=torch.bool) if masks is not None else None
    for i, s in enumerate(seqs):
        k = len(s)
        cols = slice(n - k, n) if side == "left" else slice(0, k)
        ids[i, cols] = torch.as_tensor(s, dtype=torch.long)
        att[i, cols] = 1
        if out is not None:
            m = torch.as_tensor(masks[i], dtype=torch.bool)
            out[i, cols.start:cols.start + len(m)] = m
    return Padded(ids, att, out)
