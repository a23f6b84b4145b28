"""Our SAE evaluation as a SAEBench "core" result, so SAEBench's tables and graphs read it.

The layout and field names are SAEBench's `CoreEvalOutput` (sae_bench/evals/core/eval_output.py):
`eval_type_id` "core", `eval_config` (CoreEvalConfig), `eval_id`, `datetime_epoch_millis`,
`eval_result_metrics` with the seven categories below, `eval_result_details` (one record per latent),
`eval_result_unstructured`, `sae_bench_commit_hash`, `sae_lens_id`, `sae_lens_release_id`,
`sae_lens_version` and `sae_cfg_dict`.

What we fill, from `saes.eval.evaluate_sae`: every metric of `model_behavior_preservation`,
`model_performance_preservation`, `shrinkage`, `sparsity`, `token_stats` and `misc_metrics`, and
`reconstruction_quality` except `explained_variance_legacy` (SAEBench's superseded per-batch formula).
Left null: that field, `sae_bench_commit_hash` (SAEBench did not run), `sae_lens_id` and
`sae_lens_release_id` unless the SAE came from SAELens's registry, any metric absent from the input
(an older metrics.json), and `consistent_activation_heuristic` unless rows were counted
(`EvalConfig(count_rows=True)`) or for a latent that never fired.

Where our measurement differs from SAEBench's: position 0 of each row (an attention sink) is left
out of every statistic and of the splice (`saes.eval`), `mse` is SAELens's per-token squared error
summed over dimensions, and `explained_variance` is SAELens's streaming 1 - E|x - x_hat|^2 / Var(x).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from importlib import metadata
from pathlib import Path

import torch
from jaxtyping import Float

from lm.io import write_json

EVAL_TYPE_ID = "core"
PRECISION = 5  # decimals of the per-latent details, as SAEBench rounds them
CATEGORIES = {  # SAEBench category -> {its field: our metrics key, or None where we have no counterpart}
    "model_behavior_preservation": {"kl_div_score": "kl_div_score", "kl_div_with_ablation": "kl_div_with_ablation",
                                    "kl_div_with_sae": "kl_div_with_sae"},
    "model_performance_preservation": {"ce_loss_score": "ce_loss_recovered", "ce_loss_with_ablation": "ce_loss_zero_ablation",
                                       "ce_loss_with_sae": "ce_loss_with_sae", "ce_loss_without_sae": "ce_loss_clean"},
    "reconstruction_quality": {"explained_variance": "explained_variance", "explained_variance_legacy": None,
                               "mse": "mse", "cossim": "cossim"},
    "shrinkage": {"l2_norm_in": "l2_norm_in", "l2_norm_out": "l2_norm_out", "l2_ratio": "l2_ratio",
                  "relative_reconstruction_bias": "relative_reconstruction_bias"},
    "sparsity": {"l0": "l0", "l1": "l1"},
    "token_stats": {"total_tokens_eval_reconstruction": "n_tokens", "total_tokens_eval_sparsity_variance": "n_tokens"},
}
MISC = ("freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent",
        "normalized_freq_over_10_percent", "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim", "frac_alive")


def _finite(v):
    """JSON has no NaN or infinity: an undefined metric is null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def max_cosine_sims(vectors: Float[torch.Tensor, "n d"], chunk: int = 1024) -> Float[torch.Tensor, " n"]:
    """Each row's largest cosine similarity with any other row, in chunks (no n x n matrix)."""
    unit = torch.nn.functional.normalize(vectors.detach().float(), dim=-1)
    best = torch.empty(unit.shape[0])
    for a in range(0, unit.shape[0], chunk):
        sims = unit[a:a + chunk] @ unit.T
        idx = torch.arange(sims.shape[0])
        sims[idx, idx + a] = float("-inf")
        best[a:a + chunk] = sims.max(dim=1).values.cpu()
    return best


def _weight_stats(sae) -> dict[str, torch.Tensor]:
    """SAEBench's weight-based per-latent metrics (get_featurewise_weight_based_metrics)."""
    W_enc, W_dec = sae.W_enc.detach().float().cpu(), sae.W_dec.detach().float().cpu()  # [d_in, d_sae], [d_sae, d_in]
    bias = getattr(sae, "b_mag", None) if sae.cfg.architecture() == "gated" else getattr(sae, "b_enc", None)
    return {"encoder_bias": bias.detach().float().cpu() if bias is not None else torch.zeros(W_dec.shape[0]),
            "encoder_norm": W_enc.norm(dim=0),
            "encoder_decoder_cosine_sim": torch.nn.functional.cosine_similarity(W_enc.T, W_dec, dim=-1),
            "max_encoder_cosine_sim": max_cosine_sims(W_enc.T), "max_decoder_cosine_sim": max_cosine_sims(W_dec)}


def _density_stats(metrics: dict) -> tuple[dict, torch.Tensor | None, torch.Tensor | None]:
    """SAEBench's misc density metrics, per-latent density and consistent-activation heuristic."""
    if "feature_density" not in metrics:  # an older metrics.json: only the dead fraction survives
        return ({"frac_alive": 1.0 - metrics["dead_fraction"]} if "dead_fraction" in metrics else {}), None, None
    d = torch.tensor(metrics["feature_density"], dtype=torch.float64)
    total = d.sum().item()
    misc = {"freq_over_1_percent": (d > 0.01).double().mean().item(), "freq_over_10_percent": (d > 0.1).double().mean().item(),
            "normalized_freq_over_1_percent": d[d > 0.01].sum().item() / total if total > 0 else 0.0,
            "normalized_freq_over_10_percent": d[d > 0.1].sum().item() / total if total > 0 else 0.0,
            "frac_alive": (d > 0).double().mean().item()}
    cah = None
    if "feature_rows" in metrics:
        rows = torch.tensor(metrics["feature_rows"], dtype=torch.float64)
        cah = torch.where(rows > 0, d * metrics["n_tokens"] / rows.clamp(min=1), torch.full_like(d, float("nan")))
    return misc, d, cah


def _details(weights: dict, density, cah) -> list[dict]:
    cols = {**weights, "feature_density": density, "consistent_activation_heuristic": cah}
    lists = {k: (v.tolist() if v is not None else None) for k, v in cols.items()}
    n = len(lists["encoder_norm"])
    return [{"index": i, **{k: (_finite(round(v[i], PRECISION)) if v is not None else None) for k, v in lists.items()}}
            for i in range(n)]


def _eval_config(metrics: dict, sae) -> dict:
    """SAEBench's CoreEvalConfig fields, as far as our evaluation has them."""
    ec = metrics.get("eval_config", {})
    batch, rows = ec.get("batch_size"), metrics.get("n_rows")
    n_batches = -(-rows // batch) if rows and batch else None
    return {"model_name": metrics.get("model") or sae.cfg.metadata.model_name or "", "llm_dtype": metrics.get("llm_dtype"),
            "batch_size_prompts": batch, "n_eval_reconstruction_batches": n_batches,
            "n_eval_sparsity_variance_batches": n_batches, "dataset": metrics.get("data"),
            "context_size": metrics.get("context_size"), "compute_kl": "kl_div_with_sae" in metrics,
            "compute_ce_loss": "ce_loss_with_sae" in metrics, "compute_l2_norms": "l2_ratio" in metrics,
            "compute_sparsity_metrics": "l1" in metrics, "compute_variance_metrics": "mse" in metrics,
            "compute_featurewise_density_statistics": "feature_density" in metrics,
            "compute_featurewise_weight_based_metrics": True,
            "exclude_special_tokens_from_reconstruction": False, "verbose": False}


def core_metrics(metrics: dict, sae, eval_id: str | None = None, details: bool = True) -> dict:
    """A SAEBench core result (a plain dict, JSON-ready) from an `evaluate_sae` result and its SAE."""
    from saes.access import registry_id, sae_path

    result = {cat: {field: _finite(metrics.get(key)) if key else None for field, key in fields.items()}
              for cat, fields in CATEGORIES.items()}
    misc, density, cah = _density_stats(metrics)
    weights = _weight_stats(sae)
    result["misc_metrics"] = {**dict.fromkeys(MISC), **misc,
                              "average_max_encoder_cosine_sim": weights["max_encoder_cosine_sim"].mean().item(),
                              "average_max_decoder_cosine_sim": weights["max_decoder_cosine_sim"].mean().item()}
    release, sae_id = registry_id(sae) or (None, None)
    ours = {k: metrics[k] for k in ("hook", "fvu", "delta_lm_loss", "dead_fraction", "dense_fraction", "eval_config")
            if k in metrics}
    return {
        "eval_type_id": EVAL_TYPE_ID, "eval_config": _eval_config(metrics, sae),
        "eval_id": eval_id or str(uuid.uuid4()), "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": result,
        "eval_result_details": _details(weights, density, cah) if details else [],
        "eval_result_unstructured": {"source": "steerlens", "sae_path": metrics.get("sae") or sae_path(sae),
                                     "steerlens_metrics": ours},
        "sae_bench_commit_hash": None, "sae_lens_id": sae_id, "sae_lens_release_id": release,
        "sae_lens_version": metadata.version("sae-lens"),
        "sae_cfg_dict": json.loads(json.dumps(sae.cfg.to_dict(), default=str)),
    }


def write_core_metrics(path: str | Path, metrics: dict, sae, **kwargs) -> Path:
    """Write `core_metrics(metrics, sae, **kwargs)` to `path` atomically (e.g. DIR/saebench_core.json)."""
    write_json(path, core_metrics(metrics, sae, **kwargs))
    return Path(path)
