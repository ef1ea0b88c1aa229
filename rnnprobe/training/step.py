"""One optimizer step, as training runs it (the benchmarks share its capture and clipping).

:func:`train_step` zeroes the gradients, runs the batch's forward and (truncated) backward
passes under the capture the fired probes ask for, lets the run add to the gradients (the
truncation-bias probe, gradient flossing), clips, checks that loss and gradients are finite
in the step's one host sync, files the probes' records (before the update: a Jacobian
J_t = diag(φ'(a_t)) W_hh uses the W_hh that made a_t) and updates the weights if finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rnnprobe.core.capture import BackwardRecord, Capture, capture
from rnnprobe.core.models import ElmanRNN
from rnnprobe.data.tasks import Batch
from rnnprobe.errors import RnnprobeError
from rnnprobe.training.batch import BatchResult, run_batch
from rnnprobe.training.probing import STATE_PROBES, Probing
from rnnprobe.training.setup import RunParts

if TYPE_CHECKING:
    from rnnprobe.training.graphs import StepGraphs

__all__ = [
    "Pass",
    "RnnCall",
    "StepResult",
    "clip_gradients",
    "forward_backward",
    "probed_capture",
    "rnn_calls",
    "train_step",
]

RnnCall = tuple[torch.Tensor, torch.Tensor | None]  # input (T, B, I), hx (L, B, H) or None


@contextmanager
def rnn_calls(rnn: ElmanRNN, active: bool) -> Iterator[list[RnnCall]]:
    """Yield the (input, hx) of every call of ``rnn`` in the block, detached, in order (left
    empty unless ``active``): flossing re-runs the layers on them."""
    calls: list[RnnCall] = []
    if not active:
        yield calls
        return

    def hook(module: ElmanRNN, args: tuple, kwargs: dict[str, Any]) -> None:
        x, hx = (*args, kwargs.get("hx"))[:2]
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or module.batch_first:
            raise RnnprobeError("--floss needs the RNN's input time-major (T, B, I), not packed")
        calls.append((x.detach(), None if hx is None else hx.detach()))

    handle = rnn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@dataclass
class StepResult:
    """What a step did: its batch's result, the gradient norms (0-d device tensors), whether it
    was finite (the update went through) and its size in tokens."""

    batch: BatchResult
    grad_norm_pre_clip: torch.Tensor
    grad_norm_post_clip: torch.Tensor
    finite: bool
    tokens: int


def clip_gradients(
    params: Sequence[torch.Tensor], mode: str, value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip gradients in place; return (pre-clip norm, post-clip norm) as 0-d device tensors."""
    if mode == "norm":
        pre = torch.nn.utils.clip_grad_norm_(params, value, foreach=True)
        return pre, pre * torch.clamp(value / (pre + 1e-6), max=1.0)
    pre = torch.nn.utils.clip_grad_norm_(params, math.inf, foreach=True)
    if mode == "none":
        return pre, pre
    torch.nn.utils.clip_grad_value_(params, value, foreach=True)
    return pre, torch.nn.utils.clip_grad_norm_(params, math.inf, foreach=True)


BACKWARD_PROBES = frozenset({"adjoints", "reach", "weight_grads"}) | STATE_PROBES


@contextmanager
def probed_capture(model: torch.nn.Module, fired: set[str], sub_batch: int) -> Iterator[Capture]:
    """Yield the capture of a step's backward passes, recording what the ``fired`` probes use
    (nothing, and no cost, when none of them reads the backward pass)."""
    cap = capture(
        model,
        reach="reach" in fired,
        reach_batch=sub_batch,
        keep_states=bool(fired & STATE_PROBES),
        weight_grads="weight_grads" in fired,
    )
    if not fired & BACKWARD_PROBES:
        yield cap  # never entered: it records nothing
        return
    with cap:
        yield cap


@dataclass
class Pass:
    """A step's forward and backward passes, before the update: the batch's result, the
    gradient norms around clipping, the finite flag (0-d bool, on the device) and the records
    of the capture (empty unless a fired probe reads the backward pass)."""

    batch: BatchResult
    pre_clip: torch.Tensor
    post_clip: torch.Tensor
    finite: torch.Tensor
    records: list[BackwardRecord]


def forward_backward(
    parts: RunParts,
    batch: Batch,
    segments: list[tuple[int, int]],
    h0: torch.Tensor | None,
    fired: set[str],
    *,
    record_calls: bool = False,
    add_gradients: Callable[[BatchResult, list[RnnCall]], None] | None = None,
) -> Pass:
    """Zero the gradients, run the batch's passes under the capture ``fired`` asks for, let
    ``add_gradients`` add to them, clip, and flag whether loss and gradients are finite: all on
    the device, without a host sync (a CUDA graph replays exactly this; ``graphs.py``)."""
    cfg = parts.config.train
    parts.optimizer.zero_grad(set_to_none=True)
    sub_batch = parts.config.probes.sub_batch
    with (
        probed_capture(parts.model, fired, sub_batch) as cap,
        rnn_calls(parts.rnn, record_calls) as calls,
    ):
        result = run_batch(parts.model, parts.task, batch, segments, h0)
    if add_gradients is not None:
        add_gradients(result, calls)
    pre, post = clip_gradients(parts.params, cfg.clip, cfg.clip_value)
    finite = torch.isfinite(result.loss) & torch.isfinite(pre)
    if result.h_n is not None and parts.carries_state:
        finite = finite & torch.isfinite(result.h_n).all()
    return Pass(result, pre, post, finite, list(cap.records_on_device()))


def train_step(
    parts: RunParts,
    batch: Batch,
    segments: list[tuple[int, int]],
    h0: torch.Tensor | None,
    *,
    step: int,
    fired: set[str],
    probing: Probing | None = None,
    record_calls: bool = False,
    add_gradients: Callable[[BatchResult, list[RnnCall]], None] | None = None,
    is_finite: Callable[[torch.Tensor, BatchResult, torch.Tensor], bool] | None = None,
    graphs: StepGraphs | None = None,
) -> StepResult:
    """Run one optimizer step on ``batch`` (on the device) cut into ``segments``.

    ``add_gradients(result, calls)`` runs after the backward passes, before clipping, with the
    recurrent stack's inputs of every call (:func:`rnn_calls`; empty unless ``record_calls``);
    ``is_finite(finite, result, pre_clip_norm)`` makes the one host sync (default
    ``bool(finite)``); ``probing`` files the ``fired`` probes' records of ``step``. With
    ``graphs`` (and neither ``add_gradients`` nor ``record_calls``), a step whose work a CUDA
    graph holds replays it instead of running its passes eagerly.
    """
    done = None
    if graphs is not None and add_gradients is None and not record_calls:
        done = graphs.run(batch, segments, h0, fired)
    if done is None:
        done = forward_backward(
            parts,
            batch,
            segments,
            h0,
            fired,
            record_calls=record_calls,
            add_gradients=add_gradients,
        )
    result, pre = done.batch, done.pre_clip
    finite = bool(done.finite) if is_finite is None else is_finite(done.finite, result, pre)
    if probing is not None:
        probing.record_step(step, fired, done.records, result.backward_offsets, batch, finite)
    if finite:
        parts.optimizer.step()
    tokens = batch.inputs.shape[0] * batch.inputs.shape[1]
    return StepResult(result, pre, done.post_clip, finite, tokens)
