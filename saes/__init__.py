"""Sparse autoencoders for steerlens: train (SAELens, resumable, DDP), evaluate, save and load.

    from saes import resolve, train_sae, evaluate_sae, load_sae
    paths = train_sae(resolve("tiny", data="notes.txt"), "out/sae")
    sae = load_sae(paths["blocks.1.hook_resid_post-256"])   # a sae_lens.SAE

Modules: `config` (recipes, TrainConfig), `data` (harvest shards), `train` (SAELens training, DDP in
`ddp`), `eval` (L0, FVU, CE recovered), `io` (writing SAELens directories) and `access`, the one
SAE access layer every package uses (load, hook, fit and feature-id checks, decoder rows, the lean
TopK feature read).
"""

from saes.config import ARCHITECTURES, RECIPES, TrainConfig, resolve
from saes.eval import EvalConfig, evaluate_dir, evaluate_sae, plot_density
from saes.access import DEFAULT_SAE, check_features, check_sae, load_sae, sae_hook
from saes.io import holds_sae, save_sae
from saes.pretrained import default_sae_path
from saes.train import train_sae

__all__ = ["ARCHITECTURES", "DEFAULT_SAE", "RECIPES", "EvalConfig", "check_features", "check_sae", "sae_hook", "TrainConfig", "default_sae_path", "evaluate_dir", "evaluate_sae",
           "holds_sae", "load_sae", "plot_density", "resolve", "save_sae", "train_sae"]
