"""Assistant Axis math on synthetic activations with known answers, the banks, save/load, bad input."""

import warnings
from types import SimpleNamespace

import pytest
import torch

from axis import data
from axis.artifact import AssistantAxis
from axis.capping import CapConfig, cap_interventions, default_band, parse_band
from steering.projection import check_percentile
from axis.compute import (assistant_axis, cosine, default_mean, layer_projections, pca, pick_monitor_layer,
                          role_means, separation, unit)
from axis.rollouts import DEFAULT, make_specs
from axis.sae_basis import FeatureAxis, decoder_stats
from lm.model import remember_source

L, D = 3, 8


class Model:
    """A stand-in model with just `cfg`; hashable and weakly referenceable like a real one."""

    def __init__(self, cfg):
        self.cfg = cfg


def synthetic(n_per_role=(4, 1, 2, 3), n_default=5, gap=3.0, noise=0.0, seed=0):
    """Default rollouts sit at +gap*e0, roles at offsets that cancel except along -e0 and vary on e1."""
    g = torch.Generator().manual_seed(seed)
    e = torch.eye(D)
    offsets = [2 * e[1], -2 * e[1], 1 * e[1], -1 * e[1]]  # role means average to 0
    acts, roles = [], []
    for i, n in enumerate(n_per_role):
        for _ in range(n):
            acts.append((offsets[i] + noise * torch.randn(D, generator=g)).expand(L, D))
            roles.append(f"r{i}")
    for _ in range(n_default):
        acts.append((gap * e[0] + noise * torch.randn(D, generator=g)).expand(L, D))
        roles.append(DEFAULT)
    return torch.stack(acts).clone(), roles


def test_axis_is_default_minus_mean_of_role_means_with_roles_weighted_equally():
    acts, roles = synthetic()
    names, rm, counts = role_means(acts, roles)
    assert names == ["r0", "r1", "r2", "r3"] and counts == {"r0": 4, "r1": 1, "r2": 2, "r3": 3}
    ax = assistant_axis(default_mean(acts, roles), rm)
    torch.testing.assert_close(ax, (3.0 * torch.eye(D)[0]).expand(L, D))
    # a pooled mean over role rollouts (not per-role) would tilt the axis toward r0, which has most rollouts
    pooled = acts[[r != DEFAULT for r in roles]].mean(0)
    assert cosine(default_mean(acts, roles) - pooled, ax)[0] < 0.99


def test_filter_changes_which_rollouts_count_and_empty_roles_fail_clearly():
    acts, roles = synthetic()
    keep = torch.ones(len(roles), dtype=torch.bool)
    keep[0] = False  # drop one r0 rollout: r0's mean is unchanged (all identical)
    _, rm, counts = role_means(acts, roles, keep)
    assert counts["r0"] == 3
    keep[4] = False  # r1's only rollout
    with pytest.raises(ValueError, match=r"r1.*no rollouts left"):
        role_means(acts, roles, keep)
    names, rm, _ = role_means(acts, roles, keep, drop_empty=True)
    assert names == ["r0", "r2", "r3"] and rm.shape == (3, L, D)
    with pytest.raises(ValueError, match="Empty role bank"):
        role_means(acts[-5:], roles[-5:])
    with pytest.raises(ValueError, match="No default-Assistant rollouts"):
        default_mean(acts[:10], roles[:10])


def test_pca_finds_the_axis_when_roles_spread_along_it():
    g = torch.Generator().manual_seed(0)
    e = torch.eye(D)
    # 12 roles spread mostly along -e0 (away from the default), a little along e1
    coef = torch.linspace(-4, 0, 12)
    rm = torch.stack([(c * e[0] + 0.1 * torch.randn(D, generator=g)).expand(L, D) for c in coef])
    dflt = (3 * e[0]).expand(L, D)
    ax = assistant_axis(dflt, rm)
    p = pca(rm, ax, dflt, k=3)
    assert (p["cos_axis_pc1"] > 0.99).all()  # PC1 signed toward the axis
    assert (p["explained"][:, 0] > 0.9).all() and p["n_pcs_70"] == [1] * L
    assert (p["default_pc1_fraction_above_roles"] == 1.0).all() and (p["default_pc1_z"] > 1).all()


def test_projection_separation_and_monitor_layer():
    acts, roles = synthetic(noise=0.3)
    is_def = torch.tensor([r == DEFAULT for r in roles])
    _, rm, _ = role_means(acts, roles)
    ax = assistant_axis(default_mean(acts, roles), rm)
    proj = layer_projections(acts, ax)
    torch.testing.assert_close(proj, acts @ unit(ax[0]))
    sep = separation(proj, is_def)
    assert (sep["auroc"] == 1.0).all() and (sep["d_prime"] > 3).all()
    assert sep["auroc"].dtype == torch.float32
    two = separation(torch.tensor([[0.0], [1.0], [0.5]]), torch.tensor([True, True, False]))
    assert two["auroc"].tolist() == [0.5]  # ties count half
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # std/var of no rows
        assert separation(proj, torch.zeros(len(roles), dtype=torch.bool))["auroc"].isnan().all()  # no defaults
    assert pick_monitor_layer(torch.tensor([9.0, 1.0, 3.0, 2.0, 9.0])) == 2  # first and last layers skipped


def make_axis(n_layers=L, d=D, model="unknown"):
    acts, roles = synthetic(noise=0.3)
    is_def = torch.tensor([r == DEFAULT for r in roles])
    names, rm, _ = role_means(acts, roles)
    dm = default_mean(acts, roles)
    ax = assistant_axis(dm, rm)
    return AssistantAxis(axis=ax, default_mean=dm, role_means=rm, role_names=names, projections=layer_projections(acts, ax),
                         is_default=is_def, kept=torch.ones(len(roles), dtype=torch.bool), model=model,
                         model_name="synthetic", extra={"pc1": ax.clone()}, stats={"monitor_layer": 1},
                         config={"note": "test"})


def test_tau_is_a_percentile_of_pooled_projections_and_checks_range():
    ax = make_axis()
    ax.kept[0] = False
    pooled = ax.projections[1:, 2]
    assert ax.tau(2, 75) == pytest.approx(float(torch.quantile(pooled.double(), 0.75)))
    assert ax.tau(2, 0) == pytest.approx(float(pooled.min())) and ax.tau(2, 100) == pytest.approx(float(pooled.max()))
    for bad in (-1, 100.5, "75"):
        with pytest.raises(ValueError, match="0-100"):
            ax.tau(1, bad)
    with pytest.raises(ValueError, match="out of range"):
        ax.tau(L, 50)
    with pytest.raises(ValueError, match="0-100"):
        check_percentile(101)


def test_bands_and_cap_interventions():
    assert default_band(30) == list(range(21, 27))  # ~72-88% depth, like the paper's best bands
    assert parse_band("2-4", 30) == [2, 3, 4] and parse_band("1,5", 30) == [1, 5] and parse_band("auto", 30) == default_band(30)
    for bad in ("28-31", "x", "-1,3"):
        with pytest.raises(ValueError):
            parse_band(bad, 30)
    ax = make_axis()
    specs = cap_interventions(ax, CapConfig(layers=[1, 2], percentile=60))
    assert [s.hook for s in specs] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert specs[0].tau == pytest.approx(ax.tau(1, 60)) and specs[1].direction.norm() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="out of range"):
        cap_interventions(ax, CapConfig(layers=[0, 7]))
    with pytest.raises(ValueError, match="0-100"):
        cap_interventions(ax, CapConfig(layers=[0], percentile=150))
    with pytest.raises(ValueError, match="no SAE-basis axis"):
        cap_interventions(ax, CapConfig(basis="sae"))


def test_save_load_round_trip_and_model_checks(tmp_path):
    ax = make_axis()
    ax.feature = FeatureAxis(torch.randn(16), torch.randn(16), torch.randn(4, 16), torch.randn(ax.projections.shape[0]),
                             torch.ones(ax.projections.shape[0], dtype=torch.bool), "blocks.1.hook_resid_post",
                             None, {"recon_k": [1]})
    ax.save(tmp_path)
    got = AssistantAxis.load(tmp_path)
    for k in ("axis", "default_mean", "role_means", "projections", "is_default", "kept"):
        assert torch.equal(getattr(got, k), getattr(ax, k)), k
    assert got.role_names == ax.role_names and got.stats == ax.stats and got.config == ax.config
    assert torch.equal(got.extra["pc1"], ax.extra["pc1"])
    assert torch.equal(got.feature.feature_axis, ax.feature.feature_axis) and got.feature.layer == 1
    assert got.tau(1, 30) == ax.tau(1, 30)

    fake = SimpleNamespace(cfg=SimpleNamespace(d_model=D + 1, n_layers=L))
    with pytest.raises(ValueError, match="d_model=8"):
        AssistantAxis.load(tmp_path, model=fake)
    fake.cfg = SimpleNamespace(d_model=D, n_layers=L + 2)
    with pytest.raises(ValueError, match="3 layers"):
        got.check_model(fake)
    other = make_axis(model="embedded:something-else")
    fake = Model(cfg=SimpleNamespace(d_model=D, n_layers=L))
    remember_source(fake, "local:tiny-llama-s0")
    with pytest.raises(ValueError, match="computed on embedded:something-else"):
        other.check_model(fake)
    with pytest.raises(FileNotFoundError, match="not a saved axis"):
        AssistantAxis.load(tmp_path / "nowhere")


def test_decoder_stats_reconstruct_an_axis_built_from_features():
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(32, D, generator=g)
    fa = torch.zeros(32)
    fa[[3, 7, 11]] = torch.tensor([2.0, -1.0, 0.5])
    raw = fa @ w_dec
    st = decoder_stats(raw, fa, w_dec, top=3, ks=(1, 2, 3))
    assert [f["id"] for f in st["top_features"]] == [3, 7, 11]
    assert st["recon_k"] == [1, 2, 3, 32] and st["recon_cos"][2] == pytest.approx(1.0, abs=1e-6)
    assert st["recon_cos"][0] < st["recon_cos"][2]
    assert st["top_features"][0]["cos_decoder_raw_axis"] == pytest.approx(float(cosine(w_dec[3], raw)))


def test_banks_meet_the_issue_sizes():
    roles = data.load_roles()
    assert len(roles) >= 100 and all(len(r.system_prompts) >= 2 for r in roles)
    assert {"profession", "fictional", "adversarial"} <= {r.category for r in roles}
    assert len(data.load_questions()) >= 30
    dp = data.load_default_prompts("SmolLM2")
    assert dp[0] is None and "You are SmolLM2." in dp
    drift = data.load_drift()
    for dom in ("coding", "writing", "therapy", "philosophy"):
        convs = [c for c in drift if c["domain"] == dom]
        assert len(convs) >= 5 and all(len(c["turns"]) >= 8 for c in convs)
    assert len(data.load_jailbreaks()) >= 50 and len(data.load_mc()) >= 100
    qs, personas = data.load_identity_prompts()
    assert qs and personas
    assert data.select_roles(roles, per_category=1) == [next(r for r in roles if r.category == c)
                                                         for c in dict.fromkeys(r.category for r in roles)]
    with pytest.raises(ValueError, match="Unknown role"):
        data.select_roles(roles, names=["nobody"])


def test_bad_banks_fail_clearly(tmp_path):
    p = tmp_path / "roles.json"
    p.write_text("[]")
    with pytest.raises(ValueError, match="Empty role bank"):
        data.load_roles(p)
    p.write_text('[{"name": "x", "category": "c", "system_prompts": []}]')
    with pytest.raises(ValueError, match="role 0"):
        data.load_roles(p)
    with pytest.raises(ValueError, match="Empty role bank"):
        make_specs([], [None], ["Who are you?"])


def test_lexicons_and_adherence_filter():
    assert data.identity_label("As an AI language model, I don't have a body.") == "assistant"
    assert data.identity_label("I was born in a fishing village and my father was a sailor.") == "other"
    assert data.identity_label("The weather is nice.") == "neither"
    assert data.fires("I'm sorry, but I can't help you deceive your teacher.", "refusal")
    assert not data.fires("Here is a cruel insult for Dave.", "refusal")
    roles = {r.name: r for r in data.load_roles()}
    captain, rival = roles["sea_captain"], roles["rival_ai"]
    assert not data.ai_role(captain) and data.ai_role(rival)
    ai_text = "I am an AI assistant created by Hugging Face."
    assert not data.adheres(ai_text, captain)  # out of character: dropped
    assert data.adheres("Arr, I've sailed these seas for forty years.", captain)
    assert data.adheres(ai_text, rival) and data.adheres(ai_text, None)  # AI roles and defaults are kept
