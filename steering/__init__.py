"""Steering interventions on TransformerLens hook points, and judge-free metrics to evaluate them.

    from steering import Clamp
    with Clamp("saes/pretrained/smollm2-default", {1234: 10.0}, relative=True).apply(model):
        generate(model, ["What is your physical form?"])

Modules: `interventions` (Add, Clamp, Scale, Ablate, Cap, SAECap, Steering), `positions`
(all / prompt / generated / explicit, KV-cache safe), `sae` (loading SAEs and concepts.json),
`metrics`, `directions` (difference of means, matched norms), `experiment` (conditions, sweeps,
plots), `compare` (W&B-tracked comparisons) and `amplification` (the Golden Gate and sycophancy
experiments as one call, which the notebooks use:
`run_amplification(model, "golden_gate", "runs/nb", AmplificationConfig(n_prompts=4))`).
"""

from steering.interventions import (Ablate, Add, Cap, Clamp, Intervention, SAECap, Scale, Steering, from_dict,
                                    load)
from steering.positions import Positions
from steering.sae import DEFAULT_SAE, load_concepts, load_sae

__all__ = ["Ablate", "Add", "Cap", "Clamp", "DEFAULT_SAE", "Intervention", "Positions", "SAECap", "Scale",
           "Steering", "from_dict", "load", "load_concepts", "load_sae"]
