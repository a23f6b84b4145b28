"""The Assistant Axis (Lu et al. 2026): compute it, read it in raw and SAE-feature bases, watch
persona drift along it, and cap activations on it.

    from axis import AssistantAxis, project
    ax = AssistantAxis.load("axis/pretrained/smollm2-default", model=model)
    project(acts, ax, basis="raw", layer=ax.stats["monitor_layer"])
"""

from axis.artifact import AssistantAxis
from axis.build import AxisConfig, build_axis
from axis.capping import CapConfig, cap_activity, capping, default_band, parse_band
from axis.drift import DriftConfig, plot_drift, run_drift
from axis.sae_basis import FeatureAxis, project

__all__ = ["AssistantAxis", "AxisConfig", "CapConfig", "DriftConfig", "FeatureAxis", "build_axis", "cap_activity",
           "capping", "default_band", "parse_band", "plot_drift", "project", "run_drift"]
