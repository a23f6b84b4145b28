"""Raw residual-stream edits: `Add` (h += alpha * v) and `Ablate` (remove a direction, or SAE features)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float

from lm.kernel import Kernel
from steering.intervention import Intervention, check_finite, check_hook, check_vector, model_place
from steering.positions import Positions, check_positions, edit_hook
from saes.access import feature_id
from steering.sae_edits import Scale, sae_field


def add_edit(x, params, state, valid):
    """h += alpha v (the kernel of `Add`)."""
    return x + params[0], state


def ablate_edit(x, params, state, valid):
    """h -= <h, u> u for a unit u (the kernel of a raw-direction `Ablate`)."""
    u = params[0]
    return x - (x @ u).unsqueeze(-1) * u, state


@dataclass(eq=False)
class Add(Intervention):
    hook: str
    vector: Float[torch.Tensor, " d"]
    alpha: float = 1.0
    positions: Positions = "all"

    def __post_init__(self):
        self.vector = check_vector(self.vector, "Add.vector")
        self.alpha = check_finite(self.alpha, "Add.alpha")
        self.positions = check_positions(self.positions)

    def hooks(self, model):
        d = len(self.vector)
        check_hook(model, self.hook, d, "Add")
        device, dtype = model_place(model)
        delta = (self.alpha * self.vector).to(device, dtype)
        return [(self.hook, edit_hook(Kernel(self.hook, add_edit, (delta,)), self.positions, d, "Add"))]

    def to_dict(self):
        return {"type": "Add", "hook": self.hook, "vector": self.vector.tolist(), "alpha": self.alpha,
                "positions": self.positions}


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
            self.direction = check_vector(self.direction, "Ablate.direction", nonzero=True)
            if self.hook is None:
                raise ValueError("Ablate of a raw direction needs hook=, e.g. 'blocks.15.hook_resid_post'.")
        else:
            if self.sae is None or not self.features:
                raise ValueError("Ablate of SAE features needs both sae= and features=[...].")
            self.features = [feature_id(f, "Ablate", digit_strings=True) for f in self.features]
        self.positions = check_positions(self.positions)

    def hooks(self, model):
        if self.direction is None:
            return Scale(self.sae, self.features, 0.0, self.positions, self.hook).hooks(model)
        d = len(self.direction)
        check_hook(model, self.hook, d, "Ablate")
        device, dtype = model_place(model)
        u = F.normalize(self.direction, dim=0).to(device, dtype)
        return [(self.hook, edit_hook(Kernel(self.hook, ablate_edit, (u,)), self.positions, d, "Ablate"))]

    def to_dict(self):
        if self.direction is not None:
            return {"type": "Ablate", "hook": self.hook, "direction": self.direction.tolist(),
                    "positions": self.positions}
        return {"type": "Ablate", "sae": sae_field(self.sae), "features": self.features,
                "positions": self.positions, "hook": self.hook}
