r"""Mean-field prediction at initialisation: fixed-point variance, slope χ and gradient half-life.

For a wide layer with W_hh entries of variance σ_w²/H, the pre-activation a_t = W_hh h_{t-1} +
W_ih x_t + b is Gaussian across units with variance q_t obeying (Poole et al. 2016,
Chen, Pennington & Schoenholz 2018)

    q_{t+1} = σ_w² E_z[φ(√q_t z)²] + σ_in²,      σ_in² = σ_u² E[x²] + σ_b²,   z ~ N(0, 1),

where σ_u² = I·Var(W_ih), σ_b² = E[b²]. At the fixed point q*, the mean squared singular value
of J_t per unit gives χ = σ_w² E_z[φ'(√q* z)²]; a backpropagated gradient shrinks (χ < 1) or
grows (χ > 1) by √χ per step, with half-life ln 2 / (−ln √χ) steps (inf when √χ ≥ 1).
Expectations use Gauss–Hermite quadrature (probabilists' weights); ReLU uses the exact
E[relu(√q z)²] = q/2 and E[φ'²] = 1/2, so q* = σ_in²/(1 − σ_w²/2), inf when σ_w² ≥ 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rnnprobe.errors import RnnprobeError
from rnnprobe.nonlinearity import check_nonlinearity
from rnnprobe.probes._rows import Column, RowBlock


@dataclass(frozen=True)
class MeanField:
    """The prediction: inputs σ_w², σ_in²; q*, χ, √χ per step and the half-life in steps."""

    sigma_w2: float
    sigma_in2: float
    q_star: float
    chi: float
    gradient_decay: float
    half_life: float

    def row_blocks(self, layer: int) -> list[RowBlock]:
        """Return the ``mean_field`` row of one layer (a prediction for the initial weights)."""
        columns: dict[str, Column] = dict(
            layer=layer,
            sigma_w2=self.sigma_w2,
            sigma_in2=self.sigma_in2,
            q_star=self.q_star,
            chi=self.chi,
            predicted_decay=self.gradient_decay,
            predicted_half_life=self.half_life,
        )
        return [RowBlock("mean_field", columns)]


def _gaussian_expectation(f: Callable[[np.ndarray], np.ndarray], q: float, points: int) -> float:
    """Return E_z[f(√q z)] for z ~ N(0, 1) by Gauss–Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(points)
    return float(np.sum(w * f(math.sqrt(q) * z)) / math.sqrt(2 * math.pi))


def mean_field(
    sigma_w2: float,
    sigma_in2: float,
    nonlinearity: str,
    *,
    q_init: float = 1.0,
    tol: float = 1e-12,
    max_iter: int = 10_000,
    points: int = 101,
) -> MeanField:
    """Return the mean-field fixed point q*, χ, √χ and half-life for one layer at init."""
    check_nonlinearity(nonlinearity)
    if sigma_w2 < 0 or sigma_in2 < 0:
        raise RnnprobeError(f"variances must be non-negative, got {sigma_w2}, {sigma_in2}")
    if nonlinearity == "relu":
        q = sigma_in2 / (1 - sigma_w2 / 2) if sigma_w2 < 2 else math.inf
        chi = sigma_w2 / 2
    else:
        q = q_init
        for _ in range(max_iter):
            q_next = (
                sigma_w2 * _gaussian_expectation(lambda a: np.tanh(a) ** 2, q, points) + sigma_in2
            )
            done = abs(q_next - q) <= tol * max(1.0, q)
            q = q_next
            if done:
                break
        chi = sigma_w2 * _gaussian_expectation(lambda a: (1 - np.tanh(a) ** 2) ** 2, q, points)
    decay = math.sqrt(chi)
    half_life = (
        math.log(2) / -math.log(decay) if 0 < decay < 1 else (0.0 if decay == 0 else math.inf)
    )
    return MeanField(sigma_w2, sigma_in2, q, chi, decay, half_life)


def mean_field_variances(
    w_hh: torch.Tensor,
    w_ih: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    input_second_moment: float = 1.0,
) -> tuple[float, float]:
    """Return (σ_w², σ_in²) read off a layer's weights.

    σ_w² = H·mean(W_hh²); σ_in² = I·mean(W_ih²)·``input_second_moment`` + mean(b²), with
    ``bias`` = b_ih + b_hh. Second moments about zero (not variances) are used, since the
    theory assumes zero-mean weights and a nonzero mean adds to the same sum. For layer 0,
    ``input_second_moment`` is E[x²] per coordinate of the embedding; for deeper layers it is
    E[h²] of the layer below (E[φ(√q* z)²] of its own fixed point).
    """
    sigma_w2 = float(w_hh.shape[1] * w_hh.detach().square().mean())
    sigma_in2 = 0.0
    if w_ih is not None:
        sigma_in2 += float(w_ih.shape[1] * w_ih.detach().square().mean()) * input_second_moment
    if bias is not None:
        sigma_in2 += float(bias.detach().square().mean())
    return sigma_w2, sigma_in2


def mean_field_from_weights(
    w_hh: torch.Tensor,
    nonlinearity: str,
    w_ih: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    input_second_moment: float = 1.0,
) -> MeanField:
    """Return :func:`mean_field` for the σ_w², σ_in² of :func:`mean_field_variances`."""
    sigma_w2, sigma_in2 = mean_field_variances(
        w_hh, w_ih, bias, input_second_moment=input_second_moment
    )
    return mean_field(sigma_w2, sigma_in2, nonlinearity)
