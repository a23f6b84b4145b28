"""Shipped feature-steering recipes: `steering/recipes/<name>.json` and their results beside them.

A recipe is a saved intervention (usually a `Steering` of `Clamp`s in one or more SAEs) that
`steering.load(path)` returns; `load_recipe` also checks it steers through SAE features only (every
leaf names its SAE; no raw vectors). `<name>.results.json` beside it records the dev/test figures,
the strengths in both units and the command that chose them.
"""

from __future__ import annotations

import os
from pathlib import Path

from lm.io import read_json, write_json
from steering.intervention import Intervention, Steering, load
from steering.sae_edits import Clamp, Scale

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
SAE_LEAVES = (Clamp, Scale)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json") if not p.name.endswith(".results.json"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file as given, else the shipped recipe of that name."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.json"
    if not shipped.is_file():
        raise FileNotFoundError(f"No recipe {str(name_or_path)!r}: give a JSON file or a shipped name "
                                f"({', '.join(recipe_names()) or 'none shipped'}).")
    return shipped


def leaves(x: Intervention) -> list[Intervention]:
    return [y for z in x.interventions for y in leaves(z)] if isinstance(x, Steering) else [x]


def check_sae_only(x: Intervention, where: str) -> Intervention:
    """Refuse raw-vector leaves (Add, Ablate, Cap, ...) in a feature-steering recipe."""
    bad = [type(y).__name__ for y in leaves(x) if not isinstance(y, SAE_LEAVES)]
    if bad:
        raise ValueError(f"{where} steers with {', '.join(bad)}: a feature-steering recipe may hold only SAE "
                         "feature edits (Clamp or Scale naming an SAE); drop the raw vectors or load it with "
                         "steering.load instead.")
    return x


def load_recipe(name_or_path: str | Path) -> Intervention:
    """The recipe as an intervention, checked to steer through SAE features only."""
    path = recipe_path(name_or_path)
    return check_sae_only(load(path), str(path))


def recipe_results(name_or_path: str | Path) -> dict:
    """`<name>.results.json` beside the recipe."""
    path = recipe_path(name_or_path)
    res = path.with_name(path.stem + ".results.json")
    if not res.is_file():
        raise FileNotFoundError(f"{res} is missing: recipes ship with their results (scripts/tune_recipe.py writes both).")
    return read_json(res)


def save_recipe(x: Intervention, path: str | Path, results: dict | None = None) -> Path:
    """Write a recipe (SAE paths relative to the file, so the repository can move) and, given
    `results`, `<name>.results.json` beside it. Refuses raw-vector leaves."""
    path = Path(path)
    check_sae_only(x, str(path))

    def rel(d):
        if isinstance(d, list):
            return [rel(v) for v in d]
        if not isinstance(d, dict):
            return d
        d = {k: rel(v) for k, v in d.items()}
        if isinstance(d.get("sae"), str) and Path(d["sae"]).exists():
            d["sae"] = os.path.relpath(Path(d["sae"]).resolve(), path.resolve().parent)
        return d
    write_json(path, rel(x.to_dict()))
    if results is not None:
        write_json(path.with_name(path.stem + ".results.json"), results)
    return path
