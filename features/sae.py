"""Load a SAELens SAE, check it fits the model, and encode token batches into feature activations.

Everything in `features/` reads an SAE through these few functions, so a mismatch (another
model's SAE, a hook the model lacks, a feature index past `d_sae`) fails here with one clear
message instead of as a shape error deep inside a batched pass.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from jaxtyping import Float, Int

from lm.harvest import forward_batch
from saes.io import load_sae as _load_sae
from saes.pretrained import DEFAULT_NAME, PRETRAINED_DIR

DEFAULT_SAE = PRETRAINED_DIR / DEFAULT_NAME


def load_sae(sae, device: str | torch.device | None = None):
    """An SAELens SAE from a directory (through `saes.io.load_sae`) or as given."""
    if isinstance(sae, (str, Path)):
        return _load_sae(sae, device=str(device or "cpu"))
    if device is not None:
        sae = sae.to(device)
    return sae.eval()


def sae_hook(sae) -> str:
    name = getattr(sae.cfg.metadata, "hook_name", None)
    if not name:
        raise ValueError("This SAE's cfg.json has no metadata.hook_name, so we cannot tell where it reads "
                         "the model; set metadata.hook_name (e.g. 'blocks.15.hook_resid_post').")
    return name


def check_sae(model, sae) -> str:
    """Raise unless the SAE's hook exists in the model and its d_in matches that hook's width."""
    hook = sae_hook(sae)
    if hook not in model.hook_dict:
        raise ValueError(f"The SAE reads hook {hook!r}, which this model does not have "
                         f"({model.cfg.n_layers} layers, e.g. 'blocks.{model.cfg.n_layers - 1}.hook_resid_post'). "
                         "Was it trained on another model? Load the SAE trained for this model.")
    ids = torch.tensor([[model.tokenizer.eos_token_id or 0] * 2])
    width = forward_batch(model, ids, [hook])[hook].shape[-1]
    if width != sae.cfg.d_in:
        raise ValueError(f"SAE d_in is {sae.cfg.d_in} but {hook} has width {width} in this model "
                         f"(d_model {model.cfg.d_model}): the SAE belongs to another model.")
    return hook


def check_features(d_sae: int, features) -> list[int]:
    """Feature indices as ints, each in [0, d_sae)."""
    feats = [int(f) for f in features]
    bad = [f for f in feats if not 0 <= f < d_sae]
    if bad:
        raise IndexError(f"Feature index {bad[0]} is out of range: this SAE has d_sae={d_sae} "
                         f"latents, valid indices are 0..{d_sae - 1}.")
    return feats


def encode(sae, acts: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
    with torch.no_grad():
        return sae.encode(acts.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype))


def feature_acts(model, sae, ids: Int[torch.Tensor, "b s"], hook: str | None = None,
                 attention_mask: Int[torch.Tensor, "b s"] | None = None
                 ) -> tuple[Float[torch.Tensor, "b s d_in"], Float[torch.Tensor, "b s d_sae"]]:
    """Residual activations at the SAE's hook and the SAE's feature activations, for one batch."""
    hook = hook or sae_hook(sae)
    resid = forward_batch(model, ids, [hook], attention_mask=attention_mask)[hook]
    return resid, encode(sae, resid)


def sae_digest(sae) -> str:
    """Hash of the SAE's weights: a cache computed with other weights is not reused."""
    h = hashlib.sha256()
    for k, v in sorted(sae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
