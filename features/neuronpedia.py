"""Export chosen SAE features in the layout Neuronpedia's bulk importer reads, from our feature analysis.

Neuronpedia imports one directory per (model, source) (its webapp's `api/admin/import` route; the same
layout SAEDashboard's `neuronpedia_export` writes):

    OUT_DIR/{modelId}/{sourceId}/
        release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl     one record each
        features/batch-0.jsonl.gz       one `Neuron` record per feature
        activations/batch-0.jsonl.gz    one `Activation` record per example context

`sourceId` is `{layer}-{source_set}` (e.g. `15-res-steerlens`), and it is what a feature's `layer`
field holds. Field names and types are those of Neuronpedia's Prisma schema (`layer` and `index` are
strings there). A feature record carries the logit lens (`pos_str`/`pos_values`, `neg_str`/
`neg_values`: `features.logit_lens`), `frac_nonzero` (density), the activation histogram
(`freq_hist_data_bar_heights`/`_values`: our log-spaced bins, trimmed to the occupied range, at
their geometric centres), the histogram of the decoder row's effect on every vocabulary logit
(`logits_hist_data_*`), `vector` (the decoder row, what steering adds per unit), `hookName` and
`maxActApprox` (the maximum over the analysed tokens). Activation records are the analysis's top
contexts (`binMin` -1, `binMax` the maximum, `binContains` -1, as SAEDashboard marks its top group)
and its uniform sample of activating contexts (`binMin` 0, `binMax` the maximum, `binContains` 1:
all activations lie in that interval). Position 0 of each row is excluded as everywhere.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import torch

from lm.harvest import last_layer
from lm.io import atomic_dir, check_target
from saes.access import check_features, check_sae, decoder_rows, load_sae, registry_id, sae_digest
from features.analysis import AnalysisConfig, FeatureStats, analyze, dataset_tokens
from features.labels import token_text
from features.logit_lens import unembedding

# The creator id Neuronpedia's bulk imports fall back to (SAEDashboard's FALLBACK_CREATOR_ID): a
# local Neuronpedia instance has this user; pass creator_id for your own.
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"
BATCH = "batch-0"


@dataclass
class NeuronpediaConfig:
    model_id: str | None = None  # Neuronpedia model id (default: the SAE's model_name, else the model's)
    source_set: str = "res-steerlens"  # the SAE set; the source id is f"{layer}-{source_set}"
    creator_id: str = DEFAULT_CREATOR_ID
    creator_name: str = "steerlens"
    release: str = "steerlens"
    description: str = ""
    data: str = "default"  # the text analysed when no `stats`/`tokens` are given
    context_size: int = 128
    max_tokens: int | None = 1 << 16
    logits_hist_bins: int = 40


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.\-]+", "-", Path(str(name)).name.lower()).strip("-") or "model"


def _split_options(options: dict) -> tuple[NeuronpediaConfig, dict]:
    """NeuronpediaConfig fields, and the analysis inputs (stats, tokens, analysis, cache_dir, progress)."""
    names = {f.name for f in fields(NeuronpediaConfig)}
    extra = {"stats", "tokens", "analysis", "cache_dir", "progress"}
    unknown = sorted(set(options) - names - extra)
    if unknown:
        raise TypeError(f"export_features: unknown option(s) {unknown}; valid: {sorted(names | extra)}.")
    return (NeuronpediaConfig(**{k: v for k, v in options.items() if k in names}),
            {k: v for k, v in options.items() if k in extra})


def _stats(model, sae, hook: str, cfg: NeuronpediaConfig, stats=None, tokens=None, analysis: AnalysisConfig | None = None,
           cache_dir=None, progress: bool = True) -> FeatureStats:
    """The feature analysis to export: given (object or saved directory, checked to be of this SAE), or run now."""
    if stats is not None:
        stats = stats if isinstance(stats, FeatureStats) else FeatureStats.load(stats)
        key = stats.meta.get("key", {})
        if key.get("sae") != sae_digest(sae) or stats.meta.get("hook") != hook:
            raise ValueError("export_features: the given feature analysis was computed for another SAE "
                             f"(hook {stats.meta.get('hook')!r}); run features.analyze with this SAE, or drop stats=.")
        return stats
    rows = dataset_tokens(cfg.data if tokens is None else tokens, model.tokenizer, cfg.context_size, cfg.max_tokens)
    return analyze(model, sae, rows, analysis, cache_dir=cache_dir, progress=progress)


def _strs(tok, ids) -> list[str]:
    return [token_text(tok, i) for i in ids]


def _freq_hist(stats: FeatureStats, i: int) -> tuple[list[float], list[float]]:
    """(bar heights, bar values) of latent i's activation histogram, over its occupied bins."""
    h = stats.t["hist"][i].double()  # [under, bins..., over]
    e = stats.cfg.hist_edges().double()
    centers = torch.cat([e[:1] / 2, (e[:-1] * e[1:]).sqrt(), e[-1:]])
    nz = h.nonzero().flatten()
    if not len(nz):
        return [], []
    lo, hi = int(nz.min()), int(nz.max()) + 1
    return h[lo:hi].tolist(), centers[lo:hi].tolist()


def _logit_hists(model, rows: torch.Tensor, bins: int) -> list[tuple[list[float], list[float]]]:
    """(bar heights, bar values) of each decoder row's effect on every vocabulary logit."""
    W_U = unembedding(model)
    out = []
    with torch.no_grad():
        for r in rows:
            logits = (r.to(W_U.device, W_U.dtype) @ W_U).float().cpu()
            heights, edges = torch.histogram(logits, bins=bins)
            out.append((heights.tolist(), ((edges[:-1] + edges[1:]) / 2).tolist()))
    return out


def _feature_record(stats: FeatureStats, i: int, tok, base: dict, vector: list[float], lhist, hook: str) -> dict:
    max_act = float(stats.t["max_act"][i])
    heights, values = _freq_hist(stats, i)
    return {**base, "index": str(i), "maxActApprox": max_act, "hasVector": True, "vector": vector,
            "vectorLabel": None, "vectorDefaultSteerStrength": max_act, "hookName": hook,
            "pos_str": _strs(tok, stats.t["logit_pos_ids"][i]), "pos_values": stats.t["logit_pos_vals"][i].tolist(),
            "neg_str": _strs(tok, stats.t["logit_neg_ids"][i]), "neg_values": stats.t["logit_neg_vals"][i].tolist(),
            "frac_nonzero": float(stats.density[i]),
            "freq_hist_data_bar_heights": heights, "freq_hist_data_bar_values": values,
            "logits_hist_data_bar_heights": lhist[0], "logits_hist_data_bar_values": lhist[1]}


def _activation_records(stats: FeatureStats, i: int, tok, base: dict, data_source: str) -> list[dict]:
    max_act = float(stats.t["max_act"][i])
    out = []
    for kind, bins in (("top", (-1.0, max_act, -1.0)), ("random", (0.0, max_act, 1.0))):
        for j, ex in enumerate(stats.examples(i, kind)):
            values = [float(v) for v in ex["acts"]]
            top = max(range(len(values)), key=values.__getitem__)
            uid = hashlib.sha1(f"{base['modelId']}@{base['layer']}:{i}:{kind}{j}".encode()).hexdigest()[:24]
            out.append({**base, "id": f"c{uid}", "index": str(i), "tokens": _strs(tok, ex["tokens"]), "values": values,
                        "maxValue": values[top], "maxValueTokenIndex": top, "minValue": min(values),
                        "dataIndex": str(ex["row"]), "dataSource": data_source,
                        "binMin": bins[0], "binMax": bins[1], "binContains": bins[2],
                        "qualifyingTokenIndex": ex["center"]})
    return out


def _meta_records(model, sae, cfg: NeuronpediaConfig, model_id: str, source_id: str, stats: FeatureStats,
                  hook: str, now: str, data_name: str) -> dict[str, dict]:
    """The release, model, source-set and source records (Neuronpedia's Prisma fields only)."""
    who = {"creatorId": cfg.creator_id, "createdAt": now}
    release, sae_id = registry_id(sae) or (None, None)
    return {
        "release": {**who, "name": cfg.release, "description": cfg.description or f"{cfg.release} SAE features",
                    "descriptionShort": cfg.release, "creatorName": cfg.creator_name,
                    "creatorNameShort": cfg.creator_name, "visibility": "PUBLIC", "urls": []},
        "model": {**who, "id": model_id, "displayNameShort": model_id, "displayName": model_id,
                  "dimension": int(model.cfg.d_model), "visibility": "PUBLIC", "inferenceEnabled": False,
                  "instruct": "instruct" in model_id or model_id.endswith("-it"), "layers": int(model.cfg.n_layers),
                  "neuronsPerLayer": int(getattr(model.cfg, "d_mlp", None) or 0), "owner": cfg.creator_name,
                  "updatedAt": now},
        "sourceset": {**who, "modelId": model_id, "name": cfg.source_set, "hasDashboards": True, "visibility": "PUBLIC",
                      "description": cfg.description or f"steerlens SAE at {hook}", "type": "",
                      "creatorName": cfg.creator_name, "releaseName": cfg.release, "urls": []},
        "source": {**who, "id": source_id, "modelId": model_id, "setName": cfg.source_set, "hasDashboards": True,
                   "visibility": "PUBLIC", "saelensConfig": json.loads(json.dumps(sae.cfg.to_dict(), default=str)),
                   "saelensRelease": release, "saelensSaeId": sae_id, "num_prompts": int(stats.meta["n_rows"]),
                   "num_tokens_in_prompt": round(stats.n_tokens / max(int(stats.meta["n_rows"]), 1)),
                   "dataset": data_name, "notes": f"exported by steerlens from {hook}"},
    }


def _write_jsonl(path: Path, rows: list[dict], gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(gzip.compress(text, compresslevel=5) if gz else text)


def export_features(model, sae, out_dir: str | Path, features: list[int], overwrite: bool = False, **options) -> Path:
    """Write `features` of `sae` in Neuronpedia's import layout under `out_dir`; returns the source
    directory `out_dir/{modelId}/{sourceId}`. `out_dir` is built under a temp name and renamed, and
    an existing one is refused unless `overwrite`.

    Options: the `NeuronpediaConfig` fields (model_id, source_set, creator_id, data, max_tokens, ...),
    and `stats` (a `FeatureStats` or saved analysis of this SAE), `tokens` ([rows, seq] to analyse),
    `analysis` (an `AnalysisConfig`), `cache_dir` (where `analyze` caches), `progress`."""
    cfg, inputs = _split_options(options)
    out_dir = check_target(out_dir, overwrite)
    sae = load_sae(sae)
    hook = check_sae(model, sae, what="export_features")
    ids = check_features(sae, features, "export_features", nonempty=True)
    stats = _stats(model, sae, hook, cfg, **inputs)
    model_id = _slug(cfg.model_id or sae.cfg.metadata.model_name or model.cfg.model_name)
    source_id = f"{last_layer([hook]) or 0}-{cfg.source_set}"
    now = datetime.now(timezone.utc).isoformat()
    base = {"modelId": model_id, "layer": source_id, "creatorId": cfg.creator_id, "createdAt": now}
    rows = decoder_rows(sae, torch.tensor(ids, device=sae.W_dec.device)).detach().float().cpu()
    lhists = _logit_hists(model, rows, cfg.logits_hist_bins)
    tok = model.tokenizer
    feats = [_feature_record(stats, i, tok, {**base, "sourceSetName": cfg.source_set}, rows[k].tolist(), lhists[k], hook)
             for k, i in enumerate(ids)]
    data_name = "tokens" if inputs.get("tokens") is not None else str(cfg.data)
    acts = [a for i in ids for a in _activation_records(stats, i, tok, base, data_name)]
    meta = _meta_records(model, sae, cfg, model_id, source_id, stats, hook, now, data_name)
    with atomic_dir(out_dir, overwrite) as tmp:
        src = tmp / model_id / source_id
        for name, record in meta.items():
            _write_jsonl(src / f"{name}.jsonl", [record], gz=False)
        _write_jsonl(src / "features" / f"{BATCH}.jsonl.gz", feats, gz=True)
        _write_jsonl(src / "activations" / f"{BATCH}.jsonl.gz", acts, gz=True)
    return Path(out_dir) / model_id / source_id
