"""The chosen concept latents of an SAE: written by concept search, read by steering.

An SAE directory may hold `concepts.json`, `{concept: {"latent", "max_activation",
"auroc_heldout", "auroc_selection", "label", "max_activation_data"}}`. `max_activation` is the
latent's maximum over the SAE's training data, the unit a relative clamp multiplies. This module
is the one writer and the one reader of that file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from lm.io import read_json, write_json
from saes.access import DEFAULT_SAE, check_features, check_sae, feature_acts
from features.analysis import FeatureStats, dataset_tokens
from features.concept_search import ConceptResult

FILE = "concepts.json"
NORMS = "norms.json"  # {"residual_norm_median", "a_max_median", ...}: the strength units of steering at this SAE


def latent_max_activations(model, sae, tokens, latents, batch_size: int = 16, progress: bool = True) -> dict[int, float]:
    """Each latent's maximum activation over token rows, first position (attention sink) excluded."""
    latents = check_features(sae.cfg.d_sae, latents)
    hook = check_sae(model, sae)
    best = torch.zeros(len(latents))
    for a in tqdm(range(0, tokens.shape[0], batch_size), desc="max activation", disable=not progress):
        _, f = feature_acts(model, sae, tokens[a:a + batch_size], hook)
        best = torch.maximum(best, f[:, 1:, latents].float().cpu().amax((0, 1)))
    return {i: float(v) for i, v in zip(latents, best)}


def corpus_stats(model, sae, tokens, latents: list[int] = (), batch_size: int = 16,
                 progress: bool = True) -> tuple[dict, dict[int, float]]:
    """One pass over token rows (position 0, the attention sink, excluded): the SAE's strength units
    (median residual norm at its hook, median a_max = largest feature activation per token, median
    decoder norm) and the max activation of each of `latents`."""
    hook = check_sae(model, sae)
    latents = check_features(sae.cfg.d_sae, list(latents)) if len(latents) else []
    norms, amax, best = [], [], torch.zeros(len(latents))
    for a in tqdm(range(0, tokens.shape[0], batch_size), desc="corpus stats", disable=not progress):
        x, f = feature_acts(model, sae, tokens[a:a + batch_size], hook)
        norms.append(x[:, 1:].float().norm(dim=-1).flatten().cpu())
        amax.append(f[:, 1:].float().amax(-1).flatten().cpu())
        if latents:
            best = torch.maximum(best, f[:, 1:, latents].float().cpu().amax((0, 1)))
    norms, amax = torch.cat(norms), torch.cat(amax)
    units = {"hook": hook, "residual_norm_median": float(norms.median()), "a_max_median": float(amax.median()),
             "decoder_norm_median": float(sae.W_dec.detach().float().norm(dim=-1).median()),
             "n_tokens": int(norms.numel())}
    return units, {i: float(v) for i, v in zip(latents, best)}


def write_sae_norms(sae_dir: str | Path, units: dict) -> Path:
    """`norms.json` beside the SAE: the units steering strengths are recorded in (see `corpus_stats`)."""
    path = Path(sae_dir) / NORMS
    write_json(path, units)
    return path


def sae_norms(sae_dir: str | Path) -> dict:
    """The SAE directory's norms.json (see `write_sae_norms`)."""
    file = Path(sae_dir) / NORMS
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: run `steerlens find --write-concepts --sae {sae_dir}` "
                                "(it writes the SAE's strength units), or pass the unit explicitly.")
    return read_json(file)


def write_concepts_json(sae_dir: str | Path, results: list[ConceptResult], model, sae, dataset="default",
                        context_size: int = 128, max_tokens: int | None = None, data_name: str | None = None,
                        progress: bool = True) -> dict:
    """Merge `{concept: {"latent", "max_activation", "auroc_heldout"}}` into `sae_dir/concepts.json`.

    `max_activation` is the latent's maximum over `dataset` (the SAE's training data: the unit that
    relative clamping multiplies). `dataset` is a source name or file, a [rows, seq] token tensor,
    or a `FeatureStats` computed over that data (then no forward pass is needed); `data_name` is
    recorded as `max_activation_data` (default: the source name, or the data's hash).
    """
    if not results:
        raise ValueError("No concept results to write.")
    latents = sorted({r.best.latent for r in results})
    if isinstance(dataset, FeatureStats):
        if dataset.d_sae != sae.cfg.d_sae:
            raise ValueError(f"The feature stats describe {dataset.d_sae} latents but the SAE has {sae.cfg.d_sae}.")
        maxima = {i: float(dataset.t["max_act"][i]) for i in latents}
        source = f"{dataset.n_tokens} tokens, sha256 {dataset.meta['key']['data_sha256']}"
    else:
        maxima = latent_max_activations(model, sae, dataset_tokens(dataset, model.tokenizer, context_size, max_tokens),
                                        latents, progress=progress)
        source = dataset if isinstance(dataset, str) else f"{dataset.numel()} tokens"
        source += f" (max_tokens {max_tokens})" if max_tokens and isinstance(dataset, str) else ""
    path = Path(sae_dir) / FILE
    table = read_json(path) if path.is_file() else {}
    for r in results:
        table[r.name] = {"latent": r.best.latent, "max_activation": maxima[r.best.latent],
                         "auroc_heldout": r.best.auroc_heldout, "auroc_selection": r.best.auroc_selection,
                         "label": r.best.label, "max_activation_data": data_name or source}
    write_json(path, table)
    return table


def load_concept_latents(sae_dir: str | Path = DEFAULT_SAE) -> dict[str, dict]:
    """`{concept: {"latent", "max_activation", "auroc_heldout", ...}}` from an SAE directory's concepts.json."""
    file = Path(sae_dir) / FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} does not exist: the concept latents for this SAE have not been chosen yet. Run the "
            "features stage on it, or pass --latent and --max-activation explicitly.")
    concepts = read_json(file)
    for name, c in concepts.items():
        if "latent" not in c or "max_activation" not in c:
            raise ValueError(f"{file}: concept {name!r} needs 'latent' and 'max_activation'; got {sorted(c)}.")
    return concepts


def concept_max_activations(sae_dir: str | Path, features: list[int]) -> dict[int, float]:
    """Max activations of `features` as recorded in the SAE directory's concepts.json."""
    known = {}
    for c in load_concept_latents(sae_dir).values():  # chosen latents, and every measured candidate
        for x in [c] + list(c.get("candidates", [])):
            known.setdefault(int(x["latent"]), float(x["max_activation"]))
    missing = [f for f in features if f not in known]
    if missing:
        raise KeyError(f"relative clamp: no max activation for feature(s) {missing} in {Path(sae_dir) / FILE}; "
                       "pass max_activations={feature: value} explicitly.")
    return {f: known[f] for f in features}


def concept_latent(sae_dir: str | Path, concept: str, latent: int | None = None,
                   max_activation: float | None = None) -> tuple[int, float]:
    """(latent id, max activation) for `concept`: given explicitly, else from the SAE's concepts.json."""
    if latent is not None and max_activation is not None:
        return int(latent), float(max_activation)
    if latent is not None:  # max activation of that latent, wherever concepts.json records it
        return int(latent), concept_max_activations(sae_dir, [int(latent)])[int(latent)]
    concepts = load_concept_latents(sae_dir)
    if concept not in concepts:
        raise KeyError(f"{Path(sae_dir) / FILE} has no concept {concept!r} (it has {sorted(concepts)}); "
                       "pass the latent id and max activation explicitly.")
    c = concepts[concept]
    return int(c["latent"]), float(max_activation if max_activation is not None else c["max_activation"])
