"""Short automatic labels for latents, from what they read and what they write; no external LLM.

A label reads "Gate / Bridge → bridge, bridges": the tokens where the latent fires hardest in its
top contexts (weighted by activation and by inverse corpus frequency, so ubiquitous tokens such
as "the" or "," only win when they truly dominate), then the tokens its decoder direction
promotes through the unembedding (logit lens). Crude, but enough to scan and search thousands
of dashboards and to spot the latent a concept search lands on.
"""

from __future__ import annotations

import math
import weakref
from collections import defaultdict

# Decoded token strings per tokenizer, held beside it rather than as an attribute on it; a tokenizer
# that cannot be weakly referenced (or hashed) is decoded uncached.
_DECODED: "weakref.WeakKeyDictionary[object, dict[int, str]]" = weakref.WeakKeyDictionary()


def token_text(tokenizer, i: int) -> str:
    """`tokenizer.decode([i])`, cached per tokenizer (labels and dashboards decode each id many times)."""
    i = int(i)
    try:
        cache = _DECODED.setdefault(tokenizer, {})
    except TypeError:
        return tokenizer.decode([i])
    s = cache.get(i)
    if s is None:
        s = cache[i] = tokenizer.decode([i])
    return s


def _norm(s: str) -> str:
    t = s.strip()
    if t:
        return t
    return {"\n": "\\n", "\n\n": "\\n\\n", "\t": "\\t"}.get(s, "␣" if s else "")


def make_label(act_ids, act_weights, logit_ids, tokenizer, token_counts=None, n_total: int | None = None,
               n_act: int = 3, n_out: int = 3, max_len: int = 60) -> str:
    """`act / tokens → promoted tokens`; "dead" when the latent never fired."""
    score: dict[str, float] = defaultdict(float)
    for i, w in zip(act_ids, act_weights):
        if i < 0 or w <= 0:
            continue
        idf = 1.0
        if token_counts is not None and n_total:
            idf = math.log((n_total + 1) / (int(token_counts[i]) + 1)) + 1.0
        score[_norm(token_text(tokenizer, i))] += float(w) * idf
    if not score:
        return "dead"
    ranked = sorted(score.items(), key=lambda kv: -kv[1])
    best = ranked[0][1]
    reads = [s for s, v in ranked[:n_act] if v >= 0.3 * best]
    writes: list[str] = []
    for i in logit_ids:
        s = token_text(tokenizer, i).strip()
        if s and s not in writes:
            writes.append(s)
        if len(writes) == n_out:
            break
    label = " / ".join(reads) + (" → " + ", ".join(writes) if writes else "")
    return label if len(label) <= max_len else label[: max_len - 1] + "…"


def auto_labels(stats, tokenizer) -> list[str]:
    """One label per latent of a `FeatureStats`: its top contexts' peak tokens and logit-lens tokens."""
    c = stats.cfg.left  # the activating token sits at this index of every stored window
    peak = stats.t["top_toks"][:, :, c].tolist()
    vals = stats.t["top_vals"].tolist()
    out_ids = stats.t["logit_pos_ids"].tolist()
    counts, n = stats.t["token_counts"], stats.n_tokens
    return [make_label(peak[i], vals[i], out_ids[i], tokenizer, counts, n) for i in range(stats.d_sae)]
