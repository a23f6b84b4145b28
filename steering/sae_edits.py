"""SAE feature edits that keep the SAE's error term: `Clamp` (set features) and `Scale` (multiply them).

They use the identity decode(f') + (h - decode(f)) = h + (f' - f) @ W_dec, so everything the SAE does
not reconstruct stays untouched (Templeton et al. 2024) and only the edited features' decoder rows
are multiplied: with no feature change the output equals the clean model's exactly. Every SAE is
reached through `saes.access`; `prepare_sae` is the one fit check all SAE interventions run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from features import concept_max_activations
from saes.access import (check_editable, check_features, check_sae, decoder_rows, feature_id, feature_reader, load_sae,
                         on_device, sae_path)
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
        self.features = {feature_id(f, "Clamp", digit_strings=True): check_finite(v, f"Clamp value of feature {f}")
                         for f, v in self.features.items()}
        if self.max_activations is not None:
            self.max_activations = {feature_id(f, "Clamp", digit_strings=True):
                                    check_finite(v, f"max activation of feature {f}")
                                    for f, v in self.max_activations.items()}
        self.positions = check_positions(self.positions)

    def targets(self) -> dict[int, float]:
        """Absolute target activation per feature."""
        if not self.relative:
            return dict(self.features)
        maxes = self.max_activations
        if maxes is None:
            path = sae_path(self.sae)
            if path is None:
                raise ValueError("Relative clamp of an in-memory SAE needs max_activations={feature: value}.")
            maxes = concept_max_activations(path, list(self.features))
        missing = [f for f in self.features if f not in maxes]
        if missing:
            raise KeyError(f"Relative clamp: max_activations lacks feature(s) {missing}.")
        return {f: v * maxes[f] for f, v in self.features.items()}

    def hooks(self, model):
        sae, hook, ids, idx, rows = self._prepare(model, self.features)
        target = self.targets()
        values = torch.tensor([target[f] for f in ids], dtype=rows.dtype, device=rows.device)
        read = feature_reader(sae, idx)

        def edit(x):
            f = read(x.to(rows.dtype))
            return x + ((values - f) @ rows).to(x.dtype)
        return self._hook(sae, hook, edit)

    def to_dict(self):
        return {"type": "Clamp", "sae": sae_field(self.sae), "features": self.features, "relative": self.relative,
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
        self.features = [feature_id(f, "Scale", digit_strings=True) for f in self.features]
        self.factor = check_finite(self.factor, "Scale.factor")
        self.positions = check_positions(self.positions)

    def hooks(self, model):
        sae, hook, _, idx, rows = self._prepare(model, self.features)
        k = self.factor - 1.0
        read = feature_reader(sae, idx)

        def edit(x):
            f = read(x.to(rows.dtype))
            return x + ((k * f) @ rows).to(x.dtype)
        return self._hook(sae, hook, edit)

    def to_dict(self):
        return {"type": "Scale", "sae": sae_field(self.sae), "features": self.features, "factor": self.factor,
                "positions": self.positions, "hook": self.hook}

