"""Prompt sets: JSON lists of texts, read and checked in one place.

Every package keeps its own sets in its own `data/` directory and reads them through its own loader,
which calls `read_prompt_set` on that directory. Sets more than one package uses (the neutral text
the KL checks run on) live in `lm/data/` and are read with `load_prompt_set`.
"""

from __future__ import annotations

from pathlib import Path

from lm.io import read_json

SHARED = Path(__file__).parent / "data"  # prompt sets shared across packages


def prompt_set_names(root: str | Path = SHARED) -> list[str]:
    return sorted(p.stem for p in Path(root).glob("*.json"))


def read_prompt_set(root: str | Path, name: str) -> list[str]:
    """`root/<name>.json`: a non-empty list of strings (or of {"text": ...} records, read as their text)."""
    path = Path(root) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"No prompt set {name!r} in {root}; known sets: {prompt_set_names(root)}.")
    raw = read_json(path)
    texts = [r["text"] if isinstance(r, dict) and "text" in r else r for r in raw] if isinstance(raw, list) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{path} must be a non-empty JSON list of strings (or of {{'text': ...}} records).")
    return texts


def load_prompt_set(name: str) -> list[str]:
    """A shared prompt set from lm/data/ by name (e.g. "neutral_text")."""
    return read_prompt_set(SHARED, name)
