r"""Elman cell math shared by the BPTT scan and the probes.

Conventions (row vectors, time-major): for one layer with input ``x_t`` (B, I) and state
``h_{t-1}`` (B, H),

    a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh,      h_t = φ(a_t),
    J_t = ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh.

Both supported nonlinearities let φ'(a_t) be read off h_t alone (tanh: 1 - h_t²; ReLU:
[h_t > 0], with φ'(0) = 0 as in PyTorch), so nothing but the outputs need be kept.

``NONLINEARITIES`` is the one list of supported nonlinearities; the module loads no torch
until :func:`activation` runs, so the command line offers the choices without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rnnprobe.errors import check_choice

if TYPE_CHECKING:
    import torch

NONLINEARITIES = ("tanh", "relu")


def check_nonlinearity(nonlinearity: str) -> str:
    """Return ``nonlinearity`` if supported, else raise a one-line error naming the choices."""
    return check_choice(nonlinearity, NONLINEARITIES, "nonlinearity")


def activate_(a: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """Apply φ in place to pre-activations ``a`` and return it."""
    return a.tanh_() if nonlinearity == "tanh" else a.relu_()


def derivative_from_output(
    h: torch.Tensor, nonlinearity: str, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Return φ'(a) computed from h = φ(a), same shape as ``h`` (written into ``out`` if given)."""
    import torch

    if nonlinearity == "tanh":
        return torch.mul(h, h, out=out).neg_().add_(1.0)  # one buffer, no temporaries
    if out is None:
        return (h > 0).to(h.dtype)
    return out.copy_(h > 0)


def activation(nonlinearity: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return φ as an out-of-place function (autograd and ``torch.func`` can trace it)."""
    import torch

    return torch.tanh if nonlinearity == "tanh" else torch.relu


def derivative(h: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """Return φ'(a) from h = φ(a) out of place, so that it can itself be differentiated."""
    if nonlinearity == "tanh":
        return 1 - h * h
    return (h > 0).to(h.dtype)
