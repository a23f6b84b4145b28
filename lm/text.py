"""Text sources and fixed-length token batches for SAE training and harvesting.

A source is a local `.txt` (documents split on blank lines), `.jsonl` (a `text` field, or a
`messages` conversation rendered with the chat template), `.parquet` (a `text` column), a HF
dataset name (when the hub is reachable), or "default": the chat corpus the model wrote itself
(`lm.corpus`). Everything becomes a list of token sequences, then packed into `context_size` rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int

DEFAULT = "default"


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i} is not valid JSON ({e.msg}); fix or remove that line.") from e
    return rows


def load_records(source: str) -> list[str | list[dict]]:
    """Texts (str) or conversations (list of messages) from a source other than the default corpus."""
    path = Path(source).expanduser()
    if path.suffix in {".txt", ".jsonl", ".parquet"}:
        if not path.is_file():
            raise FileNotFoundError(f"Data file {path} does not exist; pass an existing .txt/.jsonl/.parquet.")
        try:
            if path.suffix == ".txt":
                records = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
            elif path.suffix == ".jsonl":
                rows = _read_jsonl(path)
                bad = [i for i, r in enumerate(rows) if "text" not in r and "messages" not in r]
                if bad:
                    raise ValueError(f"{path}: line {bad[0] + 1} has neither 'text' nor 'messages'.")
                records = [r["text"] if "text" in r else r["messages"] for r in rows]
            else:
                import pyarrow.parquet as pq

                table = pq.read_table(path)
                if "text" not in table.column_names:
                    raise ValueError(f"{path} has no 'text' column (columns: {table.column_names}).")
                records = [t for t in table.column("text").to_pylist() if t]
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text; re-encode it as UTF-8.") from e
    elif path.exists():
        raise ValueError(f"Unsupported data file {path}: use .txt, .jsonl or .parquet.")
    else:
        records = _hf_dataset(source)
    if not records:
        raise ValueError(f"Data source {source!r} is empty: it holds no text.")
    return records


def _hf_dataset(name: str) -> list[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # offline, unknown name, ...
        raise ValueError(f"Could not load {name!r} as a file or HF dataset ({type(e).__name__}: {e}). "
                         "Offline, use a local .txt/.jsonl/.parquet or the built-in 'default'.") from e
    if "text" not in ds.column_names:
        raise ValueError(f"HF dataset {name!r} has no 'text' column ({ds.column_names}).")
    return [t for t in ds["text"] if t]


def token_sequences(source: str, tokenizer) -> list[np.ndarray]:
    """One token array per document or conversation (conversations through the chat template)."""
    if source == DEFAULT:
        from lm.corpus import load_corpus

        return load_corpus().sequences()
    from lm.chat import render

    seqs = []
    for r in load_records(source):
        if isinstance(r, str):
            ids = tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        else:
            ids = render(tokenizer, r).ids.tolist()
        seqs.append(np.asarray(ids, dtype=np.int64))
    return seqs


def pack(seqs: list[np.ndarray], context_size: int, max_tokens: int | None = None) -> Int[torch.Tensor, "rows ctx"]:
    """Concatenate sequences and cut them into rows of `context_size` (the tail is dropped)."""
    if context_size < 2:
        raise ValueError("context_size must be at least 2.")
    flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    if max_tokens is not None:
        flat = flat[:max_tokens]
    rows = len(flat) // context_size
    if rows == 0:
        raise ValueError(f"Only {len(flat)} tokens: not enough for one row of {context_size}.")
    return torch.from_numpy(flat[: rows * context_size].astype(np.int64)).view(rows, context_size)


def packed_dataset(source: str, tokenizer, context_size: int = 256, max_tokens: int | None = None):
    """A `datasets.Dataset` with an `input_ids` column, as SAELens's `override_dataset` expects."""
    import datasets

    rows = pack(token_sequences(source, tokenizer), context_size, max_tokens)
    return datasets.Dataset.from_dict({"input_ids": rows.tolist()})
