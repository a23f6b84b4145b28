"""Concept search: which SAE latents separate a concept's positive texts from its negative ones.

Each text gets one score per latent, its maximum activation over the text's tokens, and latents
are ranked by AUROC (the probability that a random positive text outscores a random negative
one, ties counting half) on the selection half of the texts (`Concept.split`), ties broken by the
mean activation difference. Their AUROC on the other, held-out half is what we report: with
thousands of latents and a few dozen texts, the best selection AUROC is optimistic.

Texts are read as the assistant's reply in a one-turn chat by default (`wrap="chat"`, measured
on the reply's tokens only), the distribution the default SAE was trained on; `wrap="plain"`
reads bare text after an end-of-text token that serves as the attention sink (never measured).

The raw-basis counterpart is a difference of means in the residual stream at the SAE's hook:
mean over the positive texts' *keyword* tokens (the tokens a keyword regex matches, e.g. " Golden",
" Gate", " Bridge"; a positive text with no match contributes all its tokens) minus the mean over
all tokens of the negative texts. Where a direction is read matters: averaged over every token
of the positive texts it mostly encodes the texts' topic and style (`read="all"` gives that).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from lm.batch import pad
from lm.harvest import forward_batch
from lm.io import save_tensors, write_json
from saes.access import check_sae, encode
from features.concept_sets import Concept
from features.labels import make_label, token_text
from features.logit_lens import logit_lens
from features.stats import auroc, mean_difference


@dataclass
class SearchConfig:
    wrap: str = "chat"  # "chat": each text is the assistant's reply to `user_prompt`; "plain": bare text
    user_prompt: str = "Say something."
    read: str = "keywords"  # raw direction read at positives' keyword tokens ("keywords") or all their tokens ("all")
    top: int = 10  # candidates returned
    batch_size: int = 16
    n_examples: int = 2  # held-out positive and negative texts shown per candidate
    # Selection AUROCs in the same bucket of this width count as tied, and the larger mean activation
    # difference wins: with ~40+40 texts AUROC's standard error is ~0.01-0.02, and several latents reach
    # ~0.98 (e.g. a generic "beautiful/luxury" latent beside the "Golden" of Golden Gate); the mean
    # difference prefers the latent that is strong on positives and silent on negatives.
    auroc_tie: float = 0.01

    def __post_init__(self):
        if self.wrap not in ("chat", "plain"):
            raise ValueError(f"wrap must be 'chat' or 'plain', got {self.wrap!r}.")
        if self.read not in ("keywords", "all"):
            raise ValueError(f"read must be 'keywords' or 'all', got {self.read!r}.")


@dataclass
class TextActs:
    """One text's measured tokens: ids, residuals at the SAE hook, keyword-token mask."""
    text: str
    ids: list[int]
    resid: Float[torch.Tensor, "n d"]
    keyword: torch.Tensor


def tokenize_text(tokenizer, text: str, cfg: SearchConfig, keywords: list[str]):
    """Token ids, measured-position mask and keyword mask for one text."""
    if cfg.wrap == "chat":
        from lm.chat import render

        r = render(tokenizer, [{"role": "user", "content": cfg.user_prompt}, {"role": "assistant", "content": text}])
        full, measured, start = r.text, r.response_mask.tolist(), r.text.rfind(text)
    else:
        sink = tokenizer.eos_token or tokenizer.decode([tokenizer.eos_token_id])
        full, start = sink + text, len(sink)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if cfg.wrap == "chat" and ids != r.ids.tolist():
        raise RuntimeError("Re-tokenising the rendered chat gave other ids than lm.chat.render.")
    if cfg.wrap == "plain":
        measured = [a >= start and b > a for a, b in offsets]
        measured[0] = False  # the sink, whatever its offsets
    spans = [(start + m.start(), start + m.end()) for k in keywords for m in re.finditer(k, text, re.IGNORECASE)]
    kw = [m and any(a < e and b > s for s, e in spans) for (a, b), m in zip(offsets, measured)]
    return ids, measured, kw


def keyword_tokens(tokenizer, concept: Concept, cfg: SearchConfig | None = None, min_chars: int = 3,
                   max_negative: float = 0.1) -> list[int]:
    """Token ids that start a keyword match in the concept's positive texts (" Golden", " Gate",
    " fog", ...): the tokens whose probability `features.output_score` counts as the concept's.
    Dropped: word pieces shorter than `min_chars` letters ("it" of Sausalito) and tokens found in
    more than `max_negative` of the negative texts (" you" of "you're so brilliant", " bridge" when
    the negatives are other bridges), which say nothing about the concept."""
    cfg = cfg or SearchConfig()
    found = set()
    for text in concept.positive:
        ids, _, kw = tokenize_text(tokenizer, text, cfg, concept.keywords)
        starts = [i for j, (i, k) in enumerate(zip(ids, kw)) if k and (j == 0 or not kw[j - 1])]
        found |= {i for i in starts if len(token_text(tokenizer, i).strip()) >= min_chars}
    in_neg = {}
    for text in concept.negative:
        ids, measured, _ = tokenize_text(tokenizer, text, cfg, [])
        for i in {i for i, m in zip(ids, measured) if m}:
            in_neg[i] = in_neg.get(i, 0) + 1
    limit = max_negative * len(concept.negative)
    return sorted(i for i in found if in_neg.get(i, 0) <= limit)


def read_texts(model, hook: str, texts: list[str], cfg: SearchConfig, keywords: list[str] = (),
               progress: bool = False) -> list[TextActs]:
    """Residuals at `hook` for the measured tokens of each text (batched, right-padded)."""
    tok = model.tokenizer
    items = [tokenize_text(tok, t, cfg, list(keywords)) for t in texts]
    out = []
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for a in tqdm(range(0, len(texts), cfg.batch_size), desc="concept texts", disable=not progress):
        batch = items[a:a + cfg.batch_size]
        padded = pad([ids for ids, _, _ in batch], pad_id)
        resid = forward_batch(model, padded.ids, [hook], attention_mask=padded.attention_mask)[hook]
        for j, (x, meas, kw) in enumerate(batch):
            m = torch.tensor(meas)
            if not m.any():
                raise ValueError(f"Text {texts[a + j][:60]!r} has no measurable tokens.")
            out.append(TextActs(texts[a + j], [x[i] for i in range(len(x)) if meas[i]],
                                resid[j, :len(x)][m].float().cpu(), torch.tensor(kw)[m]))
    return out


def _reduce(sae, acts: list[TextActs]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per text and latent: max activation, the position of that max, and mean activation."""
    mx, arg, mean = [], [], []
    for t in acts:
        f = encode(sae, t.resid).float().cpu()
        m = f.max(0)
        mx.append(m.values)
        arg.append(m.indices)
        mean.append(f.mean(0))
    return torch.stack(mx), torch.stack(arg), torch.stack(mean)


def concept_direction(pos: list[TextActs], neg: list[TextActs], read: str) -> Float[torch.Tensor, " d"]:
    """The raw concept direction: mean residual over positives' keyword tokens (or all their tokens)
    minus the mean over all negative tokens."""
    p = torch.cat([t.resid[t.keyword] if read == "keywords" and t.keyword.any() else t.resid for t in pos])
    return mean_difference(p, torch.cat([t.resid for t in neg]))


def _max_projection(acts: list[TextActs], direction: torch.Tensor) -> torch.Tensor:
    u = direction / direction.norm().clamp(min=1e-12)
    return torch.stack([(t.resid @ u).max() for t in acts])


@dataclass
class Candidate:
    latent: int
    auroc_selection: float
    auroc_heldout: float
    mean_diff: float  # mean over positive minus negative texts of per-text mean activation (selection half)
    max_diff: float  # same for per-text max activation
    raw_cosine: float  # cosine of the raw difference-of-means direction with this latent's decoder row
    label: str = ""
    examples: list[dict] = field(default_factory=list)  # held-out texts: token ids, activations, tag


@dataclass
class RawDirection:
    read: str
    norm: float
    auroc_heldout: float  # max projection per text, direction fit on the selection half only
    best_latent: int  # the latent whose decoder row is most aligned with the direction
    best_cosine: float
    direction: torch.Tensor = field(repr=False, default=None)  # fit on all texts


@dataclass
class ConceptResult:
    name: str
    description: str
    hook: str
    wrap: str
    n_selection: int
    n_heldout: int
    candidates: list[Candidate]
    raw: RawDirection

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["raw"].pop("direction")
        return d

    def save(self, root: str | Path) -> None:
        """`{name}.json` and the raw direction as `{name}_direction.safetensors`."""
        write_json(Path(root) / f"{self.name}.json", self.to_dict())
        save_tensors(Path(root) / f"{self.name}_direction.safetensors", {"direction": self.raw.direction.contiguous()},
                     metadata={"hook": self.hook, "read": self.raw.read})


def _example(sae, t: TextActs, latent: int, tag: str) -> dict:
    a = encode(sae, t.resid)[:, latent].float().cpu()
    return {"tokens": t.ids, "acts": a.tolist(), "value": float(a.max()), "center": int(a.argmax()), "tag": tag}


def rank_latents(auc: Float[torch.Tensor, " d_sae"], mean_diff: Float[torch.Tensor, " d_sae"],
                 tie: float = 0.01) -> torch.Tensor:
    """Latent ids by AUROC bucket (width `tie`; 0 = exact AUROC), then by mean activation difference."""
    order = mean_diff.argsort(descending=True, stable=True)
    bucket = (auc / tie).floor() if tie > 0 else auc
    return order[bucket[order].argsort(descending=True, stable=True)]


def _raw_direction(sae, sp, sn, hp, hn, read: str) -> tuple[RawDirection, torch.Tensor]:
    """The raw direction (fit on all texts; AUROC of one fit on the selection half) and every latent's
    decoder cosine with it."""
    direction = concept_direction(sp + hp, sn + hn, read)
    W_dec = sae.W_dec.detach().float().cpu()
    cos = (W_dec @ direction) / (W_dec.norm(dim=1) * direction.norm()).clamp(min=1e-12)
    sel_dir = concept_direction(sp, sn, read)
    raw_auc = float(auroc(_max_projection(hp, sel_dir), _max_projection(hn, sel_dir)))
    return RawDirection(read, float(direction.norm()), raw_auc, int(cos.argmax()), float(cos.max()), direction), cos


def search_concept(model, sae, concept: Concept | str | Path, cfg: SearchConfig | None = None,
                   stats=None, progress: bool = False) -> ConceptResult:
    """Rank latents by selection AUROC (ties within `cfg.auroc_tie` broken by mean activation difference);
    report held-out AUROC, examples, labels, raw-basis counterpart."""
    cfg = cfg or SearchConfig()
    concept = concept if isinstance(concept, Concept) else Concept.load(concept)
    hook = check_sae(model, sae)
    if stats is not None and stats.d_sae != sae.cfg.d_sae:
        raise ValueError(f"The feature stats describe {stats.d_sae} latents but the SAE has {sae.cfg.d_sae}.")
    split = concept.split()
    read = {k: [read_texts(model, hook, texts, cfg, concept.keywords, progress) for texts in v] for k, v in split.items()}
    (sp, sn), (hp, hn) = read["selection"], read["heldout"]
    sp_max, sp_arg, sp_mean = _reduce(sae, sp)
    sn_max, _, sn_mean = _reduce(sae, sn)
    hp_max, hp_arg, _ = _reduce(sae, hp)
    hn_max, _, _ = _reduce(sae, hn)

    auc_sel = auroc(sp_max, sn_max)
    mean_diff = sp_mean.mean(0) - sn_mean.mean(0)
    order = rank_latents(auc_sel, mean_diff, cfg.auroc_tie)[: cfg.top]
    auc_held = auroc(hp_max[:, order], hn_max[:, order])
    raw, cos = _raw_direction(sae, sp, sn, hp, hn, cfg.read)

    latents = order.tolist()
    labels = _labels(model, sae, sp + hp, torch.cat([sp_max, hp_max]), torch.cat([sp_arg, hp_arg]), latents, stats)
    cands = []
    for j, i in enumerate(latents):
        pos_rank = hp_max[:, i].argsort(descending=True)[: cfg.n_examples].tolist()
        neg_rank = hn_max[:, i].argsort(descending=True)[: cfg.n_examples].tolist()
        ex = [_example(sae, hp[r], i, "+") for r in pos_rank] + [_example(sae, hn[r], i, "−") for r in neg_rank]
        cands.append(Candidate(i, float(auc_sel[i]), float(auc_held[j]), float(mean_diff[i]),
                               float(sp_max[:, i].mean() - sn_max[:, i].mean()), float(cos[i]), labels[j], ex))
    return ConceptResult(concept.name, concept.description, hook, cfg.wrap, len(sp) + len(sn), len(hp) + len(hn),
                         cands, raw)


def _labels(model, sae, pos: list[TextActs], pos_max, pos_arg, latents: list[int], stats) -> list[str]:
    """Dashboard labels when stats are given, else labels from the concept's own positive texts."""
    if stats is not None:
        return [stats.labels[i] for i in latents]
    lens = logit_lens(model, sae.W_dec[latents], k=5)
    ids = [i for t in pos for i in t.ids]
    counts = torch.bincount(torch.tensor(ids), minlength=model.cfg.d_vocab)
    out = []
    for j, i in enumerate(latents):
        peaks = [t.ids[int(pos_arg[k, i])] for k, t in enumerate(pos)]
        out.append(make_label(peaks, pos_max[:, i].tolist(), lens["pos_ids"][j].tolist(), model.tokenizer,
                              counts, len(ids)))
    return out


def format_example(tokenizer, ex: dict, threshold: float = 0.2) -> str:
    """Plain-text example: tokens at >= threshold x the text's max activation get [activation] after them."""
    top = max(ex["acts"] + [0.0])
    parts = []
    for t, a in zip(ex["tokens"], ex["acts"]):
        s = token_text(tokenizer, t).replace("\n", "↵")
        parts.append(f"{s}[{a:.2f}]" if top > 0 and a >= threshold * top else s)
    return f"{ex.get('tag', '')} max {ex['value']:.2f}: " + "".join(parts).strip()
