"""Writing SAE directories: SAELens format (`cfg.json` + `sae_weights.safetensors` + sparsity) plus our JSON.

Reading them is `saes.access.load_sae`, the one loader.

Writes are atomic per file and `cfg.json` lands last, so a directory with a `cfg.json` always holds
a complete SAE: that file is what marks "this directory already holds an SAE".
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME

from lm.io import write_json

__all__ = ["SAE_CFG_FILENAME", "SAE_WEIGHTS_FILENAME", "SPARSITY_FILENAME", "holds_sae", "save_sae"]


def holds_sae(path: str | Path) -> bool:
    path = Path(path)
    return (path / SAE_CFG_FILENAME).is_file() or any(path.glob(f"*/{SAE_CFG_FILENAME}"))


def save_sae(sae, path: str | Path, sparsity=None, extra_json: dict[str, dict] | None = None) -> Path:
    """Write an SAE (a TrainingSAE as its inference SAE) in SAELens format, file by file, cfg.json last."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, obj in (extra_json or {}).items():
        write_json(path / name, obj)
    tmp = Path(tempfile.mkdtemp(prefix=".sae-", dir=path))
    try:
        getattr(sae, "save_inference_model", sae.save_model)(tmp)  # TrainingSAE or inference SAE
        if sparsity is not None:
            save_file({"sparsity": sparsity.detach().cpu().contiguous()}, str(tmp / SPARSITY_FILENAME))
        (path / SAE_CFG_FILENAME).unlink(missing_ok=True)  # an old cfg never pairs with new weights
        for name in (SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, SAE_CFG_FILENAME):
            if (tmp / name).is_file():
                os.replace(tmp / name, path / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
