"""Persona drift: how far each assistant turn of a multi-turn conversation sits from the Assistant.

The model answers the project-written conversations turn by turn with no system prompt (the chat
template's own default system line stays). Each assistant turn's residual stream is averaged over
that turn's response tokens and projected on the unit axis at a monitoring layer. The paper finds
coding and writing conversations stay near the Assistant while therapy-like and philosophy-about-AI
ones drift away. Positions are also given on a normalised scale, 1 = mean default-Assistant rollout,
0 = mean role rollout, so drift reads the same at every layer.

Interventions (caps) passed as `fwd_hooks` apply to the generation and to the measuring forward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lm.batch import pad
from lm.chat import render
from lm.generate import GenerationConfig, generate
from lm.harvest import forward_batch

from axis.artifact import AssistantAxis


@dataclass
class DriftConfig:
    layers: list[int] = field(default_factory=list)  # empty = the axis's monitor layer
    conversations_per_domain: int | None = None  # None = all
    n_turns: int | None = None  # None = all
    domains: list[str] | None = None
    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


def monitor_layer(axis: AssistantAxis) -> int:
    """The layer computed with the axis (largest default-vs-role separation), else the middle one."""
    return int(axis.stats.get("monitor_layer", axis.n_layers // 2))


def select(convs: list[dict], cfg: DriftConfig) -> list[dict]:
    if cfg.domains:
        unknown = set(cfg.domains) - {c["domain"] for c in convs}
        if unknown:
            raise ValueError(f"Unknown drift domain(s) {sorted(unknown)}.")
    out, count = [], {}
    for c in convs:
        d = c["domain"]
        if cfg.domains and d not in cfg.domains:
            continue
        if cfg.conversations_per_domain is not None and count.get(d, 0) >= cfg.conversations_per_domain:
            continue
        count[d] = count.get(d, 0) + 1
        out.append({**c, "turns": c["turns"][:cfg.n_turns]})
    if not out:
        raise ValueError("No drift conversations selected.")
    return out


def turn_masks(tokenizer, conv: list[dict]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Token ids of the whole conversation and, per assistant turn, a mask of that turn's tokens."""
    full = render(tokenizer, conv)
    masks, prev = [], torch.zeros_like(full.response_mask)
    for i, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        cur = render(tokenizer, conv[:i + 1]).response_mask
        cur = torch.cat([cur, torch.zeros(len(full.ids) - len(cur), dtype=torch.bool)])
        masks.append(cur & ~prev)
        prev = cur
    return full.ids, masks


def measure(model, axis: AssistantAxis, conversations: list[list[dict]], layers: list[int], fwd_hooks=(),
            batch_size: int = 4) -> list[dict[int, list[float | None]]]:
    """Per conversation, per layer, the projection of each assistant turn's mean activation."""
    names = [f"blocks.{l}.hook_resid_post" for l in layers]
    units = {l: axis.unit(l) for l in layers}
    tok = model.tokenizer
    out = []
    for b in range(0, len(conversations), batch_size):
        items = [turn_masks(tok, c) for c in conversations[b:b + batch_size]]
        ids = pad([x for x, _ in items], tok.pad_token_id).ids  # right: causal attention never sees the pads
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            acts = forward_batch(model, ids, names)
        for i, (x, masks) in enumerate(items):
            rec = {}
            for l, name in zip(layers, names):
                proj = acts[name][i, :len(x)].float().cpu() @ units[l]
                rec[l] = [float(proj[m].mean()) if m.any() else None for m in masks]
            out.append(rec)
    return out


def run_drift(model, axis: AssistantAxis, convs: list[dict], cfg: DriftConfig, fwd_hooks=(),
              progress: bool = True) -> dict:
    """Answer every conversation turn by turn (batched across conversations), then measure each turn."""
    axis.check_model(model)
    layers = axis.check_layers(cfg.layers or [monitor_layer(axis)])
    convs = select(convs, cfg)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed, batch_size=cfg.batch_size)
    history: list[list[dict]] = [[] for _ in convs]
    n_turns = max(len(c["turns"]) for c in convs)
    for t in tqdm(range(n_turns), desc="drift turns", disable=not progress):
        live = [i for i, c in enumerate(convs) if t < len(c["turns"])]
        prompts = [history[i] + [{"role": "user", "content": convs[i]["turns"][t]}] for i in live]
        outs = generate(model, prompts, gen, fwd_hooks=fwd_hooks, progress=False, seed=cfg.seed + 1000 * t)
        for i, o in zip(live, outs):
            history[i] = o.reply()
    proj = measure(model, axis, history, layers, fwd_hooks)
    records = [{"id": c.get("id"), "domain": c["domain"], "conversation": h,
                "projection": {str(l): p[l] for l in layers}} for c, h, p in zip(convs, history, proj)]
    return {"config": cfg.to_dict(), "layers": layers, "conversations": records,
            "summary": summarise(records, layers, axis)}


def summarise(records: list[dict], layers: list[int], axis: AssistantAxis) -> dict:
    """Per layer and domain, mean/std/n of the projection per turn, raw and normalised."""
    sep = axis.stats.get("separation", {})
    out = {}
    for l in layers:
        ref_d = sep.get("default_mean", [None] * axis.n_layers)[l]
        ref_r = sep.get("role_mean", [None] * axis.n_layers)[l]
        per = {}
        for dom in dict.fromkeys(r["domain"] for r in records):
            rows = [r["projection"][str(l)] for r in records if r["domain"] == dom]
            T = max(len(x) for x in rows)
            mean, std, norm, n = [], [], [], []
            for t in range(T):
                v = torch.tensor([x[t] for x in rows if t < len(x) and x[t] is not None], dtype=torch.float64)
                mean.append(float(v.mean()) if len(v) else None)
                std.append(float(v.std(unbiased=False)) if len(v) else None)
                n.append(len(v))
                norm.append((mean[-1] - ref_r) / (ref_d - ref_r) if len(v) and ref_d is not None and ref_d != ref_r else None)
            first = next((m for m in mean if m is not None), None)
            last = next((m for m in reversed(mean) if m is not None), None)
            per[dom] = {"mean": mean, "std": std, "n": n, "normalised": norm,
                        "drift_last_minus_first": None if first is None else last - first}
        out[str(l)] = {"domains": per, "default_mean": ref_d, "role_mean": ref_r}
    return out


def plot_drift(results: dict[str, dict], path, layer: int | None = None, title: str | None = None) -> None:
    """Projection per turn per domain (mean line, +-1 std band); several runs (e.g. uncapped /
    capped) as solid and dashed lines, with the default-Assistant and role means for reference."""
    from matplotlib.figure import Figure  # not pyplot: no global backend switch, no figure registry
    from matplotlib.ticker import MaxNLocator

    styles = ["-", "--", ":", "-."]
    first = next(iter(results.values()))
    layer = first["layers"][0] if layer is None else layer
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    colors = {}
    for k, (label, res) in enumerate(results.items()):
        summ = res["summary"][str(layer)]
        for dom, s in summ["domains"].items():
            c = colors.setdefault(dom, f"C{len(colors)}")
            t = [i + 1 for i, m in enumerate(s["mean"]) if m is not None]
            m = torch.tensor([x for x in s["mean"] if x is not None])
            sd = torch.tensor([x for x in s["std"] if x is not None])
            ax.plot(t, m, styles[k % 4], color=c, marker="o", ms=3,
                    label=f"{dom}" + (f" ({label})" if len(results) > 1 else ""))
            ax.fill_between(t, m - sd, m + sd, color=c, alpha=0.12 if k == 0 else 0.06)
    summ = first["summary"][str(layer)]
    if summ["default_mean"] is not None:
        ax.axhline(summ["default_mean"], color="k", lw=0.8, label="default Assistant rollouts")
        ax.axhline(summ["role_mean"], color="grey", lw=0.8, ls=":", label="role rollouts")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("assistant turn")
    ax.set_ylabel(f"projection on Assistant Axis (layer {layer})")
    ax.set_title(title or "Persona drift by conversation domain")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
