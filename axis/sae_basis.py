"""The Assistant Axis in an SAE's feature basis, and one projection API for both bases.

SAE encoding is nonlinear, so the feature-space axis is built from per-token feature activations
averaged over each rollout's response tokens (not from the mean activation): axis_f = mean over
default rollouts - mean over roles of each role's mean, the same recipe as the raw axis. Decoding
axis_f through W_dec gives the difference of the mean reconstructions, so how well the top-k
features' decoder directions reconstruct the raw axis says how much of it the SAE explains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file
from tqdm.auto import tqdm

from lm.batch import pad
from lm.harvest import forward_batch
from lm.io import read_json, save_tensors, write_json

from features import feature_labels
from saes import access
from saes.access import decoder_rows, encode, load_sae, sae_hook
from steering.projection import Projection, check_percentile

from axis.compute import check_calibration, cosine, default_mean, from_grid, role_means, unit
from axis.rollouts import RolloutSpec, response_tokens

FILES = ("sae_axis.safetensors", "sae_axis.json")
BAND_DIR = "sae_band"  # one FeatureAxis per extra SAE (a capping band), in sae_band/<hook>/


def raw_layer(hook_name: str) -> int:
    """The block whose hook_resid_post equals this residual-stream hook (the raw axis is per block output)."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook_name)
    if not m or (m.group(2) == "pre" and int(m.group(1)) == 0):
        raise ValueError(f"The SAE basis needs an SAE on a block's residual stream output "
                         f"(blocks.L.hook_resid_post), not {hook_name!r}.")
    return int(m.group(1)) - (m.group(2) == "pre")


def feature_means(model, saes, specs: list[RolloutSpec], texts: dict[str, str], batch_size: int = 16,
                  progress: bool = True) -> list[Float[torch.Tensor, "n d_sae"]]:
    """Per rollout and SAE, feature activations averaged over its response tokens (NaN rows: empty
    replies). Several SAEs (e.g. one per layer of a capping band) share one forward pass."""
    saes = list(saes) if isinstance(saes, (list, tuple)) else [saes]
    hooks = [sae_hook(s) for s in saes]
    bad = [h for h in hooks if h not in model.hook_dict]
    if bad:
        raise ValueError(f"The SAE hook(s) {bad} do not exist in this model (layers 0..{model.cfg.n_layers - 1}).")
    tok = model.tokenizer
    outs = [torch.full((len(specs), s.cfg.d_sae), float("nan")) for s in saes]
    seqs = [response_tokens(tok, s, texts[s.id]) for s in specs]
    seqs = [x if x is not None else (torch.tensor([tok.pad_token_id]), torch.zeros(1, dtype=torch.bool)) for x in seqs]
    order = sorted(range(len(specs)), key=lambda i: len(seqs[i][0]))
    for b in tqdm(range(0, len(order), batch_size), desc="sae features", disable=not progress, unit="batch"):
        rows = order[b:b + batch_size]
        ids, _, mask = pad([seqs[i][0] for i in rows], tok.pad_token_id, masks=[seqs[i][1] for i in rows])
        acts = forward_batch(model, ids, sorted(set(hooks)))
        k = mask.sum(1)
        for sae, hook, out in zip(saes, hooks, outs):
            feats = encode(sae, acts[hook]).float().cpu()
            means = (feats * mask[..., None]).sum(1) / k.clamp(min=1)[:, None]
            for j, i in enumerate(rows):
                if k[j] > 0:
                    out[i] = means[j]
    return outs


@dataclass
class FeatureAxis:
    feature_axis: Float[torch.Tensor, " d_sae"]
    default_mean: Float[torch.Tensor, " d_sae"]
    role_means: Float[torch.Tensor, "r d_sae"]
    projections: Float[torch.Tensor, " n"]  # per-rollout mean features . unit(feature_axis)
    kept: Bool[torch.Tensor, " n"]
    hook_name: str
    sae_path: str | None
    stats: dict = field(default_factory=dict)
    sae: object | None = None  # the loaded SAE (not saved)
    token_quantiles: Float[torch.Tensor, " 101"] | None = None  # axis.calibration: per-token projection grid

    @property
    def layer(self) -> int:
        return raw_layer(self.hook_name)

    def get_sae(self, sae=None):
        if sae is not None:
            sae = load_sae(sae)
        elif self.sae is not None:
            sae = self.sae
        elif self.sae_path:
            path = Path(self.sae_path)
            if self.sae_path.startswith(access.REGISTRY_PREFIX):  # a SAELens registry SAE, loaded by id
                path = self.sae_path
            elif not path.is_absolute() and not path.exists():  # relative to the repository, as exported
                path = Path(__file__).resolve().parent.parent / path
            sae = self.sae = load_sae(path)
        else:
            raise ValueError("No SAE attached to this feature axis: pass sae=... (object or SAELens directory).")
        if sae.cfg.d_sae != self.feature_axis.shape[0] or sae_hook(sae) != self.hook_name:
            raise ValueError(f"SAE mismatch: the feature axis is for d_sae={self.feature_axis.shape[0]} at "
                             f"{self.hook_name}, the SAE has d_sae={sae.cfg.d_sae} at {sae_hook(sae)}.")
        return sae

    def tau(self, percentile: float, calibration: str = "rollout") -> float:
        """A percentile of per-rollout mean projections (the paper), or of per-token ones (axis.calibration)."""
        percentile = check_percentile(percentile)
        if check_calibration(calibration) == "token":
            if self.token_quantiles is None:
                raise ValueError(f"The SAE-basis axis at {self.hook_name} has no per-token calibration; rebuild the "
                                 "axis (steerlens axis ... --out DIR reuses its cached rollouts).")
            return from_grid(self.token_quantiles, percentile)
        p = self.projections[self.kept]
        p = p[~p.isnan()]
        return float(torch.quantile(p.double(), percentile / 100))

    @staticmethod
    def exists(path) -> bool:
        return all((Path(path) / f).is_file() for f in FILES)

    @staticmethod
    def band_dir(root, hook_name: str) -> Path:
        """Where a band SAE's feature axis lives inside an axis directory."""
        return Path(root) / BAND_DIR / hook_name

    def save(self, out_dir) -> None:
        out = Path(out_dir)
        save_tensors(out / FILES[0], {"feature_axis": self.feature_axis, "default_mean": self.default_mean,
                                      "role_means": self.role_means, "projections": self.projections,
                                      "kept": self.kept.to(torch.uint8),
                                      **({} if self.token_quantiles is None else {"token_quantiles": self.token_quantiles})})
        write_json(out / FILES[1], {"hook_name": self.hook_name, "sae_path": self.sae_path, "stats": self.stats})

    @classmethod
    def load(cls, path) -> "FeatureAxis":
        t = load_file(str(Path(path) / FILES[0]))
        meta = read_json(Path(path) / FILES[1])
        return cls(t["feature_axis"], t["default_mean"], t["role_means"], t["projections"], t["kept"].bool(),
                   meta["hook_name"], meta["sae_path"], meta["stats"], token_quantiles=t.get("token_quantiles"))


def decoder_stats(raw_axis: Float[torch.Tensor, " d"], feature_axis: Float[torch.Tensor, " d_sae"],
                  w_dec: Float[torch.Tensor, "d_sae d"], top: int = 20,
                  ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500)) -> dict:
    """Top features by |weight| and how much of the raw axis their decoder directions rebuild."""
    order = feature_axis.abs().argsort(descending=True)
    ks = sorted({k for k in ks if k <= len(order)} | {len(order)})
    contrib = feature_axis[:, None] * w_dec  # each feature's share of the decoded axis
    csum = contrib[order].cumsum(0)
    top_ids = order[:top].tolist()
    return {
        "top_features": [{"id": i, "weight": float(feature_axis[i]),
                          "cos_decoder_raw_axis": float(cosine(w_dec[i], raw_axis))} for i in top_ids],
        "recon_k": ks,
        "recon_cos": [float(cosine(csum[k - 1], raw_axis)) for k in ks],
        "top_positive": feature_axis.argsort(descending=True)[:top].tolist(),
        "top_negative": feature_axis.argsort()[:top].tolist(),
    }


def feature_axis_from(feats: Float[torch.Tensor, "n d_sae"], roles: list[str], keep: Bool[torch.Tensor, " n"],
                      sae, raw_axis_at_layer: Float[torch.Tensor, " d"], sae_path: str | None = None,
                      drop_empty: bool = False, top: int = 20, stats_dir: str | None = None) -> FeatureAxis:
    ok = ~feats.isnan().any(-1)
    _, rm, _ = role_means(feats[:, None], roles, keep & ok, drop_empty=drop_empty)
    dm = default_mean(feats[ok][:, None], [r for r, o in zip(roles, ok.tolist()) if o])[0]
    fa = dm - rm[:, 0].mean(0)
    w_dec = decoder_rows(sae).detach().float().cpu()
    stats = decoder_stats(raw_axis_at_layer, fa, w_dec, top=top)
    sae_path = sae_path or access.sae_path(sae)
    labels = feature_labels(sae_path, [f["id"] for f in stats["top_features"]], stats_dir)
    for f in stats["top_features"]:
        f["label"] = labels.get(f["id"])
    proj = (feats * unit(fa)).sum(-1)
    return FeatureAxis(fa, dm, rm[:, 0], proj, keep & ok, sae_hook(sae), sae_path, stats, sae)


def project(acts: Float[torch.Tensor, "... d"], axis, basis: str = "raw", layer: int | None = None,
            sae=None) -> Float[torch.Tensor, "..."]:
    """Projection of activations on the unit Assistant Axis in either basis, measured by the same
    `steering.projection.Projection` the caps use (per token).

    raw: `acts[..., d]` at `layer` (or `acts[..., n_layers, d]` with layer=None: every layer).
    sae: `acts[..., d]` at the SAE's hook are encoded and projected on the unit feature-space axis."""
    if basis == "raw":
        if layer is None:
            if tuple(acts.shape[-2:]) != (axis.n_layers, axis.d_model):
                raise ValueError(f"Give layer=..., or activations shaped [..., {axis.n_layers}, {axis.d_model}].")
            return (acts.float() * unit(axis.axis)).sum(-1)
        if acts.shape[-1] != axis.d_model:
            raise ValueError(f"Activations have width {acts.shape[-1]}, the axis d_model={axis.d_model}.")
        proj = Projection(axis.unit(layer))
    elif basis == "sae":
        fa = axis.feature if hasattr(axis, "feature") else axis
        if fa is None:
            raise ValueError("This axis has no SAE-basis axis; compute it with scripts/compute_axis.py --sae DIR.")
        if layer is not None and layer != fa.layer:
            raise ValueError(f"The SAE-basis axis lives at layer {fa.layer} ({fa.hook_name}), not {layer}.")
        sae = fa.get_sae(sae)
        if acts.shape[-1] != sae.cfg.d_in:
            raise ValueError(f"Activations have width {acts.shape[-1]} but the SAE expects d_in={sae.cfg.d_in}.")
        proj, acts = Projection(fa.feature_axis, sae=sae), acts.to(sae.W_dec.device)
    else:
        raise ValueError(f"basis must be 'raw' or 'sae', got {basis!r}.")
    with torch.no_grad():
        return proj.measurer(acts.device, torch.float32)(acts.float()).float()
