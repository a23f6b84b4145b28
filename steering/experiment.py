"""Run steering conditions on the same prompts and seeds, score them, and plot dose-response curves.

A `Condition` is a named intervention (None = the unsteered baseline), or a system prompt (the
prompting baseline), with a family and strength for plotting and, optionally, the strength in other
units for the record. `run_conditions` is the one sweep loop: any evaluator function over a list of
conditions, each result written atomically as it arrives (the concept comparisons here and the cap
evaluation in `axis.evaluate` both use it). `Evaluator` generates answers under one condition and
computes every metric of `steering.metrics`; the unsteered model judges each answer against its bare
question, so a condition's system prompt steers generation but never the judge. `scored` attaches the
AxBench-style scores (`steering.metrics.scores`) against the baseline result. `sweep_conditions`
builds the amplification sweep: the SAE clamp at multiples of the feature's max activation, the raw
difference-of-means direction added at the matched norm and a random direction of the same norm, each
recording its strength as {"x_max_activation", "edit_norm"} units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from features import load_concept
from lm.chat import render
from lm.generate import Generation, GenerationConfig, generate
from lm.io import write_json
from steering.directions import difference_of_means, feature_edit_norm, random_direction, with_norm
from steering.intervention import Intervention, from_dict
from steering.metrics import (DESCRIPTION_PROMPT, NeutralKL, answer_perplexity, concept_hits, description_logprob,
                              distinct_n, fluency_perplexity, looping_rate, relevance, scores)
from steering.sae_edits import Clamp, prepare_sae
from steering.vectors import Add

METRICS = ("concept_rate", "description_logprob", "ppl", "kl_neutral", "fluency_ppl", "distinct2", "relevance")
LABELS = {"concept_rate": "concept rate", "description_logprob": "description log-prob / token",
          "ppl": "answer perplexity given the question (unsteered)",
          "kl_neutral": "KL(steered || unsteered), neutral text",
          "fluency_ppl": "answer perplexity on its own (unsteered)", "distinct2": "distinct-2 of answers",
          "relevance": "relevance: log p(a | q) - log p(a | other q)", "fluency_ppl_ratio": "fluency ppl / unsteered",
          "harmonic": "harmonic mean (concept, fluency, relevance)"}
FAMILIES = ("sae_clamp", "raw_add", "random_add")


@dataclass(eq=False)
class Condition:
    name: str
    steering: Intervention | None = None  # None: the unsteered baseline
    family: str = "baseline"
    strength: float = 0.0  # multiple of the feature's max activation (matched for raw directions); a cap's percentile
    config: dict | None = None  # what built `steering`, kept for the record (e.g. a cap's CapConfig.to_dict())
    system: str | None = None  # a system prompt for generation (the prompting baseline)
    units: dict | None = None  # the strength in other units, e.g. {"x_max_activation": 10, "x_median_norm": 0.4}

    def to_dict(self) -> dict:
        d = {"name": self.name, "family": self.family, "strength": self.strength,
             "steering": self.steering.to_dict() if self.steering is not None else None}
        optional = {"config": self.config, "system": self.system, "units": self.units}
        return {**d, **{k: v for k, v in optional.items() if v is not None}}

    @classmethod
    def from_dict(cls, d: dict) -> "Condition":
        steer = from_dict(d["steering"]) if d.get("steering") else None
        return cls(d["name"], steer, d.get("family", "baseline"), d.get("strength", 0.0), d.get("config"),
                   d.get("system"), d.get("units"))


def check_names(conditions: list[Condition]) -> None:
    names = [c.name for c in conditions]
    if not conditions or len(set(names)) != len(names):
        raise ValueError(f"Conditions need unique names, got {names}.")


def run_conditions(conditions: list[Condition], evaluate: Callable[[Condition], dict], *,
                   each_dir: str | Path | None = None, partial: str | Path | None = None,
                   progress: bool = False) -> list[dict]:
    """`evaluate` every condition in order, writing each result atomically as soon as it exists:
    to `each_dir/<name>.json` and/or the list so far to `partial`, so a killed sweep keeps what it measured."""
    check_names(conditions)
    results = []
    for cond in tqdm(conditions, desc="conditions", disable=not progress):
        results.append(evaluate(cond))
        if each_dir is not None:
            write_json(Path(each_dir) / f"{cond.name}.json", results[-1])
        if partial is not None:
            write_json(partial, results)
    return results


@dataclass
class ConceptEvalConfig:
    concept: str  # features/concepts/<concept>.json
    prompts: list[str]
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(
        max_new_tokens=64, temperature=0.0, repetition_penalty=1.1))
    neutral_texts: int = 8
    neutral_max_tokens: int = 96
    description_prompt: str = DESCRIPTION_PROMPT

    def to_dict(self) -> dict:
        return {**asdict(self), "generation": self.generation.to_dict()}


class Evaluator:
    """Score conditions on fixed prompts; the unsteered neutral-text distribution is computed once."""

    def __init__(self, model, cfg: ConceptEvalConfig):
        from lm.prompts import load_prompt_set

        if not cfg.prompts:
            raise ValueError("ConceptEvalConfig.prompts is empty.")
        self.model, self.cfg = model, cfg
        self.concept = load_concept(cfg.concept)
        self.kl = NeutralKL(model, load_prompt_set("neutral_text")[:cfg.neutral_texts], cfg.neutral_max_tokens)

    def __call__(self, cond: Condition) -> dict:
        hooks = cond.steering.hooks(self.model) if cond.steering is not None else []
        gens = generate(self.model, self.cfg.prompts, self.cfg.generation, fwd_hooks=hooks, system=cond.system,
                        progress=False)
        hits = concept_hits([g.text for g in gens], self.concept)
        judged = [self._unprompted(g) for g in gens] if cond.system is not None else gens
        # no hooks and no system prompt from here on: the unsteered model judges fluency and relevance
        ppl, fluency, rel = (answer_perplexity(self.model, judged), fluency_perplexity(self.model, judged),
                             relevance(self.model, judged))
        metrics = {
            "concept_rate": sum(hits) / len(hits),
            "description_logprob": description_logprob(self.model, self.concept, hooks, self.cfg.description_prompt,
                                                       cond.system),
            "ppl": ppl["ppl"],
            "ppl_mean": ppl["ppl_mean"],
            "kl_neutral": self.kl(hooks),  # a system prompt does not act on plain text: 0
            "fluency_ppl": fluency["ppl"],
            "distinct2": distinct_n([g.ids.tolist() for g in gens], 2),
            "looping_rate": looping_rate([g.ids.tolist() for g in gens]),
            "relevance": rel["relevance"],
            "n_answers": len(gens),
            "n_empty": ppl["n_empty"],
            "mean_answer_tokens": sum(len(g.ids) for g in gens) / len(gens),
        }
        rows = [{"prompt": g.conversation[-1]["content"], "answer": g.text, "hit": h, "ppl": p, "fluency_ppl": f,
                 "relevance": r}
                for g, h, p, f, r in zip(gens, hits, ppl["ppl_per_answer"], fluency["ppl_per_answer"],
                                         rel["relevance_per_answer"])]
        return {"condition": cond.to_dict(), "metrics": metrics, "generations": rows}

    def _unprompted(self, g: Generation) -> Generation:
        """`g` as if asked without the condition's system prompt (generate puts it first)."""
        conv = g.conversation[1:] if g.conversation[0]["role"] == "system" else g.conversation
        ids = render(self.model.tokenizer, conv, add_generation_prompt=True).ids
        return replace(g, conversation=conv, prompt_ids=ids)


def baseline_result(results: list[dict]) -> dict | None:
    """The first result of family "baseline" (the unsteered reference), or None."""
    return next((r for r in results if r["condition"]["family"] == "baseline"), None)


def scored(results: list[dict]) -> list[dict]:
    """Attach `r["scores"] = steering.metrics.scores(r["metrics"], baseline metrics)` to every result
    (the baseline too); returns the same list."""
    base = baseline_result(results)
    if base is None:
        raise ValueError("Scores are relative to the unsteered answers: add Condition('baseline') to the conditions.")
    for r in results:
        r["scores"] = scores(r["metrics"], base["metrics"])
    return results


def sweep_conditions(model, sae, latent: int, max_activation: float, strengths: list[float],
                     concept: dict | str, families=FAMILIES, seed: int = 0) -> list[Condition]:
    """Baseline, then for each strength: SAE clamp, raw difference-of-means add, random add (matched norms)."""
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise ValueError(f"Unknown families {bad}; choose from {FAMILIES}.")
    if not math.isfinite(max_activation) or max_activation <= 0:
        raise ValueError(f"max_activation must be a positive number, got {max_activation}.")
    concept = load_concept(concept) if isinstance(concept, str) else concept
    sae_obj, hook = prepare_sae(sae, model, None, "sweep")
    conds = [Condition("baseline")]
    raw = rnd = None
    if "raw_add" in families:
        raw = difference_of_means(model, hook, concept["positive"], concept["negative"])
    if "random_add" in families:
        rnd = random_direction(model.cfg.d_model, seed)
    for s in strengths:
        norm = feature_edit_norm(sae_obj, latent, s * max_activation)
        tag, units = f"{s:g}x", {"x_max_activation": float(s), "edit_norm": float(norm)}
        if "sae_clamp" in families:
            conds.append(Condition(f"sae_clamp_{tag}", Clamp(sae, {latent: float(s)}, relative=True,
                                   max_activations={latent: max_activation}), "sae_clamp", s, units=units))
        if raw is not None:
            conds.append(Condition(f"raw_add_{tag}", Add(hook, with_norm(raw, norm)), "raw_add", s, units=units))
        if rnd is not None:
            conds.append(Condition(f"random_add_{tag}", Add(hook, with_norm(rnd, norm)), "random_add", s, units=units))
    return conds


def collapse_strength(results: list[dict], family: str, factor: float = 2.0) -> float | None:
    """Smallest strength at which answer perplexity exceeds `factor` x the baseline's (None: never)."""
    base = next((r["metrics"]["ppl"] for r in results if r["condition"]["family"] == "baseline"), None)
    if base is None or not math.isfinite(base):
        return None
    for r in sorted((r for r in results if r["condition"]["family"] == family), key=lambda r: r["condition"]["strength"]):
        if not r["metrics"]["ppl"] <= factor * base:  # NaN (all answers empty) counts as collapsed
            return r["condition"]["strength"]
    return None


PANELS = (("concept_rate", "fluency_ppl_ratio", "distinct2", "harmonic"),  # the headline row
          ("relevance", "description_logprob", "ppl", "kl_neutral"))


def _value(r: dict, key: str, base: dict | None) -> float:
    if key == "fluency_ppl_ratio":
        return r["metrics"]["fluency_ppl"] / base["metrics"]["fluency_ppl"] if base is not None else float("nan")
    if key == "harmonic":
        return r.get("scores", {}).get(key, float("nan"))  # none before `scored`
    return r["metrics"][key]


def plot_dose_response(results: list[dict], path, title: str = "") -> None:
    """Two rows of panels (headline: concept rate, fluency perplexity / unsteered, distinct-2, harmonic
    mean; then relevance, description log-prob, conditioned perplexity, neutral KL), one curve per
    family against strength (symlog x); the unsteered baseline dashed."""
    from matplotlib.figure import Figure  # not pyplot: no process-wide backend switch

    rows, cols = len(PANELS), len(PANELS[0])
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols)
    base = baseline_result(results)
    families = sorted({r["condition"]["family"] for r in results} - {"baseline"})
    for ax, m in zip(axes.flat, [m for row in PANELS for m in row]):
        for fam in families:
            pts = sorted((r["condition"]["strength"], _value(r, m, base)) for r in results
                         if r["condition"]["family"] == fam)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=fam, clip_on=False)  # x=0 markers whole
        if base is not None and math.isfinite(_value(base, m, base)):
            ax.axhline(_value(base, m, base), color="gray", ls="--", label="unsteered")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)  # strengths are >= 0; symlog would otherwise show an empty negative decade
        if m in ("ppl", "fluency_ppl_ratio"):
            ax.set_yscale("log")
        if m in ("concept_rate", "distinct2", "harmonic"):
            ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("strength (x max activation)")
        ax.set_title(LABELS[m], fontsize=9)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    from lm.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _cell(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[:limit] + " ..."
    return text.replace("|", "\\|")


def side_by_side(results: list[dict], names: list[str]) -> str:
    """Markdown table: one row per prompt, one column per named condition."""
    by = {r["condition"]["name"]: r for r in results}
    missing = [n for n in names if n not in by]
    if missing:
        raise KeyError(f"No results for conditions {missing}.")
    lines = ["| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, row in enumerate(by[names[0]]["generations"]):
        cells = [_cell(row["prompt"], 160)] + [_cell(by[n]["generations"][i]["answer"]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLE = [("harmonic", "scores", "harmonic"), ("concept", "scores", "concept"), ("fluency", "scores", "fluency"),
         ("relevance", "scores", "relevance"), ("distinct2", "metrics", "distinct2"),
         ("fluency_ppl", "metrics", "fluency_ppl"), ("relevance (nats)", "metrics", "relevance"),
         ("ppl", "metrics", "ppl"), ("kl_neutral", "metrics", "kl_neutral"),
         ("description_logprob", "metrics", "description_logprob")]  # (header, record key, value key)


def metrics_table(results: list[dict]) -> str:
    """Markdown table: the scores (blank before `scored`), then the raw metrics, one row per condition."""
    lines = ["| condition | family | strength | " + " | ".join(h for h, _, _ in TABLE) + " |",
             "|---" * (3 + len(TABLE)) + "|"]
    for r in results:
        c = r["condition"]
        cells = [f"{r[part][k]:.4g}" if k in r.get(part, {}) else "" for _, part, k in TABLE]
        lines.append(f"| {c['name']} | {c['family']} | {c['strength']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
