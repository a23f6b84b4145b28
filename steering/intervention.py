"""The intervention value object: `.hooks(model)`, `.apply(model)`, a JSON round trip; and `Steering`.

Modelled on steering-vectors' `SteeringVector` (a plain dataclass with `.apply(model)` as a context
manager), but every intervention names a TransformerLens hook point and is applied the one
TransformerLens way, `with model.hooks(fwd_hooks=x.hooks(model))`, so it also steers
`lm.generate.generate(..., fwd_hooks=x.hooks(model))`, harvesting and plain forwards alike.
`hooks(model)` validates everything before returning, so bad input leaves the model unhooked.
Each subclass registers itself by class name, which is the `"type"` of its JSON record.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float

from lm.io import read_json, write_json
from saes.access import D_MODEL_HOOKS

KINDS: dict[str, type] = {}


class Intervention:
    """Shared behaviour: `.apply(model)` context manager, JSON round trip, save/load."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            KINDS[cls.__name__] = cls

    def hooks(self, model) -> list[tuple[str, object]]:
        raise NotImplementedError

    @contextlib.contextmanager
    def apply(self, model):
        """Steer inside the block; hooks are removed on exit, also when the block raises."""
        hooks = self.hooks(model)  # validates everything before touching the model
        with model.hooks(fwd_hooks=hooks):
            yield model

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        kind = d.pop("type", cls.__name__)
        if kind != cls.__name__:
            raise ValueError(f"{cls.__name__}.from_dict got a {kind!r} record; use steering.from_dict.")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())


@dataclass(eq=False)
class Steering(Intervention):
    """Several interventions applied together (same or different layers, in list order)."""

    interventions: list = field(default_factory=list)

    def __post_init__(self):
        items = []
        for x in self.interventions:
            x = from_dict(x) if isinstance(x, dict) else x
            if not isinstance(x, Intervention):
                raise TypeError(f"Steering takes interventions (Add, Clamp, ...), got {type(x).__name__}.")
            items.append(x)
        self.interventions = items

    def hooks(self, model):
        return [h for x in self.interventions for h in x.hooks(model)]

    def to_dict(self):
        return {"type": "Steering", "interventions": [x.to_dict() for x in self.interventions]}


def from_dict(d: dict) -> Intervention:
    """Rebuild any intervention from its `to_dict()` record."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in KINDS:
        raise ValueError(f"Not an intervention record (type={kind!r}); known types: {sorted(KINDS)}.")
    return KINDS[kind].from_dict(d)


def load(path: str | Path) -> Intervention:
    """The intervention saved at `path`. An SAE named by a relative path that exists beside the file
    (shipped recipes write `../../saes/...`) is read from there, so recipes load from any directory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No intervention file {path}; give the path of a JSON file written by .save() "
                                "(shipped recipes: steering/recipes/*.json).")
    try:
        record = read_json(path)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from None
    try:
        return from_dict(_resolve_saes(record, path.parent))
    except (TypeError, KeyError) as e:
        raise ValueError(f"{path} does not match the intervention schema ({e}); write it with "
                         "Intervention.save() or follow steering/recipes/README.md.") from None


def _resolve_saes(record, root: Path):
    if isinstance(record, list):
        return [_resolve_saes(r, root) for r in record]
    if not isinstance(record, dict):
        return record
    out = {k: _resolve_saes(v, root) for k, v in record.items()}
    sae = out.get("sae")
    if isinstance(sae, str) and ":" not in sae and not Path(sae).is_absolute() and (root / sae).exists():
        out["sae"] = str((root / sae).resolve())
    return out


def check_finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}.")
    return float(value)


def check_vector(v, what: str, nonzero: bool = False) -> Float[torch.Tensor, " d"]:
    try:
        t = torch.as_tensor(v, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what} must be a 1-D tensor or list of floats ({e}).") from None
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{what} must be a non-empty 1-D vector, got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or inf values.")
    if nonzero and t.norm() == 0:
        raise ValueError(f"{what} is the zero vector; a direction needs a non-zero norm.")
    return t


def check_hook(model, hook: str, d: int, what: str) -> None:
    if not isinstance(hook, str) or hook not in model.hook_dict:
        raise ValueError(f"{what}: unknown hook {hook!r}; use a TransformerLens hook name such as "
                         f"'blocks.{{0..{model.cfg.n_layers - 1}}}.hook_resid_post'.")
    if hook.endswith(D_MODEL_HOOKS) and d != model.cfg.d_model:
        raise ValueError(f"{what}: vector has size {d} but {hook} carries vectors of size {model.cfg.d_model}.")


def model_place(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.original_model.parameters())
    return p.device, p.dtype
