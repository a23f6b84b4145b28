"""The amplification experiments (Templeton et al. 2024) as one call each, for scripts and notebooks.

- "golden_gate": clamp the Golden Gate Bridge latent to 10x its max activation on every token and
  ask "What is your physical form?" plus unrelated questions;
- "sycophancy": clamp the sycophantic-praise latent to 5x while an overconfident user states a
  dubious claim.

`run_amplification(model, "golden_gate", out_dir=...)` sweeps the clamp strength next to the raw
difference-of-means direction at matched norm and a random direction of that norm, writes the
comparison files (`steering.compare.run_comparison`: results.json, dose_response.png, summary.md
with side-by-side answers) and returns the headline numbers at the paper's strength, checked
against the targets below (measured, never assumed). Notebooks call it with small settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from features import concept_latent, load_concept
from lm.generate import GenerationConfig
from lm.io import write_json
from saes.access import DEFAULT_SAE
from steering.compare import run_comparison
from steering.experiment import FAMILIES, ConceptEvalConfig, sweep_conditions
from steering.metrics import load_data

EXPERIMENTS = {
    "golden_gate": {"concept": "golden_gate_bridge", "prompts": "unrelated_questions", "strength": 10.0,
                    "title": "Golden Gate Bridge latent clamped"},
    "sycophancy": {"concept": "sycophantic_praise", "prompts": "dubious_claims", "strength": 5.0,
                   "title": "Sycophantic-praise latent clamped"},
}
TARGETS = {"concept_rate_min": 0.8, "baseline_concept_rate_max": 0.05, "ppl_ratio_max": 2.0}
STRENGTHS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)


@dataclass
class AmplificationConfig:
    sae: str = str(DEFAULT_SAE)
    latent: int | None = None  # default: <sae>/concepts.json
    max_activation: float | None = None
    strengths: list[float] = field(default_factory=lambda: list(STRENGTHS))
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    n_prompts: int | None = None  # first N prompts (None: all)
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(
        max_new_tokens=64, temperature=0.0, repetition_penalty=1.1))
    neutral_texts: int = 8
    neutral_max_tokens: int = 96
    seed: int = 0
    wandb: str = "disabled"  # "offline" to also log one W&B run per condition

    def to_dict(self) -> dict:
        return {**asdict(self), "generation": self.generation.to_dict()}


def headline(record: dict, strength: float) -> dict:
    """Each family at the paper's strength against the baseline, and the targets for the clamp."""
    by = {(r["condition"]["family"], r["condition"]["strength"]): r["metrics"] for r in record["results"]}
    base = by[("baseline", 0.0)]
    out = {"strength": strength, "baseline": {k: base[k] for k in ("concept_rate", "ppl", "description_logprob")}}
    for fam in FAMILIES:
        m = by.get((fam, strength))
        if m is not None:
            out[fam] = {"concept_rate": m["concept_rate"], "ppl": m["ppl"], "ppl_ratio": m["ppl"] / base["ppl"],
                        "description_logprob": m["description_logprob"], "kl_neutral": m["kl_neutral"]}
    clamp = out.get("sae_clamp")
    if clamp is not None:
        out["targets"] = {**TARGETS, "met": {
            "concept_rate": clamp["concept_rate"] >= TARGETS["concept_rate_min"],
            "baseline_concept_rate": base["concept_rate"] <= TARGETS["baseline_concept_rate_max"],
            "ppl_ratio": clamp["ppl_ratio"] <= TARGETS["ppl_ratio_max"]}}
    out["collapse_strength"] = record["summary"]
    out["best_fluent"] = best_fluent(record["results"], base["ppl"])
    return out


def best_fluent(results: list[dict], base_ppl: float, factor: float = TARGETS["ppl_ratio_max"]) -> dict:
    """Per family, the strength with the highest concept rate among those whose answers stay within
    `factor` x the baseline perplexity (None when no strength > 0 does)."""
    out = {}
    for fam in FAMILIES:
        ok = [r for r in results if r["condition"]["family"] == fam and r["condition"]["strength"] > 0
              and r["metrics"]["ppl"] <= factor * base_ppl]
        best = max(ok, key=lambda r: (r["metrics"]["concept_rate"], -r["condition"]["strength"]), default=None)
        out[fam] = None if best is None else {"strength": best["condition"]["strength"],
                                              "concept_rate": best["metrics"]["concept_rate"],
                                              "ppl_ratio": best["metrics"]["ppl"] / base_ppl}
    return out


def run_amplification(model, experiment: str, out_dir: str | Path, cfg: AmplificationConfig | None = None,
                      progress: bool = True) -> dict:
    """Run one experiment end to end; files go to `out_dir`, the headline dict is returned."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {experiment!r}; choose from {sorted(EXPERIMENTS)}.")
    cfg = cfg or AmplificationConfig()
    if not Path(cfg.sae, "cfg.json").is_file():
        raise FileNotFoundError(f"No trained SAE at {cfg.sae} (cfg.json missing). Train the default SAE first "
                                "(saes/), or pass the directory of a SAELens SAE.")
    spec = EXPERIMENTS[experiment]
    latent, max_act = concept_latent(cfg.sae, spec["concept"], cfg.latent, cfg.max_activation)
    prompts = load_data(spec["prompts"])[:cfg.n_prompts]
    strengths = sorted(set(cfg.strengths) | {spec["strength"]})
    conds = sweep_conditions(model, cfg.sae, latent, max_act, strengths, load_concept(spec["concept"]),
                             cfg.families, cfg.seed)
    ev = ConceptEvalConfig(spec["concept"], prompts, cfg.generation, cfg.neutral_texts, cfg.neutral_max_tokens)
    tag = f"{spec['strength']:g}x"
    record = run_comparison(model, conds, ev, out_dir, mode=cfg.wandb, title=spec["title"],
                            group=f"clamp-{experiment}", side_by_side_names=["baseline"] + [f"{f}_{tag}" for f in cfg.families],
                            extra={"experiment": experiment, "amplification": cfg.to_dict(), "latent": latent,
                                   "max_activation": max_act}, progress=progress)
    head = {"experiment": experiment, "latent": latent, "max_activation": max_act, **headline(record, spec["strength"])}
    write_json(Path(out_dir) / "headline.json", head)
    return head
