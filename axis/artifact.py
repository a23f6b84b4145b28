"""The saved Assistant Axis: tensors in safetensors, statistics and config in JSON beside them.

An axis only means something for the model it was computed on, so loading checks the model's
identity, d_model and layer count, and every per-layer accessor checks the layer range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file

from lm.io import read_json, save_tensors, write_json
from lm.model import model_hash
from steering.projection import check_percentile

from axis.compute import check_calibration, from_grid, unit

FILES = ("axis.safetensors", "axis.json")


@dataclass
class AssistantAxis:
    axis: Float[torch.Tensor, "layers d"]  # unnormalised: mean(default) - mean(role means)
    default_mean: Float[torch.Tensor, "layers d"]
    role_means: Float[torch.Tensor, "r layers d"]
    role_names: list[str]
    projections: Float[torch.Tensor, "n layers"]  # per-rollout mean projection on the unit axis
    is_default: Bool[torch.Tensor, " n"]
    kept: Bool[torch.Tensor, " n"]  # passed the adherence filter (defaults always do)
    model: str  # lm.model.model_hash of the model it was computed on
    model_name: str
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # axis_unfiltered, pc1, ...
    stats: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    feature: object | None = None  # axis.sae_basis.FeatureAxis when computed
    feature_band: list = field(default_factory=list)  # FeatureAxis of extra SAEs, e.g. one per band layer

    @property
    def n_layers(self) -> int:
        return self.axis.shape[0]

    @property
    def d_model(self) -> int:
        return self.axis.shape[1]

    def check_layers(self, layers) -> list[int]:
        layers = [layers] if isinstance(layers, int) else list(layers)
        if not layers:
            raise ValueError("No layers given.")
        bad = [l for l in layers if not (isinstance(l, int) and 0 <= l < self.n_layers)]
        if bad:
            raise ValueError(f"Layer(s) {bad} out of range: this axis has layers 0..{self.n_layers - 1}.")
        return layers

    def unit(self, layer: int) -> Float[torch.Tensor, " d"]:
        (layer,) = self.check_layers(layer)
        return unit(self.axis[layer])

    def check_model(self, model) -> None:
        d, n = model.cfg.d_model, model.cfg.n_layers
        if d != self.d_model or n != self.n_layers:
            raise ValueError(f"This axis is for a model with d_model={self.d_model}, {self.n_layers} layers "
                             f"({self.model}); the given model has d_model={d}, {n} layers. "
                             "Compute an axis for this model with scripts/compute_axis.py.")
        h = model_hash(model)
        if "unknown" not in (h, self.model) and h != self.model:
            raise ValueError(f"This axis was computed on {self.model}, not on the given model {h}; "
                             "recompute it with scripts/compute_axis.py --model ...")

    def pooled(self, layer: int) -> Float[torch.Tensor, " m"]:
        """Per-rollout projections at `layer` pooled over kept role and default rollouts."""
        (layer,) = self.check_layers(layer)
        p = self.projections[self.kept, layer]
        return p[~p.isnan()]

    def tau(self, layer: int, percentile: float, calibration: str = "rollout") -> float:
        """The cap threshold at `layer`: a percentile (0-100) of the pooled per-rollout projections, or
        with calibration="token" of the per-token ones (`axis.calibration`)."""
        percentile = check_percentile(percentile)
        if check_calibration(calibration) == "token":
            grid = self.extra.get("token_quantiles")
            if grid is None:
                raise ValueError("This axis has no per-token calibration; rebuild it (steerlens axis ... --out DIR "
                                 "reuses its cached rollouts).")
            (layer,) = self.check_layers(layer)
            return from_grid(grid[layer], percentile)
        p = self.pooled(layer)
        if p.numel() == 0:
            raise ValueError("This axis has no stored rollout projections to take a percentile of.")
        return float(torch.quantile(p.double(), percentile / 100))

    # ----- persistence -----

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        tensors = {"axis": self.axis, "default_mean": self.default_mean, "role_means": self.role_means,
                   "projections": self.projections, "is_default": self.is_default.to(torch.uint8),
                   "kept": self.kept.to(torch.uint8), **{f"extra.{k}": v for k, v in self.extra.items()}}
        save_tensors(out / FILES[0], {k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        write_json(out / FILES[1], {"model": self.model, "model_name": self.model_name, "n_layers": self.n_layers,
                                    "d_model": self.d_model, "role_names": self.role_names, "stats": self.stats})
        write_json(out / "config.json", self.config)
        if self.feature is not None:
            self.feature.save(out)
        for fa in self.feature_band:
            fa.save(fa.band_dir(out, fa.hook_name))
        return out

    @property
    def feature_axes(self) -> list:
        """Every SAE-basis axis: the axis's own SAE first, then the band SAEs."""
        return ([self.feature] if self.feature is not None else []) + list(self.feature_band)

    def feature_at(self, layer: int):
        """The SAE-basis axis whose SAE reads `blocks.{layer}.hook_resid_post`."""
        for fa in self.feature_axes:
            if fa.layer == layer:
                return fa
        have = sorted(fa.layer for fa in self.feature_axes)
        raise ValueError(f"No SAE-basis axis at layer {layer} (this axis has SAE axes at layers {have}). "
                         "Train SAEs for those layers (scripts/train_sae.py --recipe smollm2-band) and add them "
                         "with scripts/compute_axis.py --band-sae DIR ...")

    @classmethod
    def load(cls, path: str | Path, model=None) -> "AssistantAxis":
        path = Path(path)
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a saved axis (missing {missing}); make one with "
                                    "scripts/compute_axis.py --out DIR.")
        t = load_file(str(path / FILES[0]))
        meta = read_json(path / FILES[1])
        if list(t["axis"].shape) != [meta["n_layers"], meta["d_model"]]:
            raise ValueError(f"{path}: axis tensor {list(t['axis'].shape)} disagrees with axis.json.")
        cfg = path / "config.json"
        ax = cls(axis=t["axis"], default_mean=t["default_mean"], role_means=t["role_means"],
                 role_names=meta["role_names"], projections=t["projections"], is_default=t["is_default"].bool(),
                 kept=t["kept"].bool(), model=meta["model"], model_name=meta["model_name"],
                 extra={k[6:]: v for k, v in t.items() if k.startswith("extra.")}, stats=meta["stats"],
                 config=read_json(cfg) if cfg.is_file() else {})
        from axis.sae_basis import BAND_DIR, FeatureAxis

        if FeatureAxis.exists(path):
            ax.feature = FeatureAxis.load(path)
        band = path / BAND_DIR
        if band.is_dir():
            ax.feature_band = sorted((FeatureAxis.load(d) for d in band.iterdir() if FeatureAxis.exists(d)),
                                     key=lambda fa: fa.layer)
        if model is not None:
            ax.check_model(model)
        return ax
