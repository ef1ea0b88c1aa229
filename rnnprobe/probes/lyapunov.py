r"""Lyapunov exponents of the input-driven trajectory of one layer, by the QR (Benettin) method.

Convention (row vectors, time-major): ``phi_prime`` (T, B, H) holds φ'(a_t) read off the
layer's outputs h_t (:func:`rnnprobe.nonlinearity.derivative_from_output`), and the tangent map
of step t is J_t = ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh, evaluated at the step's *own*
pre-activation a_t. Starting from an orthonormal frame Q_0 (H, k), every step does

    Z = J_t Q_{t-1},      Z = Q_t R_t  (thin QR, re-orthonormalised every step),
    λ_i = (1 / (T − w)) Σ_{t > w} ln |R_t[i, i]|        (natural log per step),

discarding the first w = ``warmup`` steps so Q has aligned with the leading directions. The
sums are exact finite-time identities: Σ_t Σ_{i ≤ j} ln|R_t[i, i]| = ln vol_j(J_T ⋯ J_1 Q_0[:, :j])
(the j-volume spanned by the first j columns), and for k = H the sum of all exponents is the
mean of ln|det J_t|. Exponents are left in QR order, which is descending once the frame has
converged. Call once per layer with that layer's ``phi_prime`` and ``W_hh``.

Cost: one (H × H)·(H × k) product and one thin QR per step per sequence (~0.15 ms per step at
H = 256, k = 16 on CPU), so keep it on a schedule and a sub-batch (``phi_prime[:, :4]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rnnprobe.errors import RnnprobeError
from rnnprobe.probes._rows import Column, RowBlock
from rnnprobe.probes._shapes import check_directions, check_trajectory


@dataclass(frozen=True)
class LyapunovSpectrum:
    """Lyapunov exponents per sequence: ``exponents`` (B, k), ``log_growth`` (B, k) = the
    un-normalised sums Σ_t ln|R_t[i, i]|, ``steps`` = T − warmup, both in QR order."""

    exponents: torch.Tensor
    log_growth: torch.Tensor
    steps: int

    @property
    def mean_exponents(self) -> torch.Tensor:
        """Return the exponents averaged over the batch, shape (k,)."""
        return self.exponents.mean(0)

    def row_blocks(self, step: int, layer: int) -> list[RowBlock]:
        """Return the ``lyapunov`` rows: the batch-mean exponent of each index, QR order."""
        k = self.exponents.shape[1]
        columns: dict[str, Column] = dict(
            step=step, layer=layer, index=np.arange(k), exponent=self.mean_exponents
        )
        return [RowBlock("lyapunov", columns)]


def _apply_jacobian(phi_prime_t: torch.Tensor, w_hh: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Return J_t Q = diag(φ'(a_t)) W_hh Q: ``phi_prime_t`` (B, H), ``q`` (B, H, k) -> (B, H, k)."""
    return phi_prime_t.unsqueeze(-1) * (w_hh @ q)


def initial_frame(
    hidden_size: int,
    k: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return a random orthonormal (H, k) frame, reproducible from ``seed`` on every device."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(hidden_size, k, generator=gen, dtype=torch.float64)
    return torch.linalg.qr(z).Q.to(dtype=dtype, device=device)


def lyapunov_exponents(
    phi_prime: torch.Tensor,
    w_hh: torch.Tensor,
    *,
    k: int | None = None,
    warmup: int = 0,
    frame: torch.Tensor | None = None,
    seed: int = 0,
) -> LyapunovSpectrum:
    """Return the top-``k`` Lyapunov exponents (all H when k is None) of each sequence.

    ``phi_prime`` (T, B, H), ``w_hh`` (H, H); ``frame`` (H, k) or (B, H, k) is the starting
    frame Q_0 (orthonormalised here), by default :func:`initial_frame` from ``seed``.
    """
    T, B, H = check_trajectory(phi_prime, w_hh)
    k = check_directions(k, H)
    if not 0 <= warmup < T:
        raise RnnprobeError(f"warmup must lie in [0, T={T}), got {warmup}")
    if frame is None:
        frame = initial_frame(H, k, seed=seed, dtype=phi_prime.dtype, device=phi_prime.device)
    if frame.shape not in ((H, k), (B, H, k)):
        raise RnnprobeError(f"frame must be (H, k) or (B, H, k), got {tuple(frame.shape)}")
    q = torch.linalg.qr(frame.to(phi_prime).expand(B, H, k)).Q  # (B, H, k)
    log_growth = phi_prime.new_zeros(B, k)
    for t, d_t in enumerate(phi_prime.unbind(0)):
        q, r = torch.linalg.qr(_apply_jacobian(d_t, w_hh, q))
        if t >= warmup:
            log_growth += r.diagonal(dim1=-2, dim2=-1).abs().log()
    return LyapunovSpectrum(log_growth / (T - warmup), log_growth, T - warmup)
