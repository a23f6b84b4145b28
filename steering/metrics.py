"""Judge-free steering metrics: does the concept show up, and is the text still fluent?

- concept rate: fraction of answers matching the concept's documented keyword regexes
  (`features/concepts/<name>.json`, "keywords"; case-insensitive), as in ActAdd's hit rates;
- description log-prob: mean per-token log-probability of the concept's "description" written
  as the assistant's reply, under the steered model (rises as the concept takes over);
- answer perplexity: perplexity of each answer under the *unsteered* model (fluency);
- neutral KL: KL(steered || unsteered) of next-token distributions on held-out neutral text
  (`lm.prompts.load_prompt_set("neutral_text")`), averaged over tokens: how much else the steering moves.

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
from lm.chat import render
from lm.generate import tracking, hooked_runner
from lm.prompts import load_prompt_set, read_prompt_set

from features import load_concept

DATA_DIR = Path(__file__).resolve().parent / "data"
DESCRIPTION_PROMPT = "Tell me about something."


def load_data(name: str) -> list[str]:
    """A steering prompt set from steering/data/ (`unrelated_questions`, `dubious_claims`); the
    shared neutral text is `lm.prompts.load_prompt_set("neutral_text")`."""
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


def description_logprob(model, concept: dict | str, hooks=(), prompt: str = DESCRIPTION_PROMPT) -> float:
    """Mean per-token log-prob of the concept description as the assistant's reply to `prompt`."""
    concept = load_concept(concept) if isinstance(concept, (str, Path)) else concept
    conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": concept["description"]}]
    r = render(model.tokenizer, conv)
    (nll, n), = scored_nll(model, [(r.ids, r.response_mask)], hooks, as_generated=True)
    return -nll / n


def answer_perplexity(model, generations, batch_size: int = 8) -> dict:
    """Perplexity of each generated answer (its exact tokens) under the model as it is now: call it
    with no hooks active to judge fluency by the unsteered model. Empty answers are counted, not scored."""
    seqs = []
    for g in generations:
        ids = torch.cat([g.prompt_ids, g.ids.to(g.prompt_ids.dtype)])
        mask = torch.zeros(len(ids), dtype=torch.bool)
        mask[len(g.prompt_ids):] = True
        seqs.append((ids, mask))
    scored = scored_nll(model, seqs, batch_size=batch_size)
    per = [math.exp(nll / n) if n else None for nll, n in scored]
    total_nll, total_n = sum(s[0] for s in scored), sum(s[1] for s in scored)
    kept = [p for p in per if p is not None]
    return {"ppl": math.exp(total_nll / total_n) if total_n else float("nan"),  # token-weighted
            "ppl_mean": sum(kept) / len(kept) if kept else float("nan"),
            "ppl_per_answer": per, "n_empty": len(per) - len(kept)}


class NeutralKL:
    """KL(steered || unsteered) on neutral text; the unsteered log-probs are computed once and kept."""

    def __init__(self, model, texts: list[str] | None = None, max_tokens: int = 96, batch_size: int = 8):
        texts = texts if texts is not None else load_prompt_set("neutral_text")
        if not texts:
            raise ValueError("NeutralKL needs at least one text.")
        tok = model.tokenizer
        seqs = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"][:max_tokens]) for t in texts]
        self.model = model
        self.batches = []
        for b in range(0, len(seqs), batch_size):
            ids, att, _ = pad(seqs[b:b + batch_size], tok.pad_token_id)
            self.batches.append((ids.to(_device(model)), att.to(_device(model))))
        self.clean = [self._lp(ids, att, ()) for ids, att in self.batches]

    def _lp(self, ids, att, hooks):
        with torch.no_grad(), hooked_runner(self.model, hooks) as runner:
            return _logprobs(runner, ids, att)

    def __call__(self, hooks=()) -> float:
        total, n = 0.0, 0
        for (ids, att), clean in zip(self.batches, self.clean):
            steered = self._lp(ids, att, hooks)
            kl = (steered.exp() * (steered - clean)).sum(-1)  # [b, s]
            keep = att.bool()
            total += float(kl[keep].sum())
            n += int(keep.sum())
        return total / n
