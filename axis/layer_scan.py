"""Which residual-stream layer should the default SAE read? A scan of every block's output.

Two signals per layer, each a difference-of-means direction fit on one half of the data and scored
on the other half (held out), so a layer cannot win by memorising its texts:

- concepts: the shipped concept sets (Golden Gate Bridge, sycophantic praise), texts as assistant
  replies; held-out AUROC and d' of each text's max projection on the direction;
- persona: role-play system prompts (axis role bank) vs. the default-Assistant prompts, each with an
  extraction question; the residual at the last prompt token (where the reply starts) projected on
  the default-minus-role direction; held-out AUROC and d'.

The SAE should sit where both are clear and before the last third, where the stream turns toward
next-token logits. Two summaries: the layer whose weakest signal is strongest, and the layer with
the largest mean d'. It lives in `axis` because it reads both `features`' concept sets and the
axis role bank. `scan_layers` writes <out>/layer_scan.json and layer_scan.png.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from features import Concept, SearchConfig, auroc
from features.concept_search import tokenize_text
from lm.batch import pad
from lm.chat import render
from lm.harvest import forward_batch
from lm.io import atomic_path, write_json
from lm.model import model_hash

from axis.compute import separation
from axis.data import load_default_prompts, load_questions, load_roles


@dataclass
class LayerScanConfig:
    concepts: list[str] = field(default_factory=lambda: ["golden_gate_bridge", "sycophantic_praise"])
    questions: int = 4  # extraction questions per persona prompt
    batch_size: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


def _forward(model, seqs: list[list[int]], names: list[str], batch_size: int,
             desc: str) -> list[Float[torch.Tensor, "layers n d"]]:
    """Per sequence: its residuals at every hook in `names` (all tokens), from right-padded batches."""
    out = []
    for a in tqdm(range(0, len(seqs), batch_size), desc=desc):
        b = seqs[a:a + batch_size]
        batch = pad(b, model.tokenizer.pad_token_id or 0)
        acts = forward_batch(model, batch.ids, names, attention_mask=batch.attention_mask)
        stack = torch.stack([acts[k] for k in names], 1).float()  # [b, layers, n, d]
        out += [stack[j, :, :len(s)] for j, s in enumerate(b)]
    return out


def _half(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 2


def _score(fit_pos, fit_neg, test_pos, test_neg) -> dict:
    """Direction = mean(fit_pos) - mean(fit_neg) per layer; held-out AUROC and d' of projections."""
    u = fit_pos.mean(0) - fit_neg.mean(0)  # [layers, d]
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    p, n = (test_pos * u).sum(-1), (test_neg * u).sum(-1)  # [texts, layers]
    sep = separation(torch.cat([p, n]), torch.arange(len(p) + len(n)) < len(p))
    return {"auroc": auroc(p, n).tolist(), "d_prime": sep["d_prime"].tolist()}


def concept_scan(model, names: list[str], concept: str, batch_size: int) -> dict:
    c = Concept.load(concept)
    cfg = SearchConfig()
    feats = {}
    for side in ("positive", "negative"):
        texts = getattr(c, side)
        items = [tokenize_text(model.tokenizer, t, cfg, []) for t in texts]
        acts = _forward(model, [ids for ids, _, _ in items], names, batch_size, f"{concept} {side}")
        # a text's signal: its max projection needs the direction first, so keep the measured tokens
        feats[side] = [(a[:, torch.tensor(m)], _half(t)) for a, (_, m, _), t in zip(acts, items, texts)]
    mean = {s: torch.stack([a.mean(1) for a, _ in v]) for s, v in feats.items()}
    half = {s: torch.tensor([h for _, h in v]) for s, v in feats.items()}
    res = {}
    for fit in (0, 1):
        u = mean["positive"][half["positive"] == fit].mean(0) - mean["negative"][half["negative"] == fit].mean(0)
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        proj = {s: torch.stack([(a * u[:, None]).sum(-1).amax(1) for a, h in v if h != fit]) for s, v in feats.items()}
        sep = separation(torch.cat([proj["positive"], proj["negative"]]),
                         torch.arange(len(proj["positive"]) + len(proj["negative"])) < len(proj["positive"]))
        res[fit] = (auroc(proj["positive"], proj["negative"]), sep["d_prime"])
    return {"auroc": ((res[0][0] + res[1][0]) / 2).tolist(), "d_prime": ((res[0][1] + res[1][1]) / 2).tolist()}


def persona_scan(model, names: list[str], n_questions: int, batch_size: int) -> dict:
    questions = load_questions()[:n_questions]
    defaults = load_default_prompts("SmolLM2")
    rows = [(s, q, True, _half(str(s))) for s in defaults for q in questions]
    rows += [(r.system_prompts[0], q, False, _half(r.name)) for r in load_roles() for q in questions]
    seqs = []
    for s, q, _, _ in rows:
        msgs = ([{"role": "system", "content": s}] if s else []) + [{"role": "user", "content": q}]
        seqs.append(render(model.tokenizer, msgs, add_generation_prompt=True).ids.tolist())
    acts = _forward(model, seqs, names, batch_size, "persona prompts")
    last = torch.stack([a[:, -1] for a in acts])  # [rows, layers, d]
    is_def = torch.tensor([d for _, _, d, _ in rows])
    half = torch.tensor([h for _, _, _, h in rows])
    # default prompts are few (5): fit on all defaults, hold out role halves; roles split by name
    out = []
    for fit in (0, 1):
        out.append(_score(last[is_def], last[~is_def & (half == fit)], last[is_def], last[~is_def & (half != fit)]))
    return {k: [(a + b) / 2 for a, b in zip(out[0][k], out[1][k])] for k in out[0]}


def scan_layers(model, cfg: LayerScanConfig, out_dir: str | Path, extra: dict | None = None) -> dict:
    """Every layer's concept and persona signals; writes layer_scan.json (+ png) and returns its summary.
    `extra` (e.g. the command line's arguments) is recorded under "args" beside the config."""
    L = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_post" for l in range(L)]
    with torch.no_grad():  # a context: the caller keeps its grad mode
        scans = {c: concept_scan(model, names, c, cfg.batch_size) for c in cfg.concepts}
        scans["persona"] = persona_scan(model, names, cfg.questions, cfg.batch_size)
    # two summaries per layer: the weakest signal's held-out d' (every signal must be clear) and the mean
    dp = torch.tensor([s["d_prime"] for s in scans.values()])
    worst, mean = dp.min(0).values, dp.mean(0)
    inner = list(range(L // 4, 2 * L // 3))  # skip the embedding-like start and the logit-shaped end
    best = max(inner, key=lambda l: worst[l].item())
    best_mean = max(inner, key=lambda l: mean[l].item())
    out = Path(out_dir)
    summary = {"model": model_hash(model), "best_layer": best, "search_range": [inner[0], inner[-1]],
               "min_d_prime_at_best": worst[best].item(), "best_layer_mean_d_prime": best_mean,
               "mean_d_prime_at_best_mean": mean[best_mean].item(),
               **{f"{k}_auroc_at_best": v["auroc"][best] for k, v in scans.items()}}
    write_json(out / "layer_scan.json", {"summary": summary, "scans": scans, "min_d_prime": worst.tolist(),
                                         "mean_d_prime": mean.tolist(), "args": {**cfg.to_dict(), **(extra or {})}})
    plot_scan(scans, best, best_mean, out / "layer_scan.png")
    return summary


def plot_scan(scans: dict, best: int, best_mean: int, path) -> None:
    from matplotlib.figure import Figure  # not pyplot: no global backend switch

    fig = Figure(figsize=(10, 3.5))
    axes = fig.subplots(1, 2)
    for k, v in scans.items():
        axes[0].plot(range(len(v["d_prime"])), v["d_prime"], "o-", ms=3, label=k)
        axes[1].plot(range(len(v["auroc"])), v["auroc"], "o-", ms=3, label=k)
    for ax, name in zip(axes, ("held-out d'", "held-out AUROC")):
        ax.axvline(best, color="gray", ls="--", lw=1, label=f"best weakest d' (L{best})")
        ax.axvline(best_mean, color="gray", ls=":", lw=1, label=f"best mean d' (L{best_mean})")
        ax.set_xlabel("layer (hook_resid_post)")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
