"""Concept sets: the JSON files of positive and negative texts that name a concept, and their one reader.

A concept is a JSON file (see `features/concepts/README.md`) with positive and negative texts,
a description and keyword regexes. Shipped sets live in `features/concepts/`; every package reads
them through `load_concept` (the raw record, as steering's metrics use it) or `Concept.load`
(the validated schema concept search needs), never by path.

The selection / held-out split is deterministic and order-free: texts are sorted by the SHA-256
of their content and alternately assigned, so appending texts to a concept file keeps most
earlier assignments.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from lm.io import read_json

CONCEPTS_DIR = Path(__file__).parent / "concepts"
KEYS = ("name", "description", "keywords", "positive", "negative")
STEERING_KEYS = ("name", "description", "keywords")  # what the steering metrics read


def shipped_concepts() -> list[str]:
    """Names of the concept sets shipped in `features/concepts/`."""
    return sorted(p.stem for p in CONCEPTS_DIR.glob("*.json"))


def concept_file(name_or_path: str | Path) -> Path:
    """A user's JSON file as given, else the shipped set of that name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = CONCEPTS_DIR / f"{name_or_path}.json"
    if not shipped.is_file():
        raise FileNotFoundError(f"No concept {str(name_or_path)!r}: give a JSON file path or a shipped concept "
                                f"name; known concepts: {', '.join(shipped_concepts())}.")
    return shipped


def _read(name_or_path: str | Path) -> tuple[dict, Path]:
    path = concept_file(name_or_path)
    try:
        return read_json(path), path
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from e


def load_concept(name_or_path: str | Path) -> dict:
    """A concept record (name, description, keywords, positive, negative) by shipped name or path."""
    concept, path = _read(name_or_path)
    for key in STEERING_KEYS:
        if key not in concept:
            raise ValueError(f"{path} lacks {key!r}; a concept needs name, description and keywords.")
    return concept


@dataclass
class Concept:
    name: str
    positive: list[str]
    negative: list[str]
    description: str = ""
    keywords: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, d: dict, source: str = "concept") -> "Concept":
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a concept is a JSON object with keys {list(KEYS)}.")
        unknown = sorted(set(d) - set(KEYS))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; a concept has keys {list(KEYS)}.")
        missing = [k for k in ("name", "positive", "negative") if k not in d]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}; a concept needs 'name', 'positive' and 'negative'.")
        return cls(name=d["name"], positive=d["positive"], negative=d["negative"],
                   description=d.get("description", ""), keywords=d.get("keywords", []))

    @classmethod
    def load(cls, name_or_path: str | Path) -> "Concept":
        """A shipped concept by name (`golden_gate_bridge`) or a user's JSON file."""
        d, path = _read(name_or_path)
        return cls.from_dict(d, str(path))

    def validate(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"Concept name {self.name!r} must be a non-empty string of letters, digits, '_', '.', '-'.")
        for side in ("positive", "negative"):
            texts = getattr(self, side)
            if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(f"Concept {self.name!r}: '{side}' must be a list of non-empty strings.")
            if len(texts) < 2:
                other = "negative" if side == "positive" else "positive"
                raise ValueError(f"Concept {self.name!r} has {len(texts)} {side} text(s): concept search needs at least "
                                 f"2 {side} and 2 {other} texts (one of each per half; 40+ each for a reliable AUROC).")
        both = set(self.positive) & set(self.negative)
        if both:
            raise ValueError(f"Concept {self.name!r}: {len(both)} text(s) are both positive and negative, "
                             f"e.g. {sorted(both)[0][:60]!r}.")
        if not isinstance(self.keywords, list) or not all(isinstance(k, str) for k in self.keywords):
            raise ValueError(f"Concept {self.name!r}: 'keywords' must be a list of regex strings.")
        for k in self.keywords:
            try:
                re.compile(k)
            except re.error as e:
                raise ValueError(f"Concept {self.name!r}: keyword {k!r} is not a valid regex ({e}).") from e

    def split(self) -> dict[str, tuple[list[str], list[str]]]:
        """{'selection': (pos, neg), 'heldout': (pos, neg)}: hash-sorted texts, alternately assigned."""
        halves = {}
        for side in ("positive", "negative"):
            ordered = sorted(getattr(self, side), key=lambda t: hashlib.sha256(t.encode()).hexdigest())
            halves[side] = (ordered[0::2], ordered[1::2])
        return {"selection": (halves["positive"][0], halves["negative"][0]),
                "heldout": (halves["positive"][1], halves["negative"][1])}
