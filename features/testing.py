"""Random SAELens SAEs for tests and examples, saved in the same format as trained ones.

Every code path in `features/` runs on them unchanged: what a random SAE lacks is meaning, not shape.
"""

from __future__ import annotations

from pathlib import Path

import torch


def random_sae(d_in: int = 64, d_sae: int = 96, hook: str = "blocks.1.hook_resid_post", k: int | None = 8,
               seed: int = 0, path: str | Path | None = None):
    """A TopK SAE (k given) or a standard ReLU SAE (k=None); saved to `path` and reloaded from disk when given."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=hook, model_name="random")
    torch.manual_seed(seed)
    if k is None:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=meta))
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.1)
    if path is None:
        return sae.eval()
    sae.save_model(str(path))
    from saes.access import load_sae

    return load_sae(path)
