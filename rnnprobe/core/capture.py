r"""Record what BPTT computes, around any training step: ``with capture(model) as cap: ...``.

Conventions of every record (row vectors, time-major, per layer ``l``; B = batch):

- ``adjoint_norm`` (T, B): ‖δ_t‖₂ per sample, δ_t = ∂L/∂h_t the *total* adjoint (all paths).
- ``direct_norm`` (T, B): ‖ε_t‖₂, the part arriving directly from the layer above / the head.
- ``recurrent_norm`` (T, B): ‖δ_t − ε_t‖₂, the part arriving through h_{t+1} (at the last
  step: through h_n).
- ``grad_w_hh_norm`` / ``grad_w_ih_norm`` (T,): ‖g_tᵀ h_{t-1}‖_F and ‖g_tᵀ x_t‖_F, step t's
  contribution to ∇W_hh and ∇W_ih (summed over the batch), g_t = φ'(a_t) ⊙ δ_t.
- ``reach`` (L, S, T, B'): ‖∂ℓ_s/∂h_t‖₂ on the first B' samples for the source steps s
  (see ``probes/reach.py``); zero where t > s.

Per-sample norms are kept; summaries take the mean over the batch of per-sample norms, in
the caller's batch order (a packed batch's records are unsorted back). A bidirectional RNN
has one record per layer and direction (``layer``, ``direction`` 0 forward / 1 reverse, whose
"next" state is h_{t-1}); a packed batch's records are exactly zero at padded steps and
``BackwardRecord.real`` (T, B) marks the real ones.

Records stay on the model's device during the step; ``cap.records()`` moves them all to the
host in one transfer (two with the boolean ``real`` mask).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnprobe.core.bptt import LayerAdjoints, RecorderSlot
from rnnprobe.core.models import ElmanRNN
from rnnprobe.errors import RnnprobeError, check_count
from rnnprobe.probes.norms import mend, unsafe
from rnnprobe.probes.reach import default_reach_sources, gradient_reach


@dataclass
class LayerRecord:
    """One layer's (and direction's) records from one backward pass (shapes in the docstring)."""

    adjoint_norm: torch.Tensor
    direct_norm: torch.Tensor
    recurrent_norm: torch.Tensor
    grad_w_hh_norm: torch.Tensor | None  # None unless the capture asked for weight_grads
    grad_w_ih_norm: torch.Tensor | None
    delta: torch.Tensor | None = None  # (T, B, H) the adjoints themselves, if kept
    layer: int = 0
    direction: int = 0  # 0 forward in time, 1 reverse (the second half of a bidirectional layer)


@dataclass
class BackwardRecord:
    """Records of one backward pass through the stack: ``layers``, and the reach if asked.

    ``layers`` holds one record per layer, bottom first — per layer and direction, forward
    first, for a bidirectional RNN (``states`` likewise). ``real`` (T, B) marks the real steps
    of a packed batch (None: every step is real); records are zero at the others.
    """

    layers: list[LayerRecord]
    reach: torch.Tensor | None = None
    reach_sources: list[int] = field(default_factory=list)
    states: list[torch.Tensor] | None = None  # per layer outputs h (T, B, H), if kept
    real: torch.Tensor | None = None


def _not_one_rnn(model: nn.Module, count: int) -> str:
    """Return the one-line reason why ``model``, holding ``count`` ElmanRNNs, is not captured."""
    text = f"capture needs a model with exactly one ElmanRNN, found {count}"
    if count > 1:
        return f"{text}: capture one, handle.capture(i) or rnnprobe.capture(model.<its name>)"
    if any(type(m) is nn.RNN for m in model.modules()):
        return (
            f"{text}: its torch.nn.RNN is not instrumented; handle = rnnprobe.instrument(model), "
            "then handle.capture()"
        )
    return text


def _outer_norms(gram_g: torch.Tensor, gram_p: torch.Tensor) -> torch.Tensor:
    """Return ‖g_tᵀ p_t‖_F per step, (T,), from Σ_bb' (g_b·g_b')(p_b·p_b').

    ``gram_g`` and ``gram_p`` (T, B, B) hold g_t g_tᵀ and p_t p_tᵀ: O(T·B²) instead of
    forming T outer-product matrices.
    """
    return (gram_g * gram_p).sum(dim=(1, 2)).clamp_min_(0).sqrt_()


def _mend_weight_grad_norms(
    hh: torch.Tensor,
    ih: torch.Tensor,
    g: torch.Tensor,
    previous: torch.Tensor | None,
    h0: torch.Tensor,
    outputs: torch.Tensor,
    inputs: torch.Tensor,
) -> None:
    """Redo in float64 the CPU float32 weight-gradient norms (T,) that float32 products may
    have lost (``probes.norms``): values outside the safe range, and every step whose g has a
    sample with ‖g_b‖² below 2⁻⁹⁰, whose squares may underflow even when the product with a
    large input lands in range. Exact zeros from an all-zero factor are right as they are."""
    g_np = g.detach().numpy()

    def factor(t: int) -> np.ndarray:  # h_prev(t)
        if previous is not None:
            return previous[t].detach().numpy()
        return (h0 if t == 0 else outputs[t - 1]).detach().numpy()

    squares = np.einsum("tbh,tbh->tb", g_np, g_np)  # float32, as the Grams saw them
    small = ((squares > 0) & (squares < 2.0**-90)).any(axis=1)
    masks = [unsafe(hh) | small, unsafe(ih) | small]
    x_np = inputs.detach().numpy()
    for mask, values, other in ((masks[0], hh, factor), (masks[1], ih, lambda t: x_np[t])):
        for t in np.flatnonzero(mask & (values.detach().numpy() == 0)):
            if not g_np[t].any() or not other(int(t)).any():  # a zero factor: exactly 0
                mask[t] = False
    if masks[0].any() or masks[1].any():
        wide = [n.numpy() for n in _weight_grad_norms(g, previous, h0, outputs, inputs, wide=True)]
        mend(hh, lambda rows: wide[0][rows, None], mask=masks[0])
        mend(ih, lambda rows: wide[1][rows, None], mask=masks[1])


def _weight_grad_norms(
    g: torch.Tensor,
    previous: torch.Tensor | None,
    h0: torch.Tensor,
    outputs: torch.Tensor,
    inputs: torch.Tensor,
    *,
    wide: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ‖g_tᵀ h_prev(t)‖_F and ‖g_tᵀ x_t‖_F per step (T,) in ``g``'s dtype; ``wide``:
    the Gram products in float64 (in float32 the product of two small gradients underflows)."""
    given = g.dtype
    if wide:
        g, h0, outputs, inputs = (t.double() for t in (g, h0, outputs, inputs))
        previous = None if previous is None else previous.double()
    gram_g = _gram(g)
    if previous is not None:
        gram_prev = _gram(previous)
    else:
        gram_prev = torch.empty_like(gram_g)  # h_{t-1} h_{t-1}ᵀ
        torch.mm(h0, h0.t(), out=gram_prev[0])
        torch.bmm(outputs[:-1], outputs[:-1].transpose(1, 2), out=gram_prev[1:])
    hh, ih = _outer_norms(gram_g, gram_prev), _outer_norms(gram_g, _gram(inputs))
    return hh.to(given), ih.to(given)


def _gram(x: torch.Tensor) -> torch.Tensor:
    """Return x_t x_tᵀ per step, (T, B, B), for x (T, B, N)."""
    return torch.bmm(x, x.transpose(1, 2))


class Capture:
    """Context manager that records every backward pass of the model's ``ElmanRNN``.

    ``weight_grads``: also record each step's contribution to ∇W_hh and ∇W_ih.
    ``reach``: also compute gradient reach on the first ``reach_batch`` samples, for
    ``reach_sources`` (default: the last step and log-spaced ones); unidirectional RNNs without
    dropout only. ``keep_adjoints`` keeps δ itself and ``keep_states`` the layer outputs (for
    probes) — both (T, B, H) per layer. Backward passes run under ``torch.func`` transforms are
    not recorded (their tensors cannot leave the transform).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        reach: bool = False,
        reach_sources: Sequence[int] | None = None,
        reach_batch: int = 4,
        keep_adjoints: bool = False,
        keep_states: bool = False,
        weight_grads: bool = True,
    ) -> None:
        rnns = [m for m in model.modules() if isinstance(m, ElmanRNN)]
        if len(rnns) != 1:
            raise RnnprobeError(_not_one_rnn(model, len(rnns)))
        check_count(reach_batch, "reach_batch")
        if reach and rnns[0].bidirectional:
            raise RnnprobeError("gradient reach needs a unidirectional RNN")
        self.slot: RecorderSlot = rnns[0].recorder_slot
        self.reach, self.reach_sources, self.reach_batch = reach, reach_sources, reach_batch
        self.keep_adjoints, self.keep_states = keep_adjoints, keep_states
        self.weight_grads = weight_grads
        self._records: list[BackwardRecord] = []
        self._layers: list[LayerRecord] = []
        self._pending: BackwardRecord | None = None
        self._order: torch.Tensor | None = None

    def __enter__(self) -> Capture:
        if self.slot.recorder is not None:
            raise RnnprobeError("this model is already being captured")
        self.slot.recorder = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.slot.recorder = None

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
        """Start a new record; compute the reach from the saved outputs if asked."""
        self._layers, self._order = [], order
        reach: torch.Tensor | None = None
        sources: list[int] = []
        if self.reach:
            if dropout:
                raise RnnprobeError("gradient reach does not model dropout between layers")
            T = seeds.shape[0]
            sources = list(self.reach_sources or default_reach_sources(T))
            # the first reach_batch samples of the caller's batch, wherever the scan put them
            sub = slice(0, self.reach_batch) if order is None else order[: self.reach_batch]
            reach = gradient_reach(
                [out[:, sub] for out in outputs], seeds[:, sub], weights, nonlinearity, sources
            )
        states = [self._in_order(out.detach()) for out in outputs] if self.keep_states else None
        real = None
        if lengths is not None:
            steps = torch.arange(seeds.shape[0], device=seeds.device).unsqueeze(1)
            real = self._in_order(steps < torch.tensor(lengths, device=seeds.device))
        self._pending = BackwardRecord([], reach, sources, states, real)

    def on_layer_backward(
        self,
        layer: int,
        adjoints: LayerAdjoints,
        g: torch.Tensor,
        h0: torch.Tensor,
        outputs: torch.Tensor,
        inputs: torch.Tensor,
        *,
        direction: int = 0,
        previous: torch.Tensor | None = None,
    ) -> None:
        """Reduce one layer's adjoints to per-step records (no host sync).

        ``previous`` (T, B, H) holds the state each step's a_t reads; None means h0, then the
        outputs h_{t-1} (the forward direction).
        """
        grad_w_hh_norm: torch.Tensor | None = None
        grad_w_ih_norm: torch.Tensor | None = None
        if self.weight_grads:  # three (T, B, B) Gram products: the one costly record
            tensors = (g, previous, h0, outputs, inputs)
            wide = g.device.type == "cuda"
            grad_w_hh_norm, grad_w_ih_norm = _weight_grad_norms(*tensors, wide=wide)
            if g.device.type == "cpu" and g.dtype == torch.float32:
                _mend_weight_grad_norms(grad_w_hh_norm, grad_w_ih_norm, *tensors)
        self._layers.append(
            LayerRecord(
                adjoint_norm=self._in_order(adjoints.adjoint_norm),
                direct_norm=self._in_order(adjoints.direct_norm),
                recurrent_norm=self._in_order(adjoints.recurrent_norm),
                grad_w_hh_norm=grad_w_hh_norm,
                grad_w_ih_norm=grad_w_ih_norm,
                delta=None if adjoints.delta is None else self._in_order(adjoints.delta),
                layer=layer,
                direction=direction,
            )
        )

    def on_stack_end(self) -> None:
        """File the record of this backward pass, layers bottom first."""
        record, self._pending = self._pending, None
        if record is None:
            raise RnnprobeError("a backward pass ended that never started")
        record.layers = sorted(self._layers, key=lambda r: (r.layer, r.direction))
        self._records.append(record)

    def _in_order(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return a per-sample tensor (T, B, ...) in the caller's batch order."""
        return tensor if self._order is None else tensor.index_select(1, self._order)

    def records_on_device(self) -> list[BackwardRecord]:
        """Return every backward pass's records where they were computed (no transfer)."""
        return self._records

    def records(self) -> list[BackwardRecord]:
        """Return every backward pass's records, moved to the host in one transfer per dtype."""
        slots = [slot for record in self._records for slot in _tensor_slots(record)]
        tensors = [_get(slot) for slot in slots]
        if not tensors or tensors[0].device.type == "cpu":
            return self._records
        for dtype in {t.dtype for t in tensors}:
            chosen = [(s, t) for s, t in zip(slots, tensors, strict=True) if t.dtype == dtype]
            flat = torch.cat([t.reshape(-1) for _, t in chosen]).cpu()
            parts = flat.split([t.numel() for _, t in chosen])
            for (slot, t), part in zip(chosen, parts, strict=True):
                _set(slot, part.view(t.shape))
        return self._records


# Where a record holds a tensor: (a record, an attribute name) or (its states list, an index).
_Slot = tuple[LayerRecord | BackwardRecord, str] | tuple[list[torch.Tensor], int]


def _tensor_slots(record: BackwardRecord) -> Iterator[_Slot]:
    """Yield (holder, key) of every tensor a record holds: attributes, and the states list."""
    for layer in record.layers:
        for name, value in vars(layer).items():
            if isinstance(value, torch.Tensor):
                yield layer, name
    for name in ("reach", "real"):
        if getattr(record, name) is not None:
            yield record, name
    if record.states is not None:
        for i in range(len(record.states)):
            yield record.states, i


def _get(slot: _Slot) -> torch.Tensor:
    """Return the tensor held at ``slot``."""
    if isinstance(slot[0], list):
        states, i = slot
        return states[i]
    holder, name = slot
    return getattr(holder, name)


def _set(slot: _Slot, value: torch.Tensor) -> None:
    """Replace the tensor held at ``slot`` by ``value``."""
    if isinstance(slot[0], list):
        states, i = slot
        states[i] = value
    else:
        holder, name = slot
        setattr(holder, name, value)


def capture(model: nn.Module, **options: Any) -> Capture:
    """Return a ``Capture`` of ``model`` (see ``Capture`` for options); use it with ``with``."""
    return Capture(model, **options)
