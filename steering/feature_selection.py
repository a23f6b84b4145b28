"""Choose a concept's steering latents by what they do, not only by what makes them fire.

Per SAE, three rankings, all recorded in the SAE's concepts.json (Arad, Mueller & Belinkov 2025):
1. input: `features.search_concept` ranks latents by selection AUROC on the concept set (held-out
   AUROC reported); the best one is what the paper's literal clamp uses;
2. output: `features.output_score` gives each latent's S_out and its concept mass on a neutral
   prompt; output candidates are the latents with the largest concept mass among those passing
   S_out >= threshold;
3. measured: the short list (best `n_input` by input, best `n_output` by output) is amplified
   (`Clamp(mode="add")`, Arad's a_i += s x a_max) at each strength on the dev prompts and scored
   by `steering.metrics.scores` (concept, fluency, relevance, harmonic mean); a latent's figure is
   its best strength's. The latent with the best measured harmonic mean is the steering latent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from features import load_concept
from features.concept_search import SearchConfig, keyword_tokens, search_concept
from features.concept_sets import Concept
from features.latents import FILE, corpus_stats, write_sae_norms
from features.analysis import dataset_tokens
from features.output_score import OutputScoreConfig, output_scores
from lm.generate import GenerationConfig
from lm.io import read_json, write_json
from saes.access import load_sae
from steering.experiment import Condition, ConceptEvalConfig, Evaluator, run_conditions
from steering.metrics import scores
from steering.sae_edits import Clamp


@dataclass
class SelectionConfig:
    n_input: int = 2  # short-listed by input AUROC
    n_output: int = 4  # short-listed by concept mass among S_out >= output.threshold
    strengths: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # x a_max ("add")
    positions: str = "all"
    n_prompts: int = 8  # dev prompts used for the measured effect
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(
        max_new_tokens=32, temperature=0.0, repetition_penalty=1.1))
    output: OutputScoreConfig = field(default_factory=OutputScoreConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    data: str = "default"  # corpus for max activations and strength units
    max_tokens: int = 65_536
    context_size: int = 128

    def to_dict(self) -> dict:
        return {**asdict(self), "generation": self.generation.to_dict()}


def short_list(search, out: dict, cfg: SelectionConfig) -> tuple[list[int], list[int]]:
    """(input candidates, output candidates): best by AUROC; best by concept mass among S_out passes."""
    inputs = [c.latent for c in search.candidates[:max(1, cfg.n_input)]]  # the best input latent always
    s_out, mass = torch.tensor(out["s_out"]), torch.tensor(out["concept_mass"])
    ok = s_out >= cfg.output.threshold
    order = mass.argsort(descending=True).tolist()
    outputs = [i for i in order if ok[i]][:cfg.n_output] if ok.any() else order[:cfg.n_output]
    return inputs, [int(out["latents"][i]) for i in outputs]


def concept_output_scores(model, sae_dir: str | Path, concepts: list, cfg: SelectionConfig | None = None,
                          progress: bool = True) -> dict[str, dict]:
    """`output_scores` of every latent for several concepts from one set of forwards: {name: scores}."""
    cfg = cfg or SelectionConfig()
    cs = [c if isinstance(c, Concept) else Concept.load(c) for c in concepts]
    both = output_scores(model, load_sae(sae_dir), cfg=cfg.output, progress=progress,
                         concept_tokens={c.name: keyword_tokens(model.tokenizer, c, cfg.search) for c in cs})
    return {c.name: {**both, "concept_mass": both["concept_mass"][c.name],
                     "base_concept_mass": both["base_concept_mass"][c.name]} for c in cs}


def select_latents(model, sae_dir: str | Path, concept: str | Path, prompts: list[str],
                   cfg: SelectionConfig | None = None, progress: bool = True, scores_out: dict | None = None) -> dict:
    """The three rankings for `concept` at one SAE; returns the concepts.json record (not written).
    `scores_out`: this concept's `concept_output_scores`, when already computed."""
    cfg = cfg or SelectionConfig()
    sae = load_sae(sae_dir)
    c = Concept.load(concept)
    search = search_concept(model, sae, c, cfg.search, progress=progress)
    out = scores_out or concept_output_scores(model, sae_dir, [c], cfg, progress)[c.name]
    inputs, outputs = short_list(search, out, cfg)
    cands = list(dict.fromkeys(inputs + outputs))
    tokens = dataset_tokens(cfg.data, model.tokenizer, cfg.context_size, cfg.max_tokens)
    units, maxima = corpus_stats(model, sae, tokens, cands, progress=progress)
    write_sae_norms(sae_dir, units)
    conds = [Condition("baseline")]
    for lat in cands:
        for s in cfg.strengths:
            conds.append(Condition(f"add_{lat}_{s:g}", Clamp(str(sae_dir), {lat: s}, mode="add",
                                                             positions=cfg.positions), "sae_add", s))
    ev = Evaluator(model, ConceptEvalConfig(c.name, prompts[:cfg.n_prompts], cfg.generation, neutral_texts=2))
    results = run_conditions(conds, ev, progress=progress)
    base = results[0]["metrics"]
    by_input = {x.latent: x for x in search.candidates}
    records = []
    for lat in cands:
        runs = [(r["condition"]["strength"], scores(r["metrics"], base), r["metrics"]) for r in results
                if r["condition"]["name"].startswith(f"add_{lat}_")]
        s, sc, m = max(runs, key=lambda t: (t[1]["harmonic"], t[1]["concept"]))
        i = out["latents"].index(lat)
        x = by_input.get(lat)
        records.append({
            "latent": lat, "max_activation": maxima[lat],
            "input": {"auroc_heldout": x.auroc_heldout if x else None,
                      "auroc_selection": x.auroc_selection if x else None, "label": x.label if x else None},
            "output": {"s_out": out["s_out"][i], "concept_mass": out["concept_mass"][i],
                       "top_token": model.tokenizer.decode([out["token"][i]])},
            "steering": {"mode": "add", "strength": s, **sc, "concept_rate": m["concept_rate"],
                         "fluency_ppl": m["fluency_ppl"], "distinct2": m["distinct2"],
                         "per_strength": {f"{t:g}": {**q, "concept_rate": mm["concept_rate"]} for t, q, mm in runs}},
            "shortlisted_by": [k for k, v in (("input", inputs), ("output", outputs)) if lat in v]})
    best = max(records, key=lambda r: (r["steering"]["harmonic"], r["steering"]["concept"]))
    top_in = search.best
    return {"latent": top_in.latent, "max_activation": maxima[top_in.latent],
            "auroc_heldout": top_in.auroc_heldout, "auroc_selection": top_in.auroc_selection, "label": top_in.label,
            "max_activation_data": f"{cfg.data} (first {cfg.max_tokens} tokens)",
            "steering_latent": best["latent"], "candidates": records,
            "baseline": {k: base[k] for k in ("concept_rate", "fluency_ppl", "distinct2", "relevance")},
            "units": units, "selection": {**cfg.to_dict(), "prompts": prompts[:cfg.n_prompts]}}


def write_selection(sae_dir: str | Path, concept: str, record: dict) -> dict:
    """Merge one concept's record into the SAE's concepts.json (atomic)."""
    path = Path(sae_dir) / FILE
    table = read_json(path) if path.is_file() else {}
    table[load_concept(concept)["name"]] = record
    write_json(path, table)
    return table
