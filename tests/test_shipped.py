"""The artifacts committed for the embedded model: the default SAE, its concept latents, the axis."""

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAE_DIR = ROOT / "saes" / "pretrained" / "smollm2-default"
LATE_DIR = ROOT / "saes" / "pretrained" / "smollm2-late"
AXIS_DIR = ROOT / "axis" / "pretrained" / "smollm2-default"


def test_default_sae_loads_in_saelens_and_meets_the_quality_bar():
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(SAE_DIR))
    assert sae.cfg.d_in == 576 and sae.cfg.metadata.hook_name == "blocks.15.hook_resid_post"
    m = json.loads((SAE_DIR / "metrics.json").read_text())
    assert m["d_sae"] == sae.cfg.d_sae and m["n_tokens"] >= 8000
    assert 16 <= m["l0"] <= 64 and m["fvu"] <= 0.25 and m["ce_loss_recovered"] >= 0.85 and m["dead_fraction"] < 0.10
    chats = m["chats"]  # whole held-out chats from position 0: FVU on the ordinary tokens is the bar
    assert chats["n_chats"] >= 64 and chats["n_massive"] >= 1 and chats["fvu_all_tokens"] < chats["fvu_ordinary_tokens"]
    x = torch.randn(3, 576) * 10
    assert sae.decode(sae.encode(x)).shape == x.shape
    assert (SAE_DIR / "density.png").stat().st_size > 0 and (SAE_DIR / "train_config.json").is_file()


def test_concepts_json_names_a_latent_per_concept():
    table = json.loads((SAE_DIR / "concepts.json").read_text())
    d_sae = json.loads((SAE_DIR / "cfg.json").read_text())["d_sae"]
    for name in ("golden_gate_bridge", "sycophantic_praise"):
        c = table[name]
        assert 0 <= c["latent"] < d_sae and c["max_activation"] > 0 and c["auroc_heldout"] >= 0.9


def test_layer_scan_beside_the_sae():
    scan = json.loads((SAE_DIR / "layer_scan.json").read_text())
    assert len(scan["scans"]["persona"]["d_prime"]) == 30 and 0 <= scan["summary"]["best_layer"] < 30


def test_shipped_axis_loads():
    from axis.artifact import AssistantAxis

    ax = AssistantAxis.load(AXIS_DIR)
    assert tuple(ax.axis.shape) == (30, 576) and ax.role_means.shape[0] == len(ax.role_names) >= 30
    assert ax.feature is not None and ax.feature.hook_name == "blocks.15.hook_resid_post"
    assert 0 <= ax.stats["monitor_layer"] < 30
    assert ax.tau(20, 25.0) <= ax.tau(20, 75.0)
    with pytest.raises(ValueError, match="0-100"):
        ax.tau(20, 101)


def test_shipped_axis_is_the_full_bank_with_token_calibration_and_a_cap_recipe():
    """All 124 roles x 3 prompts x 16 questions plus the default prompts; per-token taus in both bases;
    cap.json loads with steering.load and its evidence records the dev choice and the test check."""
    from axis.artifact import AssistantAxis
    from axis.cap_recipe import EVIDENCE, RECIPE
    from steering import Steering, load

    ax = AssistantAxis.load(AXIS_DIR)
    s = ax.stats
    assert s["n_role_rollouts"] >= 5952 and s["n_roles"] == 124 and s["n_questions"] >= 16
    assert ax.extra["token_quantiles"].shape == (30, 101)
    assert ax.feature.token_quantiles is not None and all(fa.token_quantiles is not None for fa in ax.feature_band)
    assert ax.tau(15, 5, "token") < ax.tau(15, 5)  # per-token projections spread wider than rollout means
    hf, server = s["engine_check"]["hf"], next(v for k, v in s["engine_check"].items() if k != "hf")
    assert hf["n"] == server["n"] >= 32 and abs(hf["mean_tokens"] - server["mean_tokens"]) < 3
    conv = json.loads((AXIS_DIR / "convergence.json").read_text())
    assert (AXIS_DIR / "convergence.png").is_file() and [r["n_roles"] for r in conv["by_roles"]][-1] == 124
    cap = load(AXIS_DIR / RECIPE)
    assert isinstance(cap, Steering) and cap.interventions
    ev = json.loads((AXIS_DIR / EVIDENCE).read_text())
    assert ev["chosen"] in [r["condition"] for r in ev["dev"]] and [r["condition"] for r in ev["test"]][0] == "uncapped"


@pytest.mark.parametrize("layer", [20, 24])
def test_late_saes_load_in_saelens_with_the_bar_measured(layer):
    """The late SAEs recover the LM loss and have few dead latents; FVU on ordinary chat tokens is
    measured and recorded against the bar (the README says where it is missed)."""
    from sae_lens import SAE

    path = LATE_DIR / f"blocks.{layer}.hook_resid_post-4608"
    sae = SAE.load_from_disk(str(path))
    assert sae.cfg.d_in == 576 and sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
    m = json.loads((path / "metrics.json").read_text())
    bar = m["quality_bar"]["checks"]
    assert set(bar) == {"fvu_ordinary", "ce_loss_recovered", "dead_fraction"}
    assert bar["ce_loss_recovered"]["pass"] and bar["dead_fraction"]["pass"], bar
    assert bar["fvu_ordinary"]["value"] == m["chats"]["fvu_ordinary_tokens"] > m["chats"]["fvu_all_tokens"]
    assert m["chats"]["n_chats"] >= 64 and m["chats"]["n_massive"] >= 1 and (path / "norms.json").is_file()


@pytest.mark.parametrize("name, concept", [("golden_gate", "golden_gate_bridge"), ("sycophancy", "sycophantic_praise")])
def test_shipped_recipes_steer_through_late_sae_features(name, concept):
    from steering.recipe import leaves, load_recipe, recipe_results

    recipe = load_recipe(name)
    for leaf in leaves(recipe):
        assert Path(leaf.sae).resolve().parent == LATE_DIR.resolve() and leaf.mode in ("add", "set", "project")
        if leaf.mode == "add":  # amplified latents are ones concept selection short-listed and measured
            table = json.loads((Path(leaf.sae) / "concepts.json").read_text())[concept]
            assert set(leaf.features) <= {c["latent"] for c in table["candidates"]}
    res = recipe_results(name)
    assert res["concept"] == concept and res["command"].startswith(("steerlens", "scripts/"))
    assert res["dev"]["n_prompts"] >= 20 and res["test"]["n_prompts"] >= 30
    for split in ("dev", "test"):
        chosen = res[split]["chosen"]
        assert {"harmonic", "concept_rate", "fluency_ppl_ratio", "distinct2_ratio", "units"} <= set(chosen)
