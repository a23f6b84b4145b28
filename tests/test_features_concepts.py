"""features/concept_sets.py, concept_search.py, latents.py: AUROC, concept files and splits, concept search with a
planted latent, concepts.json."""

import json
import random
import sys

import pytest
import torch

from features.concept_search import SearchConfig, TextActs, concept_direction, read_texts, search_concept, tokenize_text
from features.concept_sets import CONCEPTS_DIR, Concept, load_concept
from features.latents import concept_latent, concept_max_activations, load_concept_latents, write_concepts_json
from features.stats import auroc
from features.testing import random_sae

from tests.helpers import HOOK


def test_auroc_hand_computed():
    # pairs (pos > neg) of 9: 0.9 beats 3, 0.8 beats 3, 0.4 beats 0.1 and ties 0.4 -> 7.5 / 9
    pos, neg = torch.tensor([0.9, 0.8, 0.4]), torch.tensor([0.5, 0.4, 0.1])
    assert float(auroc(pos, neg)) == pytest.approx(7.5 / 9)
    cols = auroc(torch.tensor([[1.0, 0.0, 2.0], [2.0, 0.0, 2.0]]), torch.tensor([[0.0, 1.0, 2.0]]))
    assert cols.tolist() == [1.0, 0.0, 0.5]  # separated, reversed, all tied


def test_auroc_matches_rank_sum_reference():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 6, (17, 5), generator=g).float()  # many ties
    neg = torch.randint(0, 5, (11, 5), generator=g).float()
    for j in range(5):  # Mann-Whitney U from average ranks, computed independently
        allv = torch.cat([pos[:, j], neg[:, j]]).tolist()
        order = sorted(range(len(allv)), key=lambda i: allv[i])
        ranks = [0.0] * len(allv)
        i = 0
        while i < len(order):
            k = i
            while k + 1 < len(order) and allv[order[k + 1]] == allv[order[i]]:
                k += 1
            for t in range(i, k + 1):
                ranks[order[t]] = (i + k) / 2 + 1
            i = k + 1
        u = sum(ranks[:17]) - 17 * 18 / 2
        assert float(auroc(pos, neg, chunk=2)[j]) == pytest.approx(u / (17 * 11))
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        auroc(torch.zeros(0), torch.ones(3))


def test_shipped_concepts():
    names = sorted(p.stem for p in CONCEPTS_DIR.glob("*.json"))
    assert {"golden_gate_bridge", "sycophantic_praise"} <= set(names)
    for n in names:
        c = Concept.load(n)
        assert len(c.positive) >= 40 and len(c.negative) >= 40 and c.description and c.keywords
    ggb = Concept.load(CONCEPTS_DIR / "golden_gate_bridge.json")
    assert sum("golden gate" in t.lower() for t in ggb.positive) >= 70
    assert not any("golden gate" in t.lower() for t in ggb.negative)


def test_split_is_deterministic_balanced_and_order_free():
    c = Concept.load("golden_gate_bridge")
    s = c.split()
    (sp, sn), (hp, hn) = s["selection"], s["heldout"]
    assert sorted(sp + hp) == sorted(c.positive) and sorted(sn + hn) == sorted(c.negative)
    assert not set(sp) & set(hp) and abs(len(sp) - len(hp)) <= 1 and abs(len(sn) - len(hn)) <= 1
    shuffled = Concept(c.name, random.Random(1).sample(c.positive, len(c.positive)), c.negative[::-1])
    assert shuffled.split() == s


@pytest.mark.parametrize("bad, match", [
    ({"name": "x", "positive": [], "negative": ["a", "b"]}, "0 positive"),
    ({"name": "x", "positive": ["a", "b"]}, "missing key.*negative"),
    ({"name": "x", "positive": ["a", "b"], "negative": ["c"]}, "1 negative"),
    ({"name": "x", "positive": ["a", "b"], "negative": ["a", "c"]}, "both positive and negative"),
    ({"name": "x", "postive": ["a", "b"], "positive": ["a", "b"], "negative": ["c", "d"]}, "unknown key.*postive"),
    ({"name": "x", "positive": ["a", "b"], "negative": ["c", "d"], "keywords": ["(unclosed"]}, "not a valid regex"),
    ({"name": "x y", "positive": ["a", "b"], "negative": ["c", "d"]}, "name"),
    ({"name": "x", "positive": ["a", ""], "negative": ["c", "d"]}, "non-empty strings"),
])
def test_bad_concepts(bad, match, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=match):
        Concept.load(path)


def test_unknown_concept_lists_shipped_ones():
    with pytest.raises(FileNotFoundError, match="golden_gate_bridge"):
        Concept.load("no_such_concept")


def test_load_concept_is_the_one_reader(tmp_path):
    c = load_concept("golden_gate_bridge")
    assert c["name"] == "golden_gate_bridge" and c["keywords"] and len(c["positive"]) >= 40
    assert load_concept(CONCEPTS_DIR / "golden_gate_bridge.json") == c
    with pytest.raises(FileNotFoundError, match="known concepts.*golden_gate_bridge"):
        load_concept("no_such_concept")
    (tmp_path / "c.json").write_text(json.dumps({"name": "x", "keywords": []}))
    with pytest.raises(ValueError, match="lacks 'description'"):
        load_concept(tmp_path / "c.json")


def test_concept_latents_are_read_back(tmp_path):
    with pytest.raises(FileNotFoundError, match="concepts.json"):
        load_concept_latents(tmp_path)
    (tmp_path / "concepts.json").write_text(json.dumps({"ggb": {"latent": 7, "max_activation": 2.5}}))
    assert load_concept_latents(tmp_path)["ggb"]["latent"] == 7
    assert concept_latent(tmp_path, "ggb") == (7, 2.5) and concept_latent(tmp_path, "ggb", max_activation=4) == (7, 4.0)
    assert concept_latent(tmp_path, "other", latent=7) == (7, 2.5) and concept_latent(tmp_path, "x", 3, 1) == (3, 1.0)
    assert concept_max_activations(tmp_path, [7]) == {7: 2.5}
    with pytest.raises(KeyError, match="max activation"):
        concept_max_activations(tmp_path, [7, 8])
    with pytest.raises(KeyError, match="no concept 'other'"):
        concept_latent(tmp_path, "other")


def test_tokenize_marks_reply_and_keyword_tokens(tiny):
    tok = tiny.tokenizer
    text = "I walked over the Golden Gate Bridge today."
    for wrap in ("chat", "plain"):
        ids, measured, kw = tokenize_text(tok, text, SearchConfig(wrap=wrap), ["golden gate"])
        assert tok.decode([i for i, m in zip(ids, measured) if m]) == text
        assert not measured[0]
        assert [tok.decode([i]) for i, k in zip(ids, kw) if k] == [" Golden", " Gate"]


def test_concept_direction_by_hand():
    pos = [TextActs("a", [1, 2], torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([False, True])),
           TextActs("b", [3], torch.tensor([[0.0, 2.0]]), torch.tensor([False]))]  # no keyword: all tokens
    neg = [TextActs("c", [4, 5], torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), torch.tensor([False, False]))]
    assert concept_direction(pos, neg, "keywords").tolist() == [1.5, 1.0]
    torch.testing.assert_close(concept_direction(pos, neg, "all"), torch.tensor([4 / 3, 2 / 3]))


@pytest.fixture(scope="module")
def small_concept():
    c = Concept.load("golden_gate_bridge")
    return Concept("ggb_small", c.positive[:12], c.negative[:12], c.description, c.keywords)


@pytest.fixture(scope="module")
def planted(tiny, small_concept, tmp_path_factory):
    """A ReLU SAE whose latent 7 reads (and writes) the concept's difference-of-means direction."""
    path = tmp_path_factory.mktemp("planted")
    sae = random_sae(64, 24, HOOK, k=None, seed=3)
    texts = read_texts(tiny, HOOK, small_concept.positive + small_concept.negative, SearchConfig(), small_concept.keywords)
    u = concept_direction(texts[:12], texts[12:], "keywords")
    u = u / u.norm()
    with torch.no_grad():
        sae.W_enc[:, 8:] = 0.0  # latents 8.. never fire: AUROC 0.5
        sae.b_enc[8:] = 0.0
        sae.b_dec.zero_()
        sae.W_enc[:, 7] = u
        sae.b_enc[7] = 50.0  # always on, monotone in the projection on u
        sae.W_dec[7] = u
    sae.save_model(str(path))
    return path


@pytest.fixture(scope="module")
def result(tiny, small_concept, planted):
    from saes.access import load_sae

    return search_concept(tiny, load_sae(planted), small_concept, SearchConfig(top=5))


def test_search_finds_planted_latent(result):
    r = result
    best = r.best
    assert best.latent == 7, [(c.latent, c.auroc_selection) for c in r.candidates]
    assert best.auroc_heldout >= 0.9 and best.auroc_selection >= 0.9
    assert best.raw_cosine == pytest.approx(1.0, abs=1e-4)  # decoder row is the raw direction
    assert r.raw.best_latent == 7 and r.raw.auroc_heldout >= 0.8
    assert r.n_selection == r.n_heldout == 12
    dead = [c for c in r.candidates if c.latent >= 8]
    assert all(c.auroc_selection == 0.5 for c in dead)
    buckets = [int(c.auroc_selection / 0.01) for c in r.candidates]
    assert buckets == sorted(buckets, reverse=True)
    ex = best.examples
    assert [e["tag"] for e in ex] == ["+", "+", "−", "−"]
    assert ex[0]["value"] == pytest.approx(max(ex[0]["acts"])) and ex[0]["value"] >= ex[-1]["value"]
    assert best.label and best.label != "dead"
    d = r.to_dict()
    assert json.loads(json.dumps(d))["candidates"][0]["latent"] == 7 and "direction" not in d["raw"]


def test_write_concepts_json(tiny, planted, result):
    from saes.access import load_sae

    sae, r = load_sae(planted), result
    tokens = torch.randint(100, 5000, (3, 10), generator=torch.Generator().manual_seed(0))
    (planted / "concepts.json").write_text(json.dumps({"other": {"latent": 1, "max_activation": 2.0, "auroc_heldout": 0.9}}))
    table = write_concepts_json(planted, [r], tiny, sae, tokens, progress=False)
    on_disk = json.loads((planted / "concepts.json").read_text())
    assert on_disk == table and on_disk["other"]["latent"] == 1  # merged, not overwritten
    entry = on_disk["ggb_small"]
    assert entry["latent"] == 7 and entry["auroc_heldout"] == pytest.approx(r.best.auroc_heldout)
    from saes.access import feature_acts

    _, f = feature_acts(tiny, sae, tokens)
    assert entry["max_activation"] == pytest.approx(float(f[:, 1:, 7].max()))  # sink position excluded


def test_search_rejects_mismatched_sae(tiny, small_concept):
    with pytest.raises(ValueError, match="vectors of size 32"):
        search_concept(tiny, random_sae(32, 8, HOOK), small_concept)


def test_find_features_script(tiny, small_concept, planted, tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(CONCEPTS_DIR.parent.parent / "scripts"))
    import find_features

    cfile = tmp_path / "ggb_small.json"
    cfile.write_text(json.dumps({"name": small_concept.name, "positive": small_concept.positive,
                                 "negative": small_concept.negative, "keywords": small_concept.keywords}))
    data = tmp_path / "data.txt"
    data.write_text("\n\n".join(small_concept.negative))
    dash = tmp_path / "dash"
    monkeypatch.setattr(sys, "argv", ["find_features.py", "--model", "tiny", "--sae", str(planted), "--concept", str(cfile),
                                      "--top", "3", "--dashboards", str(dash), "--data", str(data),
                                      "--context-size", "32", "--write-concepts", "--json"])
    find_features.main()
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ggb_small"]["latent"] == 7
    assert "held-out examples for latent 7" in out and "Golden" in out
    assert (dash / "features" / "7.html").is_file() and (dash / "concepts" / "ggb_small.html").is_file()
    assert "features/7.html" in (dash / "concepts" / "ggb_small.html").read_text()
    assert json.loads((planted / "concepts.json").read_text())["ggb_small"]["latent"] == 7


@pytest.mark.slow
def test_real_model_golden_gate_direction(smollm):
    """On SmolLM2 the raw difference-of-means direction at layer 15 separates held-out Golden Gate texts."""
    c = Concept.load("golden_gate_bridge")
    small = Concept("ggb24", c.positive[:24], c.negative[:24], c.description, c.keywords)
    sae = random_sae(576, 32, "blocks.15.hook_resid_post", k=4)
    r = search_concept(smollm, sae, small, SearchConfig(top=3))
    assert r.raw.auroc_heldout >= 0.9, r.raw
    assert r.raw.direction.shape == (576,) and len(r.candidates) == 3
    with pytest.raises(ValueError, match="vectors of size 64"):
        search_concept(smollm, random_sae(64, 8, HOOK), small)


def test_rank_latents_ties_within_bucket_go_to_mean_difference():
    from features.concept_search import rank_latents

    auc = torch.tensor([0.985, 0.984, 0.95, 0.50])
    diff = torch.tensor([1.0, 2.2, 5.0, 9.0])
    assert rank_latents(auc, diff, 0.01).tolist() == [1, 0, 2, 3]  # 0.985 and 0.984 tie; 1 is stronger
    assert rank_latents(auc, diff, 0.0).tolist() == [0, 1, 2, 3]  # exact AUROC order
