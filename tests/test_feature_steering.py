"""Feature steering (issue 13) on the tiny model: the three clamp operators, multi-SAE steerings,
recipes that load from anywhere and refuse raw vectors, output scores and keyword tokens."""

import json
import math
from pathlib import Path

import pytest
import torch

from lm.chat import render
from saes.access import decoder_rows, feature_reader, load_sae
from steering import Add, Clamp, Steering, load
from steering.recipe import check_sae_only, load_recipe, recipe_path

from tests.helpers import HOOK, random_topk_sae_dir


@pytest.fixture(scope="module")
def ids(tiny):
    return render(tiny.tokenizer, [{"role": "user", "content": "How do I bake bread at home?"}], True).ids[None]


def resid(model, ids, hooks=(), at=HOOK):
    """The activation at `at` after `hooks` ran (hooks on `at` itself run first)."""
    seen = {}

    def cap(x, hook):
        seen["x"] = x.detach().clone()
        return x
    with model.hooks(fwd_hooks=list(hooks) + [(at, cap)]):
        logits = model(ids)
    return logits, seen["x"]


def test_add_mode_is_arad_amplification(tiny, ids, concept_sae_dir):
    sae = load_sae(concept_sae_dir)
    _, x = resid(tiny, ids)
    a_max = sae.encode(x).amax(-1, keepdim=True)
    want = x + 2.0 * a_max * decoder_rows(sae)[7]
    _, got = resid(tiny, ids, Clamp(concept_sae_dir, {7: 2.0}, mode="add").hooks(tiny))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_project_mode_sets_the_decoder_component(tiny, ids, concept_sae_dir):
    sae = load_sae(concept_sae_dir)
    u = decoder_rows(sae)[7] / decoder_rows(sae)[7].norm()
    _, x = resid(tiny, ids)
    _, got = resid(tiny, ids, Clamp(concept_sae_dir, {7: 0.5}, mode="project", unit=8.0).hooks(tiny))
    torch.testing.assert_close(got @ u, torch.full(x.shape[:-1], 4.0), atol=1e-4, rtol=1e-4)
    ortho = lambda h: h - (h @ u)[..., None] * u  # noqa: E731
    torch.testing.assert_close(ortho(got), ortho(x), atol=1e-4, rtol=1e-4)  # nothing else moves


def test_project_unit_from_norms_json(tiny, ids, tmp_path):
    d = random_topk_sae_dir(tmp_path / "sae")
    with pytest.raises(FileNotFoundError, match="norms.json"):
        Clamp(d, {3: 0.5}, mode="project").hooks(tiny)
    (Path(d) / "norms.json").write_text(json.dumps({"residual_norm_median": 8.0}))
    a, _ = resid(tiny, ids, Clamp(d, {3: 0.5}, mode="project").hooks(tiny))
    b, _ = resid(tiny, ids, Clamp(d, {3: 0.5}, mode="project", unit=8.0).hooks(tiny))
    assert torch.equal(a, b)


def test_feature_reader_with_max_matches_encode(tiny, ids, concept_sae_dir):
    sae = load_sae(concept_sae_dir)
    _, x = resid(tiny, ids)
    f, a_max = feature_reader(sae, torch.tensor([3, 7]), with_max=True)(x)
    full = sae.encode(x)
    torch.testing.assert_close(f, full[..., [3, 7]])
    torch.testing.assert_close(a_max, full.amax(-1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="bogus"), "mode"),
    (dict(mode="add", relative=True), "relative"),
    (dict(mode="project", unit=-1.0), "unit"),
    (dict(mode="project", unit=float("nan")), "finite"),
])
def test_bad_clamp_settings(concept_sae_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Clamp(concept_sae_dir, {7: 1.0}, **kwargs)


def test_nan_strength_refused_and_model_left_unhooked(tiny, concept_sae_dir):
    with pytest.raises(ValueError, match="finite"):
        Clamp(concept_sae_dir, {7: math.inf}, mode="add")
    with pytest.raises(IndexError):
        with Clamp(concept_sae_dir, {10_000: 1.0}, mode="add").apply(tiny):
            pass
    assert not any(h.fwd_hooks for h in tiny.hook_dict.values())


def test_multi_sae_steering_round_trip(tiny, ids, tmp_path):
    a = random_topk_sae_dir(tmp_path / "a", hook="blocks.1.hook_resid_post")
    b = random_topk_sae_dir(tmp_path / "b", hook="blocks.2.hook_resid_post", seed=1)
    steer = Steering([Clamp(a, {3: 1.0}, mode="add"), Clamp(b, {5: 0.5}, mode="project", unit=6.0)])
    hooks = steer.hooks(tiny)
    assert [h for h, _ in hooks] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    steer.save(tmp_path / "s.json")
    back = load(tmp_path / "s.json")
    la, _ = resid(tiny, ids, steer.hooks(tiny))
    lb, _ = resid(tiny, ids, back.hooks(tiny))
    clean, _ = resid(tiny, ids)
    assert torch.equal(la, lb) and not torch.allclose(la, clean)
    assert [x.mode for x in back.interventions] == ["add", "project"]


def test_recipe_with_relative_sae_paths_loads_from_any_directory(tmp_path, monkeypatch, concept_sae_dir):
    import shutil
    shutil.copytree(concept_sae_dir, tmp_path / "saes" / "x")
    (tmp_path / "recipes").mkdir()
    rec = {"type": "Steering", "interventions": [
        {"type": "Clamp", "sae": "../saes/x", "features": {"7": 1.0}, "mode": "add"}]}
    path = tmp_path / "recipes" / "r.json"
    path.write_text(json.dumps(rec))
    monkeypatch.chdir("/")
    steer = load_recipe(path)
    assert Path(steer.interventions[0].sae) == (tmp_path / "saes" / "x").resolve()
    assert recipe_path(path) == path


def test_recipe_refuses_raw_vectors_and_bad_schema(tmp_path, concept_sae_dir):
    raw = Steering([Clamp(concept_sae_dir, {7: 1.0}), Add(HOOK, torch.ones(64), 1.0)])
    with pytest.raises(ValueError, match="Add.*SAE feature edits"):
        check_sae_only(raw, "recipe")
    raw.save(tmp_path / "raw.json")
    with pytest.raises(ValueError, match="SAE feature edits"):
        load_recipe(tmp_path / "raw.json")
    (tmp_path / "bad.json").write_text(json.dumps({"type": "Clamp", "sae": concept_sae_dir, "feats": {}}))
    with pytest.raises(ValueError, match="schema"):
        load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load(tmp_path / "junk.json")
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_recipe("no_such_recipe")


def test_output_scores(tiny, concept_sae_dir):
    from features.output_score import OutputScoreConfig, output_scores

    sae = load_sae(concept_sae_dir)
    r = output_scores(tiny, sae, [3, 7, 9], OutputScoreConfig(batch_size=2), concept_tokens=[100, 200])
    assert r["latents"] == [3, 7, 9] and len(r["s_out"]) == 3 and r["a_max"] > 0
    for s, rank, p in zip(r["s_out"], r["rank"], r["prob"]):
        assert 0 <= s <= p <= 1 and s == pytest.approx((1 - rank / tiny.cfg.d_vocab) * p)
    assert all(-1 <= m <= 1 for m in r["concept_mass"])
    # a latent pushed very hard makes its own best logit-lens token the top one: rank 0, S_out = p
    strong = output_scores(tiny, sae, [7], OutputScoreConfig(s=1e4), concept_tokens=[])
    assert strong["rank"] == [0] and strong["s_out"][0] == pytest.approx(strong["prob"][0])


def test_keyword_tokens_are_word_starts(tiny):
    from features.concept_search import keyword_tokens
    from features.concept_sets import Concept

    toks = keyword_tokens(tiny.tokenizer, Concept.load("golden_gate_bridge"))
    texts = {tiny.tokenizer.decode([t]) for t in toks}
    assert {" Golden", " San", " fog"} <= texts
    assert all(len(t.strip()) >= 3 for t in texts)
    assert " bridge" not in texts  # the negatives are other bridges: it says nothing about this one
    praise = {tiny.tokenizer.decode([t]) for t in keyword_tokens(tiny.tokenizer, Concept.load("sycophantic_praise"))}
    assert " brilliant" in praise and " you" not in praise  # "you're so ..." starts matches, but every reply has it
