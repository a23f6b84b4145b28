"""Compute the Assistant Axis end to end: rollouts -> activations -> filter -> axis, PCA, stats.

Everything lands in one directory: cached rollouts and activations (resumable), transcripts with
their adherence verdicts, the axis artifact (`axis.safetensors`, `axis.json`, `config.json`), the
optional SAE-basis axis, and a summary figure. `scripts/compute_axis.py` is the command line.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float

from lm.engines import check_backend
from lm.generate import GenerationConfig
from lm.io import write_json
from lm.model import model_hash
from lm.sources import EMBEDDED
from saes.access import load_sae, sae_hook

from axis import data
from axis.artifact import AssistantAxis
from axis.calibration import calibrate
from axis.compute import (assistant_axis, cosine, default_mean, layer_projections, pca, pick_monitor_layer,
                          role_means, separation)
from axis.rollouts import (DEFAULT, RolloutSpec, cache_seconds, engine_check, generate_rollouts, harvest_rollouts,
                           make_specs, save_transcripts)
from axis.sae_basis import feature_axis_from, feature_means, raw_layer

FILTERS = ("assistant_lexicon", "none")


@dataclass
class AxisConfig:
    model: str = EMBEDDED
    model_name: str | None = None  # fills "{model_name}" in default prompts; None = from the model
    roles_per_category: int | None = 4  # None = every role (the full bank)
    roles: list[str] | None = None  # explicit role names (overrides roles_per_category)
    prompts_per_role: int | None = 2  # None = all system-prompt variants
    n_questions: int | None = 8  # None = all extraction questions
    max_new_tokens: int = 48
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    gen_batch_size: int = 32
    backend: str = "hf"  # rollout engine (lm.engines): "hf", "llama.cpp" or a llama.cpp server URL
    harvest_batch_size: int = 16
    chunk_size: int = 128  # rollouts per cache chunk (at least one generation batch)
    adherence_filter: str = "assistant_lexicon"
    drop_empty_roles: bool = False
    n_pcs: int = 10
    sae: str | None = None  # SAELens directory for the SAE-basis axis
    band_saes: list[str] = field(default_factory=list)  # more SAEs (one per capping-band layer)
    feature_stats: str | None = None  # a features analysis directory with labels (optional)
    top_features: int = 20
    engine_check: int = 64  # specs sampled by both engines when backend is not "hf" (0: skip)
    calibration_rollouts: int = 800  # rollouts whose response tokens calibrate per-token taus (0: none)

    def __post_init__(self):
        check_backend(self.backend)
        if self.adherence_filter not in FILTERS:
            raise ValueError(f"adherence_filter must be one of {FILTERS}, got {self.adherence_filter!r}.")
        for k in ("roles_per_category", "prompts_per_role", "n_questions"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ValueError(f"{k} must be >= 1 or None (all), got {v}.")

    def to_dict(self) -> dict:
        return asdict(self)


def display_name(model, cfg: AxisConfig) -> str:
    if cfg.model_name:
        return cfg.model_name
    return "SmolLM2-135M-Instruct" if cfg.model == EMBEDDED else Path(str(cfg.model)).name


def _lists(d: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


class _Rollouts(NamedTuple):
    """The rollouts of one build: specs in order, reply texts, response-mean activations, filter masks."""
    specs: list[RolloutSpec]
    texts: dict[str, str]
    acts: Float[torch.Tensor, "n layers d"]
    valid: Bool[torch.Tensor, " n"]  # has response tokens
    kept: Bool[torch.Tensor, " n"]  # valid and passes the adherence filter

    @property
    def labels(self) -> list[str]:
        return [s.role for s in self.specs]


class _RawAxis(NamedTuple):
    """The raw-basis results: axis (filtered and not), role and default means, PCA, projections, separation."""
    names: list[str]
    per_role: Float[torch.Tensor, "r layers d"]
    counts: dict[str, int]  # kept rollouts per role in the axis
    default: Float[torch.Tensor, "layers d"]
    axis: Float[torch.Tensor, "layers d"]
    axis_unfiltered: Float[torch.Tensor, "layers d"]
    pca: dict
    projections: Float[torch.Tensor, "n layers"]
    is_default: Bool[torch.Tensor, " n"]
    scored: Bool[torch.Tensor, " n"]  # kept defaults and kept rollouts of roles in the axis
    separation: dict


def rollout_plan(model, cfg: AxisConfig) -> tuple[list, list[str], list[RolloutSpec], GenerationConfig]:
    """(roles, questions, rollout specs, sampling settings) of an axis config."""
    roles = data.select_roles(data.load_roles(), cfg.roles_per_category, cfg.roles)
    questions = data.load_questions()[:cfg.n_questions]
    specs = make_specs(roles, data.load_default_prompts(display_name(model, cfg)), questions, cfg.prompts_per_role)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed, batch_size=cfg.gen_batch_size)
    return roles, questions, specs, gen


def check_engine(model, cfg: AxisConfig, specs: list[RolloutSpec] | None = None,
                 gen: GenerationConfig | None = None) -> dict:
    """`engine_check` of cfg.backend against our sampler on cfg.engine_check specs spread over the plan."""
    if specs is None or gen is None:
        _, _, specs, gen = rollout_plan(model, cfg)
    n = max(1, cfg.engine_check)
    return engine_check(model, specs[::max(1, len(specs) // n)][:n], gen, cfg.backend)


def build_axis(model, cfg: AxisConfig, out_dir: str | Path, progress: bool = True) -> AssistantAxis:
    """Roll out, harvest, filter, compute the axis and its statistics (and SAE bases), save to `out_dir`."""
    out, t0 = Path(out_dir), time.time()
    roles, questions, specs, gen = rollout_plan(model, cfg)
    name = display_name(model, cfg)
    ro = _roll_out(model, cfg, roles, specs, gen, out, progress)
    raw = _raw_axis(ro, cfg)
    stats = _stats(ro, raw, roles, len(questions), cfg.adherence_filter) | {"seconds": round(time.time() - t0, 1)}
    result = AssistantAxis(axis=raw.axis, default_mean=raw.default, role_means=raw.per_role, role_names=raw.names,
                           projections=raw.projections, is_default=raw.is_default, kept=ro.kept,
                           model=model_hash(model), model_name=name,
                           extra={"axis_unfiltered": raw.axis_unfiltered, "pc1": raw.pca["pc1"],
                                  "role_pc1": raw.pca["role_pc1"]},
                           stats=stats, config={**cfg.to_dict(), "generation": gen.to_dict()})
    if cfg.sae or cfg.band_saes:
        _add_feature_axes(result, model, cfg, ro, raw.scored, progress)
    if cfg.backend != "hf" and cfg.engine_check:  # the faster engine samples as ours does (on a spread sample)
        stats["engine_check"] = check_engine(model, cfg, specs, gen)
    if cfg.calibration_rollouts:
        stats["token_calibration"] = calibrate(model, result, ro.specs, ro.texts, n_max=cfg.calibration_rollouts,
                                               batch_size=cfg.harvest_batch_size, seed=cfg.seed, progress=progress)
    stats["build_seconds"] = {"this_run": round(time.time() - t0, 1), **{
        f"{k}_cumulative": t for k in ("rollouts", "activations") if (t := cache_seconds(out / k)) is not None}}
    _save(result, out)
    return result


def _roll_out(model, cfg: AxisConfig, roles: list, specs: list[RolloutSpec], gen: GenerationConfig, out: Path,
              progress: bool) -> _Rollouts:
    """Generate and harvest (both cached under `out`), apply the adherence filter, save transcripts."""
    chunk = max(cfg.chunk_size, cfg.gen_batch_size)
    records = generate_rollouts(model, specs, gen, out / "rollouts", chunk, progress, cfg.backend)
    texts = {s.id: records[s.id]["text"] for s in specs}
    acts = harvest_rollouts(model, specs, texts, out / "activations", cfg.harvest_batch_size, progress=progress)
    by_role = {r.name: r for r in roles}
    valid = ~acts.isnan().any(-1).any(-1)  # empty replies have no response tokens
    if cfg.adherence_filter == "none":
        adhere = torch.ones(len(specs), dtype=torch.bool)
    else:
        adhere = torch.tensor([data.adheres(texts[s.id], by_role.get(s.role)) for s in specs])
    for s, v, a in zip(specs, valid.tolist(), adhere.tolist()):
        records[s.id] = {**records[s.id], "valid": v, "adheres": a}
    save_transcripts(out / "transcripts.json", specs, records)
    return _Rollouts(specs, texts, acts, valid, valid & adhere)


def _raw_axis(ro: _Rollouts, cfg: AxisConfig) -> _RawAxis:
    labels, valid, kept = ro.labels, ro.valid, ro.kept
    names, per_role, counts = role_means(ro.acts, labels, kept, drop_empty=cfg.drop_empty_roles)
    dflt = default_mean(ro.acts[valid], [l for l, v in zip(labels, valid.tolist()) if v])
    axis = assistant_axis(dflt, per_role)
    _, per_role_all, _ = role_means(ro.acts, labels, valid, drop_empty=True)
    p = pca(per_role, axis, dflt, cfg.n_pcs)
    proj = layer_projections(ro.acts.nan_to_num(), axis)
    proj[~valid] = float("nan")
    is_def = torch.tensor([l == DEFAULT for l in labels])
    in_role = torch.tensor([l in counts for l in labels])  # roles dropped as empty do not count
    scored = kept & (is_def | in_role)
    return _RawAxis(names, per_role, counts, dflt, axis, assistant_axis(dflt, per_role_all), p, proj, is_def, scored,
                    separation(proj[scored], is_def[scored]))


def _category_counts(ro: _Rollouts) -> dict[str, dict[str, int]]:
    cats = {}
    for s, k, v in zip(ro.specs, ro.kept.tolist(), ro.valid.tolist()):
        if s.role != DEFAULT:
            c = cats.setdefault(s.category, {"total": 0, "valid": 0, "kept": 0})
            c["total"] += 1
            c["valid"] += v
            c["kept"] += k
    return cats


def _stats(ro: _Rollouts, raw: _RawAxis, roles: list, n_questions: int, kind: str) -> dict:
    """Everything axis.json records about the build (counts, filter, PCA, separation, monitor layer)."""
    n_role = sum(1 for s in ro.specs if s.role != DEFAULT)
    is_def, kept, p = raw.is_default, ro.kept, raw.pca
    return {
        "n_rollouts": len(ro.specs), "n_default": int(is_def.sum()), "n_role_rollouts": n_role,
        "n_empty_replies": int((~ro.valid).sum()),  # no response tokens (or unrenderable)
        "n_roles": len(raw.names), "n_questions": n_questions,
        "filter": {"kind": kind,
                   "kept_role_rollouts": int((kept & ~is_def).sum()),
                   "kept_fraction": float((kept & ~is_def).sum()) / max(n_role, 1),
                   "by_category": _category_counts(ro), "by_role": raw.counts,
                   "ai_roles_exempt": [r.name for r in roles if data.ai_role(r)],
                   "cos_axis_filtered_vs_unfiltered": cosine(raw.axis, raw.axis_unfiltered).tolist()},
        "axis_norm": raw.axis.norm(dim=-1).tolist(),
        "pca": {"explained": p["explained"].tolist(), "n_pcs_70": p["n_pcs_70"],
                "cos_axis_pc1": p["cos_axis_pc1"].tolist(), "default_pc1": p["default_pc1"].tolist(),
                "default_pc1_fraction_above_roles": p["default_pc1_fraction_above_roles"].tolist(),
                "default_pc1_z": p["default_pc1_z"].tolist()},
        "separation": _lists(raw.separation),
        "monitor_layer": pick_monitor_layer(raw.separation["d_prime"]),
        "monitor_layer_reason": "largest d' between default and role rollout projections (layers 1..n-2)",
        "rollout_ids": [s.id for s in ro.specs],
        "rollout_roles": ro.labels,
        "role_categories": {r.name: r.category for r in roles},
    }


def _add_feature_axes(result: AssistantAxis, model, cfg: AxisConfig, ro: _Rollouts,
                      scored: Bool[torch.Tensor, " n"], progress: bool) -> None:
    """The axis in the feature basis of `cfg.sae` (result.feature) and of each band SAE (result.feature_band)."""
    paths = ([cfg.sae] if cfg.sae else []) + list(cfg.band_saes)
    saes = [load_sae(p) for p in paths]
    feats = feature_means(model, saes, ro.specs, ro.texts, cfg.harvest_batch_size, progress)
    fas = []
    for path, sae, f in zip(paths, saes, feats):
        fa = feature_axis_from(f, ro.labels, ro.kept, sae, result.axis[raw_layer(sae_hook(sae))], sae_path=str(path),
                               drop_empty=cfg.drop_empty_roles, top=cfg.top_features,
                               stats_dir=cfg.feature_stats if path == cfg.sae else None)
        fsep = separation(fa.projections[scored][:, None], result.is_default[scored])
        fa.stats["separation"] = {k: float(v[0]) for k, v in fsep.items()}
        fas.append(fa)
    if cfg.sae:
        result.feature = fas.pop(0)
    result.feature_band = fas


def _save(result: AssistantAxis, out: Path) -> None:
    """The artifact, a summary figure, and the headline statistics as JSON."""
    stats = result.stats
    result.save(out)
    plot_axis(result, out / "axis_summary.png")
    write_json(out / "axis_summary.json", {k: stats[k] for k in ("pca", "separation", "filter", "monitor_layer")}
               | ({"sae": result.feature.stats} if result.feature is not None else {})
               | ({"sae_band": {f.hook_name: f.stats for f in result.feature_band}} if result.feature_band else {}))


def plot_axis(ax: AssistantAxis, path) -> None:
    """cos(axis, PC1) and filter effect per layer; separation per layer; roles vs default on PC1/PC2."""
    from matplotlib.figure import Figure  # not pyplot: no global backend switch, no figure registry

    s = ax.stats
    L = list(range(ax.n_layers))
    panels = 4 if ax.feature is not None else 3
    fig = Figure(figsize=(4.3 * panels, 3.8))
    axs = fig.subplots(1, panels)
    axs[0].plot(L, s["pca"]["cos_axis_pc1"], "o-", ms=3, label="cos(axis, PC1)")
    axs[0].plot(L, s["filter"]["cos_axis_filtered_vs_unfiltered"], "s--", ms=3, label="cos(filtered, unfiltered)")
    axs[0].plot(L, [e[0] for e in s["pca"]["explained"]], "^:", ms=3, label="PC1 variance share")
    axs[0].set(xlabel="layer", ylim=(-0.05, 1.05), title="Axis vs persona space")
    axs[0].legend(fontsize=7)
    axs[1].plot(L, s["separation"]["d_prime"], "o-", ms=3, label="d' default vs roles")
    axs[1].axvline(s["monitor_layer"], color="grey", ls=":", label=f"monitor layer {s['monitor_layer']}")
    axs[1].set(xlabel="layer", title="Separation of rollout projections")
    axs[1].legend(fontsize=7)
    l = s["monitor_layer"]
    pcs = ax.role_means[:, l] - ax.role_means[:, l].mean(0)
    _, _, vh = torch.linalg.svd(pcs.double(), full_matrices=False)
    pc2 = vh[1].float() if vh.shape[0] > 1 else torch.zeros_like(vh[0]).float()
    pc1 = ax.extra["pc1"][l]
    xy = torch.stack([pcs @ pc1, pcs @ pc2], -1)
    cat_of = s.get("role_categories", {})
    for cat in dict.fromkeys(cat_of.get(n, "role") for n in ax.role_names):
        idx = [i for i, n in enumerate(ax.role_names) if cat_of.get(n, "role") == cat]
        axs[2].scatter(xy[idx, 0], xy[idx, 1], s=10, alpha=0.7, label=cat)
    d = ax.default_mean[l] - ax.role_means[:, l].mean(0)
    axs[2].scatter([float(d @ pc1)], [float(d @ pc2)], marker="*", s=160, color="red", label="default Assistant")
    axs[2].set(xlabel="PC1", ylabel="PC2", title=f"Persona space, layer {l}")
    axs[2].legend(fontsize=7)
    if ax.feature is not None:
        fs = ax.feature.stats
        axs[3].semilogx(fs["recon_k"], fs["recon_cos"], "o-", ms=3)
        axs[3].set(xlabel="top-k features", ylabel="cos(raw axis, decoded top-k)", ylim=(-0.05, 1.05),
                   title=f"SAE basis ({ax.feature.hook_name})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
