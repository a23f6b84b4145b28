"""scripts/choose_layer.py: the per-layer concept and persona scan behind the default SAE's layer."""

import json

from scripts.choose_layer import main


def test_layer_scan_on_tiny(tmp_path, capsys):
    main(["--model", "tiny", "--questions", "1", "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scan = json.loads((tmp_path / "layer_scan.json").read_text())
    assert (tmp_path / "layer_scan.png").stat().st_size > 0
    assert set(scan["scans"]) == {"golden_gate_bridge", "sycophantic_praise", "persona"}
    for v in scan["scans"].values():
        assert len(v["auroc"]) == len(v["d_prime"]) == 4  # the tiny model's layers
        assert all(0.0 <= a <= 1.0 for a in v["auroc"])
    lo, hi = summary["search_range"]
    assert lo <= summary["best_layer"] <= hi
    assert summary["min_d_prime_at_best"] == scan["min_d_prime"][summary["best_layer"]]
