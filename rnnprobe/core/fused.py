r"""Fused recurrence kernels (Triton, optional): one launch runs a layer direction's whole scan.

The eager scan launches two kernels per time step (a GEMM and φ; backward: a GEMM and a
multiply); on a GPU at B = 32, H = 256 the launches, not the arithmetic, set the pace. Here
one program per block of ``BLOCK_B`` batch rows holds whole rows and walks every step
itself, reading W_hh (from L2) once per step, so a scan is one launch:

- forward, in place over an unpadded batch: ``a`` (T, B, H) holds x_t W_ihᵀ + b on entry,
  h_t = φ(a_t + h_prev W_hhᵀ) on exit (h_prev is h_{t-1}, or h_{t+1} in reverse);
- backward: ε_t in, g_t = φ'(a_t) ⊙ δ_t out with δ_t = ε_t + g_next W_hh (h_n's gradient at
  the first step visited), and per row the records ‖δ_t‖, ‖δ_t − ε_t‖, ‖ε_t‖ (and δ itself
  if kept), the same conventions as :func:`rnnprobe.core.bptt.backward_layer`.

Products use IEEE float32 (no TF32), so records match the eager path's to float32 rounding.
Off unless asked for: ``RNNPROBE_FUSED=1`` in the environment (CUDA float32 tensors only, and
only where ``triton`` imports: ``pip install rnnprobe[triton]``). Its speed on a GPU is not
yet measured. On CPU tensors the same kernels run in Triton's interpreter (slowly: the
tests check them there against the eager scans).
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

BLOCK_B = 16  # batch rows per program (tl.dot needs at least 16)
BLOCK_K = 32  # columns of h (rows of W) per partial product


def wanted(tensor: torch.Tensor) -> bool:
    """Return whether the scans over ``tensor`` run fused: asked for (``RNNPROBE_FUSED=1``),
    float32, on CUDA (or on CPU under Triton's interpreter), and Triton importable."""
    if os.environ.get("RNNPROBE_FUSED") != "1" or tensor.dtype != torch.float32:
        return False
    on_device = tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return on_device and available()


@functools.cache
def available() -> bool:
    """Return whether ``triton`` imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def kernels(tensor: torch.Tensor) -> ModuleType:
    """Return the kernel module for ``tensor``'s device: compiled for a GPU, or on CPU tensors
    Triton's interpreter, which must be on for the whole process (``TRITON_INTERPRET=1`` in the
    environment before Triton is imported)."""
    if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the fused scans run on CPU tensors only in Triton's interpreter")
    from rnnprobe.core import _fused_kernels

    return _fused_kernels


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Return ``x``, or a contiguous copy if its rows are not (stride 1 along the last dim)."""
    return x if x.stride(-1) == 1 and 0 not in x.stride() else x.contiguous()


def _sizes(H: int) -> dict[str, int]:
    """Return the launch's block sizes for H units: whole rows, and more warps for wider ones
    (a program holds a few BLOCK_B × BLOCK_H tiles in registers)."""
    block_h = max(16, 1 << (H - 1).bit_length())
    warps = max(4, min(16, block_h // 64))
    return {"BLOCK_B": BLOCK_B, "BLOCK_H": block_h, "BLOCK_K": BLOCK_K, "num_warps": warps}


def _grid(B: int) -> tuple[int]:
    return (max(1, -(-B // BLOCK_B)),)


def scan_forward_(
    a: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, nonlinearity: str, reverse: bool
) -> torch.Tensor:
    """Run one direction in place: ``a`` (T, B, H) (rows contiguous, a direction's view of a
    (T, B, D·H) buffer allowed) holds the input part of a_t on entry, h_t on exit; return it."""
    T, B, H = a.shape
    if a.stride(2) != 1:
        raise ValueError("the fused scan writes h into a: each row of a must be contiguous")
    h0 = _rows_contiguous(h0)
    if T == 0 or B == 0:
        return a
    w_t = w_hh.t().contiguous()
    kernels(a).forward_kernel[_grid(B)](
        a, w_t, h0, T, B, H, a.stride(0), a.stride(1), h0.stride(0),
        RELU=nonlinearity == "relu", REVERSE=reverse, **_sizes(H),
    )  # fmt: skip
    return a


def scan_backward(
    grad_out: torch.Tensor,
    grad_hn: torch.Tensor,
    h: torch.Tensor,
    w_hh: torch.Tensor,
    nonlinearity: str,
    reverse: bool,
    g: torch.Tensor,
    record: bool,
    keep_delta: bool,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Write g (T, B, H) (may be ``grad_out`` itself); return ((3, T, B) norms ‖δ‖, ‖δ − ε‖,
    ‖ε‖, δ (T, B, H) if kept) when ``record``, else None."""
    T, B, H = h.shape
    if g.stride(-1) != 1:
        raise ValueError("the fused scan writes g: each of its rows must be contiguous")
    if g.data_ptr() != grad_out.data_ptr():  # (g over ε: ε is the caller's own buffer)
        grad_out = _rows_contiguous(grad_out)  # e.g. the gradient of a sum, expanded
    h, grad_hn = _rows_contiguous(h), _rows_contiguous(grad_hn)
    unused = h.new_empty(1)  # a real pointer for an output the kernel does not write
    norms = h.new_empty(3, T, B) if record else unused
    delta = h.new_empty(T, B, H) if record and keep_delta else unused
    if T > 0 and B > 0:
        kernels(h).backward_kernel[_grid(B)](
            grad_out, grad_hn, h, w_hh.contiguous(), g, norms, delta, T, B, H,
            grad_out.stride(0), grad_out.stride(1), h.stride(0), h.stride(1),
            g.stride(0), g.stride(1), grad_hn.stride(0),
            RELU=nonlinearity == "relu", REVERSE=reverse, RECORD=record,
            KEEP=record and keep_delta, **_sizes(H),
        )  # fmt: skip
    if not record:
        return None
    return norms, delta if keep_delta else None
