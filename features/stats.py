"""Statistics shared by concept search, the steering baselines and the Assistant Axis: the one AUROC
and the one difference of means."""

from __future__ import annotations

import torch
from jaxtyping import Float


def auroc(pos: Float[torch.Tensor, "p *l"], neg: Float[torch.Tensor, "n *l"], chunk: int = 2048) -> torch.Tensor:
    """P(score of a random positive > a random negative) + 0.5 P(equal): Mann-Whitney U / (p n)."""
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise ValueError("AUROC needs at least one positive and one negative score.")
    flat = pos.ndim == 1
    pos, neg = (pos[:, None], neg[:, None]) if flat else (pos, neg)
    out = []
    for a in range(0, pos.shape[1], chunk):
        p, n = pos[:, None, a:a + chunk].double(), neg[None, :, a:a + chunk].double()
        out.append(((p > n).double() + 0.5 * (p == n).double()).mean((0, 1)))
    res = torch.cat(out)
    return res[0] if flat else res


def mean_difference(pos: Float[torch.Tensor, "p d"], neg: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, " d"]:
    """Mean of the positive rows minus mean of the negative rows: a difference-of-means direction."""
    return pos.mean(0) - neg.mean(0)
