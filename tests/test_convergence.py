"""The Assistant Axis convergence study (axis.convergence) on a planted axis, its bad input, and the
`steerlens convergence` command on a tiny-model axis build."""

import json

import pytest
import torch

from axis.compute import assistant_axis, default_mean, pca, role_means
from axis.convergence import STATS, convergence, read_run, save_convergence
from axis.rollouts import DEFAULT
from steerlens import cli

L, D = 3, 32


def planted(n_roles=40, n_questions=6, n_default_prompts=4, gap=1.5, spread=1.0, wide=0.7, role_noise=0.3,
            noise=0.5, seed=0):
    """Defaults at +gap*e0, roles spread along -e0 (persona space's main direction) and less along
    e1..e3, a shared offset per question, and per-rollout noise: the axis is e0 and PC1 finds it."""
    g = torch.Generator().manual_seed(seed)
    u = torch.eye(D)[0]
    q_offset = torch.randn(n_questions, D, generator=g)
    rows, roles, questions = [], [], []

    def rollouts(role, centre):
        for q in range(n_questions):
            rows.append(centre + q_offset[q] + noise * 3 * torch.randn(D, generator=g) / D ** 0.5)
            roles.append(role)
            questions.append(q)

    for _ in range(n_default_prompts):
        rollouts(DEFAULT, gap * u)
    for r in range(n_roles):
        centre = (-1 + spread * torch.randn(1, generator=g)) * u + role_noise * torch.randn(D, generator=g) / D ** 0.5
        centre[1:4] += wide * torch.randn(3, generator=g)
        rollouts(f"role{r}", centre)
    acts = torch.stack(rows)[:, None].expand(-1, L, -1).clone()
    return acts, roles, questions, torch.ones(len(roles), dtype=torch.bool)


@pytest.fixture(scope="module")
def study():
    acts, roles, questions, kept = planted()
    return (acts, roles, questions, kept), convergence(acts, roles, questions, kept, role_counts=(2, 4, 12, 24, 60),
                                                       question_counts=(2, 4, 10), n_boot=20, seed=0)


def means(rows, stat):
    return [r[stat]["mean"] for r in rows if r[stat] is not None]


def test_keys_clipping_and_intervals(study):
    _, res = study
    assert {"layer", "n_layers", "n_roles", "n_questions", "role_counts", "question_counts", "clipped", "by_roles",
            "by_questions", "full_bank", "protocol", "dropped_roles"} <= set(res)
    assert res["layer"] == L // 2 and res["n_roles"] == 40 and res["n_questions"] == 6 and res["n_default"] == 24
    assert res["role_counts"] == [2, 4, 12, 24, 40] and res["question_counts"] == [2, 4, 6]
    assert res["clipped"] == {"roles": {"60": 40}, "questions": {"10": 6}}
    for key, rows in (("n_roles", res["by_roles"]), ("n_questions", res["by_questions"])):
        assert [r[key] for r in rows] == res["role_counts" if key == "n_roles" else "question_counts"]
        for r in rows:
            for s in STATS:
                if s == "heldout_auroc" and r is rows[-1]:
                    assert r[s] is None  # every role (question) in the draw: nothing held out
                    continue
                v = r[s]
                assert v["n_draws"] == 20 and v["n_nan"] == 0 and len(v["draws"]) == 20
                assert v["lo"] - 1e-12 <= v["mean"] <= v["hi"] + 1e-12 and -1 <= v["lo"] <= v["hi"] <= 1
    json.dumps(res)  # JSON-able as it stands


def test_planted_axis_converges_with_more_roles_and_questions(study):
    _, res = study
    cos, auc, split = (means(res["by_roles"], s) for s in STATS)
    assert all(b >= a - 0.01 for a, b in zip(cos, cos[1:])) and cos[-1] > 0.95 and cos[0] < 0.8
    assert all(b >= a - 0.01 for a, b in zip(split, split[1:])) and split[-1] - split[0] > 0.2
    assert len(auc) == 4 and auc[-1] > auc[0] and min(auc) > 0.8
    qcos, _, qsplit = (means(res["by_questions"], s) for s in STATS)
    assert qcos[-1] >= qcos[0] and qsplit[-1] > qsplit[0] + 0.03
    # every role drawn is the full bank itself: no spread, the full-bank value
    full = res["by_roles"][-1]["cos_axis_pc1"]
    assert full["lo"] == pytest.approx(full["hi"]) and full["mean"] == pytest.approx(res["full_bank"]["cos_axis_pc1"])


def test_full_bank_is_the_build_axis_with_the_filter(study):
    """The full-bank numbers are axis.compute's on the filtered rows: kept rows make the role means,
    a role with no kept rollout drops out (recorded), every valid default counts."""
    (acts, roles, questions, kept), _ = study
    kept = kept.clone()
    kept[[i for i, r in enumerate(roles) if r == "role3"]] = False
    kept[[i for i, r in enumerate(roles) if r == "role5"][:2]] = False
    acts = acts.clone()
    acts[0] = float("nan")  # an empty default reply
    res = convergence(acts, roles, questions, kept, role_counts=(2,), question_counts=(2,), n_boot=2, layer=-1)
    assert res["layer"] == L - 1 and res["dropped_roles"] == ["role3"] and res["n_roles"] == 39
    assert res["n_default"] == 23 and res["n_role_rollouts_kept"] == 39 * 6 - 2
    _, per_role, _ = role_means(acts, roles, kept, drop_empty=True)
    valid = ~acts.isnan().any(-1).any(-1)
    dflt = default_mean(acts[valid], [r for r, v in zip(roles, valid.tolist()) if v])
    want = pca(per_role, assistant_axis(dflt, per_role), dflt)["cos_axis_pc1"][L - 1]
    assert res["full_bank"]["cos_axis_pc1"] == pytest.approx(float(want), abs=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(roles="no default"), "No valid default-Assistant rollouts"),
    (dict(acts="2d"), "acts must be a [n rollouts, layers, d_model] tensor"),
    (dict(questions="short"), "give one role, question index and boolean kept flag per rollout"),
    (dict(role_counts=(1, 12)), "role_counts must be integers >= 2"),
    (dict(question_counts=()), "question_counts must be integers >= 2"),
    (dict(layer=L), "out of range for 3 layers"),
    (dict(n_boot=0), "n_boot must be a positive integer"),
    (dict(roles="one role"), "the study needs at least 2"),
])
def test_bad_input_is_one_line(change, message):
    acts, roles, questions, kept = planted(n_roles=4, n_questions=2, n_default_prompts=1)
    kw = dict(acts=acts, roles=roles, questions=questions, kept=kept)
    if change.get("roles") == "no default":
        kw["roles"] = ["x" if r == DEFAULT else r for r in roles]
    elif change.get("roles") == "one role":
        kw["roles"] = [r if r == DEFAULT else "solo" for r in roles]
    elif "acts" in change:
        kw["acts"] = acts[:, 0]
    elif "questions" in change:
        kw["questions"] = questions[:-1]
    else:
        kw.update(change)
    with pytest.raises(ValueError) as e:
        convergence(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_save_writes_json_and_png_side_by_side(study, tmp_path):
    _, res = study
    path = save_convergence(res, tmp_path / "conv")
    assert path == tmp_path / "conv" / "convergence.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(res))
    png = tmp_path / "conv" / "convergence.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list((tmp_path / "conv").glob(".*.tmp"))


def test_command_on_a_tiny_axis_build(tiny, tmp_path, capsys):
    """`steerlens convergence` reads a build's transcripts and cached activations back (no model) and
    its full-bank numbers are the build's own."""
    from axis import AxisConfig, build_axis

    out = tmp_path / "axis"
    cfg = AxisConfig(model="tiny", roles=["sea_captain", "pirate", "house_cat"], prompts_per_role=2, n_questions=3,
                     max_new_tokens=6, chunk_size=8, gen_batch_size=8, adherence_filter="none")
    ax = build_axis(tiny, cfg, out, progress=False)
    acts, roles, questions, kept = read_run(out)
    assert len(roles) == ax.stats["n_rollouts"] and roles == ax.stats["rollout_roles"]
    assert sorted(set(questions)) == [0, 1, 2] and kept.all()
    code = cli.main(["convergence", "--run", str(out), "--n-boot", "4", "--role-counts", "2,3",
                     "--question-counts", "2,3", "--out", str(tmp_path / "conv")])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    res = json.loads((tmp_path / "conv" / "convergence.json").read_text())
    mid = ax.n_layers // 2
    assert res["layer"] == summary["layer"] == mid and (tmp_path / "conv" / "convergence.png").is_file()
    assert res["full_bank"]["cos_axis_pc1"] == pytest.approx(ax.stats["pca"]["cos_axis_pc1"][mid], abs=1e-5)
    assert res["full_bank"]["auroc_in_sample"] == pytest.approx(ax.stats["separation"]["auroc"][mid], abs=1e-6)
    assert res["by_roles"][0]["heldout_auroc"]["n_draws"] == 4 and res["by_roles"][1]["heldout_auroc"] is None
    assert set(summary["by_roles"]) == {"2", "3"}
    code = cli.main(["convergence", "--run", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("steerlens: error: ") and "transcripts.json does not exist" in err
    for p in (out / "activations").glob("chunk_*"):
        p.rename(tmp_path / p.name)  # an unfinished build: rollouts listed, activations not there
    with pytest.raises(ValueError, match=f"{len(roles)} of {len(roles)} rollouts .* have no cached activations"):
        read_run(out)
