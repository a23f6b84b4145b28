"""SAE feature edits that keep the SAE's error term: `Clamp` (set features) and `Scale` (multiply them).

They use the identity decode(f') + (h - decode(f)) = h + (f' - f) @ W_dec, so everything the SAE does
not reconstruct stays untouched (Templeton et al. 2024) and only the edited features' decoder rows
are multiplied: with no feature change the output equals the clean model's exactly. Every SAE is
reached through `saes.access`; `prepare_sae` is the one fit check all SAE interventions run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from features.latents import NORMS, concept_max_activations, sae_norms
from lm.kernel import Kernel
from saes.access import (check_editable, check_features, check_sae, decoder_rows, encoder_data, feature_id, load_sae,
                         on_device, read_sae, sae_path)
from steering.intervention import Intervention, check_finite, model_place
from steering.positions import Positions, check_positions, edit_hook


def prepare_sae(sae, model, hook: str | None, what: str):
    """The SAE (loaded, checked against `model` at `hook`, on the model's device) and its hook."""
    sae = load_sae(sae)
    hook = check_sae(model, sae, hook, what)
    check_editable(sae, what)
    return on_device(sae, model_place(model)[0]), hook


def sae_field(sae) -> str:
    """How an intervention records its SAE in JSON: the directory it was loaded from."""
    path = sae_path(sae)
    if path is None:
        raise ValueError("This intervention holds an in-memory SAE with no path, so it cannot be serialised: "
                         "save it with `sae.save_model(dir)` and build the intervention from `dir`.")
    return path


class _FeatureEdit(Intervention):
    """Encode at the SAE's hook, change chosen features, add back the change only."""

    def _prepare(self, model, features):
        what = type(self).__name__
        sae, hook = prepare_sae(self.sae, model, self.hook, what)
        ids = check_features(sae, features, what, nonempty=True)
        idx = torch.tensor(ids, device=sae.W_dec.device)
        return sae, hook, ids, idx, decoder_rows(sae, idx)

    def _kernel(self, sae, hook, fn, params, static):
        kernel = Kernel(hook, fn, params, static)
        return [(hook, edit_hook(kernel, self.positions, sae.cfg.d_in, type(self).__name__))]


def clamp_edit(x, params, state, valid, mode, *source):
    """The kernel of `Clamp`: params = (*encoder tensors, feature ids, decoder rows, values)."""
    *enc, idx, rows, values = params
    if mode == "project":
        return OPS[mode](x, None, None, rows, values), state
    f, a_max, _ = read_sae(x.to(rows.dtype), tuple(enc), source, idx)
    return OPS[mode](x, f, a_max, rows, values), state


def scale_edit(x, params, state, valid, *source):
    """The kernel of `Scale`: params = (*encoder tensors, feature ids, decoder rows, factor - 1)."""
    *enc, idx, rows, k = params
    f = read_sae(x.to(rows.dtype), tuple(enc), source, idx)[0]
    return x + ((k * f) @ rows).to(x.dtype), state


def _set(x, f, a_max, rows, values):
    """Templeton et al.: each feature becomes its value."""
    return x + ((values - f) @ rows).to(x.dtype)


def _add(x, f, a_max, rows, values):
    """Arad et al.: each feature grows by value x a_max, the largest activation of any feature at the token."""
    return x + ((a_max[..., None] * values) @ rows).to(x.dtype)


def _project(x, f, a_max, rows, values):
    """Projection clamping: the residual's component along each unit decoder direction becomes its value
    (absolute residual units), one direction after another."""
    u = rows / rows.norm(dim=-1, keepdim=True)
    y = x.to(rows.dtype)
    for j in range(u.shape[0]):
        y = y + (values[j] - y @ u[j])[..., None] * u[j]
    return y.to(x.dtype)


OPS = {"set": _set, "add": _add, "project": _project}  # mode -> operator (x, f, a_max, rows, values) -> x'
UNITS = {"set": "feature activation (x max activation when relative)", "add": "x a_max per token",
         "project": "x the layer's median residual norm"}


@dataclass(eq=False)
class Clamp(_FeatureEdit):
    """Steer SAE features on the chosen tokens, SAE error kept; `mode` picks the literature's operator:

    - "set" (Scaling Monosemanticity's clamp): feature <- value; with `relative=True` value is a
      multiple of the feature's max activation (`max_activations`, else the SAE dir's concepts.json);
    - "add" (Arad et al.'s amplification): feature <- feature + value x a_max, a_max the largest
      activation of any feature at that token;
    - "project" (projection clamping): the residual's component along the feature's unit decoder
      direction <- value x `unit`, `unit` the layer's median residual norm (default: the SAE dir's
      norms.json, `features.latents.sae_norms`).
    """

    sae: object  # SAE directory or a loaded sae_lens.SAE
    features: dict[int, float]
    relative: bool = False
    max_activations: dict[int, float] | None = None
    positions: Positions = "all"
    hook: str | None = None  # defaults to the SAE's hook; any other is refused
    mode: str = "set"
    unit: float | None = None  # "project": residual-norm unit (None: the SAE dir's norms.json)

    def __post_init__(self):
        if not isinstance(self.features, dict):
            raise TypeError("Clamp.features is a dict {feature_id: value}, e.g. {1234: 10.0}.")
        if self.mode not in OPS:
            raise ValueError(f"Clamp.mode {self.mode!r} is unknown; choose one of {sorted(OPS)}.")
        if self.relative and self.mode != "set":
            raise ValueError(f"Clamp(relative=True) applies to mode 'set' only; mode {self.mode!r} values are "
                             f"already relative ({UNITS[self.mode]}).")
        self.features = {feature_id(f, "Clamp", digit_strings=True): check_finite(v, f"Clamp value of feature {f}")
                         for f, v in self.features.items()}
        if self.max_activations is not None:
            self.max_activations = {feature_id(f, "Clamp", digit_strings=True):
                                    check_finite(v, f"max activation of feature {f}")
                                    for f, v in self.max_activations.items()}
        if self.unit is not None and not check_finite(self.unit, "Clamp.unit") > 0:
            raise ValueError(f"Clamp.unit must be a positive residual norm, got {self.unit}.")
        self.positions = check_positions(self.positions)

    def _maxes(self) -> dict[int, float]:
        if self.max_activations is not None:
            return self.max_activations
        path = sae_path(self.sae)
        if path is None:
            raise ValueError("Relative clamp of an in-memory SAE needs max_activations={feature: value}.")
        return concept_max_activations(path, list(self.features))

    def _unit(self) -> float:
        if self.unit is not None:
            return self.unit
        path = sae_path(self.sae)
        if path is None:
            raise ValueError("Clamp(mode='project') of an in-memory SAE needs unit=<the layer's median residual norm>.")
        return sae_norms(path)["residual_norm_median"]

    def targets(self) -> dict[int, float]:
        """The operator's value per feature in absolute units (activation for set/add... for "add" the
        multiple of a_max, for "project" residual-norm units)."""
        if self.mode == "project":
            return {f: v * self._unit() for f, v in self.features.items()}
        if not self.relative:
            return dict(self.features)
        maxes = self._maxes()
        missing = [f for f in self.features if f not in maxes]
        if missing:
            raise KeyError(f"Relative clamp: max_activations lacks feature(s) {missing}.")
        return {f: v * maxes[f] for f, v in self.features.items()}

    def units(self) -> dict[int, dict[str, float | None]]:
        """Each feature's strength in both units results files record: multiple of the feature's
        max activation and fraction of the layer's median residual norm (through the SAE dir's
        norms.json; "add" converts at the median a_max). None where a unit is unknown."""
        path = sae_path(self.sae)
        norms = sae_norms(path) if path is not None and Path(path, NORMS).is_file() else {}
        med, amax = norms.get("residual_norm_median", self.unit), norms.get("a_max_median")
        try:
            maxes = self._maxes()
        except (KeyError, ValueError, FileNotFoundError):
            maxes = {}
        sae = load_sae(self.sae)
        out = {}
        for f, v in self.features.items():
            d, mx = float(decoder_rows(sae)[f].norm()), maxes.get(f)
            act = {"set": v * mx if self.relative and mx else (None if self.relative else v),
                   "add": v * amax if amax else None,
                   "project": v * med / d if med else None}[self.mode]
            out[f] = {"x_max_activation": act / mx if act is not None and mx else None,
                      "x_median_norm": (v if self.mode == "project" else
                                        act * d / med if act is not None and med else None),
                      "value": v, "mode": self.mode}
        return out

    def hooks(self, model):
        sae, hook, ids, idx, rows = self._prepare(model, self.features)
        target = self.targets()
        values = torch.tensor([target[f] for f in ids], dtype=rows.dtype, device=rows.device)
        enc, source = ((), ("none",)) if self.mode == "project" else encoder_data(sae)
        return self._kernel(sae, hook, clamp_edit, (*enc, idx, rows, values), (self.mode, *source))

    def to_dict(self):
        return {"type": "Clamp", "sae": sae_field(self.sae), "features": self.features, "relative": self.relative,
                "max_activations": self.max_activations, "positions": self.positions, "hook": self.hook,
                "mode": self.mode, "unit": self.unit}

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
        self.features = [feature_id(f, "Scale", digit_strings=True) for f in self.features]
        self.factor = check_finite(self.factor, "Scale.factor")
        self.positions = check_positions(self.positions)

    def hooks(self, model):
        sae, hook, _, idx, rows = self._prepare(model, self.features)
        k = torch.tensor(self.factor - 1.0, dtype=rows.dtype, device=rows.device)
        enc, source = encoder_data(sae)
        return self._kernel(sae, hook, scale_edit, (*enc, idx, rows, k), source)

    def to_dict(self):
        return {"type": "Scale", "sae": sae_field(self.sae), "features": self.features, "factor": self.factor,
                "positions": self.positions, "hook": self.hook}

