"""Per-latent statistics of an SAE over a token dataset, in one batched pass with bounded memory.

For every latent we keep: the top-k most activating contexts (one per row, duplicates of the same
window dropped, since the default corpus repeats each user prompt up to 16 times), a uniform
sample of other activating contexts, a log-binned activation histogram, density (fraction of
tokens where it fires), max and mean activation, and the logit-lens tokens of its decoder row.
Nothing scales with the dataset: top-k buffers are merged batch by batch (streaming top-k), the
random sample is bottom-k on random keys (exactly uniform without replacement), and histogram
bins are fixed log-spaced edges, so one pass suffices. Position 0 of each row is an attention sink
and is excluded by default. Results are cached beside a manifest (model, SAE weights, data, config)
and reused when all four match; other packages read a saved analysis through `FeatureStats.load`
and `feature_labels`, not by parsing its files.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Int
from tqdm.auto import tqdm

from lm.io import file_lock, read_json, save_tensors, write_json
from saes.access import check_features, check_sae, feature_acts, sae_digest, sae_path
from saes.eval import plot_density_histogram
from features.logit_lens import logit_lens


@dataclass
class AnalysisConfig:
    n_examples: int = 20  # top-activating contexts kept per latent
    n_random: int = 5  # uniformly sampled activating contexts per latent
    left: int = 24  # context tokens shown before the activating token
    right: int = 8  # and after it
    batch_size: int = 16
    hist_min: float = 1e-3  # histogram edges are log-spaced over [hist_min, hist_max]
    hist_max: float = 1e4
    bins_per_decade: int = 20
    exclude_first: bool = True  # position 0 of every row is an attention sink
    n_logit_tokens: int = 10
    seed: int = 0

    @property
    def window(self) -> int:
        return self.left + 1 + self.right

    @property
    def n_bins(self) -> int:
        return round(math.log10(self.hist_max / self.hist_min) * self.bins_per_decade)

    def hist_edges(self) -> torch.Tensor:
        return torch.logspace(math.log10(self.hist_min), math.log10(self.hist_max), self.n_bins + 1)


class FeatureStats:
    """Tensors indexed by latent ([d_sae, ...]) plus metadata; saved as safetensors + JSON."""

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict):
        self.t = tensors
        self.meta = meta
        self.cfg = AnalysisConfig(**meta["config"])

    @property
    def d_sae(self) -> int:
        return self.t["max_act"].shape[0]

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def density(self) -> torch.Tensor:
        return self.t["n_active"].double() / max(self.n_tokens, 1)

    @property
    def mean_act(self) -> torch.Tensor:
        return self.t["sum_act"] / self.t["n_active"].clamp(min=1)

    @property
    def labels(self) -> list[str]:
        return self.meta.get("labels") or [""] * self.d_sae

    def examples(self, i: int, kind: str = "top") -> list[dict]:
        """Contexts for latent i: token ids, per-token activations, max value, row and position."""
        (i,) = check_features(self.d_sae, [i])
        out = []
        for j in range(self.t[f"{kind}_vals"].shape[1]):
            if self.t[f"{kind}_rows"][i, j] < 0:
                continue
            toks = self.t[f"{kind}_toks"][i, j]
            keep = toks >= 0
            out.append({"tokens": toks[keep].tolist(), "acts": self.t[f"{kind}_acts"][i, j][keep].tolist(),
                        "value": float(self.t[f"{kind}_vals"][i, j]), "row": int(self.t[f"{kind}_rows"][i, j]),
                        "pos": int(self.t[f"{kind}_pos"][i, j]),
                        "center": int(self.cfg.left - (~keep[:self.cfg.left]).sum())})
        if kind == "top":
            out.sort(key=lambda e: -e["value"])
        return out

    def save(self, root: str | Path) -> None:
        root = Path(root)
        save_tensors(root / "stats.safetensors", self.t)
        write_json(root / "analysis.json", self.meta)

    @classmethod
    def load(cls, root: str | Path) -> "FeatureStats":
        from safetensors.torch import load_file

        root = Path(root)
        if not (root / "analysis.json").is_file() or not (root / "stats.safetensors").is_file():
            raise FileNotFoundError(f"No feature analysis in {root}; run features.analyze(...) "
                                    "or scripts/feature_dashboards.py first.")
        return cls(load_file(str(root / "stats.safetensors")), read_json(root / "analysis.json"))


class _TopK:
    """Per-latent top-k contexts by a score, merged batch by batch."""

    def __init__(self, d: int, k: int, window: int, dedupe: bool, device):
        self.k, self.dedupe = k, dedupe
        self.score = torch.full((d, k), -1.0, device=device)
        self.vals = torch.zeros(d, k, device=device)
        self.rows = torch.full((d, k), -1, dtype=torch.long, device=device)
        self.pos = torch.full((d, k), -1, dtype=torch.long, device=device)
        self.acts = torch.zeros(d, k, window, device=device)
        self.toks = torch.full((d, k, window), -1, dtype=torch.int32, device=device)
        self.hash = torch.zeros(d, k, dtype=torch.long, device=device)

    def update(self, score, vals, rows, pos, acts, toks, hsh) -> None:
        cat = lambda a, b: torch.cat([a, b.to(a.dtype)], dim=1)
        S, V, R, P = cat(self.score, score), cat(self.vals, vals), cat(self.rows, rows), cat(self.pos, pos)
        A, T, H = cat(self.acts, acts), cat(self.toks, toks), cat(self.hash, hsh)
        if self.dedupe:  # an identical window already ranked higher makes this one a duplicate
            order = S.argsort(dim=1, descending=True)
            Hs, Ss = H.gather(1, order), S.gather(1, order)
            m = Hs.shape[1]
            earlier = torch.ones(m, m, dtype=torch.bool, device=S.device).tril(-1)
            dup = ((Hs[:, :, None] == Hs[:, None, :]) & earlier & (Ss[:, None, :] >= 0)).any(-1)
            S = S.scatter(1, order, Ss.masked_fill(dup, -1.0))
        idx = S.topk(self.k, dim=1).indices
        g2 = lambda X: X.gather(1, idx)
        g3 = lambda X: X.gather(1, idx[..., None].expand(-1, -1, X.shape[-1]))
        self.score, self.vals, self.rows, self.pos, self.hash = g2(S), g2(V), g2(R), g2(P), g2(H)
        self.acts, self.toks = g3(A), g3(T)
        empty = self.score < 0  # unfilled slots hold no context
        self.rows[empty], self.pos[empty], self.vals[empty], self.hash[empty] = -1, -1, 0.0, 0
        self.acts[empty], self.toks[empty] = 0.0, -1

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {"vals": self.vals, "rows": self.rows, "pos": self.pos, "acts": self.acts, "toks": self.toks}
        return {f"{prefix}_{k}": v.cpu() for k, v in out.items()}


def data_digest(tokens: torch.Tensor, keep: torch.Tensor) -> str:
    return hashlib.sha256(tokens.numpy().tobytes() + keep.numpy().tobytes()).hexdigest()[:16]


def dataset_tokens(source, tokenizer, context_size: int = 128, max_tokens: int | None = None) -> torch.Tensor:
    """Token rows for a source ("default" corpus, a file, ...) or a [rows, seq] tensor passed through."""
    if isinstance(source, torch.Tensor):
        return source
    from lm.text import pack, token_sequences

    return pack(token_sequences(source, tokenizer), context_size, max_tokens)


class _Running:
    """What `analyze` accumulates batch by batch, on the SAE's device: counts, histogram, top-k and
    random contexts."""

    def __init__(self, d: int, d_vocab: int, cfg: AnalysisConfig, dev):
        self.cfg, self.d, self.dev = cfg, d, dev
        self.top = _TopK(d, cfg.n_examples, cfg.window, dedupe=True, device=dev)
        self.rnd = _TopK(d, cfg.n_random, cfg.window, dedupe=False, device=dev)
        self.hist = torch.zeros(d * (cfg.n_bins + 2), dtype=torch.long, device=dev)  # [under, bins, over] per latent
        self.n_active = torch.zeros(d, dtype=torch.long, device=dev)
        self.sum_act = torch.zeros(d, dtype=torch.float64, device=dev)
        self.max_act = torch.zeros(d, device=dev)
        self.token_counts = torch.zeros(d_vocab, dtype=torch.long, device=dev)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.mix = torch.randint(1, 2**31 - 1, (cfg.window,), generator=self.gen).to(dev)
        self.offsets = torch.arange(-cfg.left, cfg.right + 1, device=dev)

    def add(self, b0: int, ids: Int[torch.Tensor, "b s"], keep: Bool[torch.Tensor, "b s"], f: torch.Tensor) -> None:
        """One batch of rows starting at row `b0`, with feature activations `f` [b, s, d]."""
        ids, keep = ids.to(self.dev), keep.to(self.dev)
        f = f.float() * keep[..., None]  # excluded positions read as 0
        rowmax, argpos = self._count(ids, keep, f)
        self._contexts(b0, ids, f, rowmax, argpos)

    def _count(self, ids, keep, f) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, nb = self.cfg, self.cfg.n_bins
        n = self.token_counts.numel()
        self.token_counts += torch.bincount(ids[keep], minlength=n)[:n]
        active = f > 0
        self.n_active += active.sum((0, 1))
        self.sum_act += f.sum((0, 1), dtype=torch.float64)
        rowmax, argpos = f.max(dim=1)  # [b, d]: the best position of each row for each latent
        self.max_act = torch.maximum(self.max_act, rowmax.max(0).values)
        lat, vals = active.nonzero()[:, 2], f[active]
        bins = ((vals.log10() - math.log10(cfg.hist_min)) * cfg.bins_per_decade).floor().long().add(1).clamp(0, nb + 1)
        self.hist += torch.bincount(lat * (nb + 2) + bins, minlength=self.hist.numel())
        return rowmax, argpos

    def _contexts(self, b0, ids, f, rowmax, argpos) -> None:
        """Offer each row's best window per latent to the top-k and the uniform random sample."""
        d, (b, s) = self.d, ids.shape
        win = argpos.T[..., None] + self.offsets  # [d, b, W] positions around each row's maximum
        valid = (win >= 0) & (win < s)
        win = win.clamp(0, s - 1)
        w_acts = f.permute(2, 0, 1).gather(2, win).masked_fill(~valid, 0.0)
        w_toks = ids[None].expand(d, b, s).gather(2, win).masked_fill(~valid, -1).int()
        w_hash = ((w_toks.long() + 2) * self.mix).sum(-1)
        vals = rowmax.T
        rows = torch.arange(b0, b0 + b, device=self.dev).expand(d, b)
        pos = argpos.T
        self.top.update(vals.masked_fill(vals <= 0, -1.0), vals, rows, pos, w_acts, w_toks, w_hash)
        keys = torch.rand(d, b, generator=self.gen).to(self.dev).masked_fill(vals <= 0, -1.0)
        self.rnd.update(keys, vals, rows, pos, w_acts, w_toks, w_hash)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"max_act": self.max_act.cpu(), "sum_act": self.sum_act.cpu(), "n_active": self.n_active.cpu(),
                "hist": self.hist.view(self.d, self.cfg.n_bins + 2).cpu(), "token_counts": self.token_counts.cpu(),
                **self.top.tensors("top"), **self.rnd.tensors("random")}


def _kept_positions(tokens, mask, cfg: AnalysisConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated tokens on the CPU and the positions the statistics count (sink excluded)."""
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be a [rows, seq] tensor with rows >= 1 and seq >= 2, got {tuple(tokens.shape)}.")
    if mask is not None and mask.shape != tokens.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal tokens shape {tuple(tokens.shape)}.")
    tokens = tokens.long().cpu()
    keep = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool().cpu().clone()
    if cfg.exclude_first:
        keep[:, 0] = False
    return tokens, keep


def _cached(cache_dir: str | Path | None, key: dict) -> FeatureStats | None:
    """The analysis in `cache_dir` when it was computed for `key`; an error when for another."""
    if cache_dir is None or not (Path(cache_dir) / "analysis.json").is_file():
        return None
    cached = FeatureStats.load(cache_dir)
    if cached.meta.get("key") == key:
        return cached
    raise ValueError(f"{cache_dir} holds an analysis of another model, SAE, dataset or config; "
                     "use another cache_dir or delete it.")


def analyze(model, sae, tokens: Int[torch.Tensor, "rows seq"], cfg: AnalysisConfig | None = None,
            mask: Bool[torch.Tensor, "rows seq"] | None = None, cache_dir: str | Path | None = None,
            progress: bool = True) -> FeatureStats:
    """Statistics for every latent of `sae` over `tokens`; cached in `cache_dir` when given.

    The cache is written under `lm.io.file_lock`: two processes asking for the same analysis at once
    compute it once (the second waits, then reads it)."""
    from lm.model import model_hash

    cfg = cfg or AnalysisConfig()
    hook = check_sae(model, sae)
    tokens, keep = _kept_positions(tokens, mask, cfg)
    key = {"model": model_hash(model), "sae": sae_digest(sae), "hook": hook,
           "data_sha256": data_digest(tokens, keep), "config": asdict(cfg)}
    if cache_dir is None:
        return _compute(model, sae, tokens, keep, cfg, key, progress)
    cached = _cached(cache_dir, key)
    if cached is not None:
        return cached
    with file_lock(cache_dir):
        cached = _cached(cache_dir, key)  # another process may have written it while we waited
        if cached is not None:
            return cached
        stats = _compute(model, sae, tokens, keep, cfg, key, progress)
        stats.save(cache_dir)
        plot_feature_density(stats, Path(cache_dir) / "feature_density.png")
    return stats


def _compute(model, sae, tokens, keep, cfg: AnalysisConfig, key: dict, progress: bool) -> FeatureStats:
    """The one batched pass of `analyze` (no cache)."""
    from features.labels import auto_labels

    hook, d = key["hook"], sae.cfg.d_sae
    run = _Running(d, model.cfg.d_vocab, cfg, sae.W_dec.device)  # bookkeeping stays on the SAE's device
    for b0 in tqdm(range(0, tokens.shape[0], cfg.batch_size), desc="feature stats", disable=not progress, unit="batch"):
        ids = tokens[b0:b0 + cfg.batch_size]
        _, f = feature_acts(model, sae, ids, hook)
        run.add(b0, ids, keep[b0:b0 + cfg.batch_size], f)

    lens = logit_lens(model, sae.W_dec, cfg.n_logit_tokens)
    tensors = {**run.tensors(), **{f"logit_{k}": v for k, v in lens.items()}}
    meta = {"key": key, "config": asdict(cfg), "hook": hook, "d_sae": d, "n_tokens": int(keep.sum()),
            "n_rows": int(tokens.shape[0]), "sae_path": sae_path(sae)}
    stats = FeatureStats(tensors, meta)
    stats.meta["labels"] = auto_labels(stats, model.tokenizer)
    return stats


def feature_labels(sae_dir: str | Path | None, ids: list[int], stats_dir: str | Path | None = None) -> dict[int, str]:
    """Labels of latents `ids` from a saved analysis in `stats_dir`, the SAE directory or its
    `features/` / `analysis/` subfolder; empty when none exists (labels are optional)."""
    roots = [Path(stats_dir)] if stats_dir else []
    if sae_dir:
        roots += [Path(sae_dir), Path(sae_dir) / "features", Path(sae_dir) / "analysis"]
    for r in roots:
        if (r / "analysis.json").is_file():
            labels = read_json(r / "analysis.json").get("labels") or []
            return {i: labels[i] for i in ids if i < len(labels)}
    return {}


def plot_feature_density(stats: FeatureStats, path: str | Path) -> None:
    """Histogram of log10 firing density across latents (how many fire counted in the title)."""
    alive = int((stats.density > 0).sum())
    plot_density_histogram(stats.density, path, f"{alive} of {stats.d_sae} latents fire; {stats.n_tokens} tokens",
                           color="#e07b39", dpi=100)
