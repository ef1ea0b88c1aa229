"""Shape checks shared by the Jacobian-based probes: one-line errors for user mistakes."""

from __future__ import annotations

import torch

from rnnprobe.errors import RnnprobeError


def check_recurrent_weight(w_hh: torch.Tensor) -> int:
    """Return H after checking that ``w_hh`` is a square (H, H) matrix."""
    if w_hh.ndim != 2 or w_hh.shape[0] != w_hh.shape[1]:
        raise RnnprobeError(f"W_hh must be square (H, H), got shape {tuple(w_hh.shape)}")
    return w_hh.shape[0]


def check_trajectory(phi_prime: torch.Tensor, w_hh: torch.Tensor) -> tuple[int, int, int]:
    """Return (T, B, H) after checking ``phi_prime`` (T, B, H) against ``w_hh`` (H, H)."""
    H = check_recurrent_weight(w_hh)
    if phi_prime.ndim != 3 or phi_prime.shape[2] != H:
        raise RnnprobeError(
            f"phi_prime must be (T, B, H={H}) to match W_hh, got shape {tuple(phi_prime.shape)}"
        )
    T, B, _ = phi_prime.shape
    if T == 0 or B == 0:
        raise RnnprobeError(f"phi_prime must have at least one step and one sequence, got {T}, {B}")
    return T, B, H


def check_directions(k: int | None, hidden_size: int) -> int:
    """Return the number of directions, ``hidden_size`` when ``k`` is None; 1 ≤ k ≤ H."""
    if k is None:
        return hidden_size
    if not 1 <= k <= hidden_size:
        raise RnnprobeError(f"k must lie in [1, H={hidden_size}], got {k}")
    return k
