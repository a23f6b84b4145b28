"""The Assistant Axis (Lu et al. 2026): compute it, read it in raw and SAE-feature bases, watch
persona drift along it, and cap activations on it.

    from axis import AssistantAxis, project
    ax = AssistantAxis.load("axis/pretrained/smollm2-default", model=model)
    project(acts, ax, basis="raw", layer=ax.stats["monitor_layer"])

Layout: `data` (the banks in axis/data/ and the judge-free lexicons), `rollouts` (cached rollouts
through `lm.engines`: our generate or llama.cpp, and response-mean activations), `compute` (the axis, PCA and separation as tensor math), `build` (the
pipeline, `build_axis`), `artifact` (the saved `AssistantAxis`), `sae_basis` (the axis in an SAE's
feature basis, and `project`, measured by `steering.projection`), `capping` (caps on the axis as
`steering.Cap`/`SAECap`, and `CapMonitor`, which counts where they fire), `calibration` (taus from
per-token projections), `cap_sweep` (cap settings as `steering.experiment.Condition`s),
`cap_recipe` (the shipped cap: chosen on dev prompts, checked on test, `cap.json`),
`convergence` (the axis against the number of roles and questions), `evaluate` (`evaluate_caps`: identity, jailbreaks, capability,
cap activity, steering along the axis, drift; what scripts/cap.py, the main job and the notebook
call), `evals` (the individual measures), `drift` (persona drift over multi-turn conversations),
`layer_scan` (which layer separates concepts and personas), `formats` (the paper's release files
in and out, Neuronpedia's axis layout out), `main_job` (the report of `make demo`:
it sits at the top of the pipeline and imports every package).
"""

from axis.artifact import AssistantAxis
from axis.build import AxisConfig, build_axis
from axis.capping import CapConfig, cap_activity, capping, default_band, parse_band
from axis.drift import DriftConfig, plot_drift, run_drift
from axis.sae_basis import FeatureAxis, project

__all__ = ["AssistantAxis", "AxisConfig", "CapConfig", "DriftConfig", "FeatureAxis", "build_axis", "cap_activity",
           "capping", "default_band", "parse_band", "plot_drift", "project", "run_drift"]
