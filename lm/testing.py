"""The tiny random test model, loaded: fast tests and examples on the embedded model's architecture.

Same architecture family, hook names and chat template as the embedded model (see `lm.sources`),
so code exercised on it runs unchanged on the real one. `load_model("tiny")` gives the same model.
"""

from __future__ import annotations

from pathlib import Path

from lm.model import load_model
from lm.sources import tiny_model_dir


def tiny_model(root: str | Path | None = None, seed: int = 0):
    """A 4-layer random Llama (d_model 64) on the CPU, built once per cache directory and seed."""
    return load_model(str(tiny_model_dir(root, seed)), device="cpu")
