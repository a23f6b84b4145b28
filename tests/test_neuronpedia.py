"""Neuronpedia export: the bulk-import layout and fields, checked against direct computations."""

import gzip
import json

import pytest
import torch

from features import AnalysisConfig, analyze, export_features
from saes.access import FeatureIdError, feature_acts, load_sae
from tests.helpers import HOOK, random_topk_sae_dir

SOURCE = "1-res-steerlens"
FEATURE_FIELDS = {"modelId": str, "layer": str, "index": str, "pos_str": list, "pos_values": list, "neg_str": list,
                  "neg_values": list, "frac_nonzero": float, "freq_hist_data_bar_heights": list,
                  "freq_hist_data_bar_values": list, "logits_hist_data_bar_heights": list,
                  "logits_hist_data_bar_values": list, "vector": list, "hookName": str, "maxActApprox": float,
                  "hasVector": bool, "creatorId": str, "createdAt": str}
ACTIVATION_FIELDS = {"id": str, "modelId": str, "layer": str, "index": str, "tokens": list, "values": list,
                     "maxValue": float, "maxValueTokenIndex": int, "minValue": float, "binMin": float,
                     "binMax": float, "binContains": float, "creatorId": str, "dataIndex": str}


@pytest.fixture(scope="module")
def setup(tiny, topk_sae_dir):
    sae = load_sae(topk_sae_dir)
    tokens = torch.randint(200, 40_000, (6, 24), generator=torch.Generator().manual_seed(4))
    stats = analyze(tiny, sae, tokens, AnalysisConfig(n_examples=3, n_random=2, batch_size=4), progress=False)
    firing = [int(i) for i in (stats.t["n_active"] > 0).nonzero().flatten()[:3]]
    return sae, tokens, stats, firing


def _jsonl(path, gz=True):
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def _types_ok(record, spec):
    missing = sorted(set(spec) - set(record))
    wrong = {k: type(record[k]).__name__ for k, t in spec.items() if k in record and not isinstance(record[k], t)}
    return missing, wrong


def test_export_layout_fields_and_values(tiny, setup, tmp_path):
    sae, tokens, stats, firing = setup
    out = tmp_path / "np"
    src = export_features(tiny, sae, out, firing, stats=stats, model_id="tiny-llama")
    assert src == out / "tiny-llama" / SOURCE
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()) == [
        "activations/batch-0.jsonl.gz", "features/batch-0.jsonl.gz", "model.jsonl", "release.jsonl",
        "source.jsonl", "sourceset.jsonl"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp dir was renamed
    meta = {n: _jsonl(src / f"{n}.jsonl", gz=False) for n in ("model", "source", "sourceset", "release")}
    assert meta["model"][0]["id"] == "tiny-llama" and meta["model"][0]["layers"] == 4
    assert meta["source"][0]["id"] == SOURCE and meta["source"][0]["setName"] == meta["sourceset"][0]["name"]

    feats = _jsonl(src / "features" / "batch-0.jsonl.gz")
    acts = _jsonl(src / "activations" / "batch-0.jsonl.gz")
    assert [f["index"] for f in feats] == [str(i) for i in firing]
    _, direct = feature_acts(tiny, sae, tokens)
    direct = direct[:, 1:]  # position 0 (the attention sink) is excluded from every statistic
    for f in feats:
        assert _types_ok(f, FEATURE_FIELDS) == ([], {}), f["index"]
        i = int(f["index"])
        assert f["modelId"] == "tiny-llama" and f["layer"] == SOURCE and f["hookName"] == HOOK
        assert f["vector"] == sae.W_dec[i].tolist()
        assert len(f["pos_str"]) == len(f["pos_values"]) == 10 and all(isinstance(s, str) for s in f["pos_str"])
        assert f["pos_values"] == sorted(f["pos_values"], reverse=True) and f["neg_values"] == sorted(f["neg_values"])
        logits = sae.W_dec[i] @ tiny.original_model.lm_head.weight.T  # the final norm's gain is 1 at init
        assert f["pos_values"][0] == pytest.approx(logits.max().item(), rel=1e-4)
        assert f["pos_str"][0] == tiny.tokenizer.decode([int(logits.argmax())])
        fi = direct[..., i]
        assert f["maxActApprox"] == pytest.approx(fi.max().item(), rel=1e-5)
        assert f["frac_nonzero"] == pytest.approx((fi > 0).float().mean().item())
        assert len(f["freq_hist_data_bar_heights"]) == len(f["freq_hist_data_bar_values"]) > 0
        assert sum(f["freq_hist_data_bar_heights"]) == (fi > 0).sum().item()
        assert len(f["logits_hist_data_bar_heights"]) == len(f["logits_hist_data_bar_values"]) == 40
        assert sum(f["logits_hist_data_bar_heights"]) == tiny.cfg.d_vocab

        mine = [a for a in acts if a["index"] == f["index"]]
        assert 1 <= len(mine) <= 5 and all(_types_ok(a, ACTIVATION_FIELDS) == ([], {}) for a in mine)
        for a in mine:
            assert len(a["tokens"]) == len(a["values"]) and a["maxValue"] == max(a["values"])
            assert a["minValue"] == min(a["values"]) and a["values"][a["maxValueTokenIndex"]] == a["maxValue"]
        top = max(mine, key=lambda a: a["maxValue"])
        row, pos = divmod(int(fi.argmax()), fi.shape[1])
        assert top["maxValue"] == pytest.approx(fi.max().item(), rel=1e-5) and top["dataIndex"] == str(row)
        assert top["tokens"][top["maxValueTokenIndex"]] == tiny.tokenizer.decode([int(tokens[row, pos + 1])])
        assert (top["binMin"], top["binContains"]) == (-1.0, -1.0) and top["binMax"] == f["maxActApprox"]
    assert len({a["id"] for a in acts}) == len(acts)


def test_export_refuses_bad_features_existing_targets_and_foreign_stats(tiny, setup, tmp_path):
    sae, tokens, stats, firing = setup
    out = tmp_path / "np"
    with pytest.raises(FeatureIdError, match="feature id 256 is out of range"):
        export_features(tiny, sae, out, [firing[0], 256], stats=stats)
    with pytest.raises(ValueError, match="no features given"):
        export_features(tiny, sae, out, [], stats=stats)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['colour'\]"):
        export_features(tiny, sae, out, firing, stats=stats, colour="red")
    other = load_sae(random_topk_sae_dir(tmp_path / "other", seed=5))
    with pytest.raises(ValueError, match="computed for another SAE"):
        export_features(tiny, other, out, firing, stats=stats)
    assert not out.exists() and not list(tmp_path.glob(".np*"))  # nothing half-written

    first = export_features(tiny, sae, out, firing[:1], tokens=tokens, model_id="m",
                            analysis=AnalysisConfig(n_examples=2, n_random=1, batch_size=4), progress=False)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_features(tiny, sae, out, firing, stats=stats, model_id="m")
    assert len(_jsonl(first / "features" / "batch-0.jsonl.gz")) == 1
    again = export_features(tiny, sae, out, firing, stats=stats, model_id="m", overwrite=True)
    assert again == first and len(_jsonl(again / "features" / "batch-0.jsonl.gz")) == len(firing)
