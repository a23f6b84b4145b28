"""Compute the Assistant Axis end to end: rollouts -> activations -> filter -> axis, PCA, stats.

Everything lands in one directory: cached rollouts and activations (resumable), transcripts with
their adherence verdicts, the axis artifact (`axis.safetensors`, `axis.json`, `config.json`), the
optional SAE-basis axis, and a summary figure. `scripts/compute_axis.py` is the command line.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lm.generate import GenerationConfig
from lm.io import write_json
from lm.model import EMBEDDED, model_hash

from axis import data
from axis.artifact import AssistantAxis
from axis.compute import (assistant_axis, cosine, default_mean, monitor_layer, pca, project, role_means,
                          separation)
from axis.rollouts import DEFAULT, generate_rollouts, harvest_rollouts, make_specs, save_transcripts

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
    harvest_batch_size: int = 16
    chunk_size: int = 128  # rollouts per cache chunk (at least one generation batch)
    adherence_filter: str = "assistant_lexicon"
    drop_empty_roles: bool = False
    n_pcs: int = 10
    sae: str | None = None  # SAELens directory for the SAE-basis axis
    band_saes: list[str] = field(default_factory=list)  # more SAEs (one per capping-band layer)
    feature_stats: str | None = None  # a features analysis directory with labels (optional)
    top_features: int = 20

    def __post_init__(self):
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


def build_axis(model, cfg: AxisConfig, out_dir: str | Path, progress: bool = True) -> AssistantAxis:
    out = Path(out_dir)
    t0 = time.time()
    roles = data.select_roles(data.load_roles(), cfg.roles_per_category, cfg.roles)
    questions = data.load_questions()[:cfg.n_questions]
    name = display_name(model, cfg)
    specs = make_specs(roles, data.load_default_prompts(name), questions, cfg.prompts_per_role)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed, batch_size=cfg.gen_batch_size)
    records = generate_rollouts(model, specs, gen, out / "rollouts", max(cfg.chunk_size, cfg.gen_batch_size), progress)
    texts = {s.id: records[s.id]["text"] for s in specs}
    acts = harvest_rollouts(model, specs, texts, out / "activations", cfg.harvest_batch_size, progress=progress)

    by_role = {r.name: r for r in roles}
    labels = [s.role for s in specs]
    valid = ~acts.isnan().any(-1).any(-1)  # empty replies have no response tokens
    if cfg.adherence_filter == "none":
        adhere = torch.ones(len(specs), dtype=torch.bool)
    else:
        adhere = torch.tensor([data.adheres(texts[s.id], by_role.get(s.role)) for s in specs])
    kept = valid & adhere
    for s, v, a in zip(specs, valid.tolist(), adhere.tolist()):
        records[s.id] = {**records[s.id], "valid": v, "adheres": a}
    save_transcripts(out / "transcripts.json", specs, records)

    names, per_role, counts = role_means(acts, labels, kept, drop_empty=cfg.drop_empty_roles)
    dflt = default_mean(acts[valid], [l for l, v in zip(labels, valid.tolist()) if v])
    axis = assistant_axis(dflt, per_role)
    _, per_role_all, _ = role_means(acts, labels, valid, drop_empty=True)
    axis_unfiltered = assistant_axis(dflt, per_role_all)
    p = pca(per_role, axis, dflt, cfg.n_pcs)
    proj = project(acts.nan_to_num(), axis)
    proj[~valid] = float("nan")
    is_def = torch.tensor([l == DEFAULT for l in labels])
    in_role = torch.tensor([l in counts for l in labels])  # roles dropped as empty do not count
    sep = separation(proj[kept & (is_def | in_role)], is_def[kept & (is_def | in_role)])
    mon = monitor_layer(sep["d_prime"])

    cats = {}
    for s, k, v in zip(specs, kept.tolist(), valid.tolist()):
        if s.role != DEFAULT:
            c = cats.setdefault(s.category, {"total": 0, "valid": 0, "kept": 0})
            c["total"] += 1
            c["valid"] += v
            c["kept"] += k
    n_role = sum(1 for s in specs if s.role != DEFAULT)
    stats = {
        "n_rollouts": len(specs), "n_default": int(is_def.sum()), "n_role_rollouts": n_role,
        "n_empty_replies": int((~valid).sum()),  # no response tokens (or unrenderable)
        "n_roles": len(names), "n_questions": len(questions),
        "filter": {"kind": cfg.adherence_filter,
                   "kept_role_rollouts": int((kept & ~is_def).sum()),
                   "kept_fraction": float((kept & ~is_def).sum()) / max(n_role, 1),
                   "by_category": cats, "by_role": counts,
                   "ai_roles_exempt": [r.name for r in roles if data.ai_role(r)],
                   "cos_axis_filtered_vs_unfiltered": cosine(axis, axis_unfiltered).tolist()},
        "axis_norm": axis.norm(dim=-1).tolist(),
        "pca": {"explained": p["explained"].tolist(), "n_pcs_70": p["n_pcs_70"],
                "cos_axis_pc1": p["cos_axis_pc1"].tolist(), "default_pc1": p["default_pc1"].tolist(),
                "default_pc1_fraction_above_roles": p["default_pc1_fraction_above_roles"].tolist(),
                "default_pc1_z": p["default_pc1_z"].tolist()},
        "separation": _lists(sep),
        "monitor_layer": mon,
        "monitor_layer_reason": "largest d' between default and role rollout projections (layers 1..n-2)",
        "rollout_ids": [s.id for s in specs],
        "rollout_roles": labels,
        "role_categories": {r.name: r.category for r in roles},
        "seconds": round(time.time() - t0, 1),
    }
    result = AssistantAxis(axis=axis, default_mean=dflt, role_means=per_role, role_names=names, projections=proj,
                           is_default=is_def, kept=kept, model=model_hash(model), model_name=name,
                           extra={"axis_unfiltered": axis_unfiltered, "pc1": p["pc1"], "role_pc1": p["role_pc1"]},
                           stats=stats, config={**cfg.to_dict(), "generation": gen.to_dict()})
    if cfg.sae or cfg.band_saes:
        from axis.sae_basis import feature_axis_from, feature_means, load_sae, raw_layer, sae_hook

        paths = ([cfg.sae] if cfg.sae else []) + list(cfg.band_saes)
        saes = [load_sae(p) for p in paths]
        feats = feature_means(model, saes, specs, texts, cfg.harvest_batch_size, progress)
        fas = []
        for path, sae, f in zip(paths, saes, feats):
            fa = feature_axis_from(f, labels, kept, sae, axis[raw_layer(sae_hook(sae))], sae_path=str(path),
                                   drop_empty=cfg.drop_empty_roles, top=cfg.top_features,
                                   stats_dir=cfg.feature_stats if path == cfg.sae else None)
            fsep = separation(fa.projections[kept & (is_def | in_role)][:, None], is_def[kept & (is_def | in_role)])
            fa.stats["separation"] = {k: float(v[0]) for k, v in fsep.items()}
            fas.append(fa)
        if cfg.sae:
            result.feature = fas.pop(0)
        result.feature_band = fas
    result.save(out)
    plot_axis(result, out / "axis_summary.png")
    write_json(out / "axis_summary.json", {k: stats[k] for k in ("pca", "separation", "filter", "monitor_layer")}
               | ({"sae": result.feature.stats} if result.feature is not None else {})
               | ({"sae_band": {f.hook_name: f.stats for f in result.feature_band}} if result.feature_band else {}))
    return result


def plot_axis(ax: AssistantAxis, path) -> None:
    """cos(axis, PC1) and filter effect per layer; separation per layer; roles vs default on PC1/PC2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = ax.stats
    L = list(range(ax.n_layers))
    panels = 4 if ax.feature is not None else 3
    fig, axs = plt.subplots(1, panels, figsize=(4.3 * panels, 3.8))
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
    plt.close(fig)


def open_model(name: str, device: str | None = None):
    """`lm.model.load_model`, plus 'tiny' for the 4-layer random test model (smoke runs)."""
    if name == "tiny":
        from lm.testing import tiny_model

        torch.set_num_threads(1)  # a second thread only spin-waits on this tiny model
        return tiny_model()
    from lm.model import load_model

    return load_model(name, device=device)
