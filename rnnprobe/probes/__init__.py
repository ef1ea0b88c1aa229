"""Probes: one quantity per module, each a pure function from tensors to a result dataclass.

The scheduled probes (``schedule`` says when) fire during training through
``rnnprobe.training.probing``; ``fixed_points`` runs on a trained network's weights. Each
module states its conventions and has a brute-force twin in the tests.

May import: ``rnnprobe.errors`` and ``rnnprobe.nonlinearity`` only. The names below are imported
on first use (``probes.schedule`` needs no torch).
"""

from typing import TYPE_CHECKING

from rnnprobe._lazy import lazy_exports

if TYPE_CHECKING:
    from rnnprobe.probes.hidden_stats import (
        HiddenStats,
        hidden_state_stats,
        participation_ratio,
    )
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

_EXPORTS = {
    "HiddenStats": "hidden_stats",
    "hidden_state_stats": "hidden_stats",
    "participation_ratio": "hidden_stats",
    "JacobianSpectrum": "jacobian",
    "WeightSpectrum": "jacobian",
    "jacobian_spectrum": "jacobian",
    "recurrent_weight_spectrum": "jacobian",
    "step_jacobians": "jacobian",
    "LyapunovSpectrum": "lyapunov",
    "lyapunov_exponents": "lyapunov",
    "MeanField": "mean_field",
    "mean_field": "mean_field",
    "mean_field_from_weights": "mean_field",
    "ProductSpectrum": "products",
    "product_spectrum": "products",
    "default_reach_sources": "reach",
    "gradient_reach": "reach",
    "Schedule": "schedule",
}
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
__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
