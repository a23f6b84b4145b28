"""A tiny offline W&B comparison read back from its run files, and the experiment scripts' smoke runs."""

import json
import math
from pathlib import Path

import pytest

from features import load_concept
from lm.generate import GenerationConfig
from lm.io import read_json
from lm.tracking import read_offline_run
from scripts.clamp import main as clamp_main
from scripts.compare import main as compare_main
from steering import load_sae
from steering.compare import run_comparison
from steering.directions import feature_edit_norm
from steering.experiment import METRICS, Condition, ConceptEvalConfig, collapse_strength, sweep_conditions

QUESTIONS = ["What is your physical form?", "How do I bake bread?"]



def small_concept():
    c = load_concept("golden_gate_bridge")
    return {**c, "positive": c["positive"][:4], "negative": c["negative"][:4]}


def test_offline_comparison_logs_what_it_reports(tiny, topk_sae_dir, tmp_path):
    conds = sweep_conditions(tiny, topk_sae_dir, 7, 2.0, [10.0], small_concept(), families=("sae_clamp", "raw_add"))
    assert [c.name for c in conds] == ["baseline", "sae_clamp_10x", "raw_add_10x"]
    want = feature_edit_norm(load_sae(topk_sae_dir), 7, 20.0)
    assert conds[2].steering.vector.norm() == pytest.approx(want, rel=1e-5)
    cfg = ConceptEvalConfig("golden_gate_bridge", QUESTIONS, GenerationConfig(max_new_tokens=4, temperature=0),
                     neutral_texts=2, neutral_max_tokens=24)
    rec = run_comparison(tiny, conds, cfg, tmp_path, group="tiny-group", mode="offline", progress=False)
    local = read_json(tmp_path / "results.json")
    assert len(rec["wandb_runs"]) == 3 == len(local["results"]) == len(list((tmp_path / "conditions").glob("*.json")))
    assert (tmp_path / "dose_response.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "summary.md").read_text()
    assert "| sae_clamp_10x | sae_clamp | 10 |" in summary and "What is your physical form?" in summary
    clamp = next(r for r in local["results"] if r["condition"]["name"] == "sae_clamp_10x")
    base = next(r for r in local["results"] if r["condition"]["name"] == "baseline")
    assert clamp["metrics"]["kl_neutral"] > 0 == base["metrics"]["kl_neutral"]
    for run_dir, r in zip(rec["wandb_runs"], local["results"]):
        assert Path(run_dir).name.startswith("offline-run-") and Path(run_dir).parent == tmp_path / "wandb"
        logged = read_offline_run(run_dir)
        assert logged["name"] == r["condition"]["name"] and logged["group"] == "tiny-group"
        assert logged["config"]["condition"] == r["condition"]
        assert logged["config"]["eval"]["prompts"] == QUESTIONS
        for k in METRICS:
            assert logged["summary"][k] == pytest.approx(r["metrics"][k])
            assert logged["history"][0][k] == pytest.approx(r["metrics"][k])
        table = json.loads(next(Path(run_dir, "files", "media", "table").glob("*.table.json")).read_text())
        assert [row[:2] for row in table["data"]] == [[g["prompt"], g["answer"]] for g in r["generations"]]
        assert list(Path(run_dir, "files", "media", "images").glob("dose_response*.png"))
    # a condition record rebuilds the same intervention
    again = Condition.from_dict(json.loads(json.dumps(conds[1].to_dict())))
    assert again.steering.to_dict() == conds[1].steering.to_dict() and again.strength == 10.0


def test_collapse_strength():
    def r(fam, s, ppl):
        return {"condition": {"family": fam, "strength": s}, "metrics": {"ppl": ppl}}
    results = [r("baseline", 0, 10.0), r("sae_clamp", 1, 12.0), r("sae_clamp", 5, 25.0), r("sae_clamp", 2, 19.0),
               r("raw_add", 1, 11.0), r("raw_add", 2, float("nan"))]
    assert collapse_strength(results, "sae_clamp") == 5
    assert collapse_strength(results, "raw_add") == 2  # NaN: every answer empty
    assert collapse_strength(results, "random_add") is None


def test_clamp_script_smoke(tiny, topk_sae_dir, tmp_path, capsys):
    with pytest.raises(SystemExit, match="No trained SAE"):
        clamp_main(["--sae", str(tmp_path / "missing")], model=tiny)
    with pytest.raises(FileNotFoundError, match="concepts.json"):
        clamp_main(["--sae", topk_sae_dir, "--out", str(tmp_path / "x")], model=tiny)
    out = tmp_path / "clamp"
    head = clamp_main(["--sae", topk_sae_dir, "--experiments", "sycophancy", "--syc-latent", "7", "--syc-max-act",
                       "2", "--n-prompts", "2", "--max-new-tokens", "3", "--strengths", "0,20", "--families",
                       "paper_clamp,prompting", "--neutral-texts", "1", "--neutral-max-tokens", "16", "--out", str(out)],
                      model=tiny)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(head))
    res = read_json(out / "sycophancy" / "results.json")
    names = [r["condition"]["name"] for r in res["results"]]
    assert names == ["baseline", "paper_clamp_0x", "paper_clamp_5x", "paper_clamp_20x", "system_prompt"]
    at5 = res["results"][2]
    h = head["sycophancy"]
    assert h["strength"] == 5.0 and h["paper_clamp_5x"]["concept_rate"] == at5["metrics"]["concept_rate"]
    assert h["paper_clamp_5x"]["harmonic"] == at5["scores"]["harmonic"] or math.isnan(at5["scores"]["harmonic"])
    (unit,) = at5["condition"]["units"].values()  # strength in both units (no norms.json here: median unknown)
    assert unit["x_max_activation"] == pytest.approx(5.0) and unit["x_median_norm"] is None
    assert len(res["results"][0]["generations"]) == 2  # two held-out claims (sycophancy has no lead prompt)
    assert "paper_clamp_5x" in (out / "sycophancy" / "summary.md").read_text()


def test_compare_script_from_conditions_file(tiny, topk_sae_dir, tmp_path, capsys):
    conds = [Condition("baseline").to_dict(),
             Condition("clamp3", __import__("steering").Clamp(topk_sae_dir, {7: 3.0}), "sae_clamp", 3.0).to_dict()]
    (tmp_path / "conds.json").write_text(json.dumps(conds))
    compare_main(["--conditions", str(tmp_path / "conds.json"), "--n-prompts", "1", "--max-new-tokens", "3",
                  "--neutral-texts", "1", "--neutral-max-tokens", "16", "--mode", "disabled",
                  "--out", str(tmp_path / "cmp")], model=tiny)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last["conditions"]) == {"baseline", "clamp3"}
    assert not (tmp_path / "cmp" / "wandb").exists()  # disabled: local files only
    assert read_json(tmp_path / "cmp" / "results.json")["results"][1]["condition"]["steering"]["features"] == {"7": 3.0}
