"""Output scores: what a latent does to the next token when amplified (Arad, Mueller & Belinkov 2025).

Latents chosen by how well they *detect* a concept (input AUROC) are often input features: amplified,
they make the model repeat the token that activates them ("Golden Golden ...", "rodrodrod").
Steering needs output features. Arad et al.'s test, as in their code: one forward on a neutral
prompt ("From my experience,"), the latent amplified at the last position by s x a_max (a_max = the
largest activation of any latent at that token, s = 10), the SAE error kept; of the latent's top-20
logit-lens tokens take the best-ranked in the next-token distribution, rank r of |V| and probability
p: S_out = (1 - r/|V|) * p. They keep latents with S_out >= 0.1.

The same forward also gives the concept-specific counterpart we rank concept latents by:
`concept_mass`, the next-token probability on the concept's keyword tokens (the tokens its keyword
regexes cover in its positive texts, e.g. " Golden", " Gate", " Bridge") minus the unsteered mass.
All latents of a 4608-wide SAE score in well under a minute on 2 cores (batches of copies of one
short prompt).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from lm.generate import hooked_runner
from saes.access import check_sae, decoder_rows, encode
from features.logit_lens import logit_lens

NEUTRAL_PROMPT = "From my experience,"


@dataclass
class OutputScoreConfig:
    prompt: str = NEUTRAL_PROMPT
    s: float = 10.0  # amplification, in multiples of a_max at the last prompt token
    lens_tokens: int = 20  # a latent's logit-lens tokens considered
    batch_size: int = 64  # latents (prompt copies) per forward
    threshold: float = 0.1  # Arad et al.'s S_out filter

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_ids(tokenizer, prompt: str) -> Int[torch.Tensor, " s"]:
    """The neutral prompt as plain text after one end-of-text token, our attention sink for bare text."""
    sink = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    return torch.tensor([sink] + tokenizer(prompt, add_special_tokens=False)["input_ids"])


def _last_probs(model, ids: Int[torch.Tensor, "b s"], hooks) -> Float[torch.Tensor, "b vocab"]:
    device = next(model.original_model.parameters()).device
    with torch.no_grad(), hooked_runner(model, hooks) as runner:
        logits = runner(input_ids=ids.to(device), use_cache=False).logits[:, -1]
    return logits.float().softmax(-1).cpu()


def output_scores(model, sae, latents: list[int] | None = None, cfg: OutputScoreConfig | None = None,
                  concept_tokens: list[int] | dict[str, list[int]] | None = None, progress: bool = False) -> dict:
    """S_out (and, given `concept_tokens`, concept_mass) for `latents` (default: all).

    Returns {"latents", "s_out", "rank", "prob", "token", "concept_mass", "a_max", ...}, one entry per
    latent in the lists. With `concept_tokens` a dict {concept: token ids}, the same forwards score
    every concept: "concept_mass" and "base_concept_mass" are then dicts by concept."""
    cfg = cfg or OutputScoreConfig()
    hook = check_sae(model, sae)
    latents = list(range(sae.cfg.d_sae)) if latents is None else [int(i) for i in latents]
    sets = concept_tokens if isinstance(concept_tokens, dict) else {"": list(concept_tokens or [])}
    sets = {k: torch.tensor(sorted(set(v)), dtype=torch.long) for k, v in sets.items()}
    ids = prompt_ids(model.tokenizer, cfg.prompt)[None]
    seen = {}

    def capture(x, hook):
        seen["x"] = x[:, -1].detach().clone()
        return x

    base = _last_probs(model, ids, [(hook, capture)])[0]
    a_max = float(encode(sae, seen["x"]).max())
    lens = logit_lens(model, decoder_rows(sae, torch.tensor(latents, device=sae.W_dec.device)),
                      k=cfg.lens_tokens)["pos_ids"]
    base_mass = {k: float(base[t].sum()) for k, t in sets.items()}
    out = {"s_out": [], "rank": [], "prob": [], "token": []}
    mass = {k: [] for k in sets}
    for a in tqdm(range(0, len(latents), cfg.batch_size), desc="output scores", disable=not progress):
        chunk = torch.tensor(latents[a:a + cfg.batch_size], device=sae.W_dec.device)
        push = cfg.s * a_max * decoder_rows(sae, chunk)  # [b, d]

        def amplify(x, hook, push=push):
            x = x.clone()
            x[:, -1] = x[:, -1] + push.to(x.device, x.dtype)
            return x

        probs = _last_probs(model, ids.expand(len(chunk), -1), [(hook, amplify)])
        cand = lens[a:a + len(chunk)]  # [b, k]
        p_cand = probs.gather(1, cand)
        rank = (probs[:, None, :] > p_cand[:, :, None]).sum(-1)  # [b, k]: tokens more likely than each
        best = rank.argmin(1)
        r = rank.gather(1, best[:, None])[:, 0]
        p = p_cand.gather(1, best[:, None])[:, 0]
        out["s_out"] += ((1 - r.float() / probs.shape[1]) * p).tolist()
        out["rank"] += r.tolist()
        out["prob"] += p.tolist()
        out["token"] += cand.gather(1, best[:, None])[:, 0].tolist()
        for k, t in sets.items():
            mass[k] += (probs[:, t].sum(1) - base_mass[k]).tolist()
    single = not isinstance(concept_tokens, dict)
    return {"latents": latents, **out, "concept_mass": mass[""] if single else mass,
            "base_concept_mass": base_mass[""] if single else base_mass, "a_max": a_max, "hook": hook,
            "config": cfg.to_dict()}
