"""The project-written banks behind the Assistant Axis, loaded with checks, and judge-free scoring.

`axis/data/` holds the role bank, extraction questions, neutral default-Assistant prompts, drift
conversations, persona jailbreaks (each with a written compliant and refusal reply), held-out
identity prompts, multiple-choice questions and the regex lexicons (`identity_patterns.json`) that
stand in for the paper's LLM judge. Everything is validated on load so a malformed bank fails at
once with the file and entry named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lm.io import read_json
from lm.prompts import load_prompt_set, read_prompt_set

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Role:
    name: str
    category: str
    system_prompts: tuple[str, ...]


def _load(name: str, path: str | Path | None):
    p = Path(path) if path else DATA / name
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found; the bank files live in {DATA}.")
    return p, read_json(p)


def load_roles(path: str | Path | None = None) -> list[Role]:
    p, raw = _load("roles.json", path)
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"Empty role bank {p}: the axis needs roles to contrast with the default Assistant.")
    roles, seen = [], set()
    for i, r in enumerate(raw):
        sp = r.get("system_prompts") if isinstance(r, dict) else None
        if not isinstance(r, dict) or not r.get("name") or not sp or not all(isinstance(s, str) and s for s in sp):
            raise ValueError(f"{p}: role {i} needs 'name', 'category' and a non-empty list of 'system_prompts'.")
        if r["name"] in seen:
            raise ValueError(f"{p}: role name {r['name']!r} appears twice.")
        seen.add(r["name"])
        roles.append(Role(r["name"], r.get("category", "uncategorised"), tuple(sp)))
    return roles


def select_roles(roles: list[Role], per_category: int | None = None, names: list[str] | None = None) -> list[Role]:
    """A deterministic subset: named roles, or the first `per_category` of each category (None = all)."""
    if names:
        by = {r.name: r for r in roles}
        missing = [n for n in names if n not in by]
        if missing:
            raise ValueError(f"Unknown role(s) {missing}; see the names in {DATA / 'roles.json'}.")
        roles = [by[n] for n in names]
    elif per_category is not None:
        count: dict[str, int] = {}
        kept = []
        for r in roles:
            if count.get(r.category, 0) < per_category:
                kept.append(r)
                count[r.category] = count.get(r.category, 0) + 1
        roles = kept
    if not roles:
        raise ValueError("The role selection is empty: raise --roles-per-category or name existing roles.")
    return roles


def _strings(name: str, path=None, allow_none: bool = False) -> list:
    p, raw = _load(name, path)
    ok = isinstance(raw, list) and raw and all(isinstance(s, str) and s or (allow_none and s is None) for s in raw)
    if not ok:
        raise ValueError(f"{p} must be a non-empty JSON list of strings{' (or null)' if allow_none else ''}.")
    return raw


def load_questions(path=None) -> list[str]:
    return _strings("questions.json", path)


def load_default_prompts(model_name: str, path=None) -> list[str | None]:
    """Neutral system prompts; None = no system prompt; '{model_name}' filled in."""
    return [None if s is None else s.replace("{model_name}", model_name)
            for s in _strings("default_prompts.json", path, allow_none=True)]


def load_drift(path=None) -> list[dict]:
    p, raw = _load("drift_conversations.json", path)
    for i, c in enumerate(raw):
        if not c.get("domain") or not c.get("turns") or not all(isinstance(t, str) for t in c["turns"]):
            raise ValueError(f"{p}: conversation {i} needs 'domain', 'id' and a list of user 'turns'.")
    return raw


def load_jailbreaks(path=None) -> list[dict]:
    p, raw = _load("jailbreaks.json", path)
    for i, j in enumerate(raw):
        if not j.get("system") or not j.get("user"):
            raise ValueError(f"{p}: jailbreak {i} needs 'system' and 'user'.")
    return raw


REPLY_KEYS = ("system", "user", "compliant", "refusal")


def load_jailbreak_replies(path=None, jailbreaks_path=None) -> list[dict]:
    """A written compliant and refusal reply per persona jailbreak, entry by entry in jailbreaks.json's
    order, for the teacher-forced refusal log-odds (`axis.evals.refusal_log_odds`)."""
    p, raw = _load("jailbreak_replies.json", path)
    jail = load_jailbreaks(jailbreaks_path)
    if not isinstance(raw, list) or len(raw) != len(jail):
        n = len(raw) if isinstance(raw, list) else "no list"
        raise ValueError(f"{p} has {n} entries but jailbreaks.json has {len(jail)}: "
                         "write one reply pair per jailbreak.")
    for i, (r, j) in enumerate(zip(raw, jail)):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) and r[k].strip() for k in REPLY_KEYS):
            raise ValueError(f"{p}: entry {i} needs non-empty strings {REPLY_KEYS}.")
        if (r["system"], r["user"]) != (j["system"], j["user"]):
            raise ValueError(f"{p}: entry {i} does not match jailbreaks.json entry {i} (system/user differ); "
                             "keep the two files in the same order with system and user copied exactly.")
    return raw


def load_identity_prompts(path=None) -> tuple[list[str], list[str]]:
    p, raw = _load("identity_prompts.json", path)
    if not raw.get("questions") or not raw.get("personas"):
        raise ValueError(f"{p} needs non-empty 'questions' and 'personas' lists.")
    return raw["questions"], raw["personas"]


def load_mc(path=None) -> list[dict]:
    p, raw = _load("mc_questions.json", path)
    for i, q in enumerate(raw):
        ch = q.get("choices")
        if not q.get("question") or not isinstance(ch, list) or len(ch) < 2 or not 0 <= q.get("answer", -1) < len(ch):
            raise ValueError(f"{p}: question {i} needs 'question', >= 2 'choices' and an 'answer' index into them.")
    return raw


def load_neutral_text(path=None) -> list[str]:
    """The shared neutral text of the KL check (`lm.prompts`), or a JSON list of texts at `path`."""
    if path is None:
        return load_prompt_set("neutral_text")
    return read_prompt_set(Path(path).parent, Path(path).stem)


# ----- judge-free scoring ---------------------------------------------------------------------

PATTERN_KINDS = ("assistant", "human_or_other", "refusal")


@lru_cache(maxsize=4)
def patterns(path: str | None = None) -> dict[str, list[re.Pattern]]:
    _, raw = _load("identity_patterns.json", path)
    missing = [k for k in PATTERN_KINDS if not raw.get(k)]
    if missing:
        raise ValueError(f"identity_patterns.json lacks pattern list(s) {missing}.")
    return {k: [re.compile(p, re.IGNORECASE) for p in raw[k]] for k in PATTERN_KINDS}


def fires(text: str, kind: str) -> bool:
    """Whether any pattern of `kind` ('assistant' | 'human_or_other' | 'refusal') matches the text."""
    if kind not in PATTERN_KINDS:
        raise ValueError(f"Unknown pattern kind {kind!r}; use one of {PATTERN_KINDS}.")
    return any(p.search(text) for p in patterns()[kind])


def identity_label(text: str) -> str:
    """'assistant' | 'other' (human or another being) | 'both' | 'neither'."""
    a, o = fires(text, "assistant"), fires(text, "human_or_other")
    return {(True, False): "assistant", (False, True): "other", (True, True): "both"}.get((a, o), "neither")


def ai_role(role: Role) -> bool:
    """Roles that are themselves AIs (rival_ai, DAN...): calling themselves an AI is in character.

    The boilerplate 'not an assistant' of the role templates is ignored when deciding."""
    return any(fires(s.replace("not an assistant", ""), "assistant") for s in role.system_prompts)


def adheres(text: str, role: Role | None) -> bool:
    """The judge-free adherence filter: a role rollout that still presents itself as an AI assistant
    (assistant lexicon fires) is out of character and dropped, except for roles that are AIs.
    Default rollouts (role None) are never filtered, as in the paper."""
    if role is None or ai_role(role):
        return True
    return not fires(text, "assistant")
