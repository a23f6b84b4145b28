"""Roll out every (system prompt, question) pair and average each block's output over the reply.

Both stages are cached per rollout under a run directory, in chunks written atomically, so a long
run (the full bank is ~18k rollouts) resumes where it stopped and a larger run reuses a smaller
one's rollouts. A manifest pins the model and the sampling settings: a cache made with other
settings is refused rather than silently mixed in. A cache is filled under a file lock, so two
processes building the same axis at once compute each rollout once.

Activations are the mean of `blocks.{l}.hook_resid_post` over the assistant-content tokens only
(`lm.chat.render(...).response_mask`), one [n_layers, d_model] matrix per rollout. Sequences are
right-padded, so causal attention keeps the real tokens exact without an attention mask.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import safe_open
from tqdm.auto import tqdm

from lm.batch import pad
from lm.chat import as_conversation, render
from lm.engines import engine_name, replies
from lm.generate import GenerationConfig
from lm.harvest import HarvestConfig, harvest
from lm.io import file_lock, read_json, save_tensors, write_json
from lm.model import model_hash

from axis.data import Role

DEFAULT = "default"  # the role name of default-Assistant rollouts


@dataclass(frozen=True)
class RolloutSpec:
    role: str  # role name, or "default"
    category: str
    prompt_index: int
    system: str | None
    question: str

    @property
    def id(self) -> str:
        return hashlib.sha1(json.dumps([self.system, self.question]).encode()).hexdigest()[:16]

    @property
    def is_default(self) -> bool:
        return self.role == DEFAULT


def make_specs(roles: list[Role], default_prompts: list[str | None], questions: list[str],
               prompts_per_role: int | None = None) -> list[RolloutSpec]:
    """Every default prompt x question, then every role system prompt x question."""
    if not roles:
        raise ValueError("Empty role bank: the axis contrasts the default Assistant with role rollouts.")
    if not questions:
        raise ValueError("No extraction questions given.")
    if not default_prompts:
        raise ValueError("No default-Assistant prompts given.")
    specs = [RolloutSpec(DEFAULT, DEFAULT, i, s, q) for i, s in enumerate(default_prompts) for q in questions]
    for r in roles:
        for i, s in enumerate(r.system_prompts[:prompts_per_role]):
            specs += [RolloutSpec(r.name, r.category, i, s, q) for q in questions]
    return specs


def conversation(spec: RolloutSpec, reply: str | None = None) -> list[dict]:
    conv = as_conversation(spec.question, spec.system)
    return conv + [{"role": "assistant", "content": reply}] if reply is not None else conv


SECONDS = "seconds.json"


def cache_seconds(root: str | Path) -> dict | None:
    """{"seconds", "n"}: the compute time a chunk cache's chunks took, summed across runs (None: not recorded)."""
    path = Path(root) / SECONDS
    return read_json(path) if path.is_file() else None


class ChunkCache:
    """Records keyed by rollout id, stored as atomically written chunk files plus a manifest.

    Used as a context manager: it holds `lm.io.file_lock` on the directory, so a second process
    filling the same cache waits, then finds the first one's chunks and computes only what is missing."""

    def __init__(self, root: str | Path, manifest: dict, suffix: str):
        self.root, self.suffix, self.manifest = Path(root), suffix, json.loads(json.dumps(manifest))
        self._lock = ExitStack()

    def __enter__(self) -> "ChunkCache":
        self._lock.enter_context(file_lock(self.root))
        try:
            path = self.root / "manifest.json"
            if path.is_file() and read_json(path) != self.manifest:
                raise ValueError(f"{self.root} caches rollouts made with other settings or another model "
                                 f"({read_json(path)} vs {self.manifest}); use another --out or delete it.")
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(path, self.manifest)
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.close()

    def chunks(self) -> list[Path]:
        return sorted(self.root.glob(f"chunk_*{self.suffix}"))

    def add_seconds(self, seconds: float, n: int) -> None:
        """Accumulate the compute time of this cache's chunks (seconds.json), across resumed runs."""
        t = cache_seconds(self.root) or {"seconds": 0.0, "n": 0}
        write_json(self.root / SECONDS, {"seconds": round(t["seconds"] + seconds, 1), "n": t["n"] + n})

    def next_path(self) -> Path:
        done = self.chunks()
        n = int(done[-1].name.split("_")[1].split(".")[0]) + 1 if done else 0
        return self.root / f"chunk_{n:06d}{self.suffix}"


def generate_rollouts(model, specs: list[RolloutSpec], gen: GenerationConfig, cache_dir: str | Path,
                      chunk_size: int = 256, progress: bool = True, backend: str = "hf") -> dict[str, dict]:
    """Sampled replies for every spec (cached); returns {rollout id: {'text', 'finished', 'n_gen_tokens'}}.

    `backend` picks the engine (`lm.engines`): "hf", "llama.cpp" or a llama.cpp server URL. The
    manifest records which, so rollouts of two engines never mix in one cache."""
    sampling = {k: v for k, v in gen.to_dict().items() if k not in ("batch_size", "decode", "weights")}
    manifest = {"model": model_hash(model), **sampling, "engine": engine_name(backend)}
    with ChunkCache(cache_dir, manifest, ".json") as cache:
        done: dict[str, dict] = {}
        for p in cache.chunks():
            done.update(read_json(p))
        todo = [s for s in dict.fromkeys(specs) if s.id not in done]
        if not todo:
            return {s.id: done[s.id] for s in specs}
        bar = tqdm(total=len(todo), desc=f"rollouts ({engine_name(backend)})", disable=not progress, unit="rollout")
        with replies(model, backend) as sample:
            for b in range(0, len(todo), chunk_size):
                chunk, t0 = todo[b:b + chunk_size], time.time()
                seed = gen.seed + int(chunk[0].id, 16) % 100_000  # reproducible for the same chunk
                outs = sample([conversation(s) for s in chunk], gen, seed)
                recs = {s.id: {"text": o.text, "finished": o.finished, "n_gen_tokens": o.n_gen_tokens}
                        for s, o in zip(chunk, outs)}
                write_json(cache.next_path(), recs)
                cache.add_seconds(time.time() - t0, len(chunk))
                done.update(recs)
                bar.update(len(chunk))
        bar.close()
    return {s.id: done[s.id] for s in specs}


def engine_check(model, specs: list[RolloutSpec], gen: GenerationConfig, backend: str, seed: int = 12345) -> dict:
    """The same specs sampled by our `generate` and by `backend`: mean reply tokens, share finished, and
    the mean NLL per reply token under the model. Same sampler, same distribution: the figures agree up
    to sampling noise (reported as standard errors over replies)."""
    from statistics import mean, stdev

    from steering.metrics import scored_nll

    out = {}
    for name, be in (("hf", "hf"), (engine_name(backend), backend)):
        with replies(model, be) as sample:
            got = sample([conversation(s) for s in specs], gen, seed)
        seqs = [x for x in (response_tokens(model.tokenizer, s, r.text) for s, r in zip(specs, got)) if x is not None]
        nll = [a / n for a, n in scored_nll(model, seqs) if n]
        lens = [r.n_gen_tokens for r in got]
        out[name] = {"n": len(got), "mean_tokens": mean(lens), "finished": mean(r.finished for r in got),
                     "nll_per_token": mean(nll), "nll_se": stdev(nll) / len(nll) ** 0.5 if len(nll) > 1 else None,
                     "tokens_se": stdev(lens) / len(lens) ** 0.5 if len(lens) > 1 else None}
    return out


def response_tokens(tokenizer, spec: RolloutSpec, text: str):
    """Ids and response mask of the rollout, or None when the template cannot place the reply."""
    try:
        r = render(tokenizer, conversation(spec, text))
    except ValueError:
        return None
    return r.ids, r.response_mask


def harvest_rollouts(model, specs: list[RolloutSpec], texts: dict[str, str], cache_dir: str | Path,
                     batch_size: int = 16, chunk_size: int = 512, progress: bool = True
                     ) -> Float[torch.Tensor, "n layers d"]:
    """Mean hook_resid_post of every block over each rollout's response tokens, in `specs` order.

    Rollouts whose reply has no tokens get NaN rows (callers drop them)."""
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    with ChunkCache(cache_dir, {"model": model_hash(model), "hooks": names}, ".safetensors") as cache:
        have = chunk_index(cache.chunks())
        todo = [s for s in dict.fromkeys(specs) if s.id not in have]
        bar = tqdm(total=len(todo), desc="activations", disable=not progress or not todo, unit="rollout")
        for b in range(0, len(todo), chunk_size):
            chunk, path, t0 = todo[b:b + chunk_size], cache.next_path(), time.time()
            save_tensors(path, {"mean": _response_means(model, chunk, texts, names, batch_size)},
                         metadata={"ids": json.dumps([s.id for s in chunk])})
            cache.add_seconds(time.time() - t0, len(chunk))
            bar.update(len(chunk))
            have.update({s.id: (path, i) for i, s in enumerate(chunk)})
        bar.close()
    return gather_means(have, [s.id for s in specs])


def chunk_index(chunks: list[Path]) -> dict[str, tuple[Path, int]]:
    """Where each cached rollout's response means live: {rollout id: (chunk file, row)}."""
    where: dict[str, tuple[Path, int]] = {}
    for p in chunks:
        with safe_open(str(p), "pt") as f:
            where.update({rid: (p, i) for i, rid in enumerate(json.loads(f.metadata()["ids"]))})
    return where


def gather_means(where: dict[str, tuple[Path, int]], ids: list[str]) -> Float[torch.Tensor, "n layers d"]:
    """The cached response means of `ids`, in order, each chunk file read once."""
    by_file: dict[Path, torch.Tensor] = {}
    rows = []
    for rid in ids:
        p, i = where[rid]
        if p not in by_file:
            with safe_open(str(p), "pt") as f:
                by_file[p] = f.get_tensor("mean")
        rows.append(by_file[p][i])
    return torch.stack(rows)


def _response_means(model, chunk: list[RolloutSpec], texts: dict[str, str], names: list[str],
                    batch_size: int) -> Float[torch.Tensor, "n layers d"]:
    """Per-rollout mean of each hook over the response tokens, in `chunk` order (NaN when empty)."""
    tok = model.tokenizer
    seqs = [response_tokens(tok, s, texts[s.id]) for s in chunk]
    seqs = [x if x is not None else (torch.tensor([tok.pad_token_id]), torch.zeros(1, dtype=torch.bool))
            for x in seqs]  # an unrenderable reply becomes an empty (NaN) row
    order = sorted(range(len(chunk)), key=lambda i: len(seqs[i][0]))  # batch similar lengths
    # right padding: causal attention never sees the pads
    ids, _, mask = pad([seqs[i][0] for i in order], tok.pad_token_id, masks=[seqs[i][1] for i in order])
    acts = harvest(model, ids, names, HarvestConfig(batch_size=batch_size, exclude_first=False, reduce="mean"),
                   mask=mask, progress=False)
    means = torch.stack([acts[nm] for nm in names], 1)  # [rows, layers, d]
    means[mask.sum(1) == 0] = float("nan")
    out = torch.empty_like(means)
    out[torch.tensor(order)] = means
    return out


def save_transcripts(path: str | Path, specs: list[RolloutSpec], records: dict[str, dict]) -> None:
    write_json(path, [{**asdict(s), "id": s.id, **records[s.id]} for s in specs])
