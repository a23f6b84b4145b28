"""Steering interventions: small value objects that become TransformerLens hooks.

Modelled on steering-vectors' `SteeringVector` (a plain dataclass with `.apply(model)` as a context
manager), but every intervention names a TransformerLens hook point and is applied the one
TransformerLens way, `with model.hooks(fwd_hooks=x.hooks(model))`, so it also steers
`lm.generate.generate(..., fwd_hooks=x.hooks(model))`, harvesting and plain forwards alike.

- `Add`: h += alpha * v                        - `Ablate`: remove a direction, or SAE features
- `Clamp`: set SAE features, keep the SAE error  - `Scale`: multiply SAE features
- `Cap`: h += v * relu(tau - <h, v>) (floor) or h -= v * relu(<h, v> - tau) (ceiling)
- `SAECap`: the same cap on SAE feature activations projected on a feature-space axis
- `Steering`: several of the above at once (several layers)

SAE edits use the identity decode(f') + (h - decode(f)) = h + (f' - f) @ W_dec, so everything the
SAE does not reconstruct stays untouched (Templeton et al. 2024) and only the edited features'
decoder rows are multiplied: with no feature change the output equals the clean model's exactly.
All inputs are checked before a hook is attached, so bad input leaves the model unhooked.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float

from lm.io import read_json, write_json
from steering import sae as saes
from steering.positions import Positions, check_positions, edit_hook
from steering.window import WindowMean, check_window, shortfall

MODES = ("floor", "ceiling")
D_MODEL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_embed")


def _finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}.")
    return float(value)


def _vector(v, what: str, nonzero: bool = False) -> Float[torch.Tensor, " d"]:
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


def _mode(mode: str, what: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{what}: mode={mode!r}, use 'floor' (raise projections below tau) or 'ceiling'.")
    return mode


def _window(window, gain, positions, what: str) -> tuple[int, float]:
    try:
        window, gain = check_window(window, gain)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if window and positions != "all":
        raise ValueError(f"{what}: a windowed cap (window={window}) averages consecutive tokens, so it needs "
                         f"positions='all' (got {positions!r}).")
    return window, gain


def _place(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.original_model.parameters())
    return p.device, p.dtype


def _check_hook(model, hook: str, d: int, what: str) -> None:
    if not isinstance(hook, str) or hook not in model.hook_dict:
        raise ValueError(f"{what}: unknown hook {hook!r}; use a TransformerLens hook name such as "
                         f"'blocks.{{0..{model.cfg.n_layers - 1}}}.hook_resid_post'.")
    if hook.endswith(D_MODEL_HOOKS) and d != model.cfg.d_model:
        raise ValueError(f"{what}: vector has size {d} but {hook} carries vectors of size {model.cfg.d_model}.")


def _sae_field(sae) -> str:
    if isinstance(sae, (str, Path)):
        return str(sae)
    path = saes.sae_path(sae)
    if path is None:
        raise ValueError("This intervention holds an in-memory SAE with no path, so it cannot be serialised: "
                         "save it with `sae.save_model(dir)` and build the intervention from `dir`.")
    return path


class Intervention:
    """Shared behaviour: `.apply(model)` context manager, JSON round trip, save/load."""

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
class Add(Intervention):
    hook: str
    vector: Float[torch.Tensor, " d"]
    alpha: float = 1.0
    positions: Positions = "all"

    def __post_init__(self):
        self.vector = _vector(self.vector, "Add.vector")
        self.alpha = _finite(self.alpha, "Add.alpha")
        self.positions = check_positions(self.positions)

    def hooks(self, model):
        d = len(self.vector)
        _check_hook(model, self.hook, d, "Add")
        device, dtype = _place(model)
        delta = (self.alpha * self.vector).to(device, dtype)
        return [(self.hook, edit_hook(lambda x: x + delta, self.positions, d, "Add"))]

    def to_dict(self):
        return {"type": "Add", "hook": self.hook, "vector": self.vector.tolist(), "alpha": self.alpha,
                "positions": self.positions}


@dataclass(eq=False)
class Cap(Intervention):
    """Keep the projection on a unit direction at least (floor) or at most (ceiling) tau.

    `window=0` measures each token's own projection (Lu et al.); `window=W` measures the mean over
    the last W tokens and moves every token by `gain` times its shortfall (steering.window)."""

    hook: str
    direction: Float[torch.Tensor, " d"]
    tau: float
    mode: str = "floor"
    positions: Positions = "all"
    window: int = 0
    gain: float = 1.0

    def __post_init__(self):
        self.direction = _vector(self.direction, "Cap.direction", nonzero=True)
        self.tau = _finite(self.tau, "Cap.tau")
        self.mode = _mode(self.mode, "Cap")
        self.positions = check_positions(self.positions)
        self.window, self.gain = _window(self.window, self.gain, self.positions, "Cap")

    def hooks(self, model):
        d = len(self.direction)
        _check_hook(model, self.hook, d, "Cap")
        device, dtype = _place(model)
        v = F.normalize(self.direction, dim=0).to(device, dtype)
        tau, sign, gain = self.tau, 1.0 if self.mode == "floor" else -1.0, self.gain
        measure = WindowMean(self.window) if self.window else None

        def edit(x):
            return x + v * (sign * gain * shortfall(x @ v, tau, self.mode, measure)).unsqueeze(-1)
        return [(self.hook, edit_hook(edit, self.positions, d, "Cap"))]

    def to_dict(self):
        return {"type": "Cap", "hook": self.hook, "direction": self.direction.tolist(), "tau": self.tau,
                "mode": self.mode, "positions": self.positions, "window": self.window, "gain": self.gain}


class _FeatureEdit(Intervention):
    """SAE feature edits: encode at the SAE's hook, change chosen features, add back the change only."""

    def _prepare(self, model, features):
        sae, hook = saes.prepare(self.sae, model, self.hook, type(self).__name__)
        ids = saes.check_features(sae, features, type(self).__name__)
        idx = torch.tensor(ids, device=sae.W_dec.device)
        return sae, hook, ids, idx, saes.decoder_rows(sae, idx)

    def _hook(self, sae, hook, edit):
        return [(hook, edit_hook(edit, self.positions, sae.cfg.d_in, type(self).__name__))]


@dataclass(eq=False)
class Clamp(_FeatureEdit):
    """Set SAE features to fixed values on the chosen tokens (Scaling Monosemanticity's clamping).

    With `relative=True` the values are multiples of each feature's max activation, taken from
    `max_activations` or, when that is None, from `concepts.json` in the SAE directory.
    """

    sae: object  # SAE directory or a loaded sae_lens.SAE
    features: dict[int, float]
    relative: bool = False
    max_activations: dict[int, float] | None = None
    positions: Positions = "all"
    hook: str | None = None  # defaults to the SAE's hook; any other is refused

    def __post_init__(self):
        if not isinstance(self.features, dict):
            raise TypeError("Clamp.features is a dict {feature_id: value}, e.g. {1234: 10.0}.")
        self.features = {_int_id(f, "Clamp"): _finite(v, f"Clamp value of feature {f}") for f, v in self.features.items()}
        if self.max_activations is not None:
            self.max_activations = {_int_id(f, "Clamp"): _finite(v, f"max activation of feature {f}")
                                    for f, v in self.max_activations.items()}
        self.positions = check_positions(self.positions)

    def targets(self) -> dict[int, float]:
        """Absolute target activation per feature."""
        if not self.relative:
            return dict(self.features)
        maxes = self.max_activations
        if maxes is None:
            path = self.sae if isinstance(self.sae, (str, Path)) else saes.sae_path(self.sae)
            if path is None:
                raise ValueError("Relative clamp of an in-memory SAE needs max_activations={feature: value}.")
            maxes = saes.max_activations_from_concepts(path, list(self.features))
        missing = [f for f in self.features if f not in maxes]
        if missing:
            raise KeyError(f"Relative clamp: max_activations lacks feature(s) {missing}.")
        return {f: v * maxes[f] for f, v in self.features.items()}

    def hooks(self, model):
        sae, hook, ids, idx, rows = self._prepare(model, self.features)
        target = self.targets()
        values = torch.tensor([target[f] for f in ids], dtype=rows.dtype, device=rows.device)
        read = saes.feature_reader(sae, idx)

        def edit(x):
            f = read(x.to(rows.dtype))
            return x + ((values - f) @ rows).to(x.dtype)
        return self._hook(sae, hook, edit)

    def to_dict(self):
        return {"type": "Clamp", "sae": _sae_field(self.sae), "features": self.features, "relative": self.relative,
                "max_activations": self.max_activations, "positions": self.positions, "hook": self.hook}

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["features"] = {int(k): v for k, v in d["features"].items()}
        if d.get("max_activations") is not None:
            d["max_activations"] = {int(k): v for k, v in d["max_activations"].items()}
        return super().from_dict(d)


@dataclass(eq=False)
class Scale(_FeatureEdit):
    """Multiply SAE features by `factor` (0 ablates them), keeping the SAE error."""

    sae: object
    features: list[int]
    factor: float
    positions: Positions = "all"
    hook: str | None = None

    def __post_init__(self):
        self.features = [_int_id(f, "Scale") for f in self.features]
        self.factor = _finite(self.factor, "Scale.factor")
        self.positions = check_positions(self.positions)

    def hooks(self, model):
        sae, hook, _, idx, rows = self._prepare(model, self.features)
        k = self.factor - 1.0
        read = saes.feature_reader(sae, idx)

        def edit(x):
            f = read(x.to(rows.dtype))
            return x + ((k * f) @ rows).to(x.dtype)
        return self._hook(sae, hook, edit)

    def to_dict(self):
        return {"type": "Scale", "sae": _sae_field(self.sae), "features": self.features, "factor": self.factor,
                "positions": self.positions, "hook": self.hook}


@dataclass(eq=False)
class Ablate(Intervention):
    """Remove a raw direction (`Ablate(hook, direction)`) or SAE features (`Ablate(sae=..., features=[...])`)."""

    hook: str | None = None
    direction: Float[torch.Tensor, " d"] | None = None
    sae: object = None
    features: list[int] | None = None
    positions: Positions = "all"

    def __post_init__(self):
        raw, feat = self.direction is not None, self.sae is not None or self.features is not None
        if raw == feat:
            raise ValueError("Ablate takes either (hook, direction) for a raw direction or (sae, features) "
                             "for SAE features, not both or neither.")
        if raw:
            self.direction = _vector(self.direction, "Ablate.direction", nonzero=True)
            if self.hook is None:
                raise ValueError("Ablate of a raw direction needs hook=, e.g. 'blocks.15.hook_resid_post'.")
        else:
            if self.sae is None or not self.features:
                raise ValueError("Ablate of SAE features needs both sae= and features=[...].")
            self.features = [_int_id(f, "Ablate") for f in self.features]
        self.positions = check_positions(self.positions)

    def hooks(self, model):
        if self.direction is None:
            return Scale(self.sae, self.features, 0.0, self.positions, self.hook).hooks(model)
        d = len(self.direction)
        _check_hook(model, self.hook, d, "Ablate")
        device, dtype = _place(model)
        u = F.normalize(self.direction, dim=0).to(device, dtype)
        return [(self.hook, edit_hook(lambda x: x - (x @ u).unsqueeze(-1) * u, self.positions, d, "Ablate"))]

    def to_dict(self):
        if self.direction is not None:
            return {"type": "Ablate", "hook": self.hook, "direction": self.direction.tolist(),
                    "positions": self.positions}
        return {"type": "Ablate", "sae": _sae_field(self.sae), "features": self.features,
                "positions": self.positions, "hook": self.hook}


@dataclass(eq=False)
class SAECap(_FeatureEdit):
    """Cap the projection of SAE feature activations on a unit feature-space axis, keep the SAE error."""

    sae: object
    feature_axis: Float[torch.Tensor, " d_sae"]
    tau: float
    mode: str = "floor"
    positions: Positions = "all"
    hook: str | None = None
    window: int = 0  # as in Cap
    gain: float = 1.0

    def __post_init__(self):
        self.feature_axis = _vector(self.feature_axis, "SAECap.feature_axis", nonzero=True)
        self.tau = _finite(self.tau, "SAECap.tau")
        self.mode = _mode(self.mode, "SAECap")
        self.positions = check_positions(self.positions)
        self.window, self.gain = _window(self.window, self.gain, self.positions, "SAECap")

    def hooks(self, model):
        sae, hook = saes.prepare(self.sae, model, self.hook, "SAECap")
        if len(self.feature_axis) != sae.cfg.d_sae:
            raise ValueError(f"SAECap: feature_axis has size {len(self.feature_axis)}, the SAE has {sae.cfg.d_sae} features.")
        all_rows = saes.decoder_rows(sae, torch.arange(sae.cfg.d_sae, device=sae.W_dec.device))
        a = F.normalize(self.feature_axis, dim=0).to(all_rows.device, all_rows.dtype)
        a_dec = a @ all_rows  # what one unit along the axis adds to the reconstruction
        tau, sign, gain = self.tau, 1.0 if self.mode == "floor" else -1.0, self.gain
        measure = WindowMean(self.window) if self.window else None

        def edit(x):
            push = sign * gain * shortfall(sae.encode(x.to(a.dtype)) @ a, tau, self.mode, measure)
            return x + (push.unsqueeze(-1) * a_dec).to(x.dtype)
        return self._hook(sae, hook, edit)

    def to_dict(self):
        return {"type": "SAECap", "sae": _sae_field(self.sae), "feature_axis": self.feature_axis.tolist(),
                "tau": self.tau, "mode": self.mode, "positions": self.positions, "hook": self.hook,
                "window": self.window, "gain": self.gain}


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


def _int_id(f, what: str) -> int:
    if isinstance(f, bool) or not isinstance(f, int):
        if isinstance(f, str) and f.isdigit():
            return int(f)
        raise KeyError(f"{what}: feature ids are ints, got {f!r}.")
    return f


KINDS = {c.__name__: c for c in (Add, Cap, Clamp, Scale, Ablate, SAECap, Steering)}


def from_dict(d: dict) -> Intervention:
    """Rebuild any intervention from its `to_dict()` record."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in KINDS:
        raise ValueError(f"Not an intervention record (type={kind!r}); known types: {sorted(KINDS)}.")
    return KINDS[kind].from_dict(d)


def load(path: str | Path) -> Intervention:
    return from_dict(read_json(path))
