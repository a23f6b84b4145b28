"""The Assistant Axis in other tools' formats: the paper's release, and Neuronpedia's axis asset.

- The paper's release (safety-research/assistant-axis; its pre-computed vectors are the HF dataset
  lu-christina/assistant-axis-vectors) keeps, per model, `assistant_axis.pt` (a bare [n_layers, d]
  tensor; the package's `save_axis` writes `{"axis": tensor}` instead), `default_vector.pt` (the
  default Assistant's mean, [n_layers, d]) and `role_vectors/<role>.pt` (one [n_layers, d] mean per
  role). Layer l is the output of block l, our `blocks.l.hook_resid_post`, and the axis is
  mean(default) - mean(roles), unnormalised: the same quantity as `AssistantAxis.axis`.
- Neuronpedia's assistant-axis asset projects a turn's mean activation x at one layer as
  ((x - scaler_mean) - pca_mean) @ direction: a mean-centring scaler fitted on the role vectors,
  then a PCA whose first component is the normalised axis (+ = Assistant-like). Neuronpedia ships
  those numbers as pickled sklearn objects; we write them as `axis.yaml` (layer, normalize, center,
  scale: the scaler's settings) and `axis.safetensors` (direction, scaler_mean, pca_mean, quantiles
  of the rollout projections in those coordinates), which need no unpickling.

Reading never unpickles anything but tensors (`torch.load(..., weights_only=True)`).
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from jaxtyping import Float
from safetensors.torch import load_file, save_file

from lm.io import atomic_dir

from axis.artifact import AssistantAxis
from axis.compute import unit

FORMATS = ("assistant-axis", "neuronpedia")
RELEASE_AXIS, RELEASE_DEFAULT, RELEASE_ROLES = "assistant_axis.pt", "default_vector.pt", "role_vectors"
NP_CONFIG, NP_TENSORS = "axis.yaml", "axis.safetensors"
NP_KEYS = ("direction", "scaler_mean", "pca_mean", "quantiles")
NP_TITLE = "- Role-playing <-> + Assistant-like"  # Neuronpedia's PC1 title for the axis
QUANTILE_LEVELS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
_ROLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _tensor_file(path: Path) -> Float[torch.Tensor, "..."]:
    """The one tensor a `.pt` / `.safetensors` file holds (a bare tensor, or the "axis" of a dict)."""
    if path.suffix == ".safetensors":
        try:
            t = load_file(str(path))
        except Exception as e:  # safetensors raises its own error type for a malformed header
            raise ValueError(f"{path} is not a readable safetensors file ({str(e)[:200]}).") from None
        if "axis" not in t and len(t) != 1:
            raise ValueError(f"{path} holds tensors {sorted(t)}; an axis file holds one tensor or one named 'axis'.")
        return t["axis"] if "axis" in t else next(iter(t.values()))
    if path.suffix not in (".pt", ".pth"):
        raise ValueError(f"{path}: an axis file ends in .pt, .pth or .safetensors (or give the release directory).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a plain tensor or tensor dict (torch.load(weights_only=True) refused it: "
                         f"{first[:200]}); re-save it as torch.save({{'axis': tensor}}, path) or as safetensors.") from None
    if isinstance(obj, dict):
        if not isinstance(obj.get("axis"), torch.Tensor):
            raise ValueError(f"{path} holds a dict with keys {sorted(map(str, obj))[:8]} but no 'axis' tensor.")
        return obj["axis"]
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a tensor or a dict with an 'axis' tensor.")
    return obj


def _layers_by_d(t: torch.Tensor, path: Path) -> Float[torch.Tensor, "n_layers d"]:
    if t.ndim != 2 or 0 in t.shape or not t.is_floating_point():
        raise ValueError(f"{path}: expected a float [n_layers, d_model] tensor, got {t.dtype} {list(t.shape)}.")
    t = t.detach().float().contiguous()
    if not torch.isfinite(t).all():
        raise ValueError(f"{path} contains NaN or inf values.")
    return t


def _check_not_ours(path: Path) -> None:
    if (path / "axis.json").is_file() and not (path / RELEASE_AXIS).is_file():
        raise ValueError(f"{path} is a steerlens axis directory: load it with AssistantAxis.load.")


def read_axis_file(path: str | Path) -> Float[torch.Tensor, "n_layers d"]:
    """A per-layer axis from a `.pt` (bare tensor or {"axis": ...}), a `.safetensors`, or a release
    directory (its assistant_axis.pt); float32, on the CPU."""
    path = Path(path)
    if path.is_dir():
        _check_not_ours(path)
        path = path / RELEASE_AXIS
    if not path.is_file():
        raise FileNotFoundError(f"No axis file at {path}.")
    return _layers_by_d(_tensor_file(path), path)


class AxisRelease(NamedTuple):
    """A directory in the paper's release layout, read back."""
    axis: Float[torch.Tensor, "n_layers d"]
    default_vector: Float[torch.Tensor, "n_layers d"] | None
    role_vectors: dict[str, Float[torch.Tensor, "n_layers d"]]


def read_axis_release(path: str | Path) -> AxisRelease:
    """assistant_axis.pt plus, when present, default_vector.pt and role_vectors/*.pt (same shape)."""
    path = Path(path)
    _check_not_ours(path)
    axis = read_axis_file(path / RELEASE_AXIS)
    default = read_axis_file(path / RELEASE_DEFAULT) if (path / RELEASE_DEFAULT).is_file() else None
    roles = {p.stem: read_axis_file(p) for p in sorted((path / RELEASE_ROLES).glob("*.pt"))}
    for name, t in [("default_vector", default), *roles.items()]:
        if t is not None and t.shape != axis.shape:
            raise ValueError(f"{path}: {name} has shape {list(t.shape)} but the axis has {list(axis.shape)}.")
    return AxisRelease(axis, default, roles)


def axis_from_file(path: str | Path, model=None, name: str | None = None) -> AssistantAxis:
    """An `AssistantAxis` from another tool's file or release directory, checked against `model`.

    It has no rollouts, so it projects, steers and caps at an explicit tau, but has no percentiles."""
    path = Path(path)
    if path.is_dir():
        rel = read_axis_release(path)
    else:
        rel = AxisRelease(read_axis_file(path), None, {})
    n, d = rel.axis.shape
    names = sorted(rel.role_vectors)
    roles = torch.stack([rel.role_vectors[r] for r in names]) if names else torch.zeros(0, n, d)
    default = rel.default_vector if rel.default_vector is not None else torch.full((n, d), float("nan"))
    empty = torch.zeros(0, dtype=torch.bool)
    ax = AssistantAxis(axis=rel.axis, default_mean=default, role_means=roles, role_names=names,
                       projections=torch.zeros(0, n), is_default=empty, kept=empty, model="unknown",
                       model_name=name or path.stem, stats={"source": str(path), "format": "assistant-axis"})
    if model is not None:
        ax.check_model(model)
    return ax


def _write_release(ax: AssistantAxis, out: Path, layer: int | None = None) -> None:
    bad = [r for r in ax.role_names if not _ROLE_NAME.fullmatch(r)]
    if bad:
        raise ValueError(f"Role names {bad[:5]} cannot be file names; rename them (letters, digits, _ . -).")
    torch.save(ax.axis.detach().float().cpu().clone(), out / RELEASE_AXIS)
    torch.save(ax.default_mean.detach().float().cpu().clone(), out / RELEASE_DEFAULT)
    (out / RELEASE_ROLES).mkdir()
    for i, role in enumerate(ax.role_names):
        torch.save(ax.role_means[i].detach().float().cpu().clone(), out / RELEASE_ROLES / f"{role}.pt")


def neuronpedia_numbers(ax: AssistantAxis, layer: int) -> dict[str, torch.Tensor]:
    """Neuronpedia's projection at `layer`: scaler mean over the role vectors, PCA mean of the
    centred role vectors, the unit axis, and quantiles of the rollout projections in those coordinates."""
    (layer,) = ax.check_layers(layer)
    if ax.role_means.shape[0] == 0:
        raise ValueError("This axis has no role vectors to fit Neuronpedia's scaler on; export one computed here.")
    roles = ax.role_means[:, layer].double()
    scaler_mean = roles.mean(0)
    pca_mean = (roles - scaler_mean).mean(0)
    direction = unit(ax.axis[layer].double())
    p = ax.pooled(layer).double()
    if p.numel() == 0:
        raise ValueError("This axis has no stored rollout projections to take quantiles of.")
    q = torch.quantile(p, torch.tensor(QUANTILE_LEVELS, dtype=torch.float64)) - (scaler_mean + pca_mean) @ direction
    return {"direction": direction.float(), "scaler_mean": scaler_mean.float(), "pca_mean": pca_mean.float(),
            "quantiles": q.float()}


def _write_neuronpedia(ax: AssistantAxis, out: Path, layer: int | None = None) -> None:
    layer = int(ax.stats.get("monitor_layer", ax.n_layers // 2)) if layer is None else layer
    tensors = neuronpedia_numbers(ax, layer)
    config = {"model": ax.model_name, "model_hash": ax.model, "hook_name": f"blocks.{layer}.hook_resid_post",
              "layer": layer, "d_model": ax.d_model, "normalize": False, "center": True, "scale": False,
              "axis_norm": float(ax.axis[layer].norm()), "quantile_levels": list(QUANTILE_LEVELS),
              "pc_titles": [NP_TITLE], "projection": "((x - scaler_mean) - pca_mean) @ direction"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / NP_TENSORS))
    (out / NP_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


_WRITERS = {"assistant-axis": _write_release, "neuronpedia": _write_neuronpedia}


def export_axis(axis_dir: str | Path, out_dir: str | Path, fmt: str, overwrite: bool = False,
                layer: int | None = None) -> Path:
    """Write the axis saved in `axis_dir` to `out_dir` in `fmt` ("assistant-axis": the paper's release
    layout; "neuronpedia": axis.yaml + axis.safetensors at `layer`, default the monitor layer).
    The directory is built under a temp name and renamed, so a failed export leaves nothing."""
    if fmt not in _WRITERS:
        raise ValueError(f"Unknown axis format {fmt!r}; choose one of {list(FORMATS)}.")
    ax = AssistantAxis.load(axis_dir)
    if layer is not None:
        ax.check_layers(layer)
    with atomic_dir(out_dir, overwrite) as tmp:
        _WRITERS[fmt](ax, tmp, layer)
    return Path(out_dir)


class NeuronpediaAxis(NamedTuple):
    """A Neuronpedia-format axis directory, read back."""
    config: dict
    direction: Float[torch.Tensor, " d"]
    scaler_mean: Float[torch.Tensor, " d"]
    pca_mean: Float[torch.Tensor, " d"]
    quantiles: Float[torch.Tensor, " q"]

    def project(self, acts: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "..."]:
        x = acts.float() - self.scaler_mean if self.config.get("center", True) else acts.float()
        if self.config.get("normalize"):
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (x - self.pca_mean) @ self.direction


def read_neuronpedia_axis(path: str | Path) -> NeuronpediaAxis:
    path = Path(path)
    missing = [f for f in (NP_CONFIG, NP_TENSORS) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a Neuronpedia axis directory (missing {missing}).")
    config = yaml.safe_load((path / NP_CONFIG).read_text(encoding="utf-8"))
    t = load_file(str(path / NP_TENSORS))
    lacking = [k for k in NP_KEYS if k not in t] + [k for k in ("layer", "center", "normalize") if k not in (config or {})]
    if lacking:
        raise ValueError(f"{path}: Neuronpedia axis lacks {lacking}.")
    d = t["direction"].shape
    if any(t[k].shape != d for k in ("scaler_mean", "pca_mean")) or not math.isclose(float(t["direction"].norm()), 1, rel_tol=1e-4):
        raise ValueError(f"{path}: direction, scaler_mean and pca_mean must be one d_model long, direction unit norm.")
    return NeuronpediaAxis(config, *(t[k] for k in NP_KEYS))
