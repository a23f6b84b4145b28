"""Judge-free steering metrics: does the concept show up, and is the text still fluent and on topic?

- concept rate: fraction of answers matching the concept's documented keyword regexes
  (`features/concepts/<name>.json`, "keywords"; case-insensitive), as in ActAdd's hit rates;
- description log-prob: mean per-token log-probability of the concept's "description" written
  as the assistant's reply, under the steered model (rises as the concept takes over);
- answer perplexity (`ppl`): perplexity of each answer given its question under the *unsteered* model;
- fluency perplexity (`fluency_ppl`): perplexity of each answer's tokens read on their own (one sink
  token, then the answer) under the unsteered model. Conditioned on the question it would punish the
  very topic shift steering is meant to cause; on its own it asks only "is this fluent text?";
- distinct-2: the share of an answer's token bigrams that are unique, averaged over answers. Repetition
  ("rodrodrod...") has *low* perplexity, so perplexity alone rewards collapse; distinct-2 catches it;
- looping rate: the share of answers that loop, fewer than 70% of their token bigrams unique ("San
  Francisco Bay San Francisco Bay ..." after a normal start). A mean distinct-2 still near the
  unsteered one can hide a third of the answers collapsing into a loop; the looping rate cannot;
- instruction relevance: per answer, mean per-token log p(answer | its question) minus the same under
  another question of the set (question i+1 mod n), unsteered model. An answer that ignores its
  question scores ~0; an on-topic answer that also mentions the concept stays positive;
- neutral KL: KL(steered || unsteered) of next-token distributions on held-out neutral text
  (`lm.prompts.load_prompt_set("neutral_text")`), averaged over tokens: how much else the steering moves
  (`NeutralKL.chat`: the same on the assistant-response tokens of chat conversations).

`scores(metrics, baseline)` is the headline, after AxBench (Wu et al. 2025), which has a judge rate
concept, instruction relevance and fluency 0-2 each and takes their harmonic mean. Ours are
judge-free, each in [0, 1] and relative to the unsteered answers:
    concept   = concept rate
    fluency   = min(1, base fluency_ppl / fluency_ppl, distinct2 / base distinct2,
                    (1 - looping_rate) / (1 - base looping_rate))
    relevance = clip(relevance / base relevance, 0, 1)
    harmonic  = 3 / (1/concept + 1/fluency + 1/relevance), 0 if any is 0
A component whose reference is undefined (one prompt: no other question; unsteered relevance <= 0;
every unsteered answer empty) is NaN, and so is the harmonic mean unless another component is 0.
All answers empty scores fluency 0.

Model-based metrics run the HF fast path with the intervention's hooks (`lm.generate.hooked_runner`).
A plain forward has no generated tokens, so interventions restricted to positions="generated" do
not act on neutral text; the description is scored as a reply, whose tokens count as generated.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import torch
from jaxtyping import Float

from lm.batch import pad
from lm.chat import as_conversation, render
from lm.generate import tracking, hooked_runner
from lm.prompts import load_prompt_set, read_prompt_set

from features import load_concept

DATA_DIR = Path(__file__).resolve().parent / "data"
DESCRIPTION_PROMPT = "Tell me about something."


def load_data(name: str) -> list[str]:
    """A steering prompt set from steering/data/: `unrelated_questions`, `dubious_claims` (dev: tuned on)
    and `<name>_test` (held out; steering/data/README.md). The shared neutral text is
    `lm.prompts.load_prompt_set("neutral_text")`."""
    return read_prompt_set(DATA_DIR, name)


@lru_cache(maxsize=None)
def _pattern(keywords: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(f"(?:{k})" for k in keywords), re.IGNORECASE)


def concept_hits(texts: list[str], concept: dict | str) -> list[bool]:
    concept = load_concept(concept) if isinstance(concept, (str, Path)) else concept
    pat = _pattern(tuple(concept["keywords"]))
    return [bool(pat.search(t)) for t in texts]


def concept_rate(texts: list[str], concept: dict | str) -> float:
    if not texts:
        raise ValueError("concept_rate needs at least one answer.")
    hits = concept_hits(texts, concept)
    return sum(hits) / len(hits)


def _device(model) -> torch.device:
    return next(model.original_model.parameters()).device


def _logprobs(runner, ids, att) -> Float[torch.Tensor, "b s vocab"]:
    logits = runner(input_ids=ids, attention_mask=att, use_cache=False).logits
    return logits.float().log_softmax(-1)


def scored_nll(model, seqs: list[tuple[torch.Tensor, torch.Tensor]], hooks=(), batch_size: int = 8,
               as_generated: bool = False) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, count) of the masked tokens of each (ids, mask) sequence.

    With `as_generated` (one sequence per forward) the tokens from the first masked one on count as
    generated positions for the hooks, as they would during generation.
    """
    pad_id, device, out = model.tokenizer.pad_token_id, _device(model), []
    step = 1 if as_generated else batch_size
    for b in range(0, len(seqs), step):
        chunk = seqs[b:b + step]
        ids, att, mask = pad([s[0] for s in chunk], pad_id, masks=[s[1] for s in chunk])
        ids, att, mask = ids.to(device), att.to(device), mask.to(device)
        with torch.no_grad(), hooked_runner(model, hooks) as runner:
            if as_generated:
                first = int(mask[0].nonzero()[0]) if mask[0].any() else ids.shape[1]
                with tracking(runner, first):
                    lp = _logprobs(runner, ids, att)
            else:
                lp = _logprobs(runner, ids, att)
        tgt = lp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # log p(token t+1 | ..t)
        keep = mask[:, 1:]
        for row in range(len(chunk)):
            out.append((float(-(tgt[row][keep[row]]).sum()), int(keep[row].sum())))
    return out


def description_logprob(model, concept: dict | str, hooks=(), prompt: str = DESCRIPTION_PROMPT,
                        system: str | None = None) -> float:
    """Mean per-token log-prob of the concept description as the assistant's reply to `prompt`
    (after `system`, when the steering is a system prompt)."""
    concept = load_concept(concept) if isinstance(concept, (str, Path)) else concept
    conv = as_conversation(prompt, system) + [{"role": "assistant", "content": concept["description"]}]
    r = render(model.tokenizer, conv)
    (nll, n), = scored_nll(model, [(r.ids, r.response_mask)], hooks, as_generated=True)
    return -nll / n


def _perplexities(scored: list[tuple[float, int]]) -> dict:
    per = [math.exp(nll / n) if n else None for nll, n in scored]
    total_nll, total_n = sum(s[0] for s in scored), sum(s[1] for s in scored)
    kept = [p for p in per if p is not None]
    return {"ppl": math.exp(total_nll / total_n) if total_n else float("nan"),  # token-weighted
            "ppl_mean": sum(kept) / len(kept) if kept else float("nan"),
            "ppl_per_answer": per, "n_empty": len(per) - len(kept)}


def _answer_seq(prompt_ids: torch.Tensor, answer_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt + answer ids, mask of the answer tokens)."""
    ids = torch.cat([prompt_ids, answer_ids.to(prompt_ids.dtype)])
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[len(prompt_ids):] = True
    return ids, mask


def answer_perplexity(model, generations, batch_size: int = 8) -> dict:
    """Perplexity of each generated answer (its exact tokens) under the model as it is now: call it
    with no hooks active to judge fluency by the unsteered model. Empty answers are counted, not scored."""
    seqs = [_answer_seq(g.prompt_ids, g.ids) for g in generations]
    return _perplexities(scored_nll(model, seqs, batch_size=batch_size))


def fluency_perplexity(model, generations, batch_size: int = 8) -> dict:
    """Perplexity of each answer's own tokens read on their own: one sink token (eos, else bos), then
    the answer, only the answer scored. Call it with no hooks active (the unsteered model judges).
    Same keys as `answer_perplexity`; empty answers are counted in `n_empty`, not scored."""
    tok = model.tokenizer
    sink = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    if sink is None:
        raise ValueError("fluency_perplexity needs a tokenizer with an eos or bos token to start answers from.")
    seqs = [_answer_seq(torch.tensor([sink]), g.ids) for g in generations]
    return _perplexities(scored_nll(model, seqs, batch_size=batch_size))


def distinct_n(token_lists: list[list[int]], n: int = 2) -> float:
    """Mean over answers of (unique n-grams / n-grams) of their token ids. Answers with fewer than n
    tokens have no n-gram and are skipped (all skipped: 0.0). Varied text scores near 1; a loop such
    as "rodrodrod..." (one bigram over and over) scores about 1 / its length, near 0."""
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, got {n}.")
    rates = []
    for toks in token_lists:
        toks = list(toks)
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
        if grams:
            rates.append(len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


LOOP_DISTINCT2 = 0.7  # an answer with fewer unique token bigrams than this share loops


def looping_rate(token_lists: list[list[int]], threshold: float = LOOP_DISTINCT2) -> float:
    """Share of answers (with at least 2 tokens) whose distinct-2 is below `threshold`: loops."""
    rates = [distinct_n([t], 2) for t in token_lists if len(t) >= 2]
    return sum(r < threshold for r in rates) / len(rates) if rates else 0.0


def _last_user(conv) -> int:
    users = [i for i, m in enumerate(conv) if m["role"] == "user"]
    if not users:
        raise ValueError("relevance needs generations whose conversation has a user message (the question).")
    return users[-1]


def _with_question(conv, question: str):
    """`conv` with the content of its last user message (the question) replaced by `question`."""
    conv = [dict(m) for m in conv]
    conv[_last_user(conv)]["content"] = question
    return conv


def relevance(model, generations, batch_size: int = 8) -> dict:
    """Judge-free instruction relevance: per answer, mean per-token log p(answer | its own question)
    minus mean per-token log p(answer | question i+1 mod n), under the model as it is (call it
    unhooked: the unsteered model). ~0: the answer ignores its question. Empty answers are None;
    with fewer than two generations there is no other question and everything is undefined (NaN/None)."""
    n = len(generations)
    if n < 2:
        return {"relevance": float("nan"), "relevance_per_answer": [None] * n}
    tok, seqs = model.tokenizer, []
    for i, g in enumerate(generations):
        other = generations[(i + 1) % n].conversation
        question = other[_last_user(other)]["content"]
        for conv in (g.conversation, _with_question(g.conversation, question)):
            seqs.append(_answer_seq(render(tok, conv, add_generation_prompt=True).ids, g.ids))
    scored = scored_nll(model, seqs, batch_size=batch_size)
    per = []
    for (own, k), (mis, _) in zip(scored[0::2], scored[1::2]):
        per.append((mis - own) / k if k else None)  # mean log p(own) - mean log p(mismatched)
    kept = [r for r in per if r is not None]
    return {"relevance": sum(kept) / len(kept) if kept else float("nan"), "relevance_per_answer": per}


def _ratio(num: float, den: float) -> float:
    """num / den clipped to [0, 1]; NaN when the reference `den` is not a positive number."""
    if not (math.isfinite(den) and den > 0):
        return float("nan")
    if math.isnan(num):
        return float("nan")
    return min(1.0, max(0.0, num / den))


def scores(metrics: dict, baseline: dict) -> dict:
    """The AxBench-style headline of one condition's `metrics` against the unsteered `baseline`
    metrics (see the module docstring): concept, fluency, relevance in [0, 1] and their harmonic mean."""
    ppl, base_ppl = metrics["fluency_ppl"], baseline["fluency_ppl"]
    if not (math.isfinite(base_ppl) and base_ppl > 0):
        ppl_part = float("nan")
    else:
        ppl_part = min(1.0, base_ppl / ppl) if math.isfinite(ppl) and ppl > 0 else 0.0  # NaN: every answer empty
    d2_part = _ratio(metrics["distinct2"], baseline["distinct2"])
    if "looping_rate" in metrics and "looping_rate" in baseline:
        d2_part = min(d2_part, _ratio(1 - metrics["looping_rate"], 1 - baseline["looping_rate"]))
    fluency = float("nan") if math.isnan(ppl_part) or math.isnan(d2_part) else min(ppl_part, d2_part)
    parts = {"concept": float(metrics["concept_rate"]), "fluency": fluency,
             "relevance": _ratio(metrics["relevance"], baseline["relevance"])}
    vals = list(parts.values())
    if any(v <= 0 for v in vals):  # a zero component makes the harmonic mean 0 whatever the others are
        harmonic = 0.0
    elif any(math.isnan(v) for v in vals):
        harmonic = float("nan")
    else:
        harmonic = len(vals) / sum(1 / v for v in vals)
    return {**parts, "harmonic": harmonic}


class NeutralKL:
    """KL(steered || unsteered) of next-token distributions, averaged over the scored positions; the
    unsteered log-probs there are computed once and kept.

    From plain text (neutral text by default) every position counts: how much else a steering moves.
    `NeutralKL.chat(model, conversations)` counts only the positions that predict assistant-response
    tokens: the drift on replies in the format the model is used in. `clean_nll` is the unsteered mean
    NLL of the tokens the scored positions predict (plain text: all but each text's last), the scale a
    KL is small or large against.
    """

    def __init__(self, model, texts: list[str] | None = None, max_tokens: int = 96, batch_size: int = 8, *,
                 seqs: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        """`seqs`: (ids, mask of the positions whose next-token distribution counts) instead of `texts`."""
        if seqs is None:
            texts = texts if texts is not None else load_prompt_set("neutral_text")
            if not texts:
                raise ValueError("NeutralKL needs at least one text.")
            tok = model.tokenizer
            seqs = []
            for t in texts:
                ids = torch.tensor(tok(t, add_special_tokens=False)["input_ids"][:max_tokens])
                seqs.append((ids, torch.ones(len(ids), dtype=torch.bool)))
        if not any(bool(m.any()) for _, m in seqs):
            raise ValueError("NeutralKL has no positions to score: pass non-empty texts or replies.")
        self.model, self.batches, self.clean = model, [], []
        nll, n = 0.0, 0
        for b in range(0, len(seqs), batch_size):
            chunk = seqs[b:b + batch_size]
            ids, att, keep = pad([s[0] for s in chunk], model.tokenizer.pad_token_id, masks=[s[1] for s in chunk])
            ids, att, keep = ids.to(_device(model)), att.to(_device(model)), keep.to(_device(model)) & att.bool()
            lp = self._lp(ids, att, ())
            self.batches.append((ids, att, keep))
            self.clean.append(lp[keep])  # [n kept, vocab]: only the scored positions are kept
            has_next = keep[:, :-1] & att[:, 1:].bool()
            nll -= float(lp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0][has_next].sum())
            n += int(has_next.sum())
        self.clean_nll = nll / n if n else float("nan")

    @classmethod
    def chat(cls, model, conversations: list[list[dict]], batch_size: int = 8) -> "NeutralKL":
        """KL on the assistant-response tokens of chat conversations (lm.chat.render's response mask):
        position t counts when token t+1 is a response token, as `scored_nll` scores it."""
        if not conversations:
            raise ValueError("NeutralKL.chat needs at least one conversation with an assistant reply.")
        seqs = []
        for c in conversations:
            r = render(model.tokenizer, c)
            seqs.append((r.ids, torch.cat([r.response_mask[1:], r.response_mask.new_zeros(1)])))
        return cls(model, batch_size=batch_size, seqs=seqs)

    def _lp(self, ids, att, hooks):
        with torch.no_grad(), hooked_runner(self.model, hooks) as runner:
            return _logprobs(runner, ids, att)

    def __call__(self, hooks=()) -> float:
        total, n = 0.0, 0
        for (ids, att, keep), clean in zip(self.batches, self.clean):
            steered = self._lp(ids, att, hooks)[keep]
            total += float((steered.exp() * (steered - clean)).sum())
            n += len(clean)
        return total / n
