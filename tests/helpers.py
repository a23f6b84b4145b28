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


def identity_sae(d: int = 64, zero: bool = False):
    """A ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x (or 0 if zero)."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False,
                                        metadata=SAEMetadata(hook_name=HOOK)))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.zeros(2 * d, d) if zero else torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def identity_sae_dir(tmp_path, n_texts: int = 200):
    """An identity SAE saved with a train_config.json pointing at a small text file: what eval needs."""
    from saes.io import save_sae

    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"Sentence number {i} is about cats, dogs and the sea." for i in range(n_texts)))
    sae_dir = tmp_path / "sae"
    save_sae(identity_sae(), sae_dir, extra_json={"train_config.json": {
        "model": "tiny", "data": str(text), "context_size": 16, "eval_tokens": 120}})
    return sae_dir, text
