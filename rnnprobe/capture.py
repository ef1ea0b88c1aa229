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

Per-sample norms are kept; summaries take the mean over the batch of per-sample norms.
Records stay on the model's device during the step; ``cap.records()`` moves them all to the
host in one transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from rnnprobe.bptt import RecorderSlot
from rnnprobe.errors import RnnprobeError
from rnnprobe.model import ElmanRNN
from rnnprobe.probes.reach import default_reach_sources, gradient_reach


@dataclass
class LayerRecord:
    """One layer's records from one backward pass (shapes in the module docstring)."""

    adjoint_norm: torch.Tensor
    direct_norm: torch.Tensor
    recurrent_norm: torch.Tensor
    grad_w_hh_norm: torch.Tensor | None  # None unless the capture asked for weight_grads
    grad_w_ih_norm: torch.Tensor | None
    delta: torch.Tensor | None = None  # (T, B, H) the adjoints themselves, if kept


@dataclass
class BackwardRecord:
    """Records of one backward pass through the stack: ``layers[l]``, and the reach if asked."""

    layers: list[LayerRecord]
    reach: torch.Tensor | None = None
    reach_sources: list[int] = field(default_factory=list)
    states: list[torch.Tensor] | None = None  # per layer outputs h (T, B, H), if kept


def _outer_norms(gram_g: torch.Tensor, gram_p: torch.Tensor) -> torch.Tensor:
    """Return ‖g_tᵀ p_t‖_F per step, (T,), from Σ_bb' (g_b·g_b')(p_b·p_b').

    ``gram_g`` and ``gram_p`` (T, B, B) hold g_t g_tᵀ and p_t p_tᵀ: O(T·B²) instead of
    forming T outer-product matrices.
    """
    return (gram_g * gram_p).sum(dim=(1, 2)).clamp_min_(0).sqrt_()


def _gram(x: torch.Tensor) -> torch.Tensor:
    """Return x_t x_tᵀ per step, (T, B, B), for x (T, B, N)."""
    return torch.bmm(x, x.transpose(1, 2))


class Capture:
    """Context manager that records every backward pass of the model's ``ElmanRNN``.

    ``weight_grads``: also record each step's contribution to ∇W_hh and ∇W_ih.
    ``reach``: also compute gradient reach on the first ``reach_batch`` samples, for
    ``reach_sources`` (default: the last step and log-spaced ones). ``keep_adjoints`` keeps δ
    itself and ``keep_states`` the layer outputs (for probes) — both (T, B, H) per layer.
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
            raise RnnprobeError(
                f"capture needs a model with exactly one ElmanRNN, found {len(rnns)}"
            )
        if reach_batch < 1:
            raise RnnprobeError(f"reach_batch must be at least 1, got {reach_batch}")
        self.slot: RecorderSlot = rnns[0].recorder_slot
        self.reach, self.reach_sources, self.reach_batch = reach, reach_sources, reach_batch
        self.keep_adjoints, self.keep_states = keep_adjoints, keep_states
        self.weight_grads = weight_grads
        self._records: list[BackwardRecord] = []
        self._layers: dict[int, LayerRecord] = {}
        self._pending_reach: tuple[torch.Tensor | None, list[int], list[torch.Tensor] | None]

    def __enter__(self) -> Capture:
        if self.slot.recorder is not None:
            raise RnnprobeError("this model is already being captured")
        self.slot.recorder = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.slot.recorder = None

    def on_stack_backward(self, outputs, seeds, weights, nonlinearity) -> None:
        """Start a new record; compute the reach from the saved outputs if asked."""
        self._layers = {}
        reach, sources = None, []
        if self.reach:
            T = seeds.shape[0]
            sources = list(self.reach_sources or default_reach_sources(T))
            sub = slice(0, self.reach_batch)
            reach = gradient_reach(
                [out[:, sub] for out in outputs], seeds[:, sub], weights, nonlinearity, sources
            )
        states = [out.detach() for out in outputs] if self.keep_states else None
        self._pending_reach = (reach, sources, states)

    def on_layer_backward(self, layer, adjoints, direct, g, h0, outputs, inputs) -> None:
        """Reduce one layer's adjoints to per-step records (no host sync)."""
        grad_w_hh_norm = grad_w_ih_norm = None
        if self.weight_grads:  # three (T, B, B) Gram products: the one costly record
            gram_g = _gram(g)
            gram_prev = torch.empty_like(gram_g)  # h_{t-1} h_{t-1}ᵀ
            torch.mm(h0, h0.t(), out=gram_prev[0])
            torch.bmm(outputs[:-1], outputs[:-1].transpose(1, 2), out=gram_prev[1:])
            grad_w_hh_norm = _outer_norms(gram_g, gram_prev)
            grad_w_ih_norm = _outer_norms(gram_g, _gram(inputs))
        self._layers[layer] = LayerRecord(
            adjoint_norm=adjoints.adjoint_norm,
            direct_norm=direct.norm(dim=-1),
            recurrent_norm=adjoints.recurrent_norm,
            grad_w_hh_norm=grad_w_hh_norm,
            grad_w_ih_norm=grad_w_ih_norm,
            delta=adjoints.delta,
        )
        if layer == 0:
            reach, sources, states = self._pending_reach
            layers = [self._layers[k] for k in sorted(self._layers)]
            self._records.append(BackwardRecord(layers, reach, sources, states))

    def records_on_device(self) -> list[BackwardRecord]:
        """Return every backward pass's records where they were computed (no transfer)."""
        return self._records

    def records(self) -> list[BackwardRecord]:
        """Return every backward pass's records, moved to the host in one transfer."""
        tensors: list[torch.Tensor] = []
        for record in self._records:
            for layer in record.layers:
                tensors += [t for t in vars(layer).values() if t is not None]
            tensors += [record.reach] if record.reach is not None else []
            tensors += record.states or []
        if not tensors or tensors[0].device.type == "cpu":
            return self._records
        flat = torch.cat([t.reshape(-1) for t in tensors]).cpu()
        host = iter(flat.split([t.numel() for t in tensors]))
        for record in self._records:
            for layer in record.layers:
                for name, value in vars(layer).items():
                    if value is not None:
                        setattr(layer, name, next(host).view(value.shape))
            if record.reach is not None:
                record.reach = next(host).view(record.reach.shape)
            if record.states:
                record.states = [next(host).view(s.shape) for s in record.states]
        return self._records


def capture(model: nn.Module, **options) -> Capture:
    """Return a ``Capture`` of ``model`` (see ``Capture`` for options); use it with ``with``."""
    return Capture(model, **options)
