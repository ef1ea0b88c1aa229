r"""A stacked Elman recurrence as one autograd function whose backward pass *is* BPTT.

Index letters: ``t`` time (T steps), ``b`` batch (B), ``l`` layer (L), ``d`` direction (D = 1,
or 2 when bidirectional), ``h`` hidden (H). Row vectors, time-major. Layer ``l``, direction
``d``, with input ``x_t`` (the layer below's output, both directions concatenated, times its
dropout mask in training):

    a_t = x_t W_ihᵀ + b_ih + h_prev W_hhᵀ + b_hh,      h_t = φ(a_t)

``h_prev`` is h_{t-1} in the forward direction and h_{t+1} in the reverse one (h0 at the first
step a direction visits). Backward, with ``ε_t = ∂L/∂h_t|direct`` (from the layer above or the
head) and the total adjoint ``δ_t = ∂L/∂h_t`` (all paths, through the next state visited too):

    δ_last = ε_last + ∂L/∂h_n,      g_t = φ'(a_t) ⊙ δ_t,      δ_prev = ε_prev + g_t W_hh
    ∇W_hh = Σ_t g_tᵀ h_prev(t),   ∇W_ih = Σ_t g_tᵀ x_t,   ∇b = Σ_t g_t,   ∂L/∂x_t = Σ_d g_t W_ih

A packed (variable-length) batch is sorted by decreasing length, so at step t the real rows
are the first ``batch_sizes[t]``: a sequence starts from h0 at its first real step, its h_n is
its state at its last real step, and h, g and δ are exactly zero at its padded steps.

The unpadded scan costs one GEMM and one multiply per step, in place; every weight gradient is
one GEMM over all steps afterwards. The adjoints are handed to an optional recorder (see
``capture.py``), so recording them adds only a few reductions. Padded batches, and backward
passes that must themselves be differentiable (``create_graph=True``, ``torch.func``), run the
same recurrences out of place, the forward recomputed from the saved inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from rnnprobe.core import fused
from rnnprobe.nonlinearity import activate_, activation, derivative, derivative_from_output
from rnnprobe.probes.norms import first_norm, mend, record_norm, unsafe

# One direction's (w_ih, w_hh, b_ih, b_hh); the biases are None in a stack without them.
LayerParams = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class BackwardRecorder(Protocol):
    """Receives what the backward pass computes anyway: once per stack, once per layer and
    direction (top layer first), then once at the end. Tensors are in the scan's batch order."""

    keep_adjoints: bool

    def on_stack_backward(
        self,
        outputs: list[torch.Tensor],
        seeds: torch.Tensor,
        weights: list[tuple[torch.Tensor, torch.Tensor]],
        nonlinearity: str,
        *,
        directions: int,
        lengths: tuple[int, ...] | None,
        order: torch.Tensor | None,
        dropout: bool,
    ) -> None:
        """Start one backward pass: each layer's (and direction's) outputs, the top seeds
        ε (T, B, D·H), and each layer's (w_ih, w_hh), bottom first."""

    def on_layer_backward(
        self,
        layer: int,
        adjoints: LayerAdjoints,
        g: torch.Tensor,
        h0: torch.Tensor,
        outputs: torch.Tensor,
        inputs: torch.Tensor,
        *,
        direction: int,
        previous: torch.Tensor | None,
    ) -> None:
        """Receive one layer's (and direction's) adjoints, g, h0, outputs and inputs."""

    def on_stack_end(self) -> None:
        """End the backward pass begun by the last ``on_stack_backward``."""


class RecorderSlot:
    """A mutable holder the module passes to the function; a capture fills it before backward."""

    __slots__ = ("recorder",)

    def __init__(self) -> None:
        self.recorder: BackwardRecorder | None = None


@dataclass(frozen=True)
class Schedule:
    """The steps one direction visits, in order, and how many rows are real at each.

    ``times``: t in the order the forward scan visits them (descending if ``reverse``).
    ``active[k]``: the real rows (the first ones) at the k-th step visited; None when every
    row is real at every step (an unpadded batch).
    """

    times: tuple[int, ...]
    reverse: bool
    active: tuple[int, ...] | None = None


def make_schedule(T: int, reverse: bool, batch_sizes: tuple[int, ...] | None = None) -> Schedule:
    """Return the schedule of one direction over T steps (``batch_sizes`` of a packed batch)."""
    times = tuple(range(T - 1, -1, -1)) if reverse else tuple(range(T))
    active = None if batch_sizes is None else tuple(batch_sizes[t] for t in times)
    return Schedule(times, reverse, active)


@dataclass(frozen=True, eq=False)
class StackSpec:
    """Everything of one call but its tensors: the function's non-differentiable input."""

    nonlinearity: str
    bias: bool
    num_layers: int
    schedules: tuple[Schedule, ...]  # one per direction
    lengths: tuple[int, ...] | None = None  # per row of a packed batch (sorted), else None
    masks: int = 0  # dropout masks passed after the weights: L - 1 in training, else 0
    order: torch.Tensor | None = None  # a packed batch's unsorted_indices, for the recorder
    zero_h0: bool = False  # h0 is zeros (no hx given): the fast path skips products with it

    @property
    def directions(self) -> int:
        """Return D: 2 for a bidirectional stack, else 1."""
        return len(self.schedules)

    def layer_params(self, weights: Sequence[torch.Tensor], layer: int) -> list[LayerParams]:
        """Return ``layer``'s (w_ih, w_hh, b_ih, b_hh) per direction (biases None if absent)."""
        n = 4 if self.bias else 2
        base = layer * n * self.directions
        params: list[LayerParams] = []
        for d in range(self.directions):
            w = weights[base + d * n : base + (d + 1) * n]
            params.append((w[0], w[1], w[2], w[3]) if self.bias else (w[0], w[1], None, None))
        return params


def direction_of(tensor: torch.Tensor, d: int, directions: int) -> torch.Tensor:
    """Return direction ``d``'s part (..., H) of a layer tensor (..., D·H), as a view."""
    if directions == 1:
        return tensor
    H = tensor.shape[-1] // directions
    return tensor[..., d * H : (d + 1) * H]


def _at_last_real(h: torch.Tensor, lengths: tuple[int, ...] | None) -> torch.Tensor:
    """Return h (T, B, H) at each row's last real step, (B, H)."""
    if lengths is None:
        return h[-1]
    index = torch.tensor(lengths, device=h.device) - 1
    return h[index, torch.arange(h.shape[1], device=h.device)]


def at_first_visit(
    h: torch.Tensor, schedule: Schedule, lengths: tuple[int, ...] | None
) -> torch.Tensor:
    """Return h (T, B, H) at the first step each row visits (the one that reads h0), (B, H)."""
    return _at_last_real(h, lengths) if schedule.reverse else h[0]


def at_last_visit(
    h: torch.Tensor, schedule: Schedule, lengths: tuple[int, ...] | None
) -> torch.Tensor:
    """Return h (T, B, H) at the last step each row visits (its h_n), (B, H)."""
    return h[0] if schedule.reverse else _at_last_real(h, lengths)


def previous_states(
    h: torch.Tensor, h0: torch.Tensor, lengths: tuple[int, ...] | None
) -> torch.Tensor:
    """Return the reverse direction's h_prev (T, B, H): h_{t+1}, or h0 at a row's first visit."""
    previous = torch.cat([h[1:], h0.unsqueeze(0)])
    if lengths is not None:
        index = torch.tensor(lengths, device=h.device) - 1
        previous = previous.index_put((index, torch.arange(h.shape[1], device=h.device)), h0)
    return previous


def project(x: torch.Tensor, params: list[LayerParams]) -> torch.Tensor:
    """Return x_t W_ihᵀ + b_ih + b_hh of every step and direction at once, (T, B, D·H)."""
    T, B, I = x.shape  # time, batch, input size
    w_ih = params[0][0] if len(params) == 1 else torch.cat([p[0] for p in params])
    x2 = x.reshape(T * B, I)
    if params[0][2] is None:
        a = x2 @ w_ih.t()
    else:
        biases = [_bias(p) for p in params]
        a = torch.addmm(biases[0] if len(params) == 1 else torch.cat(biases), x2, w_ih.t())
    return a.view(T, B, w_ih.shape[0])


def _bias(params: LayerParams) -> torch.Tensor:
    """Return b_ih + b_hh (H,) of one direction of a stack with biases."""
    _, _, b_ih, b_hh = params
    if b_ih is None or b_hh is None:
        raise ValueError("this stack has no biases")
    return b_ih + b_hh


def _filled(slots: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Return ``slots`` once every one of them has been written (raise if one was not)."""
    filled = [t for t in slots if t is not None]
    if len(filled) != len(slots):
        raise RuntimeError(f"{len(slots) - len(filled)} of {len(slots)} slots were never written")
    return filled


def scan_(
    a: torch.Tensor,
    h0: torch.Tensor,
    w_hh: torch.Tensor,
    nonlinearity: str,
    schedule: Schedule,
    zero_h0: bool = False,
) -> torch.Tensor:
    """Run one direction in place over an unpadded batch: ``a`` (T, B, H) holds the input part
    of a_t on entry and h_t on exit; return it. ``zero_h0``: h0 is zeros, so the first step
    adds no product (adding exact zeros changes no bit)."""
    if fused.wanted(a):  # the whole loop in one kernel launch
        return fused.scan_forward_(a, h0, w_hh, nonlinearity, schedule.reverse)
    # h W_hhᵀ against a contiguous copy of W_hhᵀ: the small GEMMs run a quarter faster on CPU
    # than against the transposed view, and the copy costs one of them.
    w_hh_t = w_hh.t().contiguous()
    steps = a.unbind(0)
    h = h0
    for i, a_t in enumerate(reversed(steps) if schedule.reverse else steps):
        if i or not zero_h0:
            a_t.addmm_(h, w_hh_t)
        h = activate_(a_t, nonlinearity)
    return a


def scan(
    a: torch.Tensor,
    h0: torch.Tensor,
    w_hh: torch.Tensor,
    nonlinearity: str,
    schedule: Schedule,
) -> torch.Tensor:
    """Out-of-place twin of ``scan_`` that also handles padded rows: return h (T, B, H)."""
    T, B, H = a.shape
    phi, w_hh_t = activation(nonlinearity), w_hh.t()
    steps = a.unbind(0)
    states: list[torch.Tensor | None] = [None] * T
    h, real_before = h0, 0
    for k, t in enumerate(schedule.times):
        n = B if schedule.active is None else schedule.active[k]
        carried = min(n, real_before)  # rows that go on from the step before; the rest start
        if carried == n:
            previous = h if n == B else h[:n]
        elif carried == 0:
            previous = h0[:n]
        else:
            previous = torch.cat([h[:carried], h0[carried:n]])
        h_t = phi(torch.addmm(steps[t] if n == B else steps[t][:n], previous, w_hh_t))
        if n < B:
            h_t = torch.cat([h_t, h_t.new_zeros(B - n, H)])
        states[t], h, real_before = h_t, h_t, n
    return torch.stack(_filled(states))


@dataclass
class LayerAdjoints:
    """What one layer's scan hands a recorder: per-sample norms (T, B), δ itself if kept."""

    adjoint_norm: torch.Tensor  # ‖δ_t‖
    recurrent_norm: torch.Tensor  # ‖δ_t − ε_t‖, the part through the next state (h_n at the end)
    direct_norm: torch.Tensor  # ‖ε_t‖
    delta: torch.Tensor | None  # (T, B, H)


RECORD_BLOCK = 1024  # at most this many steps of δ held at once: ε is copied in, norms taken,
BLOCK_BYTES = 2**21  # per buffer, of at most this many bytes (at least one step)
MIN_BLOCK = 16  # steps a block may hold even where that exceeds T / its buffers


def block_steps(T: int, step_bytes: int, buffers: int = 2) -> int:
    """Return the steps of δ a layer's backward pass holds at once in each of its ``buffers``
    (δ, and ε's copy where g overwrites ε): together at most T steps (``MIN_BLOCK`` each at
    least), so they add at most one (T, B, H) buffer to the step's peak memory, and at most
    ``BLOCK_BYTES`` each. Fewer, larger blocks cost fewer ops: each block takes its norms and
    checks their range once."""
    return max(1, min(RECORD_BLOCK, T, max(T // buffers, MIN_BLOCK), BLOCK_BYTES // step_bytes))


def _span(visits: tuple[int, ...], start: int, block: int) -> tuple[int, int]:
    """Return [lo, hi): the steps ``visits[start : start + block]``, which are contiguous."""
    first, last = visits[start], visits[min(start + block, len(visits)) - 1]
    return min(first, last), max(first, last) + 1


def backward_layer(
    grad_out: torch.Tensor,
    grad_hn: torch.Tensor,
    h: torch.Tensor,
    w_hh: torch.Tensor,
    nonlinearity: str,
    schedule: Schedule,
    g: torch.Tensor,
    record: bool = False,
    keep_delta: bool = False,
) -> LayerAdjoints | None:
    """Write g_t = φ'(a_t) ⊙ δ_t into ``g`` (T, B, H); return the adjoints if ``record``. The
    batch is unpadded.

    ``grad_out`` (T, B, H) is the direct part ε, ``grad_hn`` (B, H) the gradient of h_n, ``h``
    (T, B, H) the outputs. ``g`` may be ``grad_out`` itself (a buffer the caller owns and no
    longer needs, unless δ is kept): each block of ε is read before it is overwritten.
    δ lives in a buffer of :func:`block_steps` steps (all T if δ is kept):
    each block starts as a copy of its ε, then each step adds g_{t+1} W_hh in place, so a step
    costs one GEMM and one multiply by φ' (tanh: read off h_t in the same op) and allocates
    nothing. Recording takes the norms of a whole block at once.
    """
    T, B, H = h.shape
    overwrite = g.data_ptr() == grad_out.data_ptr()
    if overwrite and keep_delta:
        raise ValueError("a kept δ needs all of ε: g must not overwrite grad_out")
    if fused.wanted(g):  # the whole loop, records included, in one kernel launch
        args = (grad_out, grad_hn, h, w_hh, nonlinearity, schedule.reverse, g)
        fused_records = fused.scan_backward(*args, record, keep_delta)
        if fused_records is None:
            return None
        (adjoint, recurrent, direct_norm), delta = fused_records[0].unbind(0), fused_records[1]
        return LayerAdjoints(adjoint, recurrent, direct_norm, delta)
    visits = schedule.times[::-1]  # the order this pass visits the steps
    step_bytes = max(1, B * H * h.element_size())  # B = 0: an empty batch
    block = T if keep_delta else block_steps(T, step_bytes, 2 if record and overwrite else 1)
    buffer = h.new_empty(block, B, H)
    direct = h.new_empty(block, B, H) if record and overwrite else None  # ε of a block
    adjoints, norms = None, h.new_empty(3 if record else 0, T, B)  # ‖δ‖, ‖δ − ε‖, ‖ε‖
    if record:
        adjoint, recurrent, direct_norm = norms.unbind(0)
        adjoints = LayerAdjoints(adjoint, recurrent, direct_norm, buffer if keep_delta else None)
    narrow = record and h.device.type == "cpu" and h.dtype == torch.float32  # norms to check
    # through h_n at the first step visited: often exactly zero, a ‖δ − ε‖ of 0 that is right
    hn_zero = narrow and not grad_hn.detach().numpy().any()
    gs, slots, hs = g.unbind(0), buffer.unbind(0), h.unbind(0)
    # tanh: g_t = δ_t ⊙ (1 − h_t²) in one op a step (autograd's own), no pass for φ' first
    tanh_backward = torch.ops.aten.tanh_backward.grad_input if nonlinearity == "tanh" else None
    g_t = grad_hn
    for start in range(0, T, block):
        lo, hi = _span(visits, start, block)
        deltas, eps = buffer[: hi - lo], grad_out[lo:hi]
        deltas.copy_(eps)  # slot t - lo holds step t's δ, so far its ε
        if adjoints is not None:
            first_norm(eps, out=adjoints.direct_norm[lo:hi])
            if direct is not None:
                eps = direct[: hi - lo].copy_(eps)
        if tanh_backward is None:
            derivative_from_output(h[lo:hi], nonlinearity, out=g[lo:hi])  # over ε if overwriting
        if start == 0:
            slots[visits[0] - lo].add_(grad_hn)
        else:  # the step visited before this block, through its next state
            slots[visits[start] - lo].addmm_(g_t, w_hh)
        stop = min(start + block, T)
        for i in range(start, stop):
            t = visits[i]
            if tanh_backward is None:
                g_t = gs[t].mul_(slots[t - lo])
            else:
                g_t = tanh_backward(slots[t - lo], hs[t], grad_input=gs[t])
            if i + 1 < stop:
                slots[visits[i + 1] - lo].addmm_(g_t, w_hh)
        if adjoints is not None:
            first_norm(deltas, out=adjoints.adjoint_norm[lo:hi])
            recurrent = deltas - eps if keep_delta else deltas.sub_(eps)
            first_norm(recurrent, out=adjoints.recurrent_norm[lo:hi])
            if narrow:  # tiny or huge norms: sum again in float64
                first = visits[0] - lo if start == 0 and hn_zero else None
                delta = deltas if keep_delta else None
                _mend_block(norms[:, lo:hi], eps, recurrent, delta, first)
    return adjoints


def _mend_block(
    norms: torch.Tensor,
    eps: torch.Tensor,
    recurrent: torch.Tensor,
    delta: torch.Tensor | None,
    zero_row: int | None,
) -> None:
    """Sum again in float64 the block's norms (3, n, B) outside the safe range (CPU float32):
    ‖δ‖ from δ if kept, else from ε + (δ − ε); ``zero_row``: the step whose ‖δ − ε‖ is an
    exact zero (through a zero h_n gradient)."""
    mask = unsafe(norms)  # (3, n, B)
    if zero_row is not None:
        mask[1, zero_row] = False
    if not mask.any():  # the common case: one look at (3, n, B) values
        return
    e, r = eps.detach().numpy(), recurrent.detach().numpy()
    d = None if delta is None else delta.detach().numpy()

    def deltas(rows: np.ndarray) -> np.ndarray:
        return d[rows] if d is not None else e[rows].astype(np.float64) + r[rows]

    mend(norms[0], deltas, mask=mask[0])
    mend(norms[1], lambda rows: r[rows], mask=mask[1])
    mend(norms[2], lambda rows: e[rows], mask=mask[2])


def bptt(
    grad_out: torch.Tensor,
    grad_hn: torch.Tensor,
    h: torch.Tensor,
    w_hh: torch.Tensor,
    nonlinearity: str,
    schedule: Schedule,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-place twin of ``backward_layer`` that also handles padded rows: return (g, δ).

    ``h`` (T, B, H) are the direction's outputs; g and δ (T, B, H) are zero at padded steps.
    Every op is out of place, so autograd (``create_graph``) and ``torch.func`` can trace it.
    """
    T, B, H = h.shape
    phi_prime, eps = derivative(h, nonlinearity).unbind(0), grad_out.unbind(0)
    gs: list[torch.Tensor | None] = [None] * T
    deltas: list[torch.Tensor | None] = [None] * T
    g_next: torch.Tensor | None = None  # g of the step visited before (later in the scan)
    carried = 0  # this step's rows whose next visited step is real
    for k in range(T - 1, -1, -1):
        t = schedule.times[k]
        n = B if schedule.active is None else schedule.active[k]
        e = eps[t] if n == B else eps[t][:n]
        if carried == 0 or g_next is None:  # every row ends here: its h_n
            d = e + grad_hn[:n]
        elif carried == n:
            d = torch.addmm(e, g_next[:n], w_hh)
        else:
            ending = e[carried:] + grad_hn[carried:n]
            d = torch.cat([torch.addmm(e[:carried], g_next[:carried], w_hh), ending])
        g_t = (phi_prime[t] if n == B else phi_prime[t][:n]) * d
        if n < B:
            pad = g_t.new_zeros(B - n, H)
            g_t, d = torch.cat([g_t, pad]), torch.cat([d, pad])
        gs[t], deltas[t], g_next = g_t, d, g_t
        if k > 0:
            carried = min(n, B if schedule.active is None else schedule.active[k - 1])
    return torch.stack(_filled(gs)), torch.stack(_filled(deltas))


def adjoints_from(delta: torch.Tensor, direct: torch.Tensor, keep_delta: bool) -> LayerAdjoints:
    """Return a recorder's view of δ (T, B, H) and ε: the norms, δ itself if kept (detached)."""
    delta, direct = delta.detach(), direct.detach()
    return LayerAdjoints(
        record_norm(delta),
        record_norm(delta - direct),
        record_norm(direct),
        delta if keep_delta else None,
    )


def recurrent_weight_grad(
    g: torch.Tensor,
    h: torch.Tensor,
    h0: torch.Tensor,
    previous: torch.Tensor | None,
    in_place: bool = False,
    zero_h0: bool = False,
) -> torch.Tensor:
    """Return ∇W_hh = Σ_t g_tᵀ h_prev(t) (H, H); ``previous`` None means h_prev(t) = h_{t-1}.

    ``in_place``: add the steps after the first into step 0's product (one (H, H) buffer, not
    two; the same sums in the same order), which a ``torch.func`` transform cannot trace.
    ``zero_h0``: h0 is zeros, so step 0 adds nothing (the sums start from exact zeros either
    way: the same bits).
    """
    H = g.shape[-1]
    if previous is not None:
        return g.reshape(-1, H).t() @ previous.reshape(-1, H)
    rest = g[1:].reshape(-1, H).t(), h[:-1].reshape(-1, H)
    if zero_h0:
        return torch.mm(*rest)
    first = g[0].t() @ h0  # step 0 against h0, then one GEMM over steps 1..T-1
    return first.addmm_(*rest) if in_place else torch.addmm(first, *rest)


def stack_forward(
    x: torch.Tensor,
    h0: torch.Tensor,
    spec: StackSpec,
    weights: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    functional: bool = False,
) -> list[torch.Tensor]:
    """Return each layer's outputs h (T, B, D·H) for x (T, B, I) and h0 (L·D, B, H).

    In place (the fast path) unless ``functional`` or the batch is padded.
    """
    D, in_place = spec.directions, not functional and spec.lengths is None
    nl = spec.nonlinearity
    outputs: list[torch.Tensor] = []
    layer_input = x
    for layer in range(spec.num_layers):
        params = spec.layer_params(weights, layer)
        a = project(layer_input, params)
        scanned = [
            scan_(direction_of(a, d, D), h0[layer * D + d], p[1], nl, schedule, spec.zero_h0)
            if in_place
            else scan(direction_of(a, d, D), h0[layer * D + d], p[1], nl, schedule)
            for d, (p, schedule) in enumerate(zip(params, spec.schedules, strict=True))
        ]
        if in_place:
            out = a
        elif D == 1:
            out = scanned[0]
        else:
            out = torch.cat(scanned, -1)
        outputs.append(out)
        layer_input = out if layer >= len(masks) else out * masks[layer]
    return outputs


def final_states(outputs: Sequence[torch.Tensor], spec: StackSpec) -> torch.Tensor:
    """Return h_n (L·D, B, H): each direction's state at the last step it visits."""
    D = spec.directions
    return torch.stack(
        [
            at_last_visit(direction_of(out, d, D), spec.schedules[d], spec.lengths)
            for out in outputs
            for d in range(D)
        ]
    )


def stack_backward(
    grad_top: torch.Tensor,
    grad_hn: torch.Tensor,
    x: torch.Tensor,
    h0: torch.Tensor,
    spec: StackSpec,
    weights: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    *,
    functional: bool,
    recorder: BackwardRecorder | None,
    needs_x: bool,
    needs_h0: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor | None]]:
    """Return (∂L/∂x, ∂L/∂h0, [∇ of every weight]): BPTT layer by layer from the top."""
    L, D = spec.num_layers, spec.directions
    in_place = not functional and spec.lengths is None
    keep = recorder is not None and recorder.keep_adjoints
    if recorder is not None:
        recorder.on_stack_backward(
            [direction_of(out, d, D).detach() for out in outputs for d in range(D)],
            grad_top.detach(),
            [
                (p[0].detach(), p[1].detach())
                for layer in range(L)
                for p in spec.layer_params(weights, layer)
            ],
            spec.nonlinearity,
            directions=D,
            lengths=spec.lengths,
            order=spec.order,
            dropout=bool(masks),
        )
    grad_weights: list[torch.Tensor | None] = [None] * len(weights)
    grad_h0: list[torch.Tensor | None] = [None] * (L * D)
    grad_out, grad_x = grad_top, None
    for layer in range(L - 1, -1, -1):
        below = outputs[layer - 1] if layer > 0 else x
        layer_input = below if layer == 0 or layer - 1 >= len(masks) else below * masks[layer - 1]
        grad_in = _layer_backward(
            layer, grad_out, grad_hn, layer_input, outputs[layer], h0, spec, weights,
            grad_weights, grad_h0, in_place=in_place, recorder=recorder, keep=keep,
            needs_input=layer > 0 or needs_x, owns_grad_out=layer < L - 1, needs_h0=needs_h0,
        )  # fmt: skip
        if layer == 0:
            grad_x = grad_in
        elif grad_in is not None:  # (always above layer 0) the layer below's direct adjoint:
            # through its dropout mask, if any
            grad_out = grad_in if layer - 1 >= len(masks) else grad_in * masks[layer - 1]
    if recorder is not None:
        recorder.on_stack_end()
    return grad_x, torch.stack(_filled(grad_h0)) if needs_h0 else None, grad_weights


def _layer_backward(
    layer: int, grad_out: torch.Tensor, grad_hn: torch.Tensor, layer_input: torch.Tensor,
    out: torch.Tensor, h0: torch.Tensor, spec: StackSpec, weights: Sequence[torch.Tensor],
    grad_weights: list[torch.Tensor | None], grad_h0: list[torch.Tensor | None], *,
    in_place: bool, recorder: BackwardRecorder | None, keep: bool, needs_input: bool,
    owns_grad_out: bool, needs_h0: bool,
) -> torch.Tensor | None:  # fmt: skip
    """Run one layer's BPTT (every direction); fill its entries of ``grad_weights`` and
    ``grad_h0`` (if ``needs_h0``); return ∂L/∂(layer input) (T, B, I) if ``needs_input``.
    Its buffers are freed on return, before the layer below allocates its own;
    ``owns_grad_out``: ``grad_out`` may be overwritten."""
    D, params = spec.directions, spec.layer_params(weights, layer)
    per_direction = 4 if spec.bias else 2
    g = None
    if in_place:  # g over ε where the stack owns ε (from the layer above) and δ is not kept
        g = grad_out if owns_grad_out and not keep else torch.empty_like(out)
    parts = []
    for d, (_, w_hh, _, _) in enumerate(params):
        i, schedule = layer * D + d, spec.schedules[d]
        direct, h = direction_of(grad_out, d, D), direction_of(out, d, D)
        adjoints: LayerAdjoints | None
        if g is not None:  # in place
            g_d = direction_of(g, d, D)
            adjoints = backward_layer(
                direct, grad_hn[i], h, w_hh, spec.nonlinearity, schedule, g_d,
                recorder is not None, keep,
            )  # fmt: skip
        else:
            g_d, delta = bptt(direct, grad_hn[i], h, w_hh, spec.nonlinearity, schedule)
            parts.append(g_d)
            adjoints = adjoints_from(delta, direct, keep) if recorder is not None else None
        previous = previous_states(h, h0[i], spec.lengths) if schedule.reverse else None
        if recorder is not None and adjoints is not None:
            seen = [t.detach() for t in (g_d, h0[i], h, layer_input)]  # records only
            recorder.on_layer_backward(
                layer, adjoints, *seen, direction=d,
                previous=None if previous is None else previous.detach(),
            )  # fmt: skip
        if needs_h0:
            grad_h0[i] = at_first_visit(g_d, schedule, spec.lengths) @ w_hh
        grad_weights[i * per_direction + 1] = recurrent_weight_grad(
            g_d, h, h0[i], previous, in_place, spec.zero_h0
        )
    if g is None:  # out of place: every direction's g, from ``bptt``
        g = parts[0] if D == 1 else torch.cat(parts, -1)
    T, B, DH = g.shape
    H, g2 = DH // D, g.reshape(T * B, DH)
    # (D·H, I): every direction's ∇W_ih in one GEMM
    grad_w_ih = g2.t() @ layer_input.reshape(T * B, layer_input.shape[-1])
    grad_b = g2.sum(0) if spec.bias else None
    for d in range(D):
        base = (layer * D + d) * per_direction
        grad_weights[base] = grad_w_ih if D == 1 else grad_w_ih[d * H : (d + 1) * H]
        if grad_b is not None:  # the stack has biases
            grad_bias = direction_of(grad_b, d, D)
            grad_weights[base + 2], grad_weights[base + 3] = grad_bias, grad_bias.clone()
    if not needs_input:
        return None
    w_ih = params[0][0] if D == 1 else torch.cat([p[0] for p in params])
    I = w_ih.shape[1]  # D·H above layer 0
    if in_place and I == DH:  # g is ours and dead from here: its memory takes the result
        return input_grad_over(g2, w_ih).view(T, B, I)
    return (g2 @ w_ih).view(T, B, I)


def input_grad_over(g2: torch.Tensor, w_ih: torch.Tensor) -> torch.Tensor:
    """Return g2 @ w_ih (N, D·H) written over ``g2`` (N, D·H), which it destroys.

    Chunks of rows of at most ``BLOCK_BYTES`` go through a small buffer, so the step's peak
    holds one (T, B, H) gradient less (one chunk: the plain product, nothing to save).
    """
    N, DH = g2.shape
    if tuple(w_ih.shape) != (DH, DH):
        raise ValueError(f"w_ih must be ({DH}, {DH}) to write over g, got {tuple(w_ih.shape)}")
    rows = max(1, min(N, BLOCK_BYTES // max(1, DH * g2.element_size())))
    if rows == N:
        return g2 @ w_ih
    buffer = g2.new_empty(rows, DH)
    for start in range(0, N, rows):
        stop = min(start + rows, N)
        g2[start:stop].copy_(torch.mm(g2[start:stop], w_ih, out=buffer[: stop - start]))
    return g2


def _under_functorch(*tensors: torch.Tensor) -> bool:
    """Return whether a ``torch.func`` transform (vmap, grad, jacrev...) wraps any tensor."""
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(wrapped(t) for t in tensors)


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Return a context that turns autocast off (the inputs were cast once, by the module)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _split(
    spec: StackSpec, tensors: Sequence[torch.Tensor]
) -> tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]:
    """Return (weights, masks): the tensors after ``spec``, less the trailing dropout masks."""
    cut = len(tensors) - spec.masks
    return tensors[:cut], tensors[cut:]


class ElmanStackFunction(torch.autograd.Function):
    """(x, h0, slot, spec, *weights, *masks) -> (output, h_n, *outputs of the layers below).

    ``x`` (T, B, I), ``h0`` (L·D, B, H); ``weights`` in ``torch.nn.RNN``'s flat order (per
    layer and direction ``w_ih, w_hh[, b_ih, b_hh]``); ``masks`` the L - 1 dropout masks
    (T, B, D·H), already scaled by 1/(1-p), if any. Returns the top layer's outputs
    (T, B, D·H), h_n (L·D, B, H), and the lower layers' outputs (non-differentiable: saved for
    the backward pass).
    """

    generate_vmap_rule = True

    @classmethod
    def apply(cls, *args: Any) -> Any:
        """``Function.apply`` less its binding of the arguments to ``forward``'s signature
        (``inspect``, 0.1 ms a call): they are all positional, so binding changes nothing."""
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        args = torch._functorch.utils.unwrap_dead_wrappers(args)
        # the C++ Function.apply, which torch's stubs of _C._FunctionBase leave out
        return super(torch.autograd.Function, cls).apply(*args)  # type: ignore[misc]

    @staticmethod
    def forward(
        x: torch.Tensor,
        h0: torch.Tensor,
        slot: RecorderSlot,
        spec: StackSpec,
        *tensors: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Return (top layer's outputs (T, B, D·H), h_n (L·D, B, H), *lower layers' outputs)."""
        weights, masks = _split(spec, tensors)
        functional = _under_functorch(x, h0, *tensors)  # vmap: no in-place writes
        outputs = stack_forward(x, h0, spec, weights, masks, functional)
        return (outputs[-1], final_states(outputs, spec), *outputs[:-1])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        """Save x, h0, the weights and masks, and every layer's outputs for the backward pass."""
        x, h0, slot, spec, *tensors = inputs
        ctx.mark_non_differentiable(*output[2:])
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the lower outputs
        ctx.save_for_backward(x, h0, *tensors, *output[2:], output[0])
        ctx.slot, ctx.spec = slot, spec

    @staticmethod
    def backward(
        ctx: Any, grad_output: torch.Tensor | None, grad_hn: torch.Tensor | None, *_: Any
    ) -> tuple[torch.Tensor | None, ...]:
        """Return the gradients of (x, h0, slot, spec, *weights, *masks): BPTT, recorded."""
        spec = ctx.spec
        saved = ctx.saved_tensors
        cut = len(saved) - spec.num_layers
        x, h0, *tensors = saved[:cut]
        weights, masks = _split(spec, tensors)
        if grad_output is None:  # gradients are not materialized (see setup_context)
            grad_output = torch.zeros_like(saved[-1])
        grad_hn = torch.zeros_like(h0) if grad_hn is None else grad_hn
        functorch = _under_functorch(grad_output, grad_hn, x)
        # create_graph=True (grad mode on here) or torch.func: a differentiable backward pass
        functional = functorch or torch.is_grad_enabled()
        with _without_autocast(x.device.type):
            outputs = (
                stack_forward(x, h0, spec, weights, masks, functional=True)
                if functional
                else list(saved[cut:])
            )
            grad_x, grad_h0, grad_weights = stack_backward(
                grad_output,
                grad_hn,
                x,
                h0,
                spec,
                weights,
                masks,
                outputs,
                functional=functional,
                recorder=None if functorch else ctx.slot.recorder,
                needs_x=ctx.needs_input_grad[0],
                needs_h0=ctx.needs_input_grad[1],
            )
        return (grad_x, grad_h0, None, None, *grad_weights, *([None] * len(masks)))
