"""SAEs shipped with the package; `default_sae_path()` is what the rest of steerlens uses by default."""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).parent
DEFAULT_NAME = "smollm2-default"
TRAIN_COMMAND = ("python scripts/train_sae.py --recipe smollm2-default "
                 "--out saes/pretrained/smollm2-default")


def default_sae_path() -> Path:
    """Directory of the default SmolLM2 SAE (SAELens format), or a clear error if it is not there yet."""
    path = PRETRAINED_DIR / DEFAULT_NAME
    if not (path / "cfg.json").is_file() or not (path / "sae_weights.safetensors").is_file():
        raise FileNotFoundError(f"The default SAE is not in {path} yet; train it with: {TRAIN_COMMAND}")
    return path
