"""Next-token choice inside the compiled decode step: HF's logits processing, then a draw on device."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int


CANDIDATES = 256  # top-p is decided among the top 256 tokens when they hold the mass (checked every step)


@dataclass
class Sampler:
    """HF's logits processing in HF's order (repetition penalty, min_new_tokens, temperature, top-p),
    then a draw on device: the argmax of p / Exp(1), distributed exactly as p.

    Top-p runs on the top CANDIDATES tokens: where they hold at least top_p of the mass every token
    past them is dropped, so the kept set equals the full sort's (HF sorts all 49k logits, 60 ms a
    step at batch 32 here). A row where they do not is flagged, and `full_top_p` redraws it."""
    greedy: bool
    temperature: torch.Tensor  # 0-d tensors: a sweep over them does not recompile
    top_p: torch.Tensor
    penalty: torch.Tensor
    use_penalty: bool
    eos: Bool[torch.Tensor, " vocab"]

    def scores(self, logits: Float[torch.Tensor, "b vocab"], seen: Bool[torch.Tensor, "b vocab"],
               allow_eos: torch.Tensor) -> Float[torch.Tensor, "b vocab"]:
        logits = logits.float()
        if self.use_penalty:
            logits = torch.where(seen, torch.where(logits < 0, logits * self.penalty, logits / self.penalty), logits)
        logits = logits.masked_fill(self.eos & ~allow_eos, -math.inf)
        return logits if self.greedy else logits / self.temperature

    def __call__(self, logits, seen, allow_eos) -> tuple[Int[torch.Tensor, " b"], Bool[torch.Tensor, " b"]]:
        """(next token per row, rows whose top-p set reaches past the candidates)."""
        scores = self.scores(logits, seen, allow_eos)
        if self.greedy:
            return scores.argmax(-1), torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        idx, p, short = self.candidates(scores)
        pick = (p / torch.empty_like(p).exponential_()).argmax(-1, keepdim=True)
        return idx.gather(1, pick).squeeze(1), short

    def candidates(self, scores: Float[torch.Tensor, "b vocab"]):
        """(top token ids, their probabilities with the tokens top-p drops zeroed, rows needing the full sort)."""
        top, idx = scores.topk(min(CANDIDATES, scores.shape[-1]), dim=-1)  # sorted, largest first
        p = (top - scores.logsumexp(-1, keepdim=True)).exp()
        keep = (p.cumsum(-1) - p) < self.top_p  # the mass strictly above each token is below top_p
        return idx, torch.where(keep, p, 0.0), p.sum(-1) < self.top_p

    def redraw(self, nxt: Int[torch.Tensor, " b"], short: Bool[torch.Tensor, " b"], logits, seen, allow_eos
               ) -> Int[torch.Tensor, " b"]:
        """`nxt` with the rows `__call__` flagged drawn again by `full_top_p`: those rows only (the whole
        batch's sort and noise cost ~70 ms a step at batch 32, a row's ~2 ms)."""
        rows = short.nonzero().squeeze(1)
        nxt = nxt.clone()
        nxt[rows] = self.full_top_p(logits[rows], seen[rows], allow_eos)
        return nxt

    def full_top_p(self, logits, seen, allow_eos) -> Int[torch.Tensor, " b"]:
        """The same draw with HF's full sort (for rows flagged by __call__)."""
        scores = self.scores(logits, seen, allow_eos)
        srt, idx = scores.sort(dim=-1)
        drop = srt.softmax(-1).cumsum(-1) <= 1 - self.top_p
        drop[..., -1] = False
        probs = scores.masked_fill(drop.scatter(1, idx, drop), -math.inf).softmax(-1)
        return (probs / torch.empty_like(probs).exponential_()).argmax(-1)
