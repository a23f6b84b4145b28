"""What to train: one dataclass, named recipes, recipe files (JSON/YAML) and command-line overrides.

A config serialises to JSON beside every SAE (`train_config.json`) and inside every checkpoint, so
`--resume` can refuse a checkpoint written under another config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
DATA_MODES = ("cached", "stream")
# Changing these does not change the trained weights, so --resume accepts them.
RESUME_FREE = {"checkpoint_every", "log_every", "device"}
LIST_FIELDS = ("hooks", "expansion_factor", "d_sae")


@dataclass
class TrainConfig:
    # where activations come from
    model: str = "smollm2-135m-instruct"  # any lm.load_model name ("tiny": the random test model)
    hooks: list[str] = field(default_factory=lambda: ["blocks.15.hook_resid_post"])
    data: str = "default"  # lm.text source: "default" corpus, .txt/.jsonl/.parquet, HF dataset
    context_size: int = 256
    exclude_first: bool = True  # position 0 is an attention sink (norm ~8x the rest)
    # the SAEs: one per (hook, width)
    architecture: str = "topk"
    expansion_factor: list[float] = field(default_factory=lambda: [8.0])
    d_sae: list[int] = field(default_factory=list)  # explicit widths; replace expansion_factor
    d_in: int | None = None  # checked against the hook's width when given
    k: float = 32  # topk / batchtopk
    sparsity_coefficient: float = 5.0  # standard: L1 coefficient; jumprelu: L0 coefficient
    normalize_activations: str = "expected_average_only_in"  # mean squared norm -> d_in
    # data sizes and order
    data_mode: str = "cached"  # cached: harvest once, epochs over it; stream: SAELens runner
    harvest_tokens: int = 160_000  # cached mode: activations harvested (then reused for epochs)
    train_tokens: int = 960_000  # SAE training tokens in total
    eval_tokens: int = 8_192  # held-out tokens (never trained on) for the final evaluation
    data_shards: int = 8  # the data order is fixed per shard; torchrun world size must divide it
    act_dtype: str = "float32"
    harvest_batch_size: int = 16
    # optimisation (SAELens SAETrainer)
    batch_size: int = 1024  # tokens per step, over all ranks
    lr: float = 4e-4
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0  # linear decay to lr/10 over the last steps
    dead_feature_window: int = 1000  # steps without firing before a latent counts as dead (AuxK)
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 200  # steps
    log_every: int = 10  # W&B logging interval in steps
    device: str | None = None

    def __post_init__(self):
        # accept scalars where lists are expected (CLI, hand-written JSON)
        for name in LIST_FIELDS:
            v = getattr(self, name)
            setattr(self, name, list(v) if isinstance(v, (list, tuple)) else [v])
        for f in fields(self):  # 1e6 from JSON/CLI is a float; int fields want an int
            v = getattr(self, f.name)
            if type(f.default) is int and isinstance(v, float) and v.is_integer():
                setattr(self, f.name, int(v))

    @property
    def tokens_per_row(self) -> int:
        return self.context_size - int(self.exclude_first)

    @property
    def steps(self) -> int:
        return self.train_tokens // self.batch_size

    def validate(self) -> "TrainConfig":
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"Unknown architecture {self.architecture!r}; choose one of {ARCHITECTURES}.")
        if self.data_mode not in DATA_MODES:
            raise ValueError(f"Unknown data_mode {self.data_mode!r}; choose one of {DATA_MODES}.")
        if not self.hooks:
            raise ValueError("hooks is empty; give at least one hook, e.g. blocks.15.hook_resid_post.")
        if any(w <= 0 for w in self.d_sae) or (not self.d_sae and any(e <= 0 for e in self.expansion_factor)):
            raise ValueError(f"SAE widths must be positive (d_sae={self.d_sae}, "
                             f"expansion_factor={self.expansion_factor}).")
        if self.architecture in ("topk", "batchtopk") and self.k <= 0:
            raise ValueError(f"k must be positive for {self.architecture}, got {self.k}.")
        if self.batch_size % self.data_shards:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of data_shards {self.data_shards}.")
        if self.steps < 1:
            raise ValueError(f"train_tokens {self.train_tokens} is less than one batch of {self.batch_size}.")
        if self.context_size < 2 or self.checkpoint_every < 1:
            raise ValueError("context_size must be >= 2 and checkpoint_every >= 1.")
        return self

    def widths(self, d_in: int) -> list[int]:
        return self.d_sae or [int(round(e * d_in)) for e in self.expansion_factor]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(f"Unknown key(s) {unknown} in {where}; valid keys: {sorted(known)}.")
        return cls(**d)


RECIPES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M-Instruct, residual stream after block 15 of 30: the middle layer where the
    # Golden Gate direction steers (layers 6-15) and the Assistant Axis separates roles (10-20).
    # On 2 idle cores: harvest 250k tokens (~1k tok/s, ~4 min), 8 epochs = 2M training tokens
    # (~3k tok/s, ~11 min), held-out eval (~1 min): a 15-20 min run. The same SAE shape reached
    # held-out FVU ~0.17 after ~1M tokens in the feasibility probe. AuxK revives latents silent
    # for 250 steps. On a GPU raise harvest_tokens and train_tokens (and lr_decay_steps).
    "smollm2-default": dict(
        model="smollm2-135m-instruct", hooks=["blocks.15.hook_resid_post"], data="default",
        context_size=256, architecture="topk", d_sae=[4608], k=32, batch_size=1024, lr=4e-4,
        lr_decay_steps=400, dead_feature_window=250, checkpoint_every=200,
        harvest_tokens=250_000, train_tokens=2_000_000, eval_tokens=8_192,
    ),
    # SAEs for the Assistant Axis capping band (layers 21-26 = 72-88% depth, axis.capping.default_band),
    # so the SAE-basis cap can act on the same layers as the raw cap. Smaller than the default SAE
    # (4x, 750k tokens each) to fit six on 2 CPU cores in ~20 min; one pass of the LM feeds all six.
    "smollm2-band": dict(
        model="smollm2-135m-instruct", hooks=[f"blocks.{l}.hook_resid_post" for l in range(21, 27)],
        data="default", context_size=256, architecture="topk", d_sae=[2304], k=32, batch_size=1024, lr=4e-4,
        lr_decay_steps=150, dead_feature_window=250, checkpoint_every=200,
        harvest_tokens=150_000, train_tokens=750_000, eval_tokens=4_096,
    ),
    # Late-layer SAEs for feature steering (issue 13): output features (latents whose amplification
    # steers the output) live at 66-100% of depth (Arad et al. 2025), layers 20-29 here, and a raw
    # Golden Gate direction steers from layer 20. Two hooks (67% and 80% of depth) from one LM pass,
    # each shaped and trained like the default (2M tokens over a 250k-token harvest): ~35 min on 2 cores.
    "smollm2-late": dict(
        model="smollm2-135m-instruct", hooks=["blocks.20.hook_resid_post", "blocks.24.hook_resid_post"],
        data="default", context_size=256, architecture="topk", d_sae=[4608], k=32, batch_size=1024, lr=4e-4,
        lr_decay_steps=400, dead_feature_window=250, checkpoint_every=200,
        harvest_tokens=250_000, train_tokens=2_000_000, eval_tokens=8_192,
    ),
    # The 4-layer random tiny model (lm.testing): seconds, for tests and examples.
    "tiny": dict(
        model="tiny", hooks=["blocks.1.hook_resid_post"], data="default", context_size=32,
        architecture="topk", d_sae=[256], k=8, batch_size=256, lr=1e-3, data_shards=2,
        harvest_tokens=4_096, train_tokens=8_192, eval_tokens=512, harvest_batch_size=16, checkpoint_every=8,
        dead_feature_window=1000,
    ),
}


def read_train_recipe(recipe: str | Path | dict) -> dict[str, Any]:
    """A recipe name, a JSON/YAML file (optionally `recipe: <name>` as base), or a dict."""
    if isinstance(recipe, dict):
        d = dict(recipe)
    elif str(recipe) in RECIPES:
        return dict(RECIPES[str(recipe)])
    else:
        path = Path(recipe)
        if not path.is_file():
            raise KeyError(f"Unknown recipe {str(recipe)!r}: give one of {sorted(RECIPES)} "
                           "or a .json/.yaml recipe file.")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text) or {}
        else:
            d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError(f"{path} must hold a mapping of config keys, got {type(d).__name__}.")
    base = d.pop("recipe", None)
    return {**(read_train_recipe(base) if base else {}), **d}


def resolve(recipe: str | Path | dict = "smollm2-default", **overrides) -> TrainConfig:
    d = read_train_recipe(recipe)
    d.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(d, where=f"recipe {recipe if not isinstance(recipe, dict) else '(dict)'}").validate()


def config_diff(a: dict, b: dict, ignore=RESUME_FREE) -> dict[str, tuple]:
    keys = (set(a) | set(b)) - set(ignore)
    return {k: (a.get(k), b.get(k)) for k in sorted(keys) if a.get(k) != b.get(k)}


def parse_override(name: str, text: str):
    """A command-line value: JSON scalars (numbers, true/false, null) or plain strings; lists comma-separated."""
    def scalar(t: str):
        try:
            return json.loads(t)
        except json.JSONDecodeError:
            return t

    return [scalar(t) for t in text.split(",") if t] if name in LIST_FIELDS else scalar(text)
