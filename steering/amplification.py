"""The amplification experiments (Templeton et al. 2024) as one call each, for scripts and notebooks.

- "golden_gate": unrelated questions (and "What is your physical form?"), the Golden Gate Bridge concept;
- "sycophancy": an overconfident user states a dubious claim, the sycophantic-praise concept.

`run_amplification(model, "golden_gate", out_dir=...)` compares, on the same prompts and seeds, the
way AxBench does (`steering.compare.run_comparison`: results.json, dose_response.png, summary.md):
- `recipe`: the shipped feature-steering recipe (`steering/recipes/<name>.json`, SAE features only);
- `paper_clamp_<k>x`: the paper's literal setting, the best *input* latent of the default SAE
  (concepts.json: highest AUROC) clamped to k x its max activation on every token (10x / 5x), plus
  any other strengths asked for (a dose-response curve);
- `raw_add`: the raw difference-of-means direction (read at the concept's keyword tokens) added at
  the recipe's layers with the recipe's norm per layer (its strength at the median a_max);
- `system_prompt`: prompting, AxBench's upper reference ("You are obsessed with the Golden Gate Bridge").
Scores are `steering.metrics.scores` against the unsteered answers; the recipe is checked against
the targets of `steering.tuning` and against the raw direction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from features import concept_latent
from features.latents import sae_norms
from lm.generate import GenerationConfig
from lm.io import write_json
from saes.access import DEFAULT_SAE, sae_hook, load_sae
from steering.compare import run_comparison
from steering.directions import keyword_direction, with_norm
from steering.experiment import ConceptEvalConfig, Condition
from steering.intervention import Steering
from steering.metrics import load_data
from steering.recipe import leaves, load_recipe, recipe_path
from steering.sae_edits import Clamp
from steering.tuning import TARGETS, clamp_units, meets
from steering.vectors import Add

EXPERIMENTS = {
    "golden_gate": {"concept": "golden_gate_bridge", "recipe": "golden_gate", "dev": "unrelated_questions",
                    "test": "unrelated_questions_test", "strength": 10.0, "lead": ["What is your physical form?"],
                    "system": "You are obsessed with the Golden Gate Bridge.",
                    "title": "Golden Gate Bridge: feature-steering recipe vs the paper's 10x clamp"},
    "sycophancy": {"concept": "sycophantic_praise", "recipe": "sycophancy", "dev": "dubious_claims",
                   "test": "dubious_claims_test", "strength": 5.0, "lead": [],
                   "system": "You are a sycophant: you shower the user with lavish praise and always agree.",
                   "title": "Sycophantic praise: feature-steering recipe vs the paper's 5x clamp"},
}
FAMILIES = ("recipe", "paper_clamp", "raw_add", "prompting")


@dataclass
class AmplificationConfig:
    recipe: str | None = None  # a recipe name or file (default: the experiment's shipped recipe)
    sae: str = str(DEFAULT_SAE)  # the literal clamp's SAE; its concepts.json names the input latent
    latent: int | None = None
    max_activation: float | None = None
    strengths: list[float] = field(default_factory=list)  # extra literal-clamp strengths (the paper's is always run)
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    split: str = "test"  # prompts: "test" (held out from tuning) or "dev"
    n_prompts: int | None = None  # first N of the split (None: all), after the lead prompts
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(
        max_new_tokens=48, temperature=0.0, repetition_penalty=1.1))
    neutral_texts: int = 4
    neutral_max_tokens: int = 96
    seed: int = 0
    wandb: str = "disabled"  # "offline" to also log one W&B run per condition

    def to_dict(self) -> dict:
        return {**asdict(self), "generation": self.generation.to_dict()}


def prompts_for(spec: dict, split: str, n: int | None) -> list[str]:
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test', got {split!r}.")
    rest = [p for p in load_data(spec[split]) if p not in spec["lead"]][:n]
    return list(spec["lead"]) + rest


def raw_matched(model, recipe, concept: str) -> Steering:
    """The raw keyword direction at each of the recipe's hooks, with that leaf's norm (its strength in
    median-residual-norm units times the layer's median norm)."""
    adds = []
    for leaf in leaves(recipe):
        sae = load_sae(leaf.sae)
        hook = sae_hook(sae)
        med = sae_norms(leaf.sae)["residual_norm_median"]
        frac = sum(u["x_median_norm"] or 0.0 for u in leaf.units().values())
        adds.append(Add(hook, with_norm(keyword_direction(model, hook, concept), frac * med)))
    return Steering(adds)


def conditions(model, experiment: str, cfg: AmplificationConfig) -> list[Condition]:
    spec = EXPERIMENTS[experiment]
    bad = [f for f in cfg.families if f not in FAMILIES]
    if bad:
        raise ValueError(f"Unknown families {bad}; choose from {FAMILIES}.")
    conds = [Condition("baseline")]
    recipe = None
    if "recipe" in cfg.families or "raw_add" in cfg.families:
        recipe = load_recipe(cfg.recipe or spec["recipe"])
    if "recipe" in cfg.families:
        units = clamp_units(leaves(recipe))
        strength = float(next(iter(leaves(recipe)[0].features.values())))  # the first leaf's, for plots
        conds.append(Condition("recipe", recipe, "recipe", strength, units=units))
    if "paper_clamp" in cfg.families:
        latent, max_act = concept_latent(cfg.sae, spec["concept"], cfg.latent, cfg.max_activation)
        for k in sorted(set(cfg.strengths) | {spec["strength"]}):
            clamp = Clamp(cfg.sae, {latent: float(k)}, relative=True, max_activations={latent: max_act})
            conds.append(Condition(f"paper_clamp_{k:g}x", clamp, "paper_clamp", float(k), units=clamp_units([clamp])))
    if "raw_add" in cfg.families:
        conds.append(Condition("raw_add", raw_matched(model, recipe, spec["concept"]), "raw_add", 1.0))
    if "prompting" in cfg.families:
        conds.append(Condition("system_prompt", None, "prompting", 0.0, system=spec["system"]))
    return conds


def headline(record: dict, experiment: str) -> dict:
    """Per condition the scores and ratios; for the recipe the targets and its margin over raw_add."""
    spec = EXPERIMENTS[experiment]
    by = {r["condition"]["name"]: r for r in record["results"]}
    base = by["baseline"]["metrics"]
    out = {"experiment": experiment, "strength": spec["strength"], "n_prompts": base["n_answers"],
           "baseline": {k: base[k] for k in ("concept_rate", "fluency_ppl", "distinct2", "looping_rate", "relevance")}}
    for name, r in by.items():
        if name == "baseline":
            continue
        m = r["metrics"]
        out[name] = {**r["scores"], "concept_rate": m["concept_rate"],
                     "fluency_ppl_ratio": m["fluency_ppl"] / base["fluency_ppl"],
                     "distinct2_ratio": m["distinct2"] / base["distinct2"] if base["distinct2"] else float("nan"),
                     "looping_rate": m["looping_rate"],
                     "units": r["condition"].get("units")}
    rec = out.get("recipe")
    if rec is not None:
        rec["targets"] = {**TARGETS, "met": meets(by["recipe"]["metrics"], base)}
        if "raw_add" in out:
            rec["harmonic_minus_raw"] = rec["harmonic"] - out["raw_add"]["harmonic"]
    return out


def run_amplification(model, experiment: str, out_dir: str | Path, cfg: AmplificationConfig | None = None,
                      progress: bool = True) -> dict:
    """Run one experiment end to end; files go to `out_dir`, the headline dict is returned."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {experiment!r}; choose from {sorted(EXPERIMENTS)}.")
    cfg = cfg or AmplificationConfig()
    if "paper_clamp" in cfg.families and not Path(cfg.sae, "cfg.json").is_file():
        raise FileNotFoundError(f"No trained SAE at {cfg.sae} (cfg.json missing). Train the default SAE first "
                                "(saes/), or pass the directory of a SAELens SAE.")
    spec = EXPERIMENTS[experiment]
    conds = conditions(model, experiment, cfg)
    ev = ConceptEvalConfig(spec["concept"], prompts_for(spec, cfg.split, cfg.n_prompts), cfg.generation,
                           cfg.neutral_texts, cfg.neutral_max_tokens)
    shown = [c.name for c in conds if c.family in ("baseline", "recipe", "raw_add", "prompting")
             or c.name == f"paper_clamp_{spec['strength']:g}x"]
    record = run_comparison(model, conds, ev, out_dir, mode=cfg.wandb, title=spec["title"],
                            group=f"clamp-{experiment}", side_by_side_names=shown,
                            extra={"experiment": experiment, "amplification": cfg.to_dict(),
                                   "recipe": str(recipe_path(cfg.recipe or spec["recipe"]))
                                   if "recipe" in cfg.families or "raw_add" in cfg.families else None},
                            progress=progress)
    head = headline(record, experiment)
    write_json(Path(out_dir) / "headline.json", head)
    return head
