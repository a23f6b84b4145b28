"""Stream activations at TransformerLens hook names, stopping the forward after the last needed layer.

Capture hooks are added with `model.hooks(...)` and run over the fast path (`lm.fastpath`), which
raises `StopForward` right after the deepest hooked block, so harvesting layer 15 of 30 costs about
half a forward. Positions can be filtered by a mask (response tokens only) and the first position
of every row is dropped by default: it is an attention sink whose norm (~1400 at layer 15 vs ~180
elsewhere) would dominate any statistic. Results can be cached as safetensors shards and resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file
from tqdm.auto import tqdm

from lm.fastpath import StopForward, fast_path
from lm.generate import hooked_runner
from lm.io import read_json, save_tensors, write_json


def check_hook_names(model, names: list[str]) -> None:
    if not names:
        raise ValueError("No hook names given; e.g. ['blocks.15.hook_resid_post'].")
    hook_dict = model.hook_dict  # a bridge rebuilds it (~6 ms) on every access
    unknown = [n for n in names if n not in hook_dict]
    if unknown:
        raise KeyError(f"Unknown hook name(s) {unknown}; valid names look like "
                       f"'blocks.{{0..{model.cfg.n_layers - 1}}}.hook_resid_post' (see model.hook_dict).")


def last_layer(names: list[str]) -> int | None:
    """Deepest block a set of hooks needs, or None when one sits outside the blocks (e.g. ln_final)."""
    layers = []
    for n in names:
        m = re.match(r"blocks\.(\d+)\.", n)
        if m:
            layers.append(int(m.group(1)))
        elif n not in ("hook_embed", "embed.hook_out", "hook_pos_embed"):
            return None
    return max(layers, default=0)


@dataclass
class HarvestConfig:
    batch_size: int = 16
    exclude_first: bool = True  # drop position 0 of each row (attention sink)
    reduce: str = "none"  # "none": every kept token; "mean": one mean vector per row
    dtype: str = "float32"


@contextlib.contextmanager
def capturing(model, names: list[str]) -> Iterator[Callable[..., dict[str, torch.Tensor]]]:
    """Yield `run(ids, attention_mask=None) -> {name: activations}` with the capture hooks attached once.

    Why once per harvest, not per batch: attaching them (TransformerLens's `model.hooks`, the fast
    path's routing) rebuilds the bridge's `hook_dict` five times at ~6.5 ms: ~40 ms a batch, which
    was 5-15% of a harvest of 2-8 rows x 64-128 tokens a batch (bench_harvest's gap to a bare forward).
    """
    stop = last_layer(names)
    device = next(model.original_model.parameters()).device
    if stop is None or not fast_path(model).can_route(names):
        def run_cached(ids, attention_mask=None):
            att = attention_mask.to(device) if attention_mask is not None else None
            with torch.no_grad():
                _, cache = model.run_with_cache(ids.to(device), names_filter=names, attention_mask=att,
                                                stop_at_layer=None if stop is None else stop + 1)
            return {n: cache[n] for n in names}
        yield run_cached
        return
    acts: dict[str, torch.Tensor] = {}

    def saver(name):
        def save(x, hook):
            acts[name] = x.detach()
            return x
        return save

    with hooked_runner(model, [(n, saver(n)) for n in names], stop_after_layer=stop) as runner:
        def run(ids, attention_mask=None):
            acts.clear()
            att = attention_mask.to(device) if attention_mask is not None else None
            with torch.no_grad():
                try:
                    runner.model(input_ids=ids.to(device), attention_mask=att, use_cache=False)
                except StopForward:
                    pass
            return dict(acts)
        yield run


def forward_batch(model, ids: Int[torch.Tensor, "b s"], names: list[str],
                  attention_mask: Int[torch.Tensor, "b s"] | None = None,
                  run: Callable[..., dict[str, torch.Tensor]] | None = None) -> dict[str, Float[torch.Tensor, "b s d"]]:
    """Activations at `names` for one batch, stopping after the last needed block (`run`: an open
    `capturing(model, names)`, to reuse its hooks over many batches)."""
    if run is not None:
        return run(ids, attention_mask)
    with capturing(model, names) as run:
        return run(ids, attention_mask)


def harvest(
    model,
    tokens: Int[torch.Tensor, "rows seq"],
    names: list[str],
    cfg: HarvestConfig | None = None,
    mask: Bool[torch.Tensor, "rows seq"] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Float[torch.Tensor, "n d"]]:
    """Activations for every kept position (or per-row means), optionally cached on disk as shards."""
    cfg = cfg or HarvestConfig()
    check_hook_names(model, names)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must be a non-empty [rows, seq] tensor, got shape {tuple(tokens.shape)}.")
    if mask is not None and mask.shape != tokens.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal tokens shape {tuple(tokens.shape)}.")
    keep = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool().clone()
    if cfg.exclude_first:
        keep[:, 0] = False
    store = _ShardStore(cache_dir, model, tokens, keep, names, cfg) if cache_dir else None
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    dtype = getattr(torch, cfg.dtype)
    starts = range(0, tokens.shape[0], cfg.batch_size)
    with contextlib.ExitStack() as stack:
        run = None  # hooks attached at the first batch not already cached, then kept for the rest
        for i, b in enumerate(tqdm(starts, desc="harvest", disable=not progress, unit="batch")):
            got = store.load(i) if store else None
            if got is None:
                run = run or stack.enter_context(capturing(model, names))
                acts = forward_batch(model, tokens[b:b + cfg.batch_size], names, run=run)
                k = keep[b:b + cfg.batch_size].to(next(iter(acts.values())).device)
                for n, a in acts.items():
                    if a.shape[:2] != k.shape:
                        raise ValueError(f"{n} has shape {tuple(a.shape)}; harvest needs [batch, pos, ...] "
                                         "activations (residual stream, attn/mlp outputs).")
                if cfg.reduce == "mean":
                    denom = k.sum(1, keepdim=True).clamp(min=1).to(dtype)
                    got = {n: (a.to(dtype) * k[..., None]).sum(1).div(denom).cpu() for n, a in acts.items()}
                else:
                    got = {n: a[k].to(dtype).cpu() for n, a in acts.items()}
                if store:
                    store.save(i, got)
            for n in names:
                out[n].append(got[n])
    return {n: torch.cat(v) for n, v in out.items()}


class _ShardStore:
    """One safetensors shard per batch plus a manifest; a mismatched manifest is refused."""

    def __init__(self, root, model, tokens, keep, names, cfg: HarvestConfig):
        from lm.model import model_hash

        self.root = Path(root)
        h = hashlib.sha256(tokens.numpy().tobytes() + keep.numpy().tobytes()).hexdigest()[:16]
        self.manifest = {"model": model_hash(model), "data_sha256": h, "names": names,
                         "shape": list(tokens.shape), **asdict(cfg)}
        path = self.root / "manifest.json"
        if path.is_file() and read_json(path) != self.manifest:
            raise ValueError(f"{self.root} caches other activations (model, data or hooks differ); "
                             "use another cache_dir or delete it.")
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(path, self.manifest)

    def _path(self, i: int) -> Path:
        return self.root / f"shard_{i:06d}.safetensors"

    def load(self, i: int):
        p = self._path(i)
        return load_file(str(p)) if p.is_file() else None

    def save(self, i: int, tensors: dict) -> None:
        save_tensors(self._path(i), tensors)
