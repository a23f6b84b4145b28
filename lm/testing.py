"""A tiny random Llama with SmolLM2's tokenizer and chat template, for fast tests and examples.

Same architecture family, hook names and template as the embedded model, so code exercised on it
runs unchanged on the real one; built once per cache directory in a couple of seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from lm.model import cache_root, embedded_gguf

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


def tiny_model_dir(root: str | Path | None = None, seed: int = 0) -> Path:
    """Directory of a tiny random HF Llama (4 layers, d_model 64); created atomically on first use."""
    target = Path(root or cache_root()) / f"tiny-llama-s{seed}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = embedded_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, rms_norm_eps=1e-5,
                          rope_theta=100000.0, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY)
        LlamaForCausalLM(cfg).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def tiny_model(root: str | Path | None = None, seed: int = 0):
    from lm.model import load_model

    return load_model(str(tiny_model_dir(root, seed)), device="cpu")
