"""Raw residual-stream directions to compare SAE clamping against, at matched strength.

- difference of means: mean activation over the tokens of texts about the concept minus the mean
  over contrast texts (the concept files' "positive" / "negative" lists), first token excluded
  (attention sink);
- matched norm: a clamp to value c adds about c * |W_dec[f]| along the feature's decoder row, so
  raw directions are added with that norm at each strength;
- a random Gaussian direction of the same norm is the control.
"""

from __future__ import annotations

import torch
from jaxtyping import Float

from lm.batch import pad
from lm.harvest import HarvestConfig, harvest
from saes.access import decoder_rows
from features.stats import mean_difference


def difference_of_means(model, hook: str, positive: list[str], negative: list[str],
                        batch_size: int = 16) -> Float[torch.Tensor, " d"]:
    """Mean activation at `hook` over the positive texts' tokens minus that over the negative texts'."""
    if not positive or not negative:
        raise ValueError("difference_of_means needs positive and negative texts.")
    tok = model.tokenizer

    def acts(texts):
        seqs = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        batch = pad(seqs, tok.pad_token_id)
        return harvest(model, batch.ids, [hook], HarvestConfig(batch_size=batch_size),
                       mask=batch.attention_mask.bool(), progress=False)[hook].float()
    return mean_difference(acts(positive), acts(negative))


def feature_edit_norm(sae, feature: int, value: float) -> float:
    """Norm of what a feature at activation `value` adds to the SAE's reconstruction."""
    row = decoder_rows(sae, torch.tensor([feature], device=sae.W_dec.device))[0]
    return abs(value) * float(row.norm())


def with_norm(direction: Float[torch.Tensor, " d"], norm: float) -> Float[torch.Tensor, " d"]:
    direction = direction.float().cpu()
    if direction.norm() == 0:
        raise ValueError("Cannot rescale the zero vector.")
    return direction / direction.norm() * norm


def random_direction(d: int, seed: int = 0) -> Float[torch.Tensor, " d"]:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    return v / v.norm()


def keyword_direction(model, hook: str, concept) -> Float[torch.Tensor, " d"]:
    """The concept search's raw direction at `hook`: mean residual over the positive texts' keyword
    tokens (" Golden", " Gate", " Bridge", ...) minus the mean over the negative texts' tokens, texts
    read as assistant replies (`features.concept_search`). Read at the keywords it carries the concept
    itself rather than the texts' topic and style; the raw baseline feature steering must beat."""
    from features.concept_search import SearchConfig, concept_direction, read_texts
    from features.concept_sets import Concept

    c = concept if isinstance(concept, Concept) else Concept.load(concept)
    cfg = SearchConfig()
    pos, neg = (read_texts(model, hook, texts, cfg, c.keywords) for texts in (c.positive, c.negative))
    return concept_direction(pos, neg, "keywords")
