r"""Singular values of k-step Jacobian products, i.e. finite-time Lyapunov exponents (FTLE).

Convention (row vectors, time-major): ``phi_prime`` (T, B, H) holds φ'(a_t) read off the
outputs, J_t = ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh, and for a window of k steps starting after
step s (0-based index into ``phi_prime``)

    P_k = J_{s+k} ⋯ J_{s+1},      FTLE_i(k) = ln σ_i(P_k) / k.

P_k is never formed (its entries over/underflow like σ_1^k and its small singular values
drown in rounding). Instead orthogonal iteration on P_kᵀ P_k is run in factored form:

    forward:  Q ← qr(J_t Q) for t = s+1 … s+k, accumulating ln|diag R|,
    backward: Q ← qr(J_tᵀ Q) for t = s+k … s+1,

alternating until the top k values agree between sweeps. The accumulated triangular factor
M = R_k ⋯ R_1 is kept row-scaled (never overflows), and after each forward pass a
Rayleigh–Ritz step on its well-scaled diagonal blocks settles near-equal σ at once. At
convergence the starting frame spans the right singular vectors of P_k, M is diagonal, and
its entries are σ_i(P_k) exactly. Convergence goes like (σ_{m+1}/σ_i)² per sweep for a frame
of m ≥ k columns, so long windows (exponentially separated σ) need one or two sweeps.

Cost: 2·sweeps·k thin QRs of (H × m) per sequence per window; windows 1, 2, 4, … sum to ~2T.
Keep it on a schedule, a sub-batch and a modest m (top-m singular values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rnnprobe.errors import RnnprobeError, check_count
from rnnprobe.probes._rows import Column, RowBlock
from rnnprobe.probes._shapes import check_directions, check_trajectory


@dataclass(frozen=True)
class ProductSpectrum:
    """FTLE of the window products for every sequence.

    ``windows`` the W window lengths; ``start`` s; ``log_singular_values`` (W, B, k) descending;
    ``exponents`` (W, B, k) = log σ / window; ``sweeps`` and ``converged`` per window
    (a window of 1 is decomposed directly: 0 sweeps).
    """

    windows: list[int]
    start: int
    log_singular_values: torch.Tensor
    exponents: torch.Tensor
    sweeps: list[int]
    converged: list[bool]

    def row_blocks(self, step: int, layer: int) -> list[RowBlock]:
        """Return the ``ftle`` rows: per (window, index) the batch-mean exponent and whether
        the window's sweeps converged."""
        W, k = len(self.windows), self.exponents.shape[-1]
        columns: dict[str, Column] = dict(
            step=step,
            layer=layer,
            window=np.repeat(np.asarray(self.windows), k),
            index=np.tile(np.arange(k), W),
            exponent=self.exponents.mean(1),  # (W, k): batch mean
            converged=np.repeat(np.asarray(self.converged), k),
        )
        return [RowBlock("ftle", columns)]


def default_windows(length: int) -> list[int]:
    """Return 1, 2, 4, … ≤ ``length``, plus ``length`` itself when it is not a power of two."""
    check_count(length, "window length")
    windows = [1 << p for p in range(length.bit_length()) if 1 << p <= length]
    return windows if windows[-1] == length else [*windows, length]


def _backward(phi_window: torch.Tensor, w_hh: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Return the frame qr(P_kᵀ Q) for Q (B, H, m), applying J_tᵀ = Wᵀ diag(d_t) latest first."""
    for d_t in reversed(phi_window.unbind(0)):
        q = torch.linalg.qr(w_hh.mT @ (d_t.unsqueeze(-1) * q)).Q
    return q


def _forward(
    phi_window: torch.Tensor, w_hh: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (Q_k, ln D, U) with P_k Q = Q_k D U: D diagonal, U unit upper triangular.

    M = R_k ⋯ R_1 is kept row-scaled (ln D and U = D⁻¹M, diagonal ±1) so it neither over- nor
    underflows; a diagonal block of M depends only on the same blocks of the factors, so its small
    entries keep their relative accuracy. Exactly zero pivots (dead ReLU units) are floored at
    the smallest normal number, so singular directions read as ln(tiny) ≈ −708 per step.
    """
    B, _, m = q.shape
    tiny, big = torch.finfo(q.dtype).tiny, 0.5 * math.log(torch.finfo(q.dtype).max)
    log_d = q.new_zeros(B, m)
    unit = torch.eye(m, dtype=q.dtype, device=q.device).expand(B, m, m)
    for d_t in phi_window.unbind(0):
        q, r = torch.linalg.qr(d_t.unsqueeze(-1) * (w_hh @ q))
        pivot = r.diagonal(dim1=-2, dim2=-1)
        pivot = torch.where(pivot.abs() < tiny, torch.full_like(pivot, tiny), pivot)
        ratio = (log_d.unsqueeze(1) - log_d.unsqueeze(2)).clamp(max=big).exp()  # [i, l]: D_l/D_i
        unit = (r / pivot.abs().unsqueeze(-1) * ratio).triu() @ unit
        log_d = log_d + pivot.abs().log()
    return q, log_d, unit


_LOG_ZERO = -1e30  # stands in for ln 0 inside _ritz


def _ritz(
    log_d: torch.Tensor, unit: torch.Tensor, spread: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ln σ (B, m) descending per block, block-diagonal left rotation (B, m, m)).

    Consecutive indices whose ln D lie within ``spread`` of each other form a block; each
    block of M = D U is well scaled, so its SVD is accurate, and rotating the end frame by the
    block's left singular vectors is a Rayleigh–Ritz step that settles near-equal σ at once.
    """
    B, m = log_d.shape
    # Exactly singular directions (dead ReLU units) have ln D = −inf; a finite stand-in keeps
    # each block's SVD well defined, and −inf is put back at the end.
    log_d = log_d.masked_fill(log_d == -math.inf, _LOG_ZERO)
    log_sv = torch.empty_like(log_d)
    rotation = torch.zeros_like(unit)
    bounds = log_d.detach().cpu().tolist()  # once per sweep, outside the step loop
    for b in range(B):
        start = 0
        while start < m:
            stop, lo, hi = start + 1, bounds[b][start], bounds[b][start]
            while stop < m and max(hi, bounds[b][stop]) - min(lo, bounds[b][stop]) <= spread:
                lo, hi, stop = min(lo, bounds[b][stop]), max(hi, bounds[b][stop]), stop + 1
            top = log_d[b, start:stop].max()
            block = (log_d[b, start:stop] - top).exp().unsqueeze(-1) * unit[
                b, start:stop, start:stop
            ]
            u, s, _ = torch.linalg.svd(block)
            log_sv[b, start:stop] = top + s.log()
            rotation[b, start:stop, start:stop] = u
            start = stop
    return log_sv.masked_fill(log_sv <= _LOG_ZERO / 2, -math.inf), rotation


def _changed(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Return |new − old|, with equal values (including equal infinities) counting as 0."""
    return torch.where(new == old, torch.zeros_like(new), (new - old).abs())


def product_spectrum(
    phi_prime: torch.Tensor,
    w_hh: torch.Tensor,
    *,
    windows: Sequence[int] | None = None,
    start: int = 0,
    k: int | None = None,
    frame_size: int | None = None,
    max_sweeps: int = 20,
    tol: float | None = None,
) -> ProductSpectrum:
    """Return the top-``k`` (all H if None) log singular values and FTLE of J_{s+w} ⋯ J_{s+1}.

    ``phi_prime`` (T, B, H), ``w_hh`` (H, H); ``windows`` default :func:`default_windows` of
    T − ``start``. The iterated frame has ``frame_size`` ≥ k columns (default min(H, 2k)):
    the top k converge like (σ_{frame+1}/σ_i)² per sweep. Iteration stops when none of the top
    k ln σ moves by more than ``tol``·(1 + |ln σ|) (default √ε of the dtype) or after
    ``max_sweeps`` backward/forward sweeps; ``converged`` records which.
    """
    T, B, H = check_trajectory(phi_prime, w_hh)
    k = check_directions(k, H)
    m = min(H, 2 * k) if frame_size is None else frame_size
    if not k <= m <= H:
        raise RnnprobeError(f"frame_size must lie in [k={k}, H={H}], got {frame_size}")
    if not 0 <= start < T:
        raise RnnprobeError(f"start must lie in [0, T={T}), got {start}")
    windows = list(default_windows(T - start) if windows is None else windows)
    too_long = [w for w in windows if not 1 <= w <= T - start]
    if not windows or too_long:
        raise RnnprobeError(
            f"windows must lie in [1, T - start = {T - start}], got {too_long or windows}"
        )
    check_count(max_sweeps, "max_sweeps")
    tol = torch.finfo(phi_prime.dtype).eps ** 0.5 if tol is None else tol
    spread = 0.5 * math.log(1 / torch.finfo(phi_prime.dtype).eps)  # block SVD keeps √ε accuracy
    eye = torch.eye(H, m, dtype=phi_prime.dtype, device=phi_prime.device).expand(B, H, m)
    logs, sweeps, converged = [], [], []
    for w in windows:
        window = phi_prime[start : start + w]
        if w == 1:  # a single Jacobian is safe to decompose directly
            sv = torch.linalg.svdvals(window[0].unsqueeze(-1) * w_hh)[:, :k]
            logs.append(sv.clamp_min(torch.finfo(sv.dtype).tiny).log())
            sweeps.append(0)
            converged.append(True)
            continue
        q, log_d, unit = _forward(window, w_hh, eye)
        log_sv, rotation = _ritz(log_d, unit, spread)
        log_sv = log_sv.sort(dim=-1, descending=True).values[:, :k]  # blocks need not be sorted
        done, n = False, 0
        while not done and n < max_sweeps:
            q = _backward(window, w_hh, q @ rotation)
            q, log_d, unit = _forward(window, w_hh, q)
            new, rotation = _ritz(log_d, unit, spread)
            new = new.sort(dim=-1, descending=True).values[:, :k]
            done = bool((_changed(new, log_sv) <= tol * (1 + new.abs())).all())  # once per sweep
            log_sv, n = new, n + 1
        logs.append(log_sv)
        sweeps.append(n)
        converged.append(done)
    log_sv = torch.stack(logs)  # (W, B, k)
    lengths = torch.tensor(windows, dtype=phi_prime.dtype, device=phi_prime.device)
    return ProductSpectrum(
        windows, start, log_sv, log_sv / lengths[:, None, None], sweeps, converged
    )
