"""How many roles and questions does the Assistant Axis need? Resample a finished build and watch it settle.

The axis (`axis.compute`: mean of valid default rollouts minus the mean of per-role means of kept
rollouts) is recomputed on random subsets of the bank, at one layer, from the per-rollout means the
build cached; no model runs. Two studies, each over `n_boot` seeded draws without replacement:

- roles: R roles drawn, every question kept;
- questions: Q questions drawn, every role kept (role and default rollouts on those questions only).

Per draw, three statistics:

- cos(axis, PC1 of the drawn role means), PC1 signed toward the axis as `axis.compute.pca` does, so
  it is |cos| (the paper's check that the axis is persona space's main direction);
- held-out AUROC, P(default rollout projects above a role rollout) on the unit axis, scored only on
  rollouts the axis never saw. Roles study: the kept rollouts of the roles not drawn, against default
  rollouts; those answering question q are projected on the drawn roles' axis built without question q
  (leave-one-question-out, default and role side), so no scored default rollout is in its axis either.
  Questions study: every kept rollout (default and role, all roles) answering a question not drawn.
  Null when nothing is held out (R = every role, Q = every question);
- split-half cosine: the drawn roles (questions) split into two disjoint random halves and one axis
  per half, cosine between the two. In the roles study the questions are split too, at random: each
  half-axis takes its roles' and the default rollouts on its half of the questions, so the halves share
  no rollout (a shared default mean would inflate the cosine) and compare like with like (questions
  shift every rollout alike; defaults on half the questions against roles on all of them would put
  that shift into the axis). In the questions study each half has its questions' default and role
  rollouts, every role.

A statistic's interval is the 2.5/97.5 percentiles of its values over the draws; NaN draws (e.g. a
held-out set the filter emptied) are left out and counted. Counts above what the bank has are clipped
to it (recorded under "clipped"); R = every role or Q = every question is the full bank itself, so
its draws coincide. `full_bank` has the point values of the whole bank (AUROC there is in-sample,
as in the build's axis.json); the whole bank's split-half cosine is the R = every role row.
`steerlens convergence` runs this on a build's run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float

from lm.io import atomic_path, read_json, write_json

from axis.compute import (_layer_auroc, assistant_axis, cosine, default_mean, layer_projections, pca, role_means,
                          separation)
from axis.rollouts import DEFAULT, chunk_index, gather_means

STATS = ("cos_axis_pc1", "heldout_auroc", "split_half_cosine")


class _Bank:
    """The rollouts at the studied layer, as [n, 1, d] (the `axis.compute` shape), plus per (role,
    question) sums of the kept role rollouts, so a draw's role means are a few tensor ops."""

    def __init__(self, acts, roles, questions, kept, layer):
        if not isinstance(acts, torch.Tensor) or acts.ndim != 3:
            shape = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
            raise ValueError(f"acts must be a [n rollouts, layers, d_model] tensor, got {shape}; pass the "
                             "per-rollout mean activations (axis.rollouts.harvest_rollouts).")
        n, n_layers = acts.shape[:2]
        kept = torch.as_tensor(kept)
        if len(roles) != n or len(questions) != n or kept.shape != (n,) or kept.dtype != torch.bool:
            raise ValueError(f"acts has {n} rollouts but roles has {len(roles)}, questions {len(questions)} and "
                             f"kept shape {tuple(kept.shape)} ({kept.dtype}); give one role, question index and "
                             "boolean kept flag per rollout.")
        layer = n_layers // 2 if layer is None else layer
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range for {n_layers} layers; pick 0..{n_layers - 1}.")
        self.layer, self.n_layers = layer % n_layers, n_layers
        self.x = acts[:, self.layer:self.layer + 1].float()
        self.roles, self.q = list(roles), torch.as_tensor(questions, dtype=torch.long)
        self.is_def = torch.tensor([r == DEFAULT for r in self.roles])
        self.valid = ~self.x.isnan().any(-1).any(-1)
        self.kept = kept & self.valid
        if not (self.is_def & self.valid).any():
            raise ValueError("No valid default-Assistant rollouts: the axis needs them (role 'default').")
        role_rows = self.kept & ~self.is_def
        self.role_names = list(dict.fromkeys(r for r, k in zip(self.roles, role_rows.tolist()) if k))
        self.dropped = [r for r in dict.fromkeys(self.roles) if r != DEFAULT and r not in self.role_names]
        self.questions = sorted(set(self.q[self.is_def & self.valid].tolist()))  # what the questions study draws
        if len(self.role_names) < 2:
            raise ValueError(f"{len(self.role_names)} role(s) have kept rollouts; the study needs at least 2.")
        if len(self.questions) < 2:
            raise ValueError(f"Default rollouts answer {len(self.questions)} question(s); the study needs at least 2.")
        self.all_q = sorted(set(self.q.tolist()))
        ri = {r: i for i, r in enumerate(self.role_names)}
        rows = torch.nonzero(role_rows).flatten()
        cell = (torch.tensor([ri[self.roles[i]] for i in rows.tolist()], dtype=torch.long) * len(self.all_q)
                + torch.searchsorted(torch.tensor(self.all_q), self.q[rows]))
        shape = (len(self.role_names), len(self.all_q))
        self.cell_sum = (torch.zeros(shape[0] * shape[1], self.x.shape[-1], dtype=torch.float64)
                         .index_add_(0, cell, self.x[rows, 0].double()).view(*shape, -1))
        self.cell_n = torch.bincount(cell, minlength=shape[0] * shape[1]).view(shape).double()

    def of_roles(self, names) -> Bool[torch.Tensor, " n"]:
        names = set(names)
        return torch.tensor([r in names for r in self.roles])

    def of_questions(self, qs) -> Bool[torch.Tensor, " n"]:
        return torch.isin(self.q, torch.as_tensor(list(qs), dtype=torch.long))


class _Axis(NamedTuple):
    axis: Float[torch.Tensor, "1 d"]
    per_role: Float[torch.Tensor, "r 1 d"]
    default: Float[torch.Tensor, "1 d"]


def _axis(b: _Bank, roles, role_qs, default_qs) -> _Axis | None:
    """The axis of `roles` from their kept rollouts answering `role_qs` and the valid default rollouts
    answering `default_qs` (None when a side has none). Each role mean is the mean of its kept rollouts,
    as `axis.compute.role_means` (what `_full_axis` calls) has it, summed from the (role, question) cells."""
    q = torch.isin(torch.tensor(b.all_q), torch.as_tensor(list(role_qs), dtype=torch.long)).double()
    n, names = b.cell_n @ q, set(roles)
    r = torch.tensor([x in names for x in b.role_names]) & (n > 0)
    d = b.is_def & b.valid & b.of_questions(default_qs)
    if not r.any() or not d.any():
        return None
    per_role = (torch.einsum("rqd,q->rd", b.cell_sum[r], q) / n[r, None])[:, None].float()
    dflt = default_mean(b.x[d], [DEFAULT] * int(d.sum()))
    return _Axis(assistant_axis(dflt, per_role), per_role, dflt)


def _cos_pc1(a: _Axis | None) -> float:
    if a is None or a.per_role.shape[0] < 2:
        return float("nan")
    return float(pca(a.per_role, a.axis, a.default, k=1)["cos_axis_pc1"][0])


def _auroc(d: Float[torch.Tensor, "p 1"], r: Float[torch.Tensor, "q 1"]) -> float:
    return float(_layer_auroc(d, r)[0])


def _heldout_roles_auroc(b: _Bank, roles: list[str], held: Bool[torch.Tensor, " n"]) -> float:
    """Held-out roles vs defaults; the rollouts answering question q go on the axis of `roles` built
    without question q (leave-one-question-out), so no scored default rollout is in its axis."""
    d_scores, r_scores = [], []
    for q in b.all_q:
        a = _axis(b, roles, [p for p in b.all_q if p != q], [p for p in b.all_q if p != q])
        if a is None:
            continue
        here = b.q == q
        d_scores.append(layer_projections(b.x[here & b.is_def & b.kept], a.axis))
        r_scores.append(layer_projections(b.x[here & held & b.kept], a.axis))
    if not d_scores:
        return float("nan")
    return _auroc(torch.cat(d_scores), torch.cat(r_scores))


def _heldout_questions_auroc(b: _Bank, a: _Axis, held_q: Bool[torch.Tensor, " n"]) -> float:
    proj = layer_projections(b.x[held_q & b.kept], a.axis)
    is_def = b.is_def[held_q & b.kept]
    return _auroc(proj[is_def], proj[~is_def])


def _split_cosine(b: _Bank, half_a: tuple, half_b: tuple) -> float:
    """Cosine between the axes of two disjoint halves, each (roles, role questions, default questions)."""
    a, c = _axis(b, *half_a), _axis(b, *half_b)
    return float("nan") if a is None or c is None else float(cosine(a.axis, c.axis)[0])


def _halves(g: torch.Generator, items: list) -> tuple[list, list]:
    p = torch.randperm(len(items), generator=g).tolist()
    h = len(items) // 2
    return [items[i] for i in p[:h]], [items[i] for i in p[h:]]


def _draw(g: torch.Generator, items: list, k: int) -> list:
    return [items[i] for i in sorted(torch.randperm(len(items), generator=g)[:k].tolist())]


def _role_draw(b: _Bank, g: torch.Generator, R: int) -> dict:
    names = _draw(g, b.role_names, R)
    a = _axis(b, names, b.all_q, b.all_q)
    held = b.of_roles(set(b.role_names) - set(names))
    auroc = _heldout_roles_auroc(b, names, held) if R < len(b.role_names) else None
    ra, rb = _halves(g, names)
    qa, qb = _halves(g, b.all_q)
    split = _split_cosine(b, (ra, qa, qa), (rb, qb, qb))
    return {"cos_axis_pc1": _cos_pc1(a), "heldout_auroc": auroc, "split_half_cosine": split}


def _question_draw(b: _Bank, g: torch.Generator, Q: int) -> dict:
    qs = _draw(g, b.questions, Q)
    a = _axis(b, b.role_names, qs, qs)
    held = ~b.of_questions(qs)
    auroc = None if Q == len(b.questions) else float("nan") if a is None else _heldout_questions_auroc(b, a, held)
    qa, qb = _halves(g, qs)
    split = _split_cosine(b, (b.role_names, qa, qa), (b.role_names, qb, qb))
    return {"cos_axis_pc1": _cos_pc1(a), "heldout_auroc": auroc, "split_half_cosine": split}


def _counts(requested, available: int, what: str) -> tuple[list[int], dict[str, int]]:
    """Sorted distinct counts, each clipped to `available`; {requested: used} for the clipped ones."""
    req = list(requested)
    if not req or any(not isinstance(c, int) or isinstance(c, bool) or c < 2 for c in req):
        raise ValueError(f"{what}_counts must be integers >= 2 (a PCA and a split half need two), got {req}.")
    return sorted({min(c, available) for c in req}), {str(c): available for c in req if c > available}


def _summary(values: list) -> dict | None:
    """Mean and 2.5/97.5 percentile interval over the draws; None when no draw has a value."""
    if all(v is None for v in values):
        return None
    ok = [v for v in values if v is not None and v == v]
    if not ok:
        return {"mean": None, "lo": None, "hi": None, "n_draws": 0, "n_nan": len(values), "draws": []}
    t = torch.tensor(ok, dtype=torch.float64)
    lo, hi = torch.quantile(t, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"mean": t.mean().item(), "lo": lo, "hi": hi, "n_draws": len(ok), "n_nan": len(values) - len(ok),
            "draws": ok}


def _study(b: _Bank, g: torch.Generator, counts: list[int], n_boot: int, draw, key: str) -> list[dict]:
    rows = []
    for c in counts:
        draws = [draw(b, g, c) for _ in range(n_boot)]
        rows.append({key: c, **{s: _summary([d[s] for d in draws]) for s in STATS}})
    return rows


def _full_axis(b: _Bank) -> _Axis:
    """The whole bank's axis computed as `axis.build` does (rows, not cells)."""
    _, per_role, _ = role_means(b.x, b.roles, b.kept, drop_empty=True)
    dflt = default_mean(b.x[b.valid], [r for r, v in zip(b.roles, b.valid.tolist()) if v])
    return _Axis(assistant_axis(dflt, per_role), per_role, dflt)


def convergence(acts: Float[torch.Tensor, "n layers d"], roles: list[str], questions: list[int],
                kept: Bool[torch.Tensor, " n"], role_counts=(12, 36, 72, 124), question_counts=(4, 8, 16),
                n_boot: int = 20, layer: int | None = None, seed: int = 0) -> dict:
    """The roles and questions studies (module docstring) at `layer` (default the middle one).

    Row i of `acts` is rollout i's mean activation, `roles[i]` its role or "default", `questions[i]`
    the index of the question it answered, `kept[i]` the adherence verdict. Role means use kept rows,
    the default mean every valid (non-NaN) default row, as `axis.build` does. Returns a JSON-able dict:
    layer, sizes, dropped_roles (no kept rollout), role_counts/question_counts used, clipped,
    by_roles/by_questions (per count: each statistic's mean, lo, hi, n_draws, n_nan, draws; None where
    nothing is held out), full_bank, protocol."""
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}.")
    b = _Bank(acts, roles, questions, kept, layer)
    rc, r_clip = _counts(role_counts, len(b.role_names), "role")
    qc, q_clip = _counts(question_counts, len(b.questions), "question")
    g = torch.Generator().manual_seed(seed)
    full = _full_axis(b)
    scored = b.kept & (b.is_def | b.of_roles(b.role_names))
    sep = separation(layer_projections(b.x[scored], full.axis), b.is_def[scored])
    return {
        "layer": b.layer, "n_layers": b.n_layers, "n_boot": n_boot, "seed": seed,
        "n_roles": len(b.role_names), "n_questions": len(b.questions),
        "n_default": int((b.is_def & b.valid).sum()), "n_role_rollouts_kept": int((b.kept & ~b.is_def).sum()),
        "dropped_roles": b.dropped, "role_counts": rc, "question_counts": qc,
        "clipped": {"roles": r_clip, "questions": q_clip},
        "by_roles": _study(b, g, rc, n_boot, _role_draw, "n_roles"),
        "by_questions": _study(b, g, qc, n_boot, _question_draw, "n_questions"),
        "full_bank": {"cos_axis_pc1": _cos_pc1(full), "auroc_in_sample": float(sep["auroc"][0]),
                      "d_prime_in_sample": float(sep["d_prime"][0]), "axis_norm": float(full.axis.norm())},
        "protocol": {
            "draws": "random subsets without replacement (seeded torch.Generator); interval = 2.5/97.5 "
                     "percentiles over draws",
            "heldout_auroc": "roles: kept rollouts of undrawn roles vs defaults, each question's on the axis "
                             "built without that question; questions: kept default vs role rollouts on undrawn "
                             "questions",
            "split_half_cosine": "roles: disjoint role halves, each with its own random half of the questions "
                                 "(defaults too); questions: disjoint question halves, all roles",
        },
    }


def read_run(run_dir: str | Path) -> tuple[Float[torch.Tensor, "n layers d"], list[str], list[int],
                                             Bool[torch.Tensor, " n"]]:
    """(acts, roles, question indices, kept) of a finished `steerlens axis` run, read from its
    transcripts.json and the activation chunks it cached, by rollout id (no model needed).
    Question texts map to their index in `axis.data.load_questions()` (unknown texts after them)."""
    from axis.data import load_questions

    run = Path(run_dir)
    tpath, cache = run / "transcripts.json", run / "activations"
    if not tpath.is_file():
        raise ValueError(f"{tpath} does not exist: point --run at a finished `steerlens axis` run directory "
                         "(transcripts.json is written once every rollout is harvested).")
    rows = read_json(tpath)
    where = chunk_index(sorted(cache.glob("chunk_*.safetensors")))
    missing = [r["id"] for r in rows if r["id"] not in where]
    if missing:
        raise ValueError(f"{len(missing)} of {len(rows)} rollouts in {tpath} have no cached activations in "
                         f"{cache}; let the build finish (or rerun `steerlens axis` with the same --out).")
    acts = gather_means(where, [r["id"] for r in rows])
    index = {q: i for i, q in enumerate(load_questions())}
    questions = [index.setdefault(r["question"], len(index)) for r in rows]
    kept = torch.tensor([bool(r.get("valid", True)) and bool(r.get("adheres", True)) for r in rows])
    return acts, [r["role"] for r in rows], questions, kept


def plot_convergence(result: dict, path) -> None:
    """Three panels vs the number of roles (bottom axis) and of questions (top axis), with 95% intervals."""
    from matplotlib.figure import Figure  # not pyplot: no global backend switch
    from matplotlib.ticker import MaxNLocator

    titles = {"cos_axis_pc1": "cos(axis, PC1)", "heldout_auroc": "held-out AUROC",
              "split_half_cosine": "split-half cosine"}
    full = {"cos_axis_pc1": (result["full_bank"]["cos_axis_pc1"], "full bank"),
            "heldout_auroc": (result["full_bank"]["auroc_in_sample"], "full bank, in-sample")}
    fig = Figure(figsize=(13, 4))
    for ax, stat in zip(fig.subplots(1, 3), STATS):
        top = ax.twiny()
        for a, rows, key, style, label in ((ax, result["by_roles"], "n_roles", "o-C0", "vs roles (all questions)"),
                                           (top, result["by_questions"], "n_questions", "s--C1",
                                            "vs questions (all roles)")):
            pts = [(r[key], r[stat]) for r in rows if r[stat] is not None and r[stat]["mean"] is not None]
            if pts:
                x, m = [p[0] for p in pts], [p[1]["mean"] for p in pts]
                err = [[mi - p[1]["lo"] for mi, p in zip(m, pts)], [p[1]["hi"] - mi for mi, p in zip(m, pts)]]
                a.errorbar(x, m, yerr=err, fmt=style, ms=4, capsize=3, label=label)
        if stat in full:
            ax.axhline(full[stat][0], color="grey", ls=":", lw=1, label=full[stat][1])
        ax.set_xlim(0, result["n_roles"] * 1.04)  # the same scales in every panel, held-out or not
        top.set_xlim(0, result["n_questions"] * 1.04)
        top.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("number of roles")
        top.set_xlabel("number of questions", color="C1")
        ax.set_title(f"{titles[stat]}, layer {result['layer']}", fontsize=10)
        handles = [h for a in (ax, top) for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def save_convergence(result: dict, out_dir: str | Path) -> Path:
    """convergence.json and convergence.png in `out_dir`; returns the JSON's path."""
    out = Path(out_dir)
    write_json(out / "convergence.json", result)
    plot_convergence(result, out / "convergence.png")
    return out / "convergence.json"
