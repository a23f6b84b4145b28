"""Sparse autoencoders for steerlens: train (SAELens, resumable, DDP), evaluate, save and load.

    from saes import resolve, train_sae, evaluate_sae, load_sae
    paths = train_sae(resolve("tiny", data="notes.txt"), "out/sae")
    sae = load_sae(paths["blocks.1.hook_resid_post-256"])   # a sae_lens.SAE
"""

from saes.config import ARCHITECTURES, RECIPES, TrainConfig, resolve
from saes.eval import EvalConfig, evaluate_dir, evaluate_sae, plot_density
from saes.io import holds_sae, load_sae, save_sae
from saes.pretrained import default_sae_path, load_default_sae
from saes.train import train_sae

__all__ = ["ARCHITECTURES", "RECIPES", "EvalConfig", "TrainConfig", "default_sae_path", "evaluate_dir", "evaluate_sae",
           "holds_sae", "load_default_sae", "load_sae", "plot_density", "resolve", "save_sae", "train_sae"]
