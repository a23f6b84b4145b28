"""Evaluate an SAE on held-out tokens: sparsity, reconstruction, and what splicing it in costs the LM.

We do not call `sae_lens.evals.run_evals`: it masks positions by token id and splices the SAE into
every other position, but here position 0 of each row (an attention sink, whatever its token) is
excluded by position, as in training. So position 0 is left untouched in the spliced and ablated
runs and is dropped from every statistic, and the LM loss is taken over the predictions made from
positions >= 1. SAELens's streaming explained-variance calculator is reused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from sae_lens.evals import ExplainedVarianceCalculator
from tqdm.auto import tqdm

from lm.harvest import check_hook_names


@dataclass
class EvalConfig:
    batch_size: int = 4  # rows per forward (SmolLM2 logits: 4 x 256 x 49152 floats = 200 MB)
    exclude_first: bool = True
    dense_threshold: float = 0.1  # a latent firing on more than this fraction of tokens is dense


def _ce_sum(logits: torch.Tensor, ids: torch.Tensor, first: int) -> torch.Tensor:
    """Summed next-token loss over predictions made from positions >= first."""
    return F.cross_entropy(logits[:, first:-1].flatten(0, 1).float(), ids[:, first + 1:].flatten(), reduction="sum")


def _splice_losses(sae, model, ids: Int[torch.Tensor, "b s"], hook: str, first: int):
    """Summed LM loss clean, with the SAE's reconstruction spliced in, and zero-ablated; plus the
    activations (positions >= first), their reconstruction and the latent activations."""
    seen = {}

    def capture(x, hook):
        seen["x"] = x.detach().clone()
        return x

    with model.hooks(fwd_hooks=[(hook, capture)]):
        clean = _ce_sum(model(ids), ids, first).item()
    x = seen["x"][:, first:]
    if x.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"SAE d_in is {sae.cfg.d_in} but {hook} has width {x.shape[-1]}: "
                         "this SAE was trained on another hook or model.")
    acts = sae.encode(x.to(sae.device, sae.dtype))
    recon = sae.decode(acts).to(x.device, x.dtype)

    def splice(h, hook, new=recon):
        h = h.clone()
        h[:, first:] = new
        return h

    with model.hooks(fwd_hooks=[(hook, splice)]):
        spliced = _ce_sum(model(ids), ids, first).item()
    with model.hooks(fwd_hooks=[(hook, lambda h, hook: splice(h, hook, torch.zeros_like(recon)))]):
        zero = _ce_sum(model(ids), ids, first).item()
    return {"clean": clean, "sae": spliced, "zero": zero}, x, recon, acts


@torch.no_grad()
def evaluate_sae(sae, model, tokens: Int[torch.Tensor, "rows seq"], hook: str | None = None,
                 cfg: EvalConfig | None = None, progress: bool = True) -> dict:
    """L0, FVU, explained variance, CE-loss recovered, delta LM loss, dead/dense fractions, densities."""
    cfg = cfg or EvalConfig()
    hook = hook or sae.cfg.metadata.hook_name
    if not hook:
        raise ValueError("The SAE's cfg has no metadata.hook_name; pass hook=... explicitly.")
    check_hook_names(model, [hook])
    first = int(cfg.exclude_first)
    if tokens.ndim != 2 or tokens.shape[1] < first + 2:
        raise ValueError(f"tokens must be [rows, seq] with seq >= {first + 2}, got {tuple(tokens.shape)}.")
    device = next(model.parameters()).device
    ev = ExplainedVarianceCalculator()
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    l0_sum, n_tok, n_pred = 0.0, 0, 0
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    for b in tqdm(range(0, tokens.shape[0], cfg.batch_size), desc="eval sae", disable=not progress):
        ids = tokens[b:b + cfg.batch_size].to(device)
        losses, x, recon, acts = _splice_losses(sae, model, ids, hook, first)
        ce = {k: ce[k] + losses[k] for k in ce}
        flat_x, flat_r, on = x.flatten(0, 1).float(), recon.flatten(0, 1).float(), acts.flatten(0, 1) != 0
        ev.add_batch(sae_output=flat_r, hidden_acts=flat_x)
        fires += on.sum(0).double().cpu()
        l0_sum += on.sum().item()
        n_tok += on.shape[0]
        n_pred += ids.shape[0] * (ids.shape[1] - first - 1)
    ce = {k: v / n_pred for k, v in ce.items()}
    density = (fires / n_tok).float()
    explained = ev.compute()
    return {
        "hook": hook, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "n_tokens": n_tok,
        "l0": l0_sum / n_tok,
        "fvu": 1.0 - explained,
        "explained_variance": explained,
        "ce_loss_clean": ce["clean"], "ce_loss_with_sae": ce["sae"], "ce_loss_zero_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        "delta_lm_loss": ce["sae"] - ce["clean"],
        "dead_fraction": (density == 0).float().mean().item(),
        "dense_fraction": (density > cfg.dense_threshold).float().mean().item(),
        "eval_config": asdict(cfg),
        "feature_density": density.tolist(),
    }


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
                 device: str | None = None, progress: bool = True) -> tuple[dict, object]:
    """Evaluate a saved SAE on the rows its training held out (read from its train_config.json);
    returns (metrics with feature_density, model). `data`/`tokens`/`context_size` override the split."""
    import json

    from lm.model import load_model
    from saes.config import TrainConfig
    from saes.data import split_rows
    from saes.access import load_sae

    sae_dir = Path(sae_dir)
    sae = load_sae(sae_dir, device=device or "cpu")
    tc = sae_dir / "train_config.json"
    trained = json.loads(tc.read_text()) if tc.is_file() else {}
    meta = sae.cfg.metadata
    tcfg = TrainConfig.from_dict({k: v for k, v in trained.items() if k in TrainConfig.__dataclass_fields__})
    tcfg.model = trained.get("model") or meta.model_name or tcfg.model
    tcfg.data = data or tcfg.data
    tcfg.context_size = context_size or trained.get("context_size") or meta.context_size or tcfg.context_size
    tcfg.eval_tokens = tokens or tcfg.eval_tokens
    model = model if model is not None else load_model(tcfg.model, device=device)
    eval_rows, _ = split_rows(tcfg, model.tokenizer, heldout_only=True)
    cfg = EvalConfig(batch_size=batch_size, exclude_first=tcfg.exclude_first)
    metrics = evaluate_sae(sae.to(next(model.parameters()).device), model, eval_rows, hook, cfg, progress)
    metrics.update(model=tcfg.model, data=tcfg.data, sae=str(sae_dir))
    return metrics, model
