"""Steering interventions on TransformerLens hook points, and judge-free metrics to evaluate them.

    from steering import Clamp
    with Clamp("saes/pretrained/smollm2-default", {1234: 10.0}, relative=True).apply(model):
        generate(model, ["What is your physical form?"])

Interventions are small value objects (`intervention`: the base class, `Steering`, JSON records):
`vectors` (Add, Ablate), `sae_edits` (Clamp, Scale: SAE features, error term kept), `caps` (Cap,
SAECap), all measuring caps through `projection` (per token or `window`ed) and selecting tokens
through `positions` (all / prompt / generated / explicit, KV-cache safe). SAEs come from
`saes.access`, concept sets and latents from `features`. `control_vector` writes raw adds as
llama.cpp / repeng control vectors (GGUF) and reads them back. Then `metrics`, `directions` (difference
of means, matched norms), `experiment` (conditions, sweeps, plots), `compare` (W&B-tracked
comparisons) and `amplification` (the Golden Gate and sycophancy experiments as one call, which the
notebooks use: `run_amplification(model, "golden_gate", "runs/nb", AmplificationConfig(n_prompts=4))`).
"""

from saes.access import DEFAULT_SAE, load_sae
from steering.caps import Cap, SAECap
from steering.intervention import Intervention, Steering, from_dict, load
from steering.positions import Positions
from steering.sae_edits import Clamp, Scale
from steering.vectors import Ablate, Add

__all__ = ["Ablate", "Add", "Cap", "Clamp", "DEFAULT_SAE", "Intervention", "Positions", "SAECap", "Scale",
           "Steering", "from_dict", "load", "load_sae"]
