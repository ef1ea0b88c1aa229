"""The norms of recorded gradients, right wherever the model's dtype can hold the gradient.

A float32 norm sums float32 squares: they underflow once |x| < 1e-19 (the norm reads 0, and is
1 % low already at 1e-22) and overflow once |x| > 1e19 (inf), while vanishing adjoints stay
representable down to 1e-38: a record of how gradients die must not die first. On a GPU every
norm sums in float64 (cheap there). On a CPU, where float64 sums cost about three float32
norms, the float32 norm stays where it is safe — its value in ``SAFE``, where no square it
dropped or rounded can matter — and ``mend`` sums the others again in float64. The check reads
CPU memory through numpy: no device to wait for, nothing a CUDA-graph capture would refuse.
Results keep the input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

SAFE = (2.0**-45, 2.0**40)  # a float32 norm in this range lost nothing to its squares


def first_norm(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Return ‖x‖₂ over the last dim in ``x``'s dtype (into ``out``): summed in float64 on a
    GPU, final; in ``x``'s dtype on a CPU, to be checked with :func:`needs_mending`."""
    if x.device.type == "cuda":
        wide = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64)
        return wide.to(x.dtype) if out is None else out.copy_(wide)
    return torch.linalg.vector_norm(x, dim=-1, out=out)


def needs_mending(norms: torch.Tensor) -> bool:
    """Return whether CPU float32 ``norms`` hold a value outside ``SAFE`` (or NaN)."""
    if norms.device.type != "cpu" or norms.dtype != torch.float32 or norms.numel() == 0:
        return False
    values = norms.detach().numpy()
    return not (values.min() >= SAFE[0] and values.max() <= SAFE[1])


def unsafe(norms: torch.Tensor) -> np.ndarray:
    """Return the mask of the CPU float32 ``norms`` outside ``SAFE`` (NaN included)."""
    values = norms.detach().numpy()
    return ~((values >= SAFE[0]) & (values <= SAFE[1]))


def mend(
    norms: torch.Tensor,
    vectors: Callable[[np.ndarray], np.ndarray],
    keep: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> None:
    """Sum again in float64, in place, the CPU float32 ``norms`` outside ``SAFE``.

    ``vectors(mask)`` returns the vectors (K, N) of the entries a boolean ``mask`` (shaped like
    ``norms``) selects; ``keep`` marks entries known to be right (an exact zero, say); ``mask``
    is :func:`unsafe` of ``norms`` if already taken.
    """
    values = norms.detach().numpy()  # a view: writes land in ``norms``
    mask = unsafe(norms) if mask is None else mask
    if keep is not None:
        mask &= ~keep
    if mask.any():
        rows = vectors(mask)
        nonzero = rows.any(axis=-1)  # an all-zero vector's norm is 0 as it stands
        wide = np.asarray(rows[nonzero], dtype=np.float64)
        redone = np.zeros(len(rows), dtype=values.dtype)
        redone[nonzero] = np.sqrt(np.einsum("ij,ij->i", wide, wide))
        values[mask] = redone


def record_norm(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Return ‖x‖₂ over the last dim in ``x``'s dtype, right over its whole range."""
    norm = first_norm(x, out)
    if needs_mending(norm):
        data = x.detach().numpy()
        mend(norm, lambda mask: data[mask])
    return norm
