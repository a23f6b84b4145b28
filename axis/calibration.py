"""Per-token calibration: cap thresholds from the statistic a per-token cap actually compares.

Lu et al. take tau as a percentile of per-rollout *mean* projections, but a per-token cap compares
it with each token's projection, which spreads several times wider; at p75 such a floor fires on
12% of ordinary assistant tokens (41-55% in the SAE basis). Here the same percentiles are taken
over the projections of every response token of a calibration sample of the axis's own rollouts
(kept role and default rollouts pooled, as the paper pools per-rollout means), measured through
the cap's own `steering.projection.Projection`. The result is a grid of quantiles (0..100 in steps
of 1) per layer for the raw axis (`AssistantAxis.extra["token_quantiles"]`) and one per SAE-basis
axis (`FeatureAxis.token_quantiles`); `tau(..., calibration="token")` reads them
(`axis.compute.from_grid`).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool
from tqdm.auto import tqdm

from lm.batch import pad
from lm.harvest import forward_batch
from steering.intervention import model_place
from steering.projection import Projection

from axis.compute import GRID
from axis.rollouts import RolloutSpec, response_tokens


def calibration_sample(kept: Bool[torch.Tensor, " n"], n_max: int, seed: int = 0) -> list[int]:
    """Up to `n_max` kept rollouts, drawn without replacement (seeded), in index order."""
    idx = kept.nonzero().flatten()
    if len(idx) > n_max:
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(len(idx), generator=g)[:n_max]].sort().values
    return idx.tolist()


def token_quantiles(model, axis, specs: list[RolloutSpec], texts: dict[str, str],
                    n_max: int = 800, batch_size: int = 16, seed: int = 0, progress: bool = True) -> dict:
    """Quantile grids of per-token projections over the sample's response tokens: {"raw": [layers, 101],
    "features": [101] per SAE-basis axis (the feature axis first, then the band), "n_rollouts", "n_tokens"}."""
    device, dtype = model_place(model)
    rows = calibration_sample(axis.kept, n_max, seed)
    feats = axis.feature_axes
    measures = {f"blocks.{l}.hook_resid_post": [Projection(axis.axis[l]).measurer(device, dtype)]
                for l in range(axis.n_layers)}
    slot = []  # where each feature axis's measure sits in its hook's list
    for fa in feats:
        slot.append(len(measures[fa.hook_name]))
        measures[fa.hook_name].append(Projection(fa.feature_axis, sae=fa.get_sae()).measurer(device, dtype))
    tok = model.tokenizer
    seqs = [s for s in (response_tokens(tok, specs[i], texts[specs[i].id]) for i in rows) if s is not None]
    seqs.sort(key=lambda s: len(s[0]))
    values: dict[str, list[list[torch.Tensor]]] = {h: [[] for _ in m] for h, m in measures.items()}
    names = list(measures)
    with torch.no_grad():
        for b in tqdm(range(0, len(seqs), batch_size), desc="token calibration", disable=not progress, unit="batch"):
            ids, _, mask = pad([s[0] for s in seqs[b:b + batch_size]], tok.pad_token_id,
                               masks=[s[1] for s in seqs[b:b + batch_size]])
            acts = forward_batch(model, ids, names)
            for h, ms in measures.items():
                for j, measure in enumerate(ms):
                    values[h][j].append(measure(acts[h].to(device, dtype)).float().cpu()[mask])
    grids = {h: [torch.quantile(torch.cat(v).double(), GRID) for v in vs] for h, vs in values.items()}
    out = {"raw": torch.stack([grids[h][0] for h in names]).float(),
           "n_rollouts": len(seqs), "n_tokens": int(sum(len(v) for v in values[names[0]][0]))}
    out["features"] = [grids[fa.hook_name][j].float() for fa, j in zip(feats, slot)]
    return out


def calibrate(model, axis, specs: list[RolloutSpec], texts: dict[str, str], **kw) -> dict:
    """Fill the axis's per-token quantile grids (raw and every SAE basis) in place; returns the counts."""
    q = token_quantiles(model, axis, specs, texts, **kw)
    axis.extra["token_quantiles"] = q["raw"]
    for fa, grid in zip(axis.feature_axes, q["features"]):
        fa.token_quantiles = grid
    return {"n_rollouts": q["n_rollouts"], "n_tokens": q["n_tokens"]}
