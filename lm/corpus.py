"""The built-in default corpus: two-turn chats the embedded model writes from a prompt bank.

No corpus can be downloaded here, and SAE features for chat behaviour (praise, persona, the
Golden Gate Bridge) need chat data anyway, so the model samples replies to a project-written bank
of user prompts (`lm/data/prompt_bank.jsonl`), each with a follow-up turn. The build runs in
chunks written atomically, so an interrupted build resumes at the first missing chunk; the
finished corpus is stored as uint16 token ids plus a manifest and committed, so everyone trains
on the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lm.chat import render
from lm.io import atomic_path, read_json, write_json

DATA = Path(__file__).parent / "data"
PROMPT_BANK = DATA / "prompt_bank.jsonl"
CORPUS_DIR = DATA / "default_corpus"


@dataclass
class CorpusConfig:
    prompt_bank: str = str(PROMPT_BANK)
    target_tokens: int = 1_000_000
    max_samples_per_prompt: int = 16
    max_new_tokens: int = 160
    followup_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 96
    chunk_size: int = 192  # conversations per resumable chunk
    parallel_chunks: int = 4  # chunks in flight at once with a server backend
    backend: str = "hf"  # "hf" (our batched generate) or a llama.cpp server URL, e.g. http://127.0.0.1:8089

    def sampling_key(self) -> dict:
        """What decides the tokens: a cache built with different values is not this corpus."""
        d = asdict(self)
        for k in ("prompt_bank", "batch_size", "backend", "parallel_chunks"):
            d.pop(k)
        return d


def load_prompt_bank(path: str | Path = PROMPT_BANK) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"Prompt bank {path} is empty.")
    for i, r in enumerate(rows):
        if not r.get("prompt") or not r.get("followup"):
            raise ValueError(f"{path}: entry {i} needs non-empty 'prompt' and 'followup'.")
    return rows


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Corpus:
    tokens: np.ndarray  # uint16, all conversations back to back
    offsets: np.ndarray  # int64, start of each conversation, plus the end
    response_mask: np.ndarray  # bool, assistant-content tokens
    manifest: dict = field(default_factory=dict)

    def sequences(self) -> list[np.ndarray]:
        return [self.tokens[a:b].astype(np.int64) for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    @property
    def n_tokens(self) -> int:
        return int(len(self.tokens))


def load_corpus(path: str | Path = CORPUS_DIR) -> Corpus:
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"No corpus at {path}. Build it with `python scripts/build_corpus.py` "
                                "(hours on 2 CPU cores; minutes on a GPU).")
    tokens = np.load(path / "tokens.npy")
    offsets = np.load(path / "offsets.npy")
    mask = np.unpackbits(np.load(path / "response_mask.npy"))[: len(tokens)].astype(bool)
    return Corpus(tokens, offsets, mask, read_json(path / "manifest.json"))


def _chunk_plan(n_prompts: int, cfg: CorpusConfig) -> list[list[tuple[int, int]]]:
    """Deterministic (sample, prompt) order cut into chunks: the same on every resume."""
    order = [(s, p) for s in range(cfg.max_samples_per_prompt) for p in range(n_prompts)]
    return [order[i:i + cfg.chunk_size] for i in range(0, len(order), cfg.chunk_size)]


def _sample(model, convs: list, max_new_tokens: int, cfg: CorpusConfig, seed: int) -> list[str]:
    """One sampled reply per conversation, through our generate or a llama.cpp server (`lm.engines`)."""
    from lm.engines import replies
    from lm.generate import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=cfg.temperature,
                           top_p=cfg.top_p, seed=seed, batch_size=cfg.batch_size)
    with replies(model, cfg.backend) as sample:
        return [r.text for r in sample(convs, gen, seed)]


def _generate_chunk(model, bank, items, cfg: CorpusConfig, chunk_index: int) -> list[dict]:
    seed = cfg.seed * 1_000_003 + chunk_index * 7919
    first = [[{"role": "user", "content": bank[p]["prompt"]}] for _, p in items]
    replies = _sample(model, first, cfg.max_new_tokens, cfg, seed)
    second = [c + [{"role": "assistant", "content": r}, {"role": "user", "content": bank[p]["followup"]}]
              for c, r, (_, p) in zip(first, replies, items)]
    replies = _sample(model, second, cfg.followup_new_tokens, cfg, seed + 1)
    rows = []
    for (s, p), c, r in zip(items, second, replies):
        conv = c + [{"role": "assistant", "content": r}]
        rendered = render(model.tokenizer, conv)
        rows.append({"prompt_index": p, "sample": s, "category": bank[p].get("category", ""),
                     "messages": conv, "input_ids": rendered.ids.tolist(),
                     "response_mask": rendered.response_mask.to(int).tolist()})
    return rows


def _chunk(model, bank, items, cfg: CorpusConfig, ci: int, work: Path) -> list[dict]:
    """Chunk `ci`, from disk when an earlier (interrupted) build finished it."""
    path = work / f"chunk_{ci:05d}.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines()]
    t = time.time()
    rows = _generate_chunk(model, bank, items, cfg, ci)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(work / f"chunk_{ci:05d}.time.json", {"seconds": time.time() - t})
    return rows


def build_corpus(model, out_dir: str | Path = CORPUS_DIR, cfg: CorpusConfig | None = None,
                 work_dir: str | Path | None = None) -> Corpus:
    """Generate (or resume) the default corpus into `work_dir` chunks, then write it to `out_dir`."""
    from lm.model import model_hash

    cfg = cfg or CorpusConfig()
    if cfg.backend == "llama.cpp":
        raise ValueError("The corpus backend is 'hf' or a running llama-server's URL (chunks run in parallel on "
                         "one server); start one with `llama-server -m MODEL.gguf -np 16 --poll 0`.")
    bank = load_prompt_bank(cfg.prompt_bank)
    key = {"prompt_bank_sha256": sha256_of(cfg.prompt_bank), "model": model_hash(model), **cfg.sampling_key()}
    work = Path(work_dir or Path(out_dir).parent / (Path(out_dir).name + ".work"))
    work.mkdir(parents=True, exist_ok=True)
    if (work / "key.json").is_file() and read_json(work / "key.json") != key:
        raise ValueError(f"{work} holds chunks of a different build (other prompt bank, model or "
                         "sampling settings). Delete it or pass another work dir.")
    write_json(work / "key.json", key)

    plan = _chunk_plan(len(bank), cfg)
    # A server backend gets several chunks in flight so its slots never idle on a chunk's slowest reply.
    parallel = 1 if cfg.backend == "hf" else cfg.parallel_chunks
    done_tokens, next_chunk = 0, 0
    bar = tqdm(total=cfg.target_tokens, desc="corpus tokens", unit="tok")
    with ThreadPoolExecutor(parallel) as pool:
        while done_tokens < cfg.target_tokens and next_chunk < len(plan):
            batch = range(next_chunk, min(next_chunk + parallel, len(plan)))
            next_chunk = batch.stop
            for rows in pool.map(lambda ci: _chunk(model, bank, plan[ci], cfg, ci, work), batch):
                n = sum(len(r["input_ids"]) for r in rows)
                done_tokens += n
                bar.update(n)
    bar.close()
    return finalize(work, out_dir, key, cfg)


def finalize(work: Path, out_dir: str | Path, key: dict, cfg: CorpusConfig) -> Corpus:
    """Concatenate chunks into uint16 tokens, offsets, packed response mask and a manifest."""
    out_dir = Path(out_dir)
    chunks = sorted(work.glob("chunk_*.jsonl"))
    rows = [json.loads(line) for c in chunks for line in c.read_text().splitlines()]
    ids = [np.asarray(r["input_ids"], dtype=np.uint16) for r in rows]
    mask = np.concatenate([np.asarray(r["response_mask"], dtype=bool) for r in rows])
    tokens = np.concatenate(ids)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
    seconds = sum(read_json(c.with_suffix(".time.json"))["seconds"] for c in chunks)
    manifest = {
        **key, "n_conversations": len(rows), "n_tokens": int(len(tokens)),
        "n_response_tokens": int(mask.sum()), "build_seconds": round(seconds, 1),
        "tokens_per_second": round(len(tokens) / max(seconds, 1e-9), 1),
        "generated_tokens_per_second": round(int(mask.sum()) / max(seconds, 1e-9), 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "batch_size": cfg.batch_size, "backend": "hf" if cfg.backend == "hf" else "llama.cpp llama-server",
        "categories": sorted({r["category"] for r in rows}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, arr in (("tokens.npy", tokens), ("offsets.npy", offsets), ("response_mask.npy", np.packbits(mask))):
        with atomic_path(out_dir / name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
    with atomic_path(out_dir / "conversations.jsonl") as tmp:
        tmp.write_text("".join(json.dumps({k: r[k] for k in ("prompt_index", "sample", "category", "messages")}) + "\n"
                               for r in rows))
    write_json(out_dir / "manifest.json", manifest)
    return load_corpus(out_dir)
