"""The shipped cap recipe: the cap a sweep chose on dev prompts, saved beside its axis as a steering file.

`cap.json` is a `steering.Steering` of `Cap` / `SAECap` with the taus already read off the axis,
so `steering.load(".../cap.json")` is all a user needs; `cap_recipe.json` beside it records the
`CapConfig`, the selection rule, the dev rows it was chosen from and the held-out test rows. The
rule: among conditions that fire on < 1% of ordinary answer tokens and keep capability within 1%
(NLL, multiple choice, chat-format KL / clean NLL), the largest AI-identity gain on persona prompts,
then the largest refusal log-odds gain.
"""

from __future__ import annotations

import os
from pathlib import Path

from lm.io import write_json
from steering import Steering, load

from axis.artifact import AssistantAxis
from axis.capping import CapConfig, cap_interventions

RECIPE, EVIDENCE = "cap.json", "cap_recipe.json"
MAX_FIRING, MAX_CAPABILITY = 0.01, 0.01
REPO = Path(__file__).resolve().parent.parent
SHIPPED_AXIS = Path(__file__).resolve().parent / "pretrained" / "smollm2-default"


def firing(row: dict) -> float:
    """Share of ordinary answer tokens on which any layer's cap pushed."""
    return (row.get("cap_active_ordinary") or {}).get("any_hook", float("nan"))


def eligible(row: dict) -> bool:
    return firing(row) < MAX_FIRING and bool(row.get("capability_within_1pct"))


def choose_cap(rows: list[dict]) -> dict:
    """The chosen row of a sweep (rows[0] is the uncapped baseline), by the rule in the module docstring."""
    ok = [r for r in rows[1:] if eligible(r)]
    if not ok:
        raise ValueError(f"No cap condition fires on < {MAX_FIRING:.0%} of ordinary tokens with capability within "
                         f"{MAX_CAPABILITY:.0%}; widen the sweep (lower percentiles or triggers, smaller gains).")
    return max(ok, key=lambda r: (r["identity_gain"], r.get("refusal_log_odds_gain", 0.0)))


def _relative_saes(record, root: Path):
    """SAE paths inside the repository written relative to `root`, so the recipe loads from any checkout."""
    if isinstance(record, list):
        return [_relative_saes(r, root) for r in record]
    if isinstance(record, dict):
        out = {k: _relative_saes(v, root) for k, v in record.items()}
        sae = out.get("sae")
        if isinstance(sae, str) and ":" not in sae:
            p = Path(sae) if Path(sae).is_absolute() else REPO / sae
            if p.exists():
                out["sae"] = os.path.relpath(p.resolve(), root.resolve())
        return out
    return record


def ship(axis_dir: str | Path, axis: AssistantAxis, cfg: CapConfig, evidence: dict) -> Path:
    """Write cap.json (the caps of `cfg` on `axis`) and cap_recipe.json (config, rule, evidence)."""
    root = Path(axis_dir)
    steering = Steering(cap_interventions(axis, cfg))
    write_json(root / RECIPE, _relative_saes(steering.to_dict(), root))
    write_json(root / EVIDENCE, {"config": cfg.to_dict(), "rule": __doc__.split("The\nrule: ")[-1].strip(),
                                 **evidence})
    return root / RECIPE


def load_cap(axis_dir: str | Path) -> Steering:
    """The shipped cap of an axis directory (`steering.load` of its cap.json)."""
    path = Path(axis_dir) / RECIPE
    if not path.is_file():
        raise FileNotFoundError(f"{axis_dir} has no {RECIPE}; choose one with `steerlens cap --axis {axis_dir} --ship {axis_dir}`.")
    return load(path)


def _brief(row: dict) -> dict:
    keys = ("condition", "identity_assistant_rate", "identity_gain", "default_identity_assistant_rate",
            "default_identity_gain", "refusal_rate", "refusal_log_odds",
            "refusal_log_odds_gain", "nll_rel", "mc_rel", "kl_chat_rel_to_clean_nll", "capability_within_1pct")
    return {**{k: row.get(k) for k in keys}, "fires_ordinary": firing(row),
            "fires_persona": (row.get("cap_active_persona") or {}).get("any_hook"),
            "fires_ordinary_per_layer": (row.get("cap_active_ordinary") or {}).get("per_hook")}


def tune_and_ship(model, axis: AssistantAxis, axis_dir: str | Path, conditions: list, cfg, out: str | Path,
                  command: str = "") -> dict:
    """Sweep `conditions` on the dev split, choose (rule above), check the choice against uncapped on
    the test split, ship it into `axis_dir`; returns the evidence recorded in cap_recipe.json."""
    from dataclasses import replace

    from steering.experiment import Condition

    from axis.cap_sweep import cap_condition
    from axis.evaluate import evaluate_caps

    out = Path(out)
    dev = evaluate_caps(model, axis, conditions, replace(cfg, split="dev", parts=["caps"]), out / "dev",
                        extra={"split": "dev"})
    row = choose_cap(dev["conditions"])
    chosen = next(c for c in conditions if c.name == row["condition"])
    cc = CapConfig(**chosen.config)
    test = evaluate_caps(model, axis, [Condition("uncapped"), cap_condition(axis, chosen.name, cc)],
                         replace(cfg, split="test", parts=["caps"]), out / "test", extra={"split": "test"})
    evidence = {"chosen": chosen.name, "command": command,
                "dev": [_brief(r) for r in dev["conditions"]], "test": [_brief(r) for r in test["conditions"]],
                "samples_test": test["conditions"][1]["samples"], "samples_test_uncapped": test["conditions"][0]["samples"]}
    ship(axis_dir, axis, cc, evidence)
    return evidence
