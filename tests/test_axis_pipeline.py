"""The axis pipeline on the tiny model: rollouts, response-only means, SAE basis, drift, capping."""

import json

import pytest
import torch

from lm.harvest import forward_batch
from steering import Cap

from axis import AssistantAxis, AxisConfig, CapConfig, DriftConfig, build_axis, cap_activity, capping, project, run_drift
from axis.capping import CapMonitor
from axis.drift import turn_masks
from axis.rollouts import response_tokens
from axis.sae_basis import raw_layer
from saes.access import encode

SAE_HOOK = "blocks.2.hook_resid_post"  # where conftest's relu_sae_dir reads


@pytest.fixture(scope="module")
def built(tiny, relu_sae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("axis")
    cfg = AxisConfig(model="tiny", roles=["sea_captain", "pirate", "house_cat"], prompts_per_role=2, n_questions=2,
                     max_new_tokens=6, sae=relu_sae_dir, chunk_size=8, gen_batch_size=8)
    return out, cfg, build_axis(tiny, cfg, out, progress=False)


def test_build_writes_artifact_transcripts_and_stats(tiny, built):
    out, _, ax = built
    assert ax.axis.shape == (4, 64) and ax.role_means.shape == (3, 4, 64) and ax.role_names == ["sea_captain", "pirate", "house_cat"]
    s = ax.stats
    assert s["n_rollouts"] == 5 * 2 + 3 * 2 * 2 and s["n_default"] == 10
    assert s["filter"]["kept_role_rollouts"] + sum(c["total"] - c["kept"] for c in s["filter"]["by_category"].values()) == 12
    assert len(s["pca"]["cos_axis_pc1"]) == 4 and 1 <= s["monitor_layer"] <= 2
    rows = json.loads((out / "transcripts.json").read_text())
    assert len(rows) == 22 and {"text", "role", "system", "question", "adheres", "valid"} <= set(rows[0])
    assert rows[0]["system"] is None and rows[3]["system"] == "You are an AI assistant."
    for f in ("axis.safetensors", "axis.json", "config.json", "sae_axis.safetensors", "axis_summary.png"):
        assert (out / f).is_file(), f
    got = AssistantAxis.load(out, model=tiny)
    assert torch.equal(got.axis, ax.axis) and got.feature.hook_name == SAE_HOOK
    assert json.loads((out / "config.json").read_text())["generation"]["temperature"] == 0.7


def test_rerun_resumes_from_the_cache(tiny, built):
    out, cfg, ax = built
    chunks = sorted(p.name for p in (out / "rollouts").glob("chunk_*"))
    assert len(chunks) == 3  # 22 rollouts in chunks of 8
    again = build_axis(tiny, cfg, out, progress=False)
    assert sorted(p.name for p in (out / "rollouts").glob("chunk_*")) == chunks
    assert torch.equal(again.axis, ax.axis)
    bad = AxisConfig(**{**cfg.to_dict(), "temperature": 0.3})
    with pytest.raises(ValueError, match="other settings"):
        build_axis(tiny, bad, out, progress=False)


def test_activations_average_response_tokens_only(tiny, built):
    out, _, ax = built
    from axis.rollouts import harvest_rollouts, make_specs
    from axis import data

    rows = json.loads((out / "transcripts.json").read_text())
    roles = data.select_roles(data.load_roles(), names=["sea_captain"])
    spec = make_specs(roles, [None], ["Who are you?"])[-1]
    text = "I am the captain of this ship."
    acts = harvest_rollouts(tiny, [spec], {spec.id: text}, out / "activations_check", progress=False)
    ids, mask = response_tokens(tiny.tokenizer, spec, text)
    assert 0 < mask.sum() < len(ids) and not mask[0]
    full = forward_batch(tiny, ids[None], [f"blocks.{l}.hook_resid_post" for l in range(4)])
    for l in range(4):
        torch.testing.assert_close(acts[0, l], full[f"blocks.{l}.hook_resid_post"][0, mask].mean(0), atol=1e-5, rtol=1e-4)
    assert len(rows) == 22
    empty = harvest_rollouts(tiny, [spec], {spec.id: ""}, out / "activations_empty", progress=False)
    assert empty.isnan().all()  # no response tokens: a NaN row the axis drops


def test_sae_basis_projection_and_stats(tiny, built, relu_sae_dir):
    _, _, ax = built
    fa = ax.feature
    assert fa.feature_axis.shape == (128,) and raw_layer(fa.hook_name) == 2 and fa.layer == 2
    st = fa.stats
    assert len(st["top_features"]) == 20 and st["recon_k"][-1] == 128
    sae = fa.get_sae()
    # all features together decode the difference of mean reconstructions: close to the raw axis when
    # the SAE reconstructs well; a random SAE does not, but the full decode is still the best of the k
    x = torch.randn(5, 64)
    torch.testing.assert_close(project(x, ax, "sae"), encode(sae, x) @ (fa.feature_axis / fa.feature_axis.norm()))
    torch.testing.assert_close(project(x, ax, "raw", layer=1), x @ ax.unit(1))
    assert project(torch.randn(2, 4, 64), ax).shape == (2, 4)
    with pytest.raises(ValueError, match="basis"):
        project(x, ax, "pca")
    with pytest.raises(ValueError, match="layer 2"):
        project(x, ax, "sae", layer=3)
    with pytest.raises(ValueError, match="width"):
        project(torch.randn(2, 10), ax, "raw", layer=1)
    with pytest.raises(ValueError, match="hook_resid_post"):
        raw_layer("blocks.2.hook_attn_out")


def test_cap_floors_the_projection_and_counts_activity(tiny, built):
    _, _, ax = built
    steer, specs = capping(ax, CapConfig(layers=[1, 2], percentile=75))
    assert all(isinstance(c, Cap) for c in steer.interventions)
    conv = [{"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "Arr, I be a pirate sailing the seven seas with my crew."}]
    ids, mask = response_tokens(tiny.tokenizer, make_spec(), conv[1]["content"])
    name = "blocks.1.hook_resid_post"
    clean = forward_batch(tiny, ids[None], [name])[name][0] @ specs[0].direction
    with steer.apply(tiny):
        capped = forward_batch(tiny, ids[None], ["blocks.2.hook_resid_post", name])
    p1 = capped[name][0] @ specs[0].direction
    p2 = capped["blocks.2.hook_resid_post"][0] @ specs[1].direction
    tau1, tau2 = specs[0].tau, specs[1].tau
    assert (p1 >= tau1 - 1e-4).all() and (p2 >= tau2 - 1e-4).all()
    above = clean >= tau1
    torch.testing.assert_close(p1[above], clean[above])  # gentle: untouched where already above tau
    act = cap_activity(tiny, steer, specs, [conv])
    assert act["n_tokens"] == int(mask.sum())
    expect = float(((clean < tau1) & mask).sum()) / int(mask.sum())
    assert act["per_hook"][name] == pytest.approx(expect)
    assert act["any_hook"] >= max(act["per_hook"].values())
    # at percentile 0 the floor is the lowest rollout mean: far fewer tokens fire than at 100
    lo, lo_specs = capping(ax, CapConfig(layers=[1], percentile=0))
    hi, hi_specs = capping(ax, CapConfig(layers=[1], percentile=100))
    assert cap_activity(tiny, lo, lo_specs, [conv])["mean"] <= cap_activity(tiny, hi, hi_specs, [conv])["mean"]
    # the monitor is registered before the cap it watches at the same hook point
    hooks = CapMonitor(specs).hooks(tiny, steer)
    assert [h for h, _ in hooks] == [name, name, "blocks.2.hook_resid_post", "blocks.2.hook_resid_post"]
    # a windowed cap fires where the mean of the last W projections (first token skipped) is below tau
    wsteer, wspecs = capping(ax, CapConfig(layers=[1], percentile=75, window=3, gain=2.0))
    assert (wsteer.interventions[0].window, wsteer.interventions[0].gain, wspecs[0].window) == (3, 2.0, 3)
    means = torch.stack([clean[max(1, j - 2):j + 1].mean() if j else clean[0] for j in range(len(clean))])
    expect = float(((means < tau1) & mask).sum()) / int(mask.sum())
    assert cap_activity(tiny, wsteer, wspecs, [conv])["per_hook"][name] == pytest.approx(expect)
    with pytest.raises(ValueError, match="window=-1"):
        capping(ax, CapConfig(layers=[1], window=-1))


def test_sae_cap_raises_the_feature_projection(tiny, built):
    _, _, ax = built
    steer, specs = capping(ax, CapConfig(percentile=90, basis="sae"))
    conv = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A cat, napping in the sun."}]
    ids, _ = response_tokens(tiny.tokenizer, make_spec(), conv[1]["content"])
    sae, v = specs[0].sae, specs[0].feature_axis
    with steer.apply(tiny):
        h = forward_batch(tiny, ids[None], [SAE_HOOK])[SAE_HOOK][0]
    clean = forward_batch(tiny, ids[None], [SAE_HOOK])[SAE_HOOK][0]
    before, after = encode(sae, clean) @ v, encode(sae, h) @ v
    low = before < specs[0].tau
    assert low.any() and (after[low] > before[low]).all()
    assert 0 < cap_activity(tiny, steer, specs, [conv])["mean"] <= 1


@pytest.fixture(scope="module")
def band(tiny, relu_sae_dir, tmp_path_factory):
    """An axis with the layer-2 SAE plus band SAEs at layers 1 and 3."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    root = tmp_path_factory.mktemp("band")
    dirs = []
    for l in (1, 3):
        torch.manual_seed(l)
        sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=96, metadata=SAEMetadata(hook_name=f"blocks.{l}.hook_resid_post")))
        with torch.no_grad():
            sae.b_enc.fill_(0.05)
        sae.save_model(str(root / f"sae{l}"))
        dirs.append(str(root / f"sae{l}"))
    cfg = AxisConfig(model="tiny", roles=["sea_captain", "house_cat"], prompts_per_role=1, n_questions=2,
                     max_new_tokens=6, sae=relu_sae_dir, band_saes=dirs, chunk_size=8, gen_batch_size=8)
    return root / "axis", dirs, build_axis(tiny, cfg, root / "axis", progress=False)


def test_band_saes_cap_every_band_layer(tiny, band):
    """Band SAEs (one per layer) share one pass, save under sae_band/ and cap on their own layers."""
    from axis.sae_basis import feature_means
    from saes.access import load_sae

    path, dirs, ax = band
    assert [fa.layer for fa in ax.feature_band] == [1, 3] and ax.feature.layer == 2
    assert (path / "sae_band" / "blocks.3.hook_resid_post" / "sae_axis.safetensors").is_file()
    got = AssistantAxis.load(path, model=tiny)
    assert [fa.layer for fa in got.feature_band] == [1, 3]
    torch.testing.assert_close(got.feature_band[1].feature_axis, ax.feature_band[1].feature_axis)

    # one shared pass gives what each SAE gives alone
    from axis.rollouts import make_specs
    from axis import data

    specs = make_specs(data.select_roles(data.load_roles(), names=["house_cat"]), [None], ["Who are you?", "Hi"])
    texts = {s.id: "I am a cat who naps all day." for s in specs}
    both = feature_means(tiny, [load_sae(dirs[0]), load_sae(dirs[1])], specs, texts, progress=False)
    alone = feature_means(tiny, load_sae(dirs[1]), specs, texts, progress=False)
    assert len(both) == 2 and both[0].shape == (len(specs), 96)
    torch.testing.assert_close(both[1], alone[0])

    steer, caps = capping(got, CapConfig([1, 2, 3], 75, "floor", "sae"))
    assert [c.hook for c in caps] == [f"blocks.{l}.hook_resid_post" for l in (1, 2, 3)]
    assert [c.tau for c in caps] == [got.feature_at(l).tau(75) for l in (1, 2, 3)]
    conv = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A cat, napping in the sun."}]
    act = cap_activity(tiny, steer, caps, [conv])
    assert set(act["per_hook"]) == {c.hook for c in caps} and 0 <= act["mean"] <= 1
    with pytest.raises(ValueError, match="No SAE-basis axis at layer 0"):
        capping(got, CapConfig([0, 1], 75, "floor", "sae"))


def test_cap_script_runs_every_condition_and_logs_to_wandb(band, tmp_path, monkeypatch, capsys):
    """scripts/cap.py end to end on the tiny model: raw, single-SAE and band-SAE caps, steering, drift, W&B."""
    from lm.tracking import read_offline_run
    from scripts.cap import main

    path, _, _ = band
    out = tmp_path / "cap"
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(["--model", "tiny", "--axis", str(path), "--out", str(out), "--small", "--bands", "1-2", "--percentiles", "75",
          "--windows", "0", "4"])  # tears its W&B run down: later tests set their own W&B environment
    assert torch.is_grad_enabled()  # the script must not switch off autograd for later tests
    res = json.loads((out / "cap_results.json").read_text())
    names = [r["condition"] for r in res["conditions"]]
    assert names == ["uncapped", "raw L1-2 p75", "raw L1-2 p75 w4", "sae blocks.2.hook_resid_post p75",
                     "sae blocks.2.hook_resid_post p75 w4", "sae L1,3 p75", "sae L1,3 p75 w4"]
    assert res["caps"]["raw L1-2 p75 w4"]["config"]["window"] == 4
    assert set(res["caps"]["sae L1,3 p75"]["taus"]) == {f"blocks.{l}.hook_resid_post" for l in (1, 3)}
    for r in res["conditions"][1:]:
        assert 0 <= r["cap_active_ordinary"]["mean"] <= 1 and r["identity_n"] > 0
        assert r["default_identity_n"] == 15 and 0 <= r["default_identity_assistant_rate"] <= 1  # --small: 1 each
        assert r["default_identity_gain"] == pytest.approx(r["default_identity_assistant_rate"]
                                                           - res["conditions"][0]["default_identity_assistant_rate"])
        assert len(r["samples"]["default"]) == 4
    base = res["conditions"][0]
    assert base["refusal_log_odds_gain"] == 0 and base["kl_chat"] == pytest.approx(0.0, abs=1e-6)
    for r in res["conditions"]:
        assert r["refusal_log_odds_gain"] == pytest.approx(r["refusal_log_odds"] - base["refusal_log_odds"])
        assert r["kl_chat"] >= -1e-6 and r["kl_chat_rel_to_clean_nll"] >= -1e-6
        assert r["capability_within_1pct"] == (abs(r["nll_rel"]) <= 0.01 and abs(r["mc_rel"]) <= 0.01
                                               and r["kl_chat_rel_to_clean_nll"] <= 0.01)
    assert any(r["kl_chat"] > 0 for r in res["conditions"][1:])
    assert [r["strength"] for r in res["steering"]["rows"]] == [-1.0, 0.0, 1.0]
    assert set(res["drift"]) == {"uncapped", "raw L1-2 p75"}
    assert (out / "steering_identity.png").is_file() and (out / "drift_capped.png").is_file()
    assert json.loads((out / "cap_config.json").read_text())["generation"]["max_new_tokens"] == 8
    assert json.loads((out / "conditions.partial.json").read_text())[-1]["condition"] == "sae L1,3 p75 w4"
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last["results"]) == set(names)
    assert {"log_odds", "kl_chat_rel"} <= set(last["results"]["uncapped"])
    logged = read_offline_run(next((out / "wandb").glob("offline-run-*")))
    assert logged["summary"]["sae L1,3 p75/refusal_rate"] == res["conditions"][5]["refusal_rate"]
    assert logged["summary"]["sae L1,3 p75/refusal_log_odds"] == res["conditions"][5]["refusal_log_odds"]

    # redoing one part keeps the others' results
    main(["--model", "tiny", "--axis", str(path), "--out", str(out), "--small", "--parts", "steering",
          "--strengths", "-0.5", "0.5", "--no-wandb"])
    again = json.loads((out / "cap_results.json").read_text())
    assert [r["strength"] for r in again["steering"]["rows"]] == [-0.5, 0.5]
    assert again["conditions"] == res["conditions"] and again["drift"] == res["drift"]
    assert set(again["args_by_part"]) == {"caps", "steering", "drift"}


def test_engagement_part_replays_the_switch_and_matches_the_measured_firing(band, tmp_path):
    """With the window over all text, the replayed switch pushes on exactly the ordinary tokens
    cap_activity counts for the same one-layer conditional cap; counting only the assistant's turns
    changes what the window holds."""
    from scripts.cap import main

    path, _, _ = band
    res = main(["--model", "tiny", "--axis", str(path), "--out", str(tmp_path / "eng"), "--small", "--no-sae",
                "--no-wandb", "--bands", "2", "--percentiles", "50", "--windows", "4", "--gains", "2", "--triggers", "25",
                "--parts", "caps", "engagement", "--engagement-triggers", "0", "25", "95", "--n-nll", "6"])
    eng, cond = res["engagement"], res["conditions"][1]
    assert eng["condition"] == cond["condition"] == "raw L2 p50 w4 g2 if<p25" and eng["layers"] == [2]
    assert [(r["scope"], r["trigger"]) for r in eng["rows"]] == [("all", 0), ("all", 25), ("assistant", 0),
                                                                ("assistant", 25)]  # 95 lies above the cap's p50
    by = {(r["scope"], r["trigger"]): r for r in eng["rows"]}
    fired = cond["cap_active_ordinary"]["any_hook"]
    assert by[("all", 25)]["ordinary"]["tokens"] == pytest.approx(fired)
    assert 0 < fired < 1 and by[("assistant", 25)]["ordinary"]["tokens"] != pytest.approx(fired)  # a real choice
    assert by[("all", 25)]["ordinary"]["n"] == 6 and by[("all", 25)]["default"]["n"] == 15
    for scope in ("all", "assistant"):  # a higher trigger engages wherever a lower one does, and more
        for k in ("ordinary", "persona", "default"):
            assert by[(scope, 0)][k]["tokens"] <= by[(scope, 25)][k]["tokens"]


def test_engagement_part_needs_a_raw_cap():
    from steering.experiment import Condition

    from axis.evaluate import engagement_part

    sae = Condition("sae cap", None, "sae_cap", 75, {"basis": "sae", "layers": [], "percentile": 75})
    with pytest.raises(ValueError, match="raw-basis cap condition"):
        engagement_part(None, None, [Condition("uncapped"), sae], None, None)


def test_cap_ship_tunes_on_dev_checks_on_test_and_writes_the_recipe(band, tmp_path):
    """--ship: the sweep runs on dev personas, the rule picks an eligible cap (or fails clearly, writing
    nothing), the pick is re-scored against uncapped on the test split, and cap.json loads."""
    import shutil

    from axis.cap_recipe import EVIDENCE, MAX_FIRING, RECIPE, load_cap
    from scripts.cap import main

    path, _, _ = band
    axis_dir = tmp_path / "axis"
    shutil.copytree(path, axis_dir)
    args = ["--model", "tiny", "--axis", str(axis_dir), "--out", str(tmp_path / "tune"), "--small", "--no-sae",
            "--bands", "1", "--percentiles", "0", "50", "--configs", '{"layers": [2], "percentile": 0, "window": 4}',
            "--ship", str(axis_dir), "--no-wandb"]
    try:
        ev = main(args)
    except ValueError as e:
        assert "No cap condition" in str(e) and not (axis_dir / RECIPE).exists()
        return
    rec = json.loads((axis_dir / EVIDENCE).read_text())
    assert [r["condition"] for r in rec["dev"]] == ["uncapped", "raw L1 p0", "raw L1 p50", "raw L2 p0 w4"]
    chosen = next(r for r in rec["dev"] if r["condition"] == ev["chosen"])
    assert chosen["fires_ordinary"] < MAX_FIRING and chosen["capability_within_1pct"]
    assert [r["condition"] for r in rec["test"]] == ["uncapped", ev["chosen"]]
    dev_cfg = json.loads((tmp_path / "tune" / "dev" / "cap_config.json").read_text())
    test_cfg = json.loads((tmp_path / "tune" / "test" / "cap_config.json").read_text())
    assert dev_cfg["split"] == "dev" and test_cfg["split"] == "test"
    caps = load_cap(axis_dir).interventions
    assert [c.hook for c in caps] == [f"blocks.{l}.hook_resid_post" for l in rec["config"]["layers"]]


def make_spec():
    from axis.rollouts import RolloutSpec

    return RolloutSpec("default", "default", 0, None, "Who are you?")


def test_drift_on_one_short_conversation(tiny, built):
    _, _, ax = built
    convs = [{"domain": "therapy", "id": "t1", "turns": ["I feel lonely lately.", "Do you ever feel lonely?"]}]
    cfg = DriftConfig(layers=[1, 2], max_new_tokens=5)
    res = run_drift(tiny, ax, convs, cfg, progress=False)
    rec = res["conversations"][0]
    assert [m["role"] for m in rec["conversation"]] == ["user", "assistant", "user", "assistant"]
    assert set(rec["projection"]) == {"1", "2"} and len(rec["projection"]["1"]) == 2
    ids, masks = turn_masks(tiny.tokenizer, rec["conversation"])
    assert len(masks) == 2 and not (masks[0] & masks[1]).any()
    from lm.chat import render
    assert torch.equal(masks[0] | masks[1], render(tiny.tokenizer, rec["conversation"]).response_mask)
    name = "blocks.2.hook_resid_post"
    h = forward_batch(tiny, ids[None], [name])[name][0]
    if masks[1].any():
        assert rec["projection"]["2"][1] == pytest.approx(float((h[masks[1]] @ ax.unit(2)).mean()), abs=1e-5)
    summ = res["summary"]["2"]["domains"]["therapy"]
    assert summ["n"] == [int(m.any()) for m in masks]
    steer, _ = capping(ax, CapConfig(layers=[1], percentile=100))
    capped = run_drift(tiny, ax, convs, DriftConfig(layers=[1], max_new_tokens=5), fwd_hooks=steer.hooks(tiny),
                       progress=False)
    p = [x for x in capped["conversations"][0]["projection"]["1"] if x is not None]
    assert all(x >= ax.tau(1, 100) - 1e-4 for x in p)  # every token floored at the max, so every turn mean too
    with pytest.raises(ValueError, match="out of range"):
        run_drift(tiny, ax, convs, DriftConfig(layers=[9]), progress=False)


def test_axis_for_another_model_is_refused(tiny, built, tmp_path):
    _, _, ax = built
    ax2 = AssistantAxis(**{**ax.__dict__, "model": "embedded:smollm2-135m-instruct-0123"})
    ax2.feature = None
    ax2.save(tmp_path)
    with pytest.raises(ValueError, match="computed on embedded"):
        AssistantAxis.load(tmp_path, model=tiny)


@pytest.mark.slow
def test_real_model_axis_separates_unseen_roles(smollm, tmp_path):
    """A small SmolLM2 axis (6 roles x 3 questions) puts held-out default rollouts above rollouts of
    unseen roles on unseen questions (the substrate probe saw perfect separation at layers 10-20)."""
    from axis import data
    from features.stats import auroc
    from axis.rollouts import generate_rollouts, harvest_rollouts, make_specs
    from lm.generate import GenerationConfig

    cfg = AxisConfig(roles=["sea_captain", "pirate", "house_cat", "oracle", "lighthouse", "knight"], prompts_per_role=1,
                     n_questions=3, max_new_tokens=20, adherence_filter="none")
    ax = build_axis(smollm, cfg, tmp_path / "axis", progress=False)
    qs = data.load_questions()[10:12]
    roles = data.select_roles(data.load_roles(), names=["wizard", "dragon", "chef"])
    specs = make_specs(roles, [None, "You are an AI assistant."], qs, prompts_per_role=1)
    gen = GenerationConfig(max_new_tokens=20, temperature=0.7, top_p=0.9, seed=1)
    recs = generate_rollouts(smollm, specs, gen, tmp_path / "held_rollouts", progress=False)
    acts = harvest_rollouts(smollm, specs, {s.id: recs[s.id]["text"] for s in specs}, tmp_path / "held_acts",
                            progress=False)
    l = ax.stats["monitor_layer"]
    p = project(acts[:, l], ax, "raw", layer=l)
    is_def = torch.tensor([s.is_default for s in specs])
    assert auroc(p[is_def], p[~is_def]) >= 0.75


def test_token_calibration_is_the_quantiles_of_response_token_projections(tiny, built):
    """Per-token taus are percentiles of every response token's projection (the cap's own measure),
    saved and reloaded with the axis, and they spread wider than per-rollout taus."""
    from lm.batch import pad
    from lm.harvest import forward_batch
    from axis.rollouts import make_specs, response_tokens
    from axis.data import load_default_prompts, load_questions, load_roles, select_roles

    out, cfg, ax = built
    grid = ax.extra["token_quantiles"]
    assert grid.shape == (4, 101) and bool((grid.diff(dim=1) >= 0).all())
    assert ax.feature.token_quantiles.shape == (101,)
    again = AssistantAxis.load(out, tiny)
    assert torch.equal(again.extra["token_quantiles"], grid) and torch.equal(again.feature.token_quantiles,
                                                                             ax.feature.token_quantiles)
    specs = make_specs(select_roles(load_roles(), None, cfg.roles), load_default_prompts("tiny"),
                       load_questions()[:cfg.n_questions], cfg.prompts_per_role)
    texts = {r["id"]: r["text"] for r in json.loads((out / "transcripts.json").read_text())}
    seqs = [response_tokens(tiny.tokenizer, s, texts[s.id]) for s, k in zip(specs, ax.kept.tolist()) if k]
    seqs = [x for x in seqs if x is not None]
    ids, _, mask = pad([x[0] for x in seqs], tiny.tokenizer.pad_token_id, masks=[x[1] for x in seqs])
    with torch.no_grad():
        h = forward_batch(tiny, ids, ["blocks.2.hook_resid_post"])["blocks.2.hook_resid_post"]
    p = (h @ ax.unit(2))[mask]
    assert ax.tau(2, 50, "token") == pytest.approx(float(torch.quantile(p.double(), 0.5)), abs=1e-4)
    assert ax.tau(2, 5, "token") < ax.tau(2, 5) and ax.tau(2, 95, "token") > ax.tau(2, 95)
    with pytest.raises(ValueError, match="calibration='window'"):
        ax.tau(2, 50, "window")
    with pytest.raises(ValueError, match="within 0-100"):
        ax.tau(2, 101, "token")


def test_cap_recipe_ships_loads_and_refuses_a_model_without_its_layers(tiny, built, tmp_path):
    from pathlib import Path

    from axis.cap_recipe import RECIPE, choose_cap, load_cap, ship
    from axis.capping import CapConfig, cap_interventions

    _, _, ax = built
    cc = CapConfig([1, 2], 60.0, window=4, gain=2.0, calibration="token", trigger=20.0)
    ship(tmp_path, ax, cc, {"chosen": "x"})
    loaded = load_cap(tmp_path)
    ref = cap_interventions(ax, cc)
    assert [c.to_dict() for c in loaded.interventions] == [c.to_dict() for c in ref]
    assert loaded.interventions[0].trigger == pytest.approx(ax.tau(1, 20.0, "token"))
    sae_cc = CapConfig([], 60.0, basis="sae", calibration="token")
    ship(tmp_path / "sae", ax, sae_cc, {})
    rec = json.loads((tmp_path / "sae" / RECIPE).read_text())
    assert not Path(rec["interventions"][0]["sae"]).is_absolute()  # relative to the recipe: loads from any checkout
    assert load_cap(tmp_path / "sae").interventions[0].tau == pytest.approx(ax.feature.tau(60.0, "token"))
    rec = json.loads((tmp_path / RECIPE).read_text())
    rec["interventions"][0]["hook"] = "blocks.40.hook_resid_post"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / RECIPE).write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="blocks.40"):
        load_cap(tmp_path / "bad").hooks(tiny)
    with pytest.raises(FileNotFoundError, match="has no cap.json"):
        load_cap(tmp_path / "none")
    rows = [{"condition": "uncapped", "identity_gain": 0.0},
            {"condition": "a", "identity_gain": 0.5, "capability_within_1pct": True, "cap_active_ordinary": {"any_hook": 0.2}},
            {"condition": "b", "identity_gain": 0.3, "capability_within_1pct": True, "cap_active_ordinary": {"any_hook": 0.001}},
            {"condition": "c", "identity_gain": 0.4, "capability_within_1pct": False, "cap_active_ordinary": {"any_hook": 0.0}}]
    assert choose_cap(rows)["condition"] == "b"
    with pytest.raises(ValueError, match="No cap condition"):
        choose_cap(rows[:2])

