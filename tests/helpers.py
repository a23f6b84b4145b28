"""Constants and builders the test files share (the fixtures built on them are in conftest.py)."""

from __future__ import annotations

import torch

HOOK = "blocks.1.hook_resid_post"  # the tiny model's usual hook (it has blocks 0..3, d_model 64)


def random_topk_sae_dir(path, hook: str = HOOK, d_in: int = 64, d_sae: int = 256, k: int = 8, seed: int = 0) -> str:
    """Save a randomly initialised SAELens TopK SAE to `path`; returns the path as a string."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=hook)))
    sae.save_model(str(path))
    return str(path)
