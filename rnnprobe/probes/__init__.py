"""Probes: one quantity per module, each a pure function from tensors to records."""

from rnnprobe.probes.hidden_stats import HiddenStats, hidden_state_stats, participation_ratio
from rnnprobe.probes.jacobian import (
    JacobianSpectrum,
    WeightSpectrum,
    jacobian_spectrum,
    recurrent_weight_spectrum,
    step_jacobians,
)
from rnnprobe.probes.lyapunov import LyapunovSpectrum, lyapunov_exponents
from rnnprobe.probes.mean_field import MeanField, mean_field, mean_field_from_weights
from rnnprobe.probes.products import ProductSpectrum, product_spectrum
from rnnprobe.probes.reach import default_reach_sources, gradient_reach
from rnnprobe.probes.schedule import Schedule

__all__ = [
    "HiddenStats",
    "JacobianSpectrum",
    "LyapunovSpectrum",
    "MeanField",
    "ProductSpectrum",
    "Schedule",
    "WeightSpectrum",
    "default_reach_sources",
    "gradient_reach",
    "hidden_state_stats",
    "jacobian_spectrum",
    "lyapunov_exponents",
    "mean_field",
    "mean_field_from_weights",
    "participation_ratio",
    "product_spectrum",
    "recurrent_weight_spectrum",
    "step_jacobians",
]
