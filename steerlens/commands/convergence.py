"""How many roles and questions does the Assistant Axis need? Resample a finished `steerlens axis` run.

No model and no generation: the run's transcripts.json (role, question, valid/adheres per rollout)
and its cached response-mean activations (RUN/activations) are read back by rollout id, and the axis
is recomputed at one layer on random subsets of roles (all questions) and of questions (all roles):
cos(axis, PC1), held-out AUROC and split-half cosine with 95% intervals over the draws
(`axis.convergence` says what is held out). Writes convergence.json and convergence.png to --out
(default: the run directory); prints a one-line summary JSON last.

    steerlens convergence --run runs/axis/smollm2-full
    steerlens convergence --run runs/axis/smollm2 --n-boot 50 --layer 15 --out runs/axis/convergence
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from steerlens.commands.common import split_list
from steerlens.errors import UsageError


def add_arguments(ap) -> None:
    ap.add_argument("--run", required=True, help="a finished `steerlens axis` run directory")
    ap.add_argument("--out", default=None, help="where convergence.json/.png go (default: the run directory)")
    ap.add_argument("--n-boot", type=int, default=20, help="random draws per count (default 20)")
    ap.add_argument("--layer", type=int, default=None, help="layer to study (default: the middle one)")
    ap.add_argument("--role-counts", default="12,36,72,124", help="comma-separated numbers of roles to draw")
    ap.add_argument("--question-counts", default="4,8,16", help="comma-separated numbers of questions to draw")
    ap.add_argument("--seed", type=int, default=0)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in split_list(text)]
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a comma-separated list of integers, e.g. 12,36,72")


def summary(result: dict) -> dict:
    """Per count, the means of the three statistics (None where nothing was held out)."""
    def means(rows, key):
        return {r[key]: {s: None if r[s] is None or r[s]["mean"] is None else round(r[s]["mean"], 3)
                         for s in ("cos_axis_pc1", "heldout_auroc", "split_half_cosine")} for r in rows}

    return {"layer": result["layer"], "n_roles": result["n_roles"], "n_questions": result["n_questions"],
            "clipped": result["clipped"], "full_bank_cos_axis_pc1": round(result["full_bank"]["cos_axis_pc1"], 3),
            "by_roles": means(result["by_roles"], "n_roles"),
            "by_questions": means(result["by_questions"], "n_questions")}


def run(args) -> dict:
    from axis.convergence import convergence, read_run, save_convergence

    t0 = time.time()
    acts, roles, questions, kept = read_run(args.run)
    result = convergence(acts, roles, questions, kept, _ints(args.role_counts, "--role-counts"),
                         _ints(args.question_counts, "--question-counts"), n_boot=args.n_boot, layer=args.layer,
                         seed=args.seed)
    result |= {"run": str(args.run), "seconds": round(time.time() - t0, 1)}
    path = save_convergence(result, Path(args.out or args.run))
    out = {"out": str(path), **summary(result), "seconds": result["seconds"]}
    print(json.dumps(out))
    return out
