"""Load a language model as a TransformerLens model, offline, with the embedded SmolLM2 as default.

Names resolve through `lm.sources` (embedded, "tiny", a HF directory or a TransformerLens name).
We return TransformerLens's `TransformerBridge`: on this model it matches HF logits exactly, runs
batched forwards at HF speed and is what SAELens accepts as `override_model`. Its per-module
wrappers cost ~20 ms per decoding step, so generation and harvesting go through `lm.fastpath`,
which routes the same hook points over a plain HF model sharing the bridge's weights.

Where a loaded model came from is kept in a registry keyed by the model (not an attribute on it),
so `model_hash` can name it in the manifests beside cached artifacts.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch

from lm.sources import EMBEDDED, model_source

_SOURCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> "kind:name"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    return torch.float32 if str(device).startswith("cpu") else torch.bfloat16


def remember_source(model, source: str) -> None:
    """Record what `model_hash(model)` reports (load_model does this; tests may for stand-in models)."""
    _SOURCE[model] = source


def model_hash(model) -> str:
    """Identify a loaded model's weights source (for manifests beside cached artifacts)."""
    try:
        return _SOURCE.get(model, "unknown")
    except TypeError:  # not weak-referenceable: never loaded here
        return "unknown"


def load_model(name: str = EMBEDDED, device: str | None = None, dtype: torch.dtype | None = None):
    """A TransformerLens `TransformerBridge` with the usual hook names (`blocks.{l}.hook_resid_post`)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = model_source(name)
    device = device or src.device or default_device()
    dtype = dtype or default_dtype(device)
    source = str(src.path or name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as e:
        raise OSError(f"Could not load {name!r} ({e}). Official names need hub access; "
                      f"offline, use {EMBEDDED!r} or a local directory.") from e
    hf.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bridge = _boot(TransformerBridge, source, hf, tok)
    bridge.eval()
    remember_source(bridge, f"{src.kind}:{Path(source).name}")
    return bridge


def _boot(bridge_cls, source: str, hf, tok):
    """The bridge over `hf`; an architecture TransformerLens cannot wrap is named, with where to look."""
    try:
        return bridge_cls.boot_transformers(source, hf_model=hf, tokenizer=tok)
    except ValueError as e:
        if "supported architecture" not in str(e).lower():
            raise
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

        raise ValueError(f"{source}: TransformerLens's TransformerBridge has no adapter for "
                         f"{getattr(hf.config, 'architectures', None)} (model_type {hf.config.model_type!r}). "
                         f"Use a model of one of its {len(SUPPORTED_ARCHITECTURES)} architectures, the keys of "
                         "transformer_lens.factories.architecture_adapter_factory.SUPPORTED_ARCHITECTURES "
                         "(e.g. LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel).") from e


def load_bare_hf(name: str = EMBEDDED, model=None):
    """The same weights as a stock HF model with no hooks: the baseline the benchmarks divide by.
    With `model` (a loaded bridge) it takes that model's dtype and device."""
    from transformers import AutoModelForCausalLM

    path = model_source(name).path
    p = next(model.original_model.parameters()) if model is not None else None
    bare = AutoModelForCausalLM.from_pretrained(path or name, dtype=p.dtype if p is not None else torch.float32)
    return bare.to(p.device if p is not None else "cpu").eval()
