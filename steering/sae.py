"""Load SAELens SAEs for steering, check they fit the model, and read their chosen concept latents.

SAEs are loaded once per directory (cached by path and weight-file mtime) and remember their path
so interventions built from them serialise as `{"sae": path, ...}`. A directory may hold a
`concepts.json` written by the features stage: `{concept: {"latent", "max_activation", ...}}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from jaxtyping import Float

from lm.io import read_json
from saes.io import load_sae  # the one loader (cached, eval, remembers its path); re-exported
from saes.pretrained import DEFAULT_NAME, PRETRAINED_DIR

DEFAULT_SAE = str(PRETRAINED_DIR / DEFAULT_NAME)  # absolute: notebooks run from notebooks/
SUPPORTED_NORMS = ("none", "expected_average_only_in")  # both are identity at inference


def sae_path(sae) -> str | None:
    return getattr(sae, "_steerlens_path", None)


def resolve(sae) -> object:
    """An SAE from a path or an already loaded SAE object."""
    if isinstance(sae, (str, Path)):
        return load_sae(sae)
    if not hasattr(sae, "encode") or not hasattr(sae, "W_dec"):
        raise TypeError(f"Expected an SAE directory or a sae_lens.SAE, got {type(sae).__name__}.")
    return sae


def sae_hook(sae) -> str:
    name = sae.cfg.metadata.hook_name
    if not name:
        raise ValueError("This SAE's cfg.json has no metadata.hook_name, so we cannot tell where it reads "
                         "the model. Set cfg.metadata.hook_name (e.g. 'blocks.15.hook_resid_post') and re-save.")
    return name


def prepare(sae, model, hook: str | None, what: str):
    """Check the SAE fits `model` at `hook` and move it to the model's device; returns (sae, hook)."""
    sae = resolve(sae)
    trained = sae_hook(sae)
    hook = hook or trained
    if hook != trained:
        raise ValueError(f"{what}: the SAE was trained on {trained!r}, not {hook!r}. Use an SAE trained "
                         f"on {hook!r}, or leave hook unset to steer at {trained!r}.")
    if hook not in model.hook_dict:
        raise ValueError(f"{what}: the SAE's hook {hook!r} does not exist in this model "
                         f"({model.cfg.n_layers} layers): it was trained on a different model.")
    if sae.cfg.d_in != model.cfg.d_model:
        raise ValueError(f"{what}: the SAE reads vectors of size {sae.cfg.d_in}, the model's residual "
                         f"stream has size {model.cfg.d_model}: it was trained on a different model.")
    if sae.cfg.normalize_activations not in SUPPORTED_NORMS or sae.cfg.reshape_activations != "none":
        raise ValueError(f"{what}: SAEs with normalize_activations={sae.cfg.normalize_activations!r} / "
                         f"reshape_activations={sae.cfg.reshape_activations!r} are not supported; fold the "
                         "normalisation into the weights first (sae.fold_activation_norm_scaling_factor).")
    device = next(model.original_model.parameters()).device
    if sae.W_dec.device != device:
        sae.to(device)
    return sae, hook


def decoder_rows(sae, idx: torch.Tensor) -> Float[torch.Tensor, "k d"]:
    """What one unit of each chosen feature adds to the reconstruction (decoder-norm rescaling included)."""
    rows = sae.W_dec[idx]
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        rows = rows / rows.norm(dim=-1, keepdim=True)
    return rows


def _plain_topk(sae) -> bool:
    """A TopK SAE whose encode is exactly relu(topk(W_enc x + b_enc)), with nobody hooked into it."""
    if type(sae.activation_fn).__name__ != "TopK" or getattr(sae.activation_fn, "use_sparse_activations", False):
        return False
    hooked = any(h._forward_hooks for h in (sae.hook_sae_input, sae.hook_sae_acts_pre, sae.hook_sae_acts_post))
    return not hooked and sae.cfg.normalize_activations in SUPPORTED_NORMS and sae.cfg.reshape_activations == "none"


def feature_reader(sae, idx: torch.Tensor) -> Callable[[torch.Tensor], Float[torch.Tensor, "... k"]]:
    """A function x -> activations of features `idx` only, equal to `sae.encode(x)[..., idx]`.

    Clamping decodes only the change, so per decoding step the SAE's cost is its encode. For plain
    TopK SAEs a feature is active iff its pre-activation reaches the k-th largest, which skips the
    dense scatter and SAELens's hook calls (bench_steer: this is what the clamp ratio pays for).
    Anything else goes through the SAE's own encode.
    """
    if not _plain_topk(sae):
        return lambda x: sae.encode(x)[..., idx]
    k = int(sae.activation_fn.k)
    shift = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
    scale = sae.W_dec.norm(dim=-1) if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False) else None

    def read(x):
        x2 = x.reshape(-1, x.shape[-1])
        pre = torch.addmm(sae.b_enc, x2 - shift if shift is not None else x2, sae.W_enc)
        if scale is not None:
            pre = pre * scale
        kth = pre.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        sel = pre[:, idx]
        f = torch.where(sel >= kth, sel.relu(), torch.zeros_like(sel))
        return f.reshape(*x.shape[:-1], len(idx))
    return read


def check_features(sae, features, what: str) -> list[int]:
    ids = list(features)
    bad = [f for f in ids if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < sae.cfg.d_sae]
    if bad:
        raise KeyError(f"{what}: unknown feature id(s) {bad[:5]}; this SAE has features 0..{sae.cfg.d_sae - 1}.")
    if not ids:
        raise ValueError(f"{what}: no features given.")
    return ids


def load_concepts(path: str | Path = DEFAULT_SAE) -> dict[str, dict]:
    """`{concept: {"latent", "max_activation", "auroc_heldout"}}` from an SAE directory's concepts.json."""
    file = Path(path) / "concepts.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} does not exist: the concept latents for this SAE have not been chosen yet. Run the "
            "features stage on it, or pass --latent and --max-activation explicitly.")
    concepts = read_json(file)
    for name, c in concepts.items():
        if "latent" not in c or "max_activation" not in c:
            raise ValueError(f"{file}: concept {name!r} needs 'latent' and 'max_activation'; got {sorted(c)}.")
    return concepts


def max_activations_from_concepts(path: str | Path, features: list[int]) -> dict[int, float]:
    """Max activations of `features` as recorded in the SAE directory's concepts.json."""
    known = {int(c["latent"]): float(c["max_activation"]) for c in load_concepts(path).values()}
    missing = [f for f in features if f not in known]
    if missing:
        raise KeyError(f"relative clamp: no max activation for feature(s) {missing} in {Path(path) / 'concepts.json'}; "
                       "pass max_activations={feature: value} explicitly.")
    return {f: known[f] for f in features}


def concept_latent(sae_dir: str | Path, concept: str, latent: int | None = None,
                   max_activation: float | None = None) -> tuple[int, float]:
    """(latent id, max activation) for `concept`: given explicitly, else from the SAE's concepts.json."""
    if latent is not None and max_activation is not None:
        return int(latent), float(max_activation)
    if latent is not None:  # max activation of that latent, wherever concepts.json records it
        return int(latent), max_activations_from_concepts(sae_dir, [int(latent)])[int(latent)]
    concepts = load_concepts(sae_dir)
    if concept not in concepts:
        raise KeyError(f"{Path(sae_dir) / 'concepts.json'} has no concept {concept!r} (it has {sorted(concepts)}); "
                       "pass the latent id and max activation explicitly.")
    c = concepts[concept]
    return int(c["latent"]), float(max_activation if max_activation is not None else c["max_activation"])
