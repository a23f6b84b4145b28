"""The Assistant Axis from per-rollout mean activations: pure tensor math, testable on synthetic data.

Per layer, axis = mean(default rollouts) - mean over roles of each role's mean (Lu et al. 2026):
every role weighs the same however many of its rollouts survive the adherence filter. The axis is
stored unnormalised and projected with its unit vector. PCA over the per-role means checks that
the axis is the main direction of persona space (the paper: cos(axis, PC1) > 0.6 at all layers).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from features.stats import auroc
from steering.projection import check_percentile

from axis.rollouts import DEFAULT


def unit(v: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "... d"]:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def cosine(a: Float[torch.Tensor, "... d"], b: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "..."]:
    return (unit(a) * unit(b)).sum(-1)


def role_means(acts: Float[torch.Tensor, "n layers d"], roles: list[str], keep: Bool[torch.Tensor, " n"] | None = None,
               drop_empty: bool = False) -> tuple[list[str], Float[torch.Tensor, "r layers d"], dict[str, int]]:
    """Mean of each role's kept rollouts (default excluded); a role left with none is an error."""
    if len(roles) != acts.shape[0]:
        raise ValueError(f"{len(roles)} role labels for {acts.shape[0]} rollouts.")
    keep = torch.ones(len(roles), dtype=torch.bool) if keep is None else keep
    names = [r for r in dict.fromkeys(roles) if r != DEFAULT]
    if not names:
        raise ValueError("Empty role bank: there are no role rollouts to contrast with the default Assistant.")
    counts = {n: 0 for n in names}
    for r, k in zip(roles, keep.tolist()):
        if k and r != DEFAULT:
            counts[r] += 1
    empty = [n for n, c in counts.items() if c == 0]
    if empty and not drop_empty:
        raise ValueError(f"Role(s) {empty} have no rollouts left after the adherence filter; inspect their "
                         "transcripts, or drop them (--drop-empty-roles / drop_empty=True).")
    names = [n for n in names if counts[n] > 0]
    if not names:
        raise ValueError("No role has any rollout left after the adherence filter.")
    idx = {n: i for i, n in enumerate(names)}
    sums = torch.zeros((len(names), *acts.shape[1:]), dtype=torch.float64)
    for i, (r, k) in enumerate(zip(roles, keep.tolist())):
        if k and r in idx:
            sums[idx[r]] += acts[i].double()
    means = sums / torch.tensor([counts[n] for n in names], dtype=torch.float64)[:, None, None]
    return names, means.float(), {n: counts[n] for n in names}


def default_mean(acts: Float[torch.Tensor, "n layers d"], roles: list[str]) -> Float[torch.Tensor, "layers d"]:
    is_def = torch.tensor([r == DEFAULT for r in roles])
    if not is_def.any():
        raise ValueError("No default-Assistant rollouts: the axis needs them (see axis/data/default_prompts.json).")
    return acts[is_def].double().mean(0).float()


def assistant_axis(default: Float[torch.Tensor, "layers d"], per_role: Float[torch.Tensor, "r layers d"]
                   ) -> Float[torch.Tensor, "layers d"]:
    return default - per_role.mean(0)


def pca(per_role: Float[torch.Tensor, "r layers d"], axis: Float[torch.Tensor, "layers d"],
        default: Float[torch.Tensor, "layers d"], k: int = 10) -> dict:
    """Per layer PCA of role means: variance explained, PC1 (signed toward the axis), cos(axis, PC1),
    and where the default Assistant falls on PC1 among the roles."""
    if per_role.shape[0] < 2:
        raise ValueError("PCA over role means needs at least 2 roles.")
    center = per_role.mean(0)
    x = (per_role - center).transpose(0, 1).double()  # [layers, r, d]
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    var = s ** 2
    ratio = var / var.sum(-1, keepdim=True).clamp_min(1e-30)
    pc1 = vh[:, 0].float()
    sign = torch.sign(cosine(axis, pc1))
    pc1 = pc1 * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    role_pc1 = torch.einsum("rld,ld->rl", per_role - center, pc1)
    default_pc1 = ((default - center) * pc1).sum(-1)
    cum = ratio.cumsum(-1)
    return {
        "pc1": pc1,
        "explained": ratio[:, :k].float(),
        "n_pcs_70": ((cum < 0.7).sum(-1) + 1).tolist(),
        "cos_axis_pc1": cosine(axis, pc1),
        "default_pc1": default_pc1,
        "role_pc1": role_pc1,
        "default_pc1_fraction_above_roles": (role_pc1 < default_pc1).float().mean(0),
        "default_pc1_z": (default_pc1 - role_pc1.mean(0)) / role_pc1.std(0).clamp_min(1e-12),
    }


def layer_projections(acts: Float[torch.Tensor, "... layers d"], axis: Float[torch.Tensor, "layers d"]
                      ) -> Float[torch.Tensor, "... layers"]:
    """Projection of every layer's activation on that layer's unit axis (for one layer and
    other bases, see `axis.project`)."""
    return (acts * unit(axis)).sum(-1)


def _layer_auroc(d: Float[torch.Tensor, "p layers"], r: Float[torch.Tensor, "q layers"]
                 ) -> Float[torch.Tensor, " layers"]:
    """P(a default rollout projects above a role rollout) per layer, ties half; NaN without both kinds."""
    if len(d) == 0 or len(r) == 0:
        return torch.full((d.shape[1],), float("nan"))
    return auroc(d, r).float()


def separation(proj: Float[torch.Tensor, "n layers"], is_default: Bool[torch.Tensor, " n"]) -> dict:
    """How well each layer's projection separates default from role rollouts: d' and AUROC."""
    d, r = proj[is_default], proj[~is_default]
    pooled = ((d.var(0, unbiased=False) + r.var(0, unbiased=False)) / 2).sqrt().clamp_min(1e-12)
    return {
        "default_mean": d.mean(0), "default_std": d.std(0, unbiased=False),
        "role_mean": r.mean(0), "role_std": r.std(0, unbiased=False),
        "d_prime": (d.mean(0) - r.mean(0)) / pooled,
        "auroc": _layer_auroc(d, r),
    }


def pick_monitor_layer(d_prime: Float[torch.Tensor, " layers"]) -> int:
    """The layer whose axis best separates default from role rollouts (largest d'), skipping the
    embedding-adjacent first and the unembedding-shaped last block (`axis.drift.monitor_layer`
    reads the stored choice back)."""
    n = len(d_prime)
    inner = d_prime[1:n - 1] if n > 2 else d_prime
    return int(inner.nan_to_num(float("-inf")).argmax()) + (1 if n > 2 else 0)


# ----- cap thresholds from a quantile grid (axis.calibration) -----

GRID = torch.linspace(0, 1, 101, dtype=torch.float64)
CALIBRATIONS = ("rollout", "token")


def check_calibration(calibration: str) -> str:
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration={calibration!r}: use 'rollout' (percentiles of per-rollout means, the paper) "
                         "or 'token' (of per-token projections, what a per-token cap compares).")
    return calibration


def from_grid(grid: Float[torch.Tensor, " 101"], percentile: float) -> float:
    """The percentile read off a 0..100 quantile grid (linear between whole percentiles)."""
    pct = check_percentile(percentile)
    lo = min(int(pct), 99)
    w = pct - lo
    return float(grid[lo] * (1 - w) + grid[lo + 1] * w)
