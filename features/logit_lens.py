"""Which output tokens a latent's decoder direction promotes and suppresses: rows of W_dec @ W_U.

SmolLM2 (like every Llama) applies a final RMSNorm before the unembedding. Its gain vector
rescales each residual dimension, so we fold it into W_U; the norm's division by the residual's
RMS is one positive scalar per token and does not change the ranking. Latents are processed in
chunks so d_sae x vocab logits never sit in memory at once (4608 x 49152 floats would be 900 MB).
"""

from __future__ import annotations

import torch
from jaxtyping import Float


def unembedding(model) -> Float[torch.Tensor, "d_model vocab"]:
    """W_U with the final norm's gain folded in, taken from the HF module the bridge wraps."""
    hf = getattr(model, "original_model", None)
    head = hf.get_output_embeddings() if hf is not None else None
    if head is None:
        return model.W_U.detach()
    W_U = head.weight.detach().T
    norm = getattr(getattr(hf, "model", None), "norm", None)
    gain = getattr(norm, "weight", None)
    if gain is not None:
        W_U = gain.detach()[:, None] * W_U
    return W_U


def logit_lens(model, W_dec: Float[torch.Tensor, "n d_model"], k: int = 10, chunk: int = 256
               ) -> dict[str, torch.Tensor]:
    """Top-k promoted and suppressed token ids and logit effects for each decoder row."""
    W_U = unembedding(model)
    W_dec = W_dec.detach().to(W_U.device, W_U.dtype)
    if W_dec.shape[-1] != W_U.shape[0]:
        raise ValueError(f"Decoder rows have width {W_dec.shape[-1]} but the model's d_model is {W_U.shape[0]}.")
    k = min(k, W_U.shape[1])
    out: dict[str, list[torch.Tensor]] = {"pos_ids": [], "pos_vals": [], "neg_ids": [], "neg_vals": []}
    with torch.no_grad():
        for a in range(0, W_dec.shape[0], chunk):
            logits = W_dec[a:a + chunk] @ W_U
            top = logits.topk(k, dim=-1)
            bot = logits.topk(k, dim=-1, largest=False)
            out["pos_ids"].append(top.indices.cpu())
            out["pos_vals"].append(top.values.float().cpu())
            out["neg_ids"].append(bot.indices.cpu())
            out["neg_vals"].append(bot.values.float().cpu())
    return {key: torch.cat(v) for key, v in out.items()}

