"""Evaluate an SAE on held-out tokens: sparsity, reconstruction, and what splicing it in costs the LM.

We do not call `sae_lens.evals.run_evals`: it masks positions by token id and splices the SAE into
every other position, but here position 0 of each row (an attention sink, whatever its token) is
excluded by position, as in training. So position 0 is left untouched in the spliced and ablated
runs and is dropped from every statistic, and the LM loss is taken over the predictions made from
positions >= 1. SAELens's streaming explained-variance calculator is reused.

Whole chats from position 0, where massive activations dominate the variance, are `saes.chat_eval`'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from sae_lens.evals import ExplainedVarianceCalculator
from tqdm.auto import tqdm

from lm.io import read_json
from saes.chat_eval import resolve_hook

if TYPE_CHECKING:
    from saes.chat_eval import ChatEvalConfig


@dataclass
class EvalConfig:
    batch_size: int = 4  # rows per forward (SmolLM2 logits: 4 x 256 x 49152 floats = 200 MB)
    exclude_first: bool = True
    dense_threshold: float = 0.1  # a latent firing on more than this fraction of tokens is dense
    count_rows: bool = False  # also count the rows each latent fires in (SAEBench's per-feature details)


def _ce_sum(logits: torch.Tensor, ids: torch.Tensor, first: int) -> torch.Tensor:
    """Summed next-token loss over predictions made from positions >= first."""
    return F.cross_entropy(logits[:, first:-1].flatten(0, 1).float(), ids[:, first + 1:].flatten(), reduction="sum")


def _kl_sum(clean_logp: torch.Tensor, logits: torch.Tensor, first: int) -> float:
    """Summed KL(clean || patched) over the same predictions as `_ce_sum`, one row at a time (memory)."""
    total = 0.0
    for r in range(logits.shape[0]):
        logp = logits[r, first:-1].float().log_softmax(-1)
        total += F.kl_div(logp, clean_logp[r], log_target=True, reduction="sum").item()
    return total


def _splice_losses(sae, model, ids: Int[torch.Tensor, "b s"], hook: str, first: int):
    """Summed LM loss clean, with the SAE's reconstruction spliced in, and zero-ablated, plus the KL of
    the last two from clean; and the activations (positions >= first), their reconstruction and the
    latent activations."""
    seen = {}

    def capture(x, hook):
        seen["x"] = x.detach().clone()
        return x

    with model.hooks(fwd_hooks=[(hook, capture)]):
        logits = model(ids)
    clean, clean_logp = _ce_sum(logits, ids, first).item(), logits[:, first:-1].float().log_softmax(-1)
    del logits
    x = seen["x"][:, first:]
    if x.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"SAE d_in is {sae.cfg.d_in} but {hook} has width {x.shape[-1]}: "
                         "this SAE was trained on another hook or model.")
    acts = sae.encode(x.to(sae.device, sae.dtype))
    recon = sae.decode(acts).to(x.device, x.dtype)
    out = {"clean": clean}
    for name, new in (("sae", recon), ("zero", torch.zeros_like(recon))):
        def splice(h, hook, new=new):
            h = h.clone()
            h[:, first:] = new
            return h

        with model.hooks(fwd_hooks=[(hook, splice)]):
            logits = model(ids)
        out[name], out[f"kl_{name}"] = _ce_sum(logits, ids, first).item(), _kl_sum(clean_logp, logits, first)
    return out, x, recon, acts


class _Sums:
    """Per-token sums over the evaluated positions (SAEBench's reconstruction and shrinkage metrics)."""

    KEYS = ("l0", "l1", "sq_err", "cossim", "norm_in", "norm_out", "ratio", "sq_out", "dot")

    def __init__(self, d_sae: int, count_rows: bool):
        self.s = dict.fromkeys(self.KEYS, 0.0)
        self.n = 0
        self.fires = torch.zeros(d_sae, dtype=torch.float64)
        self.rows = torch.zeros(d_sae, dtype=torch.float64) if count_rows else None

    def add(self, x: Float[torch.Tensor, "b s d"], recon: Float[torch.Tensor, "b s d"], acts: torch.Tensor) -> None:
        on = acts != 0
        if self.rows is not None:
            self.rows += on.any(1).sum(0).double().cpu()
        x, r, a, on = x.flatten(0, 1).float(), recon.flatten(0, 1).float(), acts.flatten(0, 1).float(), on.flatten(0, 1)
        n_in, n_out = x.norm(dim=-1), r.norm(dim=-1)
        self.fires += on.sum(0).double().cpu()
        part = {"l0": on.sum(), "l1": a.abs().sum(), "sq_err": (x - r).pow(2).sum(),
                "cossim": F.cosine_similarity(x, r, dim=-1).sum(), "norm_in": n_in.sum(), "norm_out": n_out.sum(),
                "ratio": (n_out / torch.where(n_in.abs() < 1e-4, torch.ones_like(n_in), n_in)).sum(),
                "sq_out": n_out.pow(2).sum(), "dot": (x * r).sum()}
        for k, v in part.items():
            self.s[k] += v.item()
        self.n += x.shape[0]

    def means(self) -> dict:
        m = {k: v / max(self.n, 1) for k, v in self.s.items()}
        return {"l0": m["l0"], "l1": m["l1"], "mse": m["sq_err"], "cossim": m["cossim"], "l2_norm_in": m["norm_in"],
                "l2_norm_out": m["norm_out"], "l2_ratio": m["ratio"],
                "relative_reconstruction_bias": m["sq_out"] / m["dot"] if m["dot"] else float("nan")}


@torch.no_grad()
def evaluate_sae(sae, model, tokens: Int[torch.Tensor, "rows seq"], hook: str | None = None,
                 cfg: EvalConfig | None = None, progress: bool = True) -> dict:
    """L0, L1, FVU, explained variance, MSE, cosine, L2 shrinkage, CE-loss recovered, delta LM loss,
    KL with the SAE and with zero ablation, dead/dense fractions, per-latent densities.

    MSE is the per-token squared error summed over dimensions (SAELens's definition); CE and KL are
    means over the predictions made from positions >= 1 (>= 0 without exclude_first)."""
    cfg = cfg or EvalConfig()
    hook = resolve_hook(sae, model, hook)
    first = int(cfg.exclude_first)
    if tokens.ndim != 2 or tokens.shape[1] < first + 2:
        raise ValueError(f"tokens must be [rows, seq] with seq >= {first + 2}, got {tuple(tokens.shape)}.")
    device = next(model.parameters()).device
    ev, sums = ExplainedVarianceCalculator(), _Sums(sae.cfg.d_sae, cfg.count_rows)
    ce, n_pred = dict.fromkeys(("clean", "sae", "zero", "kl_sae", "kl_zero"), 0.0), 0
    for b in tqdm(range(0, tokens.shape[0], cfg.batch_size), desc="eval sae", disable=not progress):
        ids = tokens[b:b + cfg.batch_size].to(device)
        losses, x, recon, acts = _splice_losses(sae, model, ids, hook, first)
        ce = {k: ce[k] + losses[k] for k in ce}
        ev.add_batch(sae_output=recon.flatten(0, 1).float(), hidden_acts=x.flatten(0, 1).float())
        sums.add(x, recon, acts)
        n_pred += ids.shape[0] * (ids.shape[1] - first - 1)
    ce = {k: v / n_pred for k, v in ce.items()}
    density = (sums.fires / sums.n).float()
    explained = ev.compute()
    out = {
        "hook": hook, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "n_tokens": sums.n, "n_rows": tokens.shape[0],
        "context_size": tokens.shape[1], "llm_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **sums.means(),
        "fvu": 1.0 - explained,
        "explained_variance": explained,
        "ce_loss_clean": ce["clean"], "ce_loss_with_sae": ce["sae"], "ce_loss_zero_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        "delta_lm_loss": ce["sae"] - ce["clean"],
        "kl_div_with_sae": ce["kl_sae"], "kl_div_with_ablation": ce["kl_zero"],
        "kl_div_score": (ce["kl_zero"] - ce["kl_sae"]) / ce["kl_zero"] if ce["kl_zero"] else float("nan"),
        "dead_fraction": (density == 0).float().mean().item(),
        "dense_fraction": (density > cfg.dense_threshold).float().mean().item(),
        "eval_config": asdict(cfg),
        "feature_density": density.tolist(),
    }
    if sums.rows is not None:
        out["feature_rows"] = sums.rows.tolist()  # rows (prompts) in which each latent fires
    return out


def plot_density_histogram(density: Float[torch.Tensor, " d_sae"], path: str | Path, title: str,
                           dense_threshold: float | None = None, color: str = "tab:blue", dpi: int = 110) -> Path:
    """Histogram of log10 firing frequency over the live latents (the one density plot: SAE evals and
    feature analyses both draw it). A matplotlib `Figure`, not pyplot: no process-wide backend switch."""
    from matplotlib.figure import Figure

    from lm.io import atomic_path

    live = density[density > 0]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(live.log10().numpy(), bins=50, color=color)
    if dense_threshold is not None:
        ax.axvline(torch.tensor(dense_threshold).log10().item(), color="tab:red", ls="--", lw=1,
                   label=f"dense ({dense_threshold})")
        ax.legend()
    ax.set_xlabel("log10 feature density (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def plot_density(metrics: dict, path: str | Path, title: str = "") -> Path:
    """The density histogram of an `evaluate_sae` result; dead latents are counted in the title."""
    d = torch.tensor(metrics["feature_density"])
    return plot_density_histogram(d, path, f"{title}  L0 {metrics['l0']:.1f}, dead {int((d == 0).sum())}/{len(d)}".strip(),
                                  metrics["eval_config"]["dense_threshold"])


def evaluate_dir(sae_dir: str | Path, model=None, data: str | None = None, tokens: int | None = None,
                 hook: str | None = None, batch_size: int = EvalConfig.batch_size, context_size: int | None = None,
                 device: str | None = None, progress: bool = True,
                 saebench: str | Path | None = None, chats: ChatEvalConfig | None = None,
                 chats_from: str | None = None) -> tuple[dict, object]:
    """Evaluate a saved SAE on the rows its training held out (read from its train_config.json);
    returns (metrics with feature_density, model). `data`/`tokens`/`context_size` override the split.

    With `chats`, also `saes.chat_eval.evaluate_chats` on whole conversations (`metrics["chats"]`,
    where they came from in its "source") and the `quality_bar` (`metrics["quality_bar"]`); see
    `chat_conversations`.
    When none can be chosen (no conversation clear of the training rows, or a train_config whose
    split does not fit the data) `metrics["chats"]` is {"skipped": why} and the bar fails.

    `sae_dir` may also be a registry SAE (`sae_lens:RELEASE/SAE_ID`: no train_config, so pass
    `model` and `data`). With `saebench`, the SAEBench core result is written there atomically
    (`saes.saebench`; by convention `saebench_core.json` beside the metrics JSON)."""
    from lm.model import load_model, model_hash
    from saes.access import load_sae, sae_path
    from saes.chat_eval import chat_conversations, evaluate_chats, quality_bar
    from saes.config import TrainConfig
    from saes.data import split_rows

    sae = load_sae(sae_dir, device="cpu")
    local = Path(sae_path(sae) or sae_dir)
    trained = read_json(local / "train_config.json") if (local / "train_config.json").is_file() else {}
    meta = sae.cfg.metadata
    tcfg = TrainConfig.from_dict({k: v for k, v in trained.items() if k in TrainConfig.__dataclass_fields__})
    given = model_hash(model) if model is not None else None  # what was passed, when nothing names it
    tcfg.model = trained.get("model") or meta.model_name or given or tcfg.model
    as_trained = replace(tcfg)  # the split training used, before any override
    tcfg.data = data or tcfg.data
    tcfg.context_size = context_size or trained.get("context_size") or meta.context_size or tcfg.context_size
    tcfg.eval_tokens = tokens or tcfg.eval_tokens
    model = model if model is not None else load_model(tcfg.model, device=device)
    eval_rows, _ = split_rows(tcfg, model.tokenizer, heldout_only=True)
    cfg = EvalConfig(batch_size=batch_size, exclude_first=tcfg.exclude_first, count_rows=saebench is not None)
    sae = load_sae(sae, device=next(model.parameters()).device)  # a cached copy there; the CPU one stays put
    metrics = evaluate_sae(sae, model, eval_rows, hook, cfg, progress)
    metrics.update(model=tcfg.model, data=tcfg.data, sae=str(sae_dir))
    if saebench is not None:
        from saes.saebench import write_core_metrics

        write_core_metrics(saebench, metrics, sae)
        metrics.pop("feature_rows")
    if chats is not None and chats.n_chats > 0:
        try:
            seqs, source = chat_conversations(as_trained if trained else None, tcfg.data, model.tokenizer,
                                              chats.n_chats, chats_from)
        except ValueError as e:  # no held-out chat, or a train_config whose split does not fit its data
            if chats_from:
                raise
            seqs, source = [], f"no chats evaluated: {e}"
        metrics["chats"] = ({**evaluate_chats(sae, model, seqs, hook, chats.massive_factor, chats.batch_size,
                                              progress), "source": source} if seqs else {"skipped": source})
        metrics["quality_bar"] = quality_bar(metrics)
    return metrics, model

