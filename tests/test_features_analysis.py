"""features/: one-pass per-latent statistics, logit lens, labels, SAE/model checks (tiny model, random SAE)."""

import numpy as np
import pytest
import torch

from features.analysis import AnalysisConfig, analyze, feature_labels
from features.labels import make_label
from features.logit_lens import logit_lens
from features.testing import random_sae
from lm.harvest import forward_batch
from saes.access import check_features, check_sae, feature_acts, load_sae

from tests.helpers import HOOK
CFG = AnalysisConfig(n_examples=4, n_random=3, left=5, right=2, batch_size=5)


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
    return random_sae(64, 48, HOOK, k=6, path=tmp_path_factory.mktemp("sae"))


@pytest.fixture(scope="module")
def tokens(tiny):
    g = torch.Generator().manual_seed(0)
    return torch.randint(100, 20000, (13, 24), generator=g)  # distinct rows: no duplicate windows


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stats")


@pytest.fixture(scope="module")
def stats(tiny, sae, tokens, stats_dir):
    return analyze(tiny, sae, tokens, CFG, cache_dir=stats_dir, progress=False)


def brute(tiny, sae, tokens):
    _, f = feature_acts(tiny, sae, tokens)
    f = f.float().clone()
    f[:, 0] = 0  # the attention sink is excluded
    return f


def test_stats_match_brute_force(tiny, sae, tokens, stats):
    f = brute(tiny, sae, tokens)
    d = sae.cfg.d_sae
    assert stats.n_tokens == tokens.numel() - tokens.shape[0]
    torch.testing.assert_close(stats.t["max_act"], f.amax((0, 1)))
    assert torch.equal(stats.t["n_active"], (f > 0).sum((0, 1)))
    torch.testing.assert_close(stats.density, (f > 0).sum((0, 1)).double() / stats.n_tokens)
    torch.testing.assert_close(stats.mean_act.float(), f.sum((0, 1)) / (f > 0).sum((0, 1)).clamp(min=1), rtol=1e-4, atol=1e-6)
    rowmax, argpos = f.max(1)  # [rows, d]
    for i in range(d):
        want = rowmax[:, i][rowmax[:, i] > 0].sort(descending=True).values[: CFG.n_examples]
        got = [e["value"] for e in stats.examples(i)]
        torch.testing.assert_close(torch.tensor(got), want)
        for e in stats.examples(i):
            r, p = e["row"], e["pos"]
            assert e["acts"][e["center"]] == pytest.approx(float(f[r, p, i]))
            assert e["tokens"][e["center"]] == int(tokens[r, p])
            lo = max(p - CFG.left, 0)
            assert e["tokens"] == tokens[r, lo:p + CFG.right + 1].tolist()
            torch.testing.assert_close(torch.tensor(e["acts"]), f[r, lo:p + CFG.right + 1, i])
        for e in stats.examples(i, "random"):  # uniform sample of activating rows: real rows, right values
            assert e["value"] == pytest.approx(float(rowmax[e["row"], i])) and e["value"] > 0
        rows = [e["row"] for e in stats.examples(i, "random")]
        assert len(rows) == len(set(rows)) == min(CFG.n_random, int((rowmax[:, i] > 0).sum()))


def test_histogram_matches_numpy(tiny, sae, tokens, stats):
    f = brute(tiny, sae, tokens)
    edges = CFG.hist_edges().numpy()
    assert torch.equal(stats.t["hist"].sum(1), stats.t["n_active"])
    for i in range(0, sae.cfg.d_sae, 7):
        v = f[..., i][f[..., i] > 0].double().numpy()
        inside = v[(v >= edges[0]) & (v < edges[-1])]
        counts, _ = np.histogram(inside, bins=edges)
        assert stats.t["hist"][i, 1:-1].tolist() == counts.tolist()
        assert int(stats.t["hist"][i, 0]) == int((v < edges[0]).sum())


def test_batch_size_does_not_change_results(tiny, sae, tokens, stats):
    other = analyze(tiny, sae, tokens, AnalysisConfig(**{**CFG.__dict__, "batch_size": 13}), progress=False)
    for k in ("max_act", "n_active", "hist", "top_vals", "top_rows", "top_toks", "token_counts"):
        assert torch.allclose(other.t[k].double(), stats.t[k].double()), k


def test_duplicate_windows_are_dropped(tiny, sae, tokens):
    twice = torch.cat([tokens[:4], tokens[:4]])  # the same four rows twice
    st = analyze(tiny, sae, twice, CFG, progress=False)
    for i in range(sae.cfg.d_sae):
        windows = [tuple(e["tokens"]) for e in st.examples(i)]
        assert len(windows) == len(set(windows))


def test_cache_is_reused_and_guarded(tiny, sae, tokens, stats, stats_dir, monkeypatch):
    import features.analysis as fa

    def boom(*a, **k):
        raise AssertionError("a cached analysis must not run the model")

    monkeypatch.setattr(fa, "feature_acts", boom)
    again = analyze(tiny, sae, tokens, CFG, cache_dir=stats_dir, progress=False)
    assert torch.equal(again.t["top_toks"], stats.t["top_toks"]) and again.labels == stats.labels
    assert (stats_dir / "feature_density.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="another model, SAE, dataset or config"):
        analyze(tiny, sae, tokens[:5], CFG, cache_dir=stats_dir, progress=False)


def test_logit_lens_folds_final_norm_gain(tiny, sae):
    hf = tiny.original_model
    gain = hf.model.norm.weight
    old = gain.detach().clone()
    try:
        with torch.no_grad():
            gain.copy_(torch.linspace(0.1, 3.0, gain.numel()))
        got = logit_lens(tiny, sae.W_dec, k=5, chunk=7)
        want = (sae.W_dec.detach() * gain.detach()) @ hf.lm_head.weight.detach().T
        top = want.topk(5, dim=-1)
        assert torch.equal(got["pos_ids"], top.indices)
        torch.testing.assert_close(got["pos_vals"], top.values)
        assert torch.equal(got["neg_ids"], want.topk(5, dim=-1, largest=False).indices)
        plain = (sae.W_dec.detach() @ hf.lm_head.weight.detach().T).topk(5, dim=-1).indices
        assert not torch.equal(got["pos_ids"], plain)  # the gain matters
    finally:
        with torch.no_grad():
            gain.copy_(old)


def test_labels(tiny, stats):
    tok = tiny.tokenizer
    bridge, the, out = (tok(s, add_special_tokens=False)["input_ids"][0] for s in (" Bridge", " the", " bridges"))
    counts = torch.zeros(tiny.cfg.d_vocab, dtype=torch.long)
    counts[the], counts[bridge] = 5000, 3
    # " the" has more raw activation mass, but it is everywhere; " Bridge" is rare
    label = make_label([the, the, bridge], [1.0, 1.0, 1.5], [out], tok, counts, 10000)
    assert label.startswith("Bridge") and label.endswith("→ bridges"), label
    assert make_label([the, the, bridge], [1.0, 1.0, 1.5], [out], tok).startswith("the")  # no counts: raw mass
    assert make_label([], [], [out], tok) == "dead"
    assert len(stats.labels) == stats.d_sae
    alive = int(stats.t["n_active"].argmax())
    assert "→" in stats.labels[alive]
    assert not hasattr(tok, "_steerlens_decode")  # decoded tokens are cached beside the tokenizer, not on it


def test_feature_labels_read_a_saved_analysis(stats, stats_dir, tmp_path):
    assert feature_labels(None, [1, 2]) == {} and feature_labels(tmp_path, [1]) == {}
    assert feature_labels(None, [0, 5, 99], stats_dir) == {0: stats.labels[0], 5: stats.labels[5]}
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "analysis.json").write_text('{"labels": ["a", "b", "bridge"]}')
    assert feature_labels(tmp_path, [2, 0, 9]) == {2: "bridge", 0: "a"}


def test_bad_inputs(tiny, sae, stats, tmp_path):
    with pytest.raises(IndexError, match="out of range.*d_sae=48"):
        stats.examples(48)
    with pytest.raises(IndexError, match="-1 is out of range"):
        check_features(48, [3, -1])
    with pytest.raises(ValueError, match="vectors of size 32"):
        check_sae(tiny, random_sae(32, 16, HOOK))
    with pytest.raises(ValueError, match="does not have"):
        check_sae(tiny, random_sae(64, 16, "blocks.9.hook_resid_post"))
    with pytest.raises(FileNotFoundError, match="not an SAE directory"):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match=r"\[rows, seq\]"):
        analyze(tiny, sae, torch.zeros(5, dtype=torch.long), progress=False)
    assert forward_batch(tiny, torch.tensor([[1, 2]]), [HOOK])[HOOK].shape[-1] == 64
