"""The main job end to end on the embedded model with every stage shrunk (the README's first command)."""

import json
import re

import pytest


@pytest.mark.slow
def test_demo_small(smollm, tmp_path):
    from scripts.demo import main

    path = main(["--out", str(tmp_path), "--chat-tokens", "4", "--harvest-rows", "2", "--context", "32",
                 "--sae-eval-tokens", "256", "--sae-eval-chats", "2", "--clamp-prompts", "1", "--clamp-tokens", "4", "--drift-convs", "1",
                 "--drift-turns", "1", "--drift-tokens", "4", "--cap-personas", "1", "--cap-jailbreaks", "2",
                 "--cap-mc", "2", "--cap-answers", "2"], model=smollm)
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["sections"]) == ["model", "chat", "harvest", "sae", "features", "clamp", "axis"]
    figures = re.findall(r'<img src="([^"]+)"', path.read_text())
    assert {"sae_density.png", "clamp_golden_gate.png", "axis_summary.png", "drift.png"} <= set(figures)
    assert all((tmp_path / f).stat().st_size > 0 for f in figures)
    sae = report["sections"]["sae"]
    assert 0 < sae["metrics"]["l0"] <= sae["metrics"]["d_sae"] and sae["metrics"]["n_tokens"] > 0
    clamp = report["sections"]["clamp"]["headline"]
    assert set(clamp) == {"golden_gate", "sycophancy"} and clamp["golden_gate"]["strength"] == 10.0
    axis = report["sections"]["axis"]
    assert axis["identity_uncapped"]["n"] == 3 and 0 <= axis["cap_activity"]["mean"] <= 1
    assert json.loads((tmp_path / "cap" / "cap_results.json").read_text())["conditions"][0]["condition"] == "uncapped"
