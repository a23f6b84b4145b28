"""The one way every package reaches an SAE: load it, find its hook, check it fits a model, read features.

`features`, `steering` and `axis` import these functions and define none of their own, so a
mismatch (another model's SAE, a hook the model lacks, a feature id past `d_sae`) fails here with
one message and one error type wherever it is used.

Loaded SAEs are cached per (directory, device, weights mtime) and never moved in place: asking for
an SAE on another device gives a cached copy there, so a notebook's CPU SAE stays on the CPU when
a GPU model steers with it. Each SAE loaded from disk remembers its directory in a weak registry
(not an attribute on SAELens's object), which is how interventions built from it serialise.

SAEs from SAELens's pretrained registry (`load_registry_sae(release, sae_id)`) remember the source
string `sae_lens:RELEASE/SAE_ID`, which `load_sae` accepts back, so interventions built from them
serialise too. Offline, the registry SAE is read from the HF cache or refused with how to fix it.
"""

from __future__ import annotations

import copy
import hashlib
import operator
import weakref
from pathlib import Path
from typing import Callable

import torch
from jaxtyping import Float, Int
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

from lm.harvest import forward_batch
from saes.pretrained import DEFAULT_NAME, PRETRAINED_DIR

__all__ = ["DEFAULT_SAE", "REGISTRY_PREFIX", "FeatureIdError", "check_editable", "check_features", "check_sae",
           "feature_id", "decoder_rows", "encode", "feature_acts", "feature_reader", "encoder_data", "read_sae", "topk_parts", "topk_read", "load_registry_sae", "load_sae", "on_device",
           "registry_id", "sae_digest", "sae_hook", "sae_path"]

DEFAULT_SAE: Path = PRETRAINED_DIR / DEFAULT_NAME  # absolute, so notebooks run from notebooks/ find it
D_MODEL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_embed")
EDITABLE_NORMS = ("none", "expected_average_only_in")  # both are the identity at inference
REGISTRY_PREFIX = "sae_lens:"  # "sae_lens:RELEASE/SAE_ID", how a registry SAE is recorded and loaded back
REGISTRY_TABLE = "https://decoderesearch.github.io/SAELens/latest/pretrained_saes/"

_CACHE: dict[tuple[str, str, float], object] = {}
_PATHS: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()
_COPIES: "weakref.WeakKeyDictionary[object, dict[str, object]]" = weakref.WeakKeyDictionary()


class FeatureIdError(IndexError):
    """A feature id that is not an integer in [0, d_sae)."""


def _is_sae(obj) -> bool:
    return hasattr(obj, "encode") and hasattr(obj, "W_dec") and hasattr(obj, "cfg")


def load_sae(sae, device: str | torch.device | None = None):
    """A `sae_lens.SAE` in eval mode with no grads, from a SAELens directory (cached), a registry
    source string `sae_lens:RELEASE/SAE_ID` (see `load_registry_sae`), or as given.

    With `device`, the SAE on that device (`on_device`: a cached copy, the original is not moved)."""
    if _is_registry_source(sae):
        sae = load_registry_sae(*_split_registry(str(sae)))
    elif isinstance(sae, (str, Path)):
        sae = _load_dir(Path(sae).expanduser())
    elif not _is_sae(sae):
        raise TypeError(f"Expected an SAE directory or a sae_lens.SAE, got {type(sae).__name__}.")
    return on_device(sae, device) if device is not None else sae


def _load_dir(path: Path):
    from sae_lens import SAE

    if not (path / SAE_CFG_FILENAME).is_file() or not (path / SAE_WEIGHTS_FILENAME).is_file():
        subs = sorted(p.parent.name for p in path.glob(f"*/{SAE_CFG_FILENAME}"))
        hint = (f" It holds several SAEs: {subs}; load one of those subdirectories." if subs else
                " Train one with scripts/train_sae.py, or pass the directory of an SAE saved with "
                "`sae.save_model(dir)`.")
        raise FileNotFoundError(f"{path} is not an SAE directory (SAELens format needs {SAE_CFG_FILENAME} and "
                                f"{SAE_WEIGHTS_FILENAME}).{hint}")
    key = (str(path.resolve()), "cpu", (path / SAE_WEIGHTS_FILENAME).stat().st_mtime)
    sae = _CACHE.get(key)
    if sae is None:
        sae = SAE.load_from_disk(str(path), device="cpu")
        sae.eval().requires_grad_(False)
        _PATHS[sae] = str(path)
        _CACHE[key] = sae
    return sae


def _is_registry_source(sae) -> bool:
    """`sae_lens:RELEASE/SAE_ID` (a directory of that name, should one exist, wins)."""
    return isinstance(sae, (str, Path)) and str(sae).startswith(REGISTRY_PREFIX) and not Path(sae).exists()


def _split_registry(source: str) -> tuple[str, str]:
    release, sep, sae_id = source[len(REGISTRY_PREFIX):].partition("/")
    if not sep or not release or not sae_id:
        raise ValueError(f"{source!r} is not a registry SAE: write it as '{REGISTRY_PREFIX}RELEASE/SAE_ID', "
                         f"e.g. '{REGISTRY_PREFIX}gpt2-small-res-jb/blocks.8.hook_resid_pre'.")
    return release, sae_id


def _registry_entry(release: str, sae_id: str):
    """SAELens's registry entry for `release`, after checking that it lists `sae_id`."""
    import difflib

    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    entry = directory.get(release)
    if entry is None:
        near = difflib.get_close_matches(release, list(directory), n=3)
        raise ValueError(f"Unknown SAELens release {release!r}." + (f" Did you mean {near}?" if near else "")
                         + f" The {len(directory)} releases are the keys of sae_lens.loading.pretrained_saes_directory"
                         f".get_pretrained_saes_directory() (table: {REGISTRY_TABLE}); an SAE directory on disk "
                         "loads with load_sae(DIR).")
    if sae_id not in entry.saes_map:
        ids = list(entry.saes_map)
        near = difflib.get_close_matches(sae_id, ids, n=3)
        shown = ids[:6] + (["..."] if len(ids) > 6 else [])
        raise ValueError(f"SAELens release {release!r} has no sae_id {sae_id!r}." + (f" Did you mean {near}?" if near else "")
                         + f" Its {len(ids)} ids ({shown}) are get_pretrained_saes_directory()[{release!r}].saes_map.")
    return entry


def load_registry_sae(release: str, sae_id: str, device: str | torch.device | None = None):
    """A pretrained SAE from SAELens's registry, resolved and fetched by SAELens (cached per process).

    It remembers the source `sae_lens:RELEASE/SAE_ID`, which `load_sae` accepts back. Offline
    (HF_HUB_OFFLINE=1, or no network) SAELens reads the HF cache; an SAE that is not there raises
    ConnectionError saying how to fetch it, or to pass its local directory instead."""
    source = f"{REGISTRY_PREFIX}{release}/{sae_id}"
    key = (source, "cpu", 0.0)
    sae = _CACHE.get(key)
    if sae is None:
        entry = _registry_entry(release, sae_id)
        sae = _from_hub(release, sae_id, entry)
        sae.eval().requires_grad_(False)
        _PATHS[sae] = source
        _CACHE[key] = sae
    return on_device(sae, device) if device is not None else sae


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """What the hub client raises when it can neither reach the hub nor find the file in its cache
    (mostly LocalEntryNotFoundError; raw transport errors from loaders that call the hub directly)."""
    import importlib

    from huggingface_hub.errors import LocalEntryNotFoundError

    errors: tuple[type[BaseException], ...] = (LocalEntryNotFoundError, ConnectionError)  # incl. OfflineModeIsEnabled
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors += (getattr(importlib.import_module(module), name),)
        except (ImportError, AttributeError):
            pass
    return errors


def _from_hub(release: str, sae_id: str, entry):
    from huggingface_hub import constants
    from sae_lens import SAE

    try:
        return SAE.from_pretrained(release, sae_id, device="cpu")
    except _unreachable_errors() as e:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "no network"
        folder = entry.saes_map[sae_id]
        raise ConnectionError(
            f"SAELens SAE {release}/{sae_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub "
            f"is unreachable ({why}). Fetch it where the hub is reachable (`hf download {entry.repo_id} --include "
            f"'{folder}/*'`) and copy that HF cache here (HF_HOME), or pass the SAE's local directory (cfg.json + "
            "sae_weights.safetensors) instead: load_sae(DIR), --sae DIR.") from e


def registry_id(sae) -> tuple[str, str] | None:
    """(release, sae_id) of an SAE loaded from SAELens's registry (or of its source string), else None."""
    source = sae if isinstance(sae, (str, Path)) else _PATHS.get(sae)
    return _split_registry(str(source)) if _is_registry_source(source) else None


def on_device(sae, device: str | torch.device):
    """`sae` on `device`: itself when it is there already, else a copy made once and cached."""
    device = torch.device(device)
    here = sae.W_dec.device
    if here.type == device.type and (device.index is None or here.index == device.index):
        return sae
    copies = _COPIES.setdefault(sae, {})
    key = str(device)
    if key not in copies:
        moved = copy.deepcopy(sae).to(device)
        moved.eval().requires_grad_(False)
        if sae in _PATHS:
            _PATHS[moved] = _PATHS[sae]
        copies[key] = moved
    return copies[key]


def sae_path(sae) -> str | None:
    """Where an SAE was loaded from: its directory, or `sae_lens:RELEASE/SAE_ID` for a registry SAE
    (both are what `load_sae` takes back; a path given as such is returned as a string)."""
    if isinstance(sae, (str, Path)):
        return str(sae)
    return _PATHS.get(sae)


def remember_path(sae, path: str | Path) -> None:
    """Record where an in-memory SAE now lives on disk (after `save_sae`), so it serialises."""
    _PATHS[sae] = str(path)


def sae_hook(sae) -> str:
    """The TransformerLens hook the SAE reads (`cfg.metadata.hook_name`)."""
    name = getattr(sae.cfg.metadata, "hook_name", None)
    if not name:
        raise ValueError("This SAE's cfg.json has no metadata.hook_name, so we cannot tell where it reads "
                         "the model; set metadata.hook_name (e.g. 'blocks.15.hook_resid_post') and re-save.")
    return name


def check_sae(model, sae, hook: str | None = None, what: str = "SAE") -> str:
    """The SAE's hook, after checking it is `hook` (when given), exists in `model` and has width d_in."""
    trained = sae_hook(sae)
    if hook is not None and hook != trained:
        raise ValueError(f"{what}: the SAE was trained on {trained!r}, not {hook!r}. Use an SAE trained "
                         f"on {hook!r}, or leave hook unset to use {trained!r}.")
    if trained not in model.hook_dict:
        raise ValueError(f"{what}: the SAE reads hook {trained!r}, which this model does not have "
                         f"({model.cfg.n_layers} layers, e.g. 'blocks.{model.cfg.n_layers - 1}.hook_resid_post'). "
                         "Was it trained on another model? Load the SAE trained for this model.")
    width = hook_width(model, trained)
    if width != sae.cfg.d_in:
        raise ValueError(f"{what}: the SAE reads vectors of size {sae.cfg.d_in} but {trained} has width {width} "
                         f"in this model (d_model {model.cfg.d_model}): the SAE belongs to another model.")
    return trained


def hook_width(model, hook: str) -> int:
    """Width of the activations at `hook` (d_model for residual-stream hooks, else one tiny forward)."""
    if hook.endswith(D_MODEL_HOOKS):
        return int(model.cfg.d_model)
    ids = torch.tensor([[model.tokenizer.eos_token_id or 0] * 2])
    return int(forward_batch(model, ids, [hook])[hook].shape[-1])


def check_editable(sae, what: str = "SAE") -> None:
    """Steering adds `(f' - f) @ W_dec` to the residual, which holds only without input normalisation."""
    if sae.cfg.normalize_activations not in EDITABLE_NORMS or sae.cfg.reshape_activations != "none":
        raise ValueError(f"{what}: SAEs with normalize_activations={sae.cfg.normalize_activations!r} / "
                         f"reshape_activations={sae.cfg.reshape_activations!r} are not supported; fold the "
                         "normalisation into the weights first (sae.fold_activation_norm_scaling_factor).")


def feature_id(f, what: str = "features", digit_strings: bool = False) -> int:
    """One feature id as an int (numpy/torch ints too; with `digit_strings`, JSON's string keys);
    anything else raises `FeatureIdError`."""
    if digit_strings and isinstance(f, str) and f.isdigit():
        return int(f)
    try:
        if isinstance(f, bool):
            raise TypeError
        return operator.index(f)
    except TypeError:
        raise FeatureIdError(f"{what}: feature id {f!r} is not an integer; feature ids are ints.") from None


def check_features(sae_or_width, features, what: str = "features", nonempty: bool = False) -> list[int]:
    """Feature ids as ints, each in [0, d_sae); anything else raises `FeatureIdError`."""
    d_sae = sae_or_width if isinstance(sae_or_width, int) else int(sae_or_width.cfg.d_sae)
    ids = [feature_id(f, what) for f in features]
    bad = [f for f in ids if not 0 <= f < d_sae]
    if bad:
        raise FeatureIdError(f"{what}: feature id {bad[0]} is out of range: this SAE has d_sae={d_sae} latents, "
                             f"valid ids are 0..{d_sae - 1}.")
    if nonempty and not ids:
        raise ValueError(f"{what}: no features given.")
    return ids


def decoder_rows(sae, idx: Int[torch.Tensor, " k"] | None = None) -> Float[torch.Tensor, "k d"]:
    """What one unit of each chosen feature (all with idx=None) adds to the reconstruction,
    decoder-norm rescaling included."""
    rows = sae.W_dec if idx is None else sae.W_dec[idx]
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        rows = rows / rows.norm(dim=-1, keepdim=True)
    return rows


def encode(sae, acts: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
    """Feature activations of `acts` (moved to the SAE's device and dtype), without grads."""
    if acts.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"Activations have width {acts.shape[-1]} but the SAE expects d_in={sae.cfg.d_in}.")
    with torch.no_grad():
        return sae.encode(acts.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype))


def feature_acts(model, sae, ids: Int[torch.Tensor, "b s"], hook: str | None = None,
                 attention_mask: Int[torch.Tensor, "b s"] | None = None
                 ) -> tuple[Float[torch.Tensor, "b s d_in"], Float[torch.Tensor, "b s d_sae"]]:
    """Residual activations at the SAE's hook and the SAE's feature activations, for one batch."""
    hook = hook or sae_hook(sae)
    resid = forward_batch(model, ids, [hook], attention_mask=attention_mask)[hook]
    return resid, encode(sae, resid)


def _plain_topk(sae) -> bool:
    """A TopK SAE whose encode is exactly relu(topk(W_enc x + b_enc)), with nobody hooked into it."""
    if type(sae.activation_fn).__name__ != "TopK" or getattr(sae.activation_fn, "use_sparse_activations", False):
        return False
    hooked = any(h._forward_hooks for h in (sae.hook_sae_input, sae.hook_sae_acts_pre, sae.hook_sae_acts_post))
    return not hooked and sae.cfg.normalize_activations in EDITABLE_NORMS and sae.cfg.reshape_activations == "none"


def topk_parts(sae) -> tuple[tuple[torch.Tensor, ...], int] | None:
    """A plain TopK SAE's encoder as data: (W_enc, b_enc, input shift, pre-activation scale), k; else None.

    The shift is b_dec (zeros when the SAE does not subtract it), the scale the decoder norms (ones
    when it does not rescale): subtracting 0 and multiplying by 1 are exact, so one formula serves all."""
    if not _plain_topk(sae):
        return None
    w = sae.W_enc
    shift = sae.b_dec if sae.cfg.apply_b_dec_to_input else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    scale = (sae.W_dec.norm(dim=-1) if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False)
             else torch.ones(w.shape[1], dtype=w.dtype, device=w.device))
    return (w, sae.b_enc, shift, scale), int(sae.activation_fn.k)


def topk_read(x: Float[torch.Tensor, "... d_in"], enc: tuple[torch.Tensor, ...], k: int,
              idx: Int[torch.Tensor, " n"] | None = None, axis: Float[torch.Tensor, " d_sae"] | None = None
              ) -> tuple[Float[torch.Tensor, "... n"] | None, Float[torch.Tensor, "..."], Float[torch.Tensor, "..."] | None]:
    """From a plain TopK encoder (`topk_parts`): the activations of features `idx`, the largest activation
    of any feature (Arad et al.'s a_max) and, with `axis`, <encode(x), axis>; each equal to what
    `sae.encode(x)` gives. A feature is active iff its pre-activation reaches the k-th largest, so no
    dense d_sae vector is built: this is what a clamp or cap costs per decoding step."""
    w_enc, b_enc, shift, scale = enc
    x2 = x.reshape(-1, x.shape[-1])
    pre = torch.addmm(b_enc, x2 - shift, w_enc) * scale
    top = pre.topk(k, dim=-1, sorted=False)
    lead = x.shape[:-1]
    a_max = top.values.amax(-1).relu().reshape(lead)
    f = proj = None
    if idx is not None:
        kth = top.values.amin(-1, keepdim=True)
        sel = pre[:, idx]
        f = torch.where(sel >= kth, sel.relu(), torch.zeros_like(sel)).reshape(*lead, len(idx))
    if axis is not None:
        proj = (top.values.relu() * axis[top.indices]).sum(-1).reshape(lead)
    return f, a_max, proj


def encoder_data(sae) -> tuple[tuple[torch.Tensor, ...], tuple]:
    """How feature reads reach the SAE's encoder, as (tensors, static source): a plain TopK encoder as
    tensors (`topk_parts`, source ("topk", k)), else the SAE itself (source ("sae", sae)), whose own
    encode runs eagerly; the compiled decode step cannot trace it."""
    parts = topk_parts(sae)
    return ((), ("sae", sae)) if parts is None else (parts[0], ("topk", parts[1]))


def read_sae(x: Float[torch.Tensor, "... d_in"], enc: tuple[torch.Tensor, ...], source: tuple,
             idx: Int[torch.Tensor, " n"] | None = None, axis: Float[torch.Tensor, " d_sae"] | None = None):
    """`topk_read`'s (features idx, a_max, <encode(x), axis>) from `encoder_data`'s form, for any SAE."""
    if source[0] == "topk":
        return topk_read(x, enc, source[1], idx, axis)
    full = source[1].encode(x)
    return (full[..., idx] if idx is not None else None, full.amax(-1), full @ axis if axis is not None else None)


def feature_reader(sae, idx: Int[torch.Tensor, " k"], with_max: bool = False
                   ) -> Callable[[torch.Tensor], Float[torch.Tensor, "... k"]]:
    """A function x -> activations of features `idx` only, equal to `sae.encode(x)[..., idx]`; with
    `with_max`, x -> (those, the largest activation of any feature per token: Arad et al.'s a_max).
    Plain TopK SAEs go through `topk_read`; anything else through the SAE's own encode."""
    enc, source = encoder_data(sae)

    def read(x):
        f, a_max, _ = read_sae(x, enc, source, idx)
        return (f, a_max) if with_max else f
    return read


def sae_digest(sae) -> str:
    """Hash of the SAE's weights: a cache computed with other weights is not reused."""
    h = hashlib.sha256()
    for k, v in sorted(sae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
