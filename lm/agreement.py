"""How closely the int8 weight option follows float32: what `weights="int8"` costs in fidelity."""

from __future__ import annotations

import torch

from lm.batch import pad
from lm.decode import teacher_forced_logits
from lm.layout import decode_model
from lm.fastpath import fast_path
from lm.generate import GenerationConfig, generate


@torch.no_grad()
def int8_agreement(model, prompts: list[str], n: int = 48) -> dict:
    """int8 vs float32 next-token logits along float32's own greedy replies (teacher-forced), and how
    many greedy replies come out identical."""
    hf = fast_path(model).hf
    cfg = dict(max_new_tokens=n, temperature=0, batch_size=len(prompts), decode="compiled")
    ref = generate(model, prompts, GenerationConfig(**cfg), progress=False)
    q8 = generate(model, prompts, GenerationConfig(**cfg, weights="int8"), progress=False)
    seqs = [torch.cat([g.prompt_ids, g.ids]) for g in ref]
    ids, att, _ = pad(seqs, model.tokenizer.pad_token_id, side="left")
    s = ids.shape[1]
    logits = {kind: teacher_forced_logits(decode_model(hf, kind), ids, att) for kind in ("float", "int8")}
    mask = torch.zeros_like(att, dtype=torch.bool)  # positions predicting a reply token
    for r, g in enumerate(ref):
        mask[r, s - len(g.ids) - 1: s - 1] = True
    a, b = logits["float"][mask], logits["int8"][mask]
    diff = (a - b).abs()
    return {"top1_agreement": round((a.argmax(-1) == b.argmax(-1)).float().mean().item(), 4),
            "max_abs_logit_diff": round(diff.max().item(), 3), "mean_abs_logit_diff": round(diff.mean().item(), 4),
            "greedy_replies_identical": f"{sum(x.text == y.text for x, y in zip(ref, q8))}/{len(ref)}",
            "tokens_compared": int(mask.sum())}
