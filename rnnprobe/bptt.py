r"""A stacked Elman recurrence as one autograd function whose backward pass *is* BPTT.

Index letters: ``t`` time (T steps), ``b`` batch (B), ``l`` layer (L), ``h`` hidden (H).
Row vectors, time-major, for layer ``l`` with input ``x_t`` (the layer below's output):

    a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh,      h_t = φ(a_t)

Backward, with ``ε_t = ∂L/∂h_t|direct`` (from the layer above or the head) and the total
adjoint ``δ_t = ∂L/∂h_t`` (all paths, through ``h_{t+1}`` included):

    δ_{T-1} = ε_{T-1} + ∂L/∂h_n,      g_t = φ'(a_t) ⊙ δ_t,      δ_{t-1} = ε_{t-1} + g_t W_hh
    ∇W_hh = Σ_t g_tᵀ h_{t-1},   ∇W_ih = Σ_t g_tᵀ x_t,   ∇b = Σ_t g_t,   ∂L/∂x_t = g_t W_ih

The scan costs one GEMM and one multiply per step; every weight gradient is one GEMM over all
steps afterwards. The adjoints are handed to an optional recorder (see ``capture.py``), so
recording them adds only a few reductions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rnnprobe.cell import activate_, derivative_from_output


class BackwardRecorder(Protocol):
    """Receives what the backward pass computes anyway, one call per layer (top layer first)."""

    keep_adjoints: bool

    def on_layer_backward(
        self,
        layer: int,
        adjoints: LayerAdjoints,
        direct: torch.Tensor,
        g: torch.Tensor,
        h0: torch.Tensor,
        outputs: torch.Tensor,
        inputs: torch.Tensor,
    ) -> None: ...

    def on_stack_backward(
        self,
        outputs: list[torch.Tensor],
        seeds: torch.Tensor,
        weights: list[tuple[torch.Tensor, torch.Tensor]],
        nonlinearity: str,
    ) -> None: ...


class RecorderSlot:
    """A mutable holder the module passes to the function; a capture fills it before backward."""

    __slots__ = ("recorder",)

    def __init__(self) -> None:
        self.recorder: BackwardRecorder | None = None


def forward_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    nonlinearity: str,
) -> torch.Tensor:
    """Return the outputs h (T, B, H) of one layer for inputs x (T, B, I) and state h0 (B, H)."""
    T, B, I = x.shape  # time, batch, input size
    H = w_hh.shape[0]
    x2 = x.reshape(T * B, I)
    if b_ih is not None and b_hh is not None:
        # One GEMM projects every step's input; the buffer then holds a_t, then h_t in place.
        out = torch.addmm(b_ih + b_hh, x2, w_ih.t())
    else:
        out = x2 @ w_ih.t()
    out = out.view(T, B, H)
    w_hh_t = w_hh.t()
    h = h0
    for a_t in out.unbind(0):
        a_t.addmm_(h, w_hh_t)
        h = activate_(a_t, nonlinearity)
    return out


@dataclass
class LayerAdjoints:
    """What one layer's scan hands a recorder: per-sample norms (T, B), δ itself if kept."""

    adjoint_norm: torch.Tensor  # ‖δ_t‖
    recurrent_norm: torch.Tensor  # ‖δ_t − ε_t‖, the part through h_{t+1} (h_n at t = T-1)
    delta: torch.Tensor | None  # (T, B, H)


RECORD_BLOCK = 16  # steps of δ buffered before their norms are taken in one go


def backward_layer(
    grad_out: torch.Tensor,
    grad_hn: torch.Tensor,
    outputs: torch.Tensor,
    w_hh: torch.Tensor,
    nonlinearity: str,
    record: bool = False,
    keep_delta: bool = False,
) -> tuple[torch.Tensor, LayerAdjoints | None]:
    """Return g = φ'(a) ⊙ δ (T, B, H) and, if ``record``, the adjoints' norms (and δ).

    ``grad_out`` (T, B, H) is the direct part ε, ``grad_hn`` (B, H) the gradient of h_n.
    Recording writes δ_t into a buffer of ``RECORD_BLOCK`` steps (all T if δ is kept) and
    takes the norms of a whole block at once: no extra op per step, little extra memory.
    """
    T, B, H = outputs.shape
    g = derivative_from_output(outputs, nonlinearity)  # φ'(a_t), overwritten by g_t below
    if not record:
        d_t = grad_out[T - 1] + grad_hn
        for t in range(T - 1, -1, -1):
            g_t = g[t].mul_(d_t)
            if t > 0:
                d_t = torch.addmm(grad_out[t - 1], g_t, w_hh)
        return g, None

    block = T if keep_delta else min(RECORD_BLOCK, T)
    buffer = outputs.new_empty(block, B, H)
    adjoints = LayerAdjoints(
        outputs.new_empty(T, B), outputs.new_empty(T, B), buffer if keep_delta else None
    )
    lo, hi = max(T - block, 0), T  # the buffer holds δ_t for t in [lo, hi)
    d_t = torch.add(grad_out[T - 1], grad_hn, out=buffer[T - 1 - lo])
    for t in range(T - 1, -1, -1):
        g_t = g[t].mul_(d_t)
        if t == lo:  # the block is complete: its norms, then the buffer is free again
            deltas = buffer[: hi - lo]
            torch.linalg.vector_norm(deltas, dim=-1, out=adjoints.adjoint_norm[lo:hi])
            recurrent = deltas - grad_out[lo:hi] if keep_delta else deltas.sub_(grad_out[lo:hi])
            torch.linalg.vector_norm(recurrent, dim=-1, out=adjoints.recurrent_norm[lo:hi])
            lo, hi = max(lo - block, 0), lo
        if t > 0:
            d_t = torch.addmm(grad_out[t - 1], g_t, w_hh, out=buffer[t - 1 - lo])
    return g, adjoints


class ElmanStackFunction(torch.autograd.Function):
    """(x, h0, slot, nonlinearity, bias, *weights) -> (output, h_n) for a stack of L layers.

    ``x`` (T, B, I), ``h0`` (L, B, H); ``weights`` per layer ``w_ih, w_hh[, b_ih, b_hh]``.
    Returns the top layer's outputs (T, B, H) and the final states h_n (L, B, H).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        h0: torch.Tensor,
        slot: RecorderSlot,
        nonlinearity: str,
        bias: bool,
        *weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        per_layer = 4 if bias else 2
        layer_weights = [weights[i : i + per_layer] for i in range(0, len(weights), per_layer)]
        outputs = []
        layer_input = x
        for layer, params in enumerate(layer_weights):
            w_ih, w_hh = params[0], params[1]
            b_ih, b_hh = (params[2], params[3]) if bias else (None, None)
            out = forward_layer(layer_input, h0[layer], w_ih, w_hh, b_ih, b_hh, nonlinearity)
            outputs.append(out)
            layer_input = out
        h_n = torch.stack([out[-1] for out in outputs])
        ctx.save_for_backward(x, h0, *outputs, *weights)
        ctx.slot, ctx.nonlinearity, ctx.bias, ctx.num_layers = (
            slot,
            nonlinearity,
            bias,
            len(outputs),
        )
        return outputs[-1], h_n

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor, grad_hn: torch.Tensor):
        L, bias, nonlinearity = ctx.num_layers, ctx.bias, ctx.nonlinearity
        saved = ctx.saved_tensors
        x, h0 = saved[0], saved[1]
        outputs = list(saved[2 : 2 + L])
        weights = saved[2 + L :]
        per_layer = 4 if bias else 2
        recorder = ctx.slot.recorder
        if recorder is not None:
            layer_pairs = [(weights[i], weights[i + 1]) for i in range(0, len(weights), per_layer)]
            recorder.on_stack_backward(outputs, grad_output, layer_pairs, nonlinearity)

        grad_weights: list[torch.Tensor | None] = [None] * len(weights)
        grad_h0 = torch.empty_like(h0)
        grad_out = grad_output
        grad_x = None
        for layer in range(L - 1, -1, -1):
            w_ih, w_hh = weights[per_layer * layer], weights[per_layer * layer + 1]
            out = outputs[layer]
            layer_input = x if layer == 0 else outputs[layer - 1]
            T, B, H = out.shape
            record = recorder is not None
            keep = record and recorder.keep_adjoints
            g, adjoints = backward_layer(
                grad_out, grad_hn[layer], out, w_hh, nonlinearity, record, keep
            )
            if recorder is not None:
                recorder.on_layer_backward(
                    layer, adjoints, grad_out, g, h0[layer], out, layer_input
                )
            g2 = g.view(T * B, H)
            grad_h0[layer] = g[0] @ w_hh
            # ∇W_hh = Σ_t g_tᵀ h_{t-1}: one GEMM over steps 1..T-1, plus step 0 against h0.
            grad_w_hh = g[1:].reshape(-1, H).t() @ out[:-1].reshape(-1, H)
            grad_w_hh.addmm_(g[0].t(), h0[layer])
            grad_w_ih = g2.t() @ layer_input.reshape(T * B, -1)
            base = per_layer * layer
            grad_weights[base], grad_weights[base + 1] = grad_w_ih, grad_w_hh
            if bias:
                grad_b = g2.sum(0)
                grad_weights[base + 2], grad_weights[base + 3] = grad_b, grad_b.clone()
            if layer > 0 or ctx.needs_input_grad[0]:
                grad_in = (g2 @ w_ih).view(T, B, -1)
                if layer > 0:
                    grad_out = grad_in
                else:
                    grad_x = grad_in
            del g, g2, adjoints  # free this layer's buffers before the next layer allocates
        grad_h0 = grad_h0 if ctx.needs_input_grad[1] else None
        return (grad_x, grad_h0, None, None, None, *grad_weights)
