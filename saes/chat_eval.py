"""Evaluate an SAE on whole held-out chats run from position 0, as in use, and hold it to the quality bar.

`saes.eval.evaluate_sae` drops position 0 of every row; here nothing is dropped, and about one token
per chat (norm ~25,000 at layer 15 of SmolLM2-135M against a median of ~174: a massive activation,
nearly always at position 0) then carries nearly all the variance, so FVU over all tokens reads
~0.001 while the ordinary tokens sit near 0.1. FVU on the ordinary tokens is the figure that means
something: tokens above `massive_factor` x the median norm are counted and reported apart, and FVU,
L0 and the splice (SAE or zero) cover the ordinary ones. `quality_bar` reads that figure.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from sae_lens.evals import ExplainedVarianceCalculator
from tqdm.auto import tqdm

from lm.harvest import check_hook_names


@dataclass
class ChatEvalConfig:
    n_chats: int = 64  # held-out conversations (saes.data.heldout_conversations)
    massive_factor: float = 10.0  # a token whose norm exceeds this x the median norm is a massive activation
    batch_size: int = 8  # chats per forward (right-padded)


# name: (metric, as a dotted path into the metrics, comparison, threshold)
QUALITY_BAR = {"fvu_ordinary": ("chats.fvu_ordinary_tokens", "<=", 0.15),
               "ce_loss_recovered": ("chats.ce_loss_recovered", ">=", 0.95),
               "dead_fraction": ("dead_fraction", "<", 0.10)}
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}

# one right-padded batch: ids, attention mask (bool), real length of each row
_Batch = tuple[Int[torch.Tensor, "b s"], Bool[torch.Tensor, "b s"], list[int]]


def resolve_hook(sae, model, hook: str | None) -> str:
    """`hook`, else the SAE's metadata.hook_name, checked to exist in `model` (shared with `saes.eval`)."""
    hook = hook or sae.cfg.metadata.hook_name
    if not hook:
        raise ValueError("The SAE's cfg has no metadata.hook_name; pass hook=... explicitly.")
    check_hook_names(model, [hook])
    return hook


def _chat_ce_sum(logits: Float[torch.Tensor, "b s v"], ids: Int[torch.Tensor, "b s"], lengths: list[int]) -> float:
    """Summed next-token loss over each right-padded row's real tokens, one row at a time (memory)."""
    return sum(F.cross_entropy(logits[r, :n - 1].float(), ids[r, 1:n], reduction="sum").item()
               for r, n in enumerate(lengths))


class _ChatStats:
    """Explained variance on all, ordinary and massive tokens, L0 on the ordinary ones, and where the
    massive ones sit (position, token id)."""

    def __init__(self):
        self.ev = {k: ExplainedVarianceCalculator() for k in ("all", "ordinary", "massive")}
        self.l0, self.n_ordinary = 0.0, 0
        self.positions, self.massive_ids = Counter(), Counter()

    def count_massive(self, ids: Int[torch.Tensor, "b s"], massive: Bool[torch.Tensor, "b s"]) -> None:
        for p in massive.nonzero()[:, 1].tolist():
            self.positions["0" if p == 0 else "1" if p == 1 else "other"] += 1
        self.massive_ids.update(ids[massive].tolist())

    def add(self, x: Float[torch.Tensor, "n d"], recon: Float[torch.Tensor, "n d"], acts: torch.Tensor,
            ordinary: torch.Tensor) -> None:
        x, recon = x.float(), recon.float()
        for k, keep in (("all", slice(None)), ("ordinary", ordinary), ("massive", ~ordinary)):
            self.ev[k].add_batch(sae_output=recon[keep], hidden_acts=x[keep])
        self.l0 += (acts[ordinary.to(acts.device)] != 0).sum().item()
        self.n_ordinary += int(ordinary.sum())

    def fvu(self, k: str) -> float | None:
        return 1.0 - self.ev[k].compute() if self.ev[k].num_samples else None


def _check_chats(seqs: Sequence, model, massive_factor: float, batch_size: int) -> list[torch.Tensor]:
    """The conversations as 1-D long tensors, after checking them and the settings."""
    from lm.generate import context_size

    if not len(seqs):
        raise ValueError("evaluate_chats got no conversations; pass token sequences "
                         "(e.g. saes.data.heldout_conversations).")
    seqs = [torch.as_tensor(np.asarray(s), dtype=torch.long) for s in seqs]
    bad = [i for i, s in enumerate(seqs) if s.ndim != 1 or len(s) < 2]
    if bad:
        raise ValueError(f"conversation {bad[0]} is not a 1-D sequence of >= 2 tokens (shape "
                         f"{tuple(seqs[bad[0]].shape)}); pass one token array per conversation.")
    n_ctx = context_size(model)
    long = [i for i, s in enumerate(seqs) if len(s) > n_ctx]
    if long:
        raise ValueError(f"conversation {long[0]} has {len(seqs[long[0]])} tokens, over the model's context "
                         f"of {n_ctx}; drop or truncate it.")
    if not massive_factor > 1:
        raise ValueError(f"massive_factor={massive_factor} would call ordinary tokens massive; use a factor > 1 "
                         "(10 marks the attention-sink tokens).")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return seqs


def _batches(seqs: list[torch.Tensor], model, batch_size: int) -> list[_Batch]:
    """Right-padded batches on the model's device, longest first (similar lengths pad less)."""
    from lm.batch import pad

    device = next(model.parameters()).device
    pad_id = model.tokenizer.pad_token_id or 0
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    batches = []
    for b in range(0, len(order), batch_size):
        chunk = [seqs[i] for i in order[b:b + batch_size]]
        ids, att, _ = pad(chunk, pad_id)
        batches.append((ids.to(device), att.to(device).bool(), [len(s) for s in chunk]))
    return batches


def _run(model, hook: str, batch: _Batch, fn, bar) -> float:
    """Summed LM loss of one batch with `fn` hooked in at `hook`."""
    from lm.generate import hooked_runner

    ids, att, lengths = batch
    with hooked_runner(model, [(hook, fn)]) as runner:
        logits = runner(input_ids=ids, attention_mask=att.long(), use_cache=False).logits
    bar.update()
    return _chat_ce_sum(logits, ids, lengths)


def _clean_pass(sae, model, hook: str, batches: list[_Batch], bar) -> tuple[float, list[Float[torch.Tensor, "b s"]]]:
    """Summed clean LM loss, and every token's norm at the hook (one CPU tensor per batch)."""
    ce, norms = 0.0, []
    for batch in batches:
        seen = {}

        def capture(x, hook):
            seen["d"], seen["norm"] = x.shape[-1], x.float().norm(dim=-1)
            return x

        ce += _run(model, hook, batch, capture, bar)
        if seen["d"] != sae.cfg.d_in:
            raise ValueError(f"SAE d_in is {sae.cfg.d_in} but {hook} has width {seen['d']}: "
                             "this SAE was trained on another hook or model.")
        norms.append(seen["norm"].cpu())
    return ce, norms


def _spliced_pass(sae, model, hook: str, batches: list[_Batch], norms: list[torch.Tensor], threshold: float,
                  bar) -> tuple[dict[str, float], _ChatStats]:
    """Summed LM loss with the SAE's reconstruction ("sae") and zero ("zero") spliced in at the ordinary
    tokens (norm <= threshold), and the statistics of that reconstruction."""
    stats, ce = _ChatStats(), {"sae": 0.0, "zero": 0.0}
    for (ids, att, lengths), norm in zip(batches, norms):
        massive = (norm.to(att.device) > threshold) & att
        ordinary = att & ~massive
        stats.count_massive(ids, massive)

        def splice(x, hook, ordinary=ordinary, att=att):
            acts = sae.encode(x[att].to(sae.device, sae.dtype))
            recon = sae.decode(acts).to(x.device, x.dtype)
            keep = ordinary[att]
            stats.add(x[att], recon, acts, keep)
            x = x.clone()
            x[ordinary] = recon[keep]
            return x

        def zero(x, hook, ordinary=ordinary):
            x = x.clone()
            x[ordinary] = 0
            return x

        ce["sae"] += _run(model, hook, (ids, att, lengths), splice, bar)
        ce["zero"] += _run(model, hook, (ids, att, lengths), zero, bar)
    return ce, stats


@torch.no_grad()
def evaluate_chats(sae, model, seqs: Sequence[np.ndarray | torch.Tensor], hook: str | None = None,
                   massive_factor: float = ChatEvalConfig.massive_factor,
                   batch_size: int = ChatEvalConfig.batch_size, progress: bool = True) -> dict:
    """FVU on all tokens and on the ordinary ones (massive activations excluded, and counted), L0 and
    CE-loss recovered on whole conversations run from position 0, right-padded in batches.

    A token is massive when its norm at the hook exceeds `massive_factor` x the median norm over all
    real tokens (so the median needs a clean pass first). The SAE reconstruction (or zero, for the
    ablation) is spliced in at the ordinary tokens only; massive tokens are left untouched, as
    position 0 is in `evaluate_sae`. CE is the mean over every real next-token prediction."""
    hook = resolve_hook(sae, model, hook)
    seqs = _check_chats(seqs, model, massive_factor, batch_size)
    batches = _batches(seqs, model, batch_size)
    bar = tqdm(total=3 * len(batches), desc="eval chats", disable=not progress)
    clean, norms = _clean_pass(sae, model, hook, batches, bar)
    real_norms = torch.cat([n[att.cpu()] for n, (_, att, _) in zip(norms, batches)])
    median = float(np.median(real_norms.double().numpy()))
    threshold = massive_factor * median
    spliced, stats = _spliced_pass(sae, model, hook, batches, norms, threshold, bar)
    bar.close()
    n_pred = sum(len(s) - 1 for s in seqs)
    ce = {k: v / n_pred for k, v in {"clean": clean, **spliced}.items()}
    tok = model.tokenizer
    return {
        "hook": hook, "n_chats": len(seqs), "n_tokens": len(real_norms), "n_predictions": n_pred,
        "median_norm": median, "max_norm": real_norms.max().item(), "massive_threshold": threshold,
        "n_massive": len(real_norms) - stats.n_ordinary, "n_ordinary": stats.n_ordinary,
        "massive_positions": {k: stats.positions[k] for k in ("0", "1", "other")},
        "massive_tokens": [[tok.decode([t]), c] for t, c in stats.massive_ids.most_common(5)],
        "fvu_all_tokens": stats.fvu("all"), "fvu_ordinary_tokens": stats.fvu("ordinary"),
        "fvu_massive_tokens": stats.fvu("massive"),
        "l0_ordinary": stats.l0 / max(stats.n_ordinary, 1),
        "ce_loss_clean": ce["clean"], "ce_loss_with_sae": ce["sae"], "ce_loss_zero_ablation": ce["zero"],
        "ce_loss_recovered": ((ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"])
                              if ce["zero"] != ce["clean"] else float("nan")),
        "delta_lm_loss": ce["sae"] - ce["clean"],
        "chat_eval_config": asdict(ChatEvalConfig(len(seqs), massive_factor, batch_size)),
    }


def _lookup(metrics: dict, path: str):
    for key in path.split("."):
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return metrics


def quality_bar(metrics: dict, bar: dict = QUALITY_BAR) -> dict:
    """Each check of the bar ({metric, value, op, threshold, pass}) and whether all pass. FVU and CE
    recovered are read from the chat evaluation (`metrics["chats"]`), the dead fraction from the
    held-out rows; a missing or NaN value fails its check."""
    checks = {}
    for name, (path, op, threshold) in bar.items():
        value = _lookup(metrics, path)
        ok = isinstance(value, (int, float)) and not math.isnan(value) and _OPS[op](value, threshold)
        checks[name] = {"metric": path, "value": value, "op": op, "threshold": threshold, "pass": bool(ok)}
    return {"checks": checks, "pass": all(c["pass"] for c in checks.values())}


def chat_conversations(trained, data: str, tokenizer, n: int, chats_from: str | None = None
                       ) -> tuple[list[np.ndarray], str]:
    """(conversations, where they came from) for `evaluate_chats`, given the SAE's training config
    (`trained`, a TrainConfig, or None when it has no train_config.json):

    - `chats_from` (any `lm.text` source, e.g. a .jsonl of `messages`): its first n, taken as held out;
    - `data` is what the SAE trained on: `saes.data.heldout_conversations` (clear of every training row);
    - otherwise (other data, or no train_config.json, so the training data is unknown): the first n
      conversations of `data`, none of which can be excluded.
    """
    from lm.text import token_sequences
    from saes.data import heldout_conversations

    if chats_from:
        src, why = chats_from, "taken as held out (--chats-from); not checked against training"
    elif trained is not None and data == trained.data:
        seqs = heldout_conversations(trained, tokenizer, n)
        if not seqs:
            raise ValueError(f"No conversation of {data!r} lies clear of the rows this SAE trained on "
                             f"({trained.data_mode} mode); give held-out chats with --chats-from FILE.jsonl "
                             "or skip the chat evaluation with --chats 0.")
        return seqs, f"{data}: the first {len(seqs)} conversations sharing no token with a training row"
    else:
        src = data
        why = ("no train_config.json, so what the SAE trained on is unknown" if trained is None
               else f"the SAE trained on {trained.data!r}, not this")
    seqs = [s for s in token_sequences(src, tokenizer) if len(s) >= 2][:n]
    return seqs, f"{src}: the first {len(seqs)} conversations ({why})"
