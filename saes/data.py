"""Deterministic SAE training data: held-out split, per-shard harvests, and a seeded batch order.

The token rows are shuffled once by the seed; the first rows are held out for evaluation and the
rest are dealt round-robin into `data_shards` shards. The global batch at step s takes an equal
slice from every shard, cut from a permutation seeded by (seed, epoch, shard). So the batch at any
step is a pure function of the config: a resumed run sees exactly the data it would have seen,
and torchrun ranks (each owning whole shards) split every global batch without overlap, for any
world size that divides the shard count. `heldout_conversations` gives the whole conversations
clear of every training row, for the chat evaluation (`saes.chat_eval.evaluate_chats`).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int

from lm.harvest import HarvestConfig, harvest
from lm.io import file_lock
from lm.text import pack, token_sequences
from saes.config import TrainConfig


def _split_indices(cfg: TrainConfig, n_rows: int, heldout_only: bool = False
                   ) -> tuple[Int[torch.Tensor, " e"], Int[torch.Tensor, " t"] | None]:
    """(held-out, training) row indices of `n_rows` packed rows: the one seeded split."""
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(cfg.seed))
    n_eval = -(-cfg.eval_tokens // cfg.tokens_per_row)
    if n_eval >= n_rows:
        raise ValueError(f"{cfg.data!r} packs into only {n_rows} rows of {cfg.context_size} tokens; "
                         f"holding out {n_eval} for evaluation leaves none. Lower eval_tokens or give more data.")
    if heldout_only:
        return order[:n_eval], None
    train = order[n_eval:]
    if cfg.data_mode == "cached":  # only what gets harvested, in whole rows per shard
        per_shard = -(-cfg.harvest_tokens // (cfg.tokens_per_row * cfg.data_shards))
        train = train[: per_shard * cfg.data_shards]
        if len(train) < per_shard * cfg.data_shards:
            raise ValueError(
                f"{cfg.data!r} packs into {n_rows} rows of {cfg.context_size} tokens; "
                f"{n_eval} held out + {per_shard * cfg.data_shards} to harvest do not fit. "
                "Lower harvest_tokens/eval_tokens or give more data.")
    if len(train) == 0:
        raise ValueError(f"{cfg.data!r} has no rows left for training after holding out {n_eval}.")
    return order[:n_eval], train


def split_rows(cfg: TrainConfig, tokenizer, heldout_only: bool = False
               ) -> tuple[Int[torch.Tensor, "e ctx"], Int[torch.Tensor, "t ctx"] | None]:
    """(held-out rows, training rows) of `context_size` tokens, in the seeded order."""
    rows = pack(token_sequences(cfg.data, tokenizer), cfg.context_size)
    held, train = _split_indices(cfg, rows.shape[0], heldout_only)
    return rows[held], None if train is None else rows[train]


def heldout_conversations(cfg: TrainConfig, tokenizer, n: int | None = None) -> list[np.ndarray]:
    """Whole conversations (documents) of `cfg.data` sharing no token with any row the SAE trained on,
    in corpus order, the first `n`: chats from position 0, as the model sees them in use.

    A conversation over flat tokens [a, b) touches rows a // ctx .. (b - 1) // ctx of the packing;
    rows past the packed tail do not exist, so a conversation there counts as held out. Sequences
    under 2 tokens (nothing to predict) are skipped. The list may be empty (e.g. stream mode, where
    every row outside the held-out ones is a training row)."""
    seqs = token_sequences(cfg.data, tokenizer)
    ctx = cfg.context_size
    n_rows = pack(seqs, ctx).shape[0]  # pack's own checks, as split_rows
    _, train = _split_indices(cfg, n_rows)
    trained = np.zeros(n_rows + 1, dtype=np.int64)  # one extra row: "past the tail", never trained
    trained[train.numpy()] = 1
    before = np.concatenate([[0], np.cumsum(trained)])  # training rows among rows < i
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    ends = np.cumsum(lengths)
    first = np.minimum((ends - lengths) // ctx, n_rows)
    last = np.minimum((ends - 1) // ctx, n_rows)
    clear = (before[last + 1] - before[first] == 0) & (lengths >= 2)
    held = [s for s, ok in zip(seqs, clear) if ok]
    return held if n is None else held[:n]


def harvest_shards(model, cfg: TrainConfig, rows: Int[torch.Tensor, "t ctx"], shards: list[int],
                   cache_root: Path | None, progress: bool = True) -> dict[int, dict[str, torch.Tensor]]:
    """Activations of the given shards at every hook, cached per shard (a killed harvest resumes).

    Each shard's cache is filled under `lm.io.file_lock`: two runs on the same cache harvest it once."""
    hcfg = HarvestConfig(batch_size=cfg.harvest_batch_size, exclude_first=cfg.exclude_first,
                         dtype=cfg.act_dtype)
    out = {}
    for j in shards:
        cache_dir = Path(cache_root) / f"shard{j:03d}" if cache_root else None
        with file_lock(cache_dir) if cache_dir else nullcontext():
            out[j] = harvest(model, rows[j::cfg.data_shards], cfg.hooks, hcfg, progress=progress,
                             cache_dir=cache_dir)
    return out


class ShardedBatches:
    """Iterator of {hook: [local_batch, d]} for this rank's shards, from any start step."""

    def __init__(self, shards: dict[int, dict[str, Float[torch.Tensor, "n d"]]], n_shards: int,
                 batch_size: int, seed: int, step: int = 0, device: str | torch.device = "cpu"):
        self.shards, self.seed, self.step, self.device = shards, seed, step, device
        self.per_shard = batch_size // n_shards
        n = {next(iter(a.values())).shape[0] for a in shards.values()}
        if len(n) != 1:
            raise ValueError(f"data shards differ in size ({sorted(n)}); they must hold equal row counts.")
        self.n = n.pop()
        self.steps_per_epoch = self.n // self.per_shard
        if self.steps_per_epoch == 0:
            raise ValueError(f"a shard holds {self.n} tokens, fewer than its {self.per_shard} per batch; "
                             "harvest more tokens or lower batch_size.")
        self._perms: tuple[int, dict[int, torch.Tensor]] | None = None

    def indices(self, step: int) -> dict[int, torch.Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perms is None or self._perms[0] != epoch:
            gens = {j: torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 10_007 + j) for j in self.shards}
            self._perms = (epoch, {j: torch.randperm(self.n, generator=g) for j, g in gens.items()})
        return {j: p[i * self.per_shard:(i + 1) * self.per_shard] for j, p in self._perms[1].items()}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        idx = self.indices(self.step)
        self.step += 1
        hooks = next(iter(self.shards.values())).keys()
        return {h: torch.cat([self.shards[j][h][ix] for j, ix in idx.items()]).to(self.device, torch.float32)
                for h in hooks}


def norm_stats(shards: dict[int, dict[str, torch.Tensor]], hook: str) -> torch.Tensor:
    """[sum of activation norms, token count] over this rank's shards (all-reduce for the global mean)."""
    norms = torch.cat([a[hook].float().norm(dim=-1) for a in shards.values()]).double()
    return torch.stack([norms.sum(), torch.tensor(float(norms.numel()), dtype=torch.float64)])
