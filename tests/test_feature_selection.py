"""Output-aware latent selection and recipe tuning on the tiny model (small grids: the mechanics,
not the figures; those come from the real model in the shipped files)."""

import json
import shutil
from pathlib import Path

import pytest

from lm.generate import GenerationConfig
from steering.recipe import load_recipe, recipe_results


@pytest.fixture(scope="module")
def selected(tiny, tmp_path_factory):
    from steering.feature_selection import SelectionConfig, select_latents, write_selection
    from features.output_score import OutputScoreConfig
    from features.concept_search import SearchConfig
    from tests.helpers import random_topk_sae_dir

    d = random_topk_sae_dir(tmp_path_factory.mktemp("sel") / "sae")
    cfg = SelectionConfig(n_input=1, n_output=2, strengths=[1.0, 4.0], n_prompts=2, max_tokens=2048,
                          generation=GenerationConfig(max_new_tokens=4, temperature=0.0),
                          output=OutputScoreConfig(batch_size=128), search=SearchConfig(batch_size=32))
    rec = select_latents(tiny, d, "golden_gate_bridge", ["How do I bake bread?", "Explain photosynthesis."], cfg,
                         progress=False)
    write_selection(d, "golden_gate_bridge", rec)
    return d, rec


def test_selection_records_all_three_rankings(selected):
    d, rec = selected
    table = json.loads((Path(d) / "concepts.json").read_text())["golden_gate_bridge"]
    assert table["latent"] == rec["latent"] and table["steering_latent"] in [c["latent"] for c in rec["candidates"]]
    assert 2 <= len(rec["candidates"]) <= 3
    for c in rec["candidates"]:
        assert {"input", "output", "steering", "max_activation"} <= set(c) and c["shortlisted_by"]
        assert 0 <= c["output"]["s_out"] <= 1 and c["steering"]["strength"] in (1.0, 4.0)
        assert set(c["steering"]["per_strength"]) == {"1", "4"}
    best_input = next(c for c in rec["candidates"] if c["latent"] == rec["latent"])
    assert "input" in best_input["shortlisted_by"] and best_input["input"]["auroc_heldout"] is not None
    norms = json.loads((Path(d) / "norms.json").read_text())
    assert norms["residual_norm_median"] > 0 and norms["a_max_median"] > 0 and norms["n_tokens"] > 0


def test_tune_recipe_writes_recipe_and_results(selected, tiny, tmp_path):
    from steering.recipe import save_recipe
    from steering.intervention import load
    from steering.tuning import TuneConfig, tune_recipe

    d, rec = selected
    sae2 = tmp_path / "sae2"
    shutil.copytree(d, sae2)
    cfg = TuneConfig("golden_gate_bridge", [d, str(sae2)], add_strengths=[1.0], project_strengths=[0.5],
                     multi_strengths=[0.5], direction_strengths=[0.3], direction_multi=[0.2],
                     generation=GenerationConfig(max_new_tokens=4, temperature=0.0))
    out = tmp_path / "work"
    record = tune_recipe(tiny, cfg, ["How do I bake bread?", "Explain photosynthesis."], ["What are you?", "Describe your body."],
                         out, progress=False)
    names = [r["name"] for r in record["dev"]["all"]]
    assert names[0] == "baseline" and sum(n.startswith("multi_") for n in names) == 1 and len(names) == 9
    assert sum(n.startswith("dirfeat_") for n in names) == 3
    assert record["chosen"] in names[1:] and record["test"]["n_prompts"] == 2
    for r in record["dev"]["all"][1:]:
        assert r["units"] and all(set(u) >= {"x_max_activation", "x_median_norm"} for u in r["units"].values())
    path = save_recipe(load(out / "recipe.json"), tmp_path / "recipes" / "gg.json", record)
    text = path.read_text()
    assert '"sae": "../' in text  # relative to the recipe
    steer = load_recipe(path)
    assert steer.hooks(tiny) and recipe_results(path)["chosen"] == record["chosen"]


def test_amplification_compares_recipe_literal_raw_and_prompting(selected, tiny, tmp_path):
    from steering import Clamp, Steering
    from steering.amplification import AmplificationConfig, run_amplification
    from steering.recipe import save_recipe

    d, rec = selected
    path = save_recipe(Steering([Clamp(d, {rec["steering_latent"]: 1.0}, mode="add")]), tmp_path / "r" / "gg.json")
    cfg = AmplificationConfig(recipe=str(path), sae=d, n_prompts=1, neutral_texts=1, neutral_max_tokens=8,
                              generation=GenerationConfig(max_new_tokens=4, temperature=0.0))
    head = run_amplification(tiny, "golden_gate", tmp_path / "out", cfg, progress=False)
    assert {"recipe", "paper_clamp_10x", "raw_add", "system_prompt"} <= set(head)
    assert head["n_prompts"] == 2  # "What is your physical form?" + one held-out question
    assert set(head["recipe"]["targets"]["met"]) == {"concept_rate", "fluency_ppl_ratio", "distinct2_ratio", "looping_rate"}
    assert head["paper_clamp_10x"]["units"] and head["recipe"]["units"]
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    prompting = next(r for r in results if r["condition"]["name"] == "system_prompt")
    assert prompting["condition"]["system"].startswith("You are obsessed")
    raw = next(r for r in results if r["condition"]["name"] == "raw_add")["condition"]["steering"]
    assert [x["type"] for x in raw["interventions"]] == ["Add"]
    with pytest.raises(ValueError, match="split"):
        run_amplification(tiny, "golden_gate", tmp_path / "o2", AmplificationConfig(recipe=str(path), sae=d, split="train"))
