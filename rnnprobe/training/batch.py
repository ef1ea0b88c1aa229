"""One batch's loss, metric and (truncated) backward passes, for every kind of task.

Per-step tasks (``lm``, ``copy``) average cross-entropy over every non-padding target of the
batch; under truncated BPTT each segment's backward pass carries its share of that mean, so
the accumulated gradient is the batch mean's gradient cut at segment boundaries. Many-to-one
tasks (``recall``, ``adding``) run all but the last segment without a graph: gradients reach
back at most one segment from the loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from rnnprobe.data.tasks import Batch, Task
from rnnprobe.errors import RnnprobeError

if TYPE_CHECKING:
    from rnnprobe.core.models import RNNClassifier

PER_STEP = ("lm", "per_step_classification")


@dataclass
class BatchResult:
    """One batch's detached loss and metric (0-d device tensors) and the final state."""

    loss: torch.Tensor
    metric: torch.Tensor
    h_n: torch.Tensor | None
    backward_offsets: list[int]  # time offset of each backward pass, in order
    predictions: torch.Tensor | None = None  # (B,) int64 argmax class: many-to-one classifiers


def run_batch(
    model: nn.Module,
    task: Task,
    batch: Batch,
    segments: Sequence[tuple[int, int]],
    h0: torch.Tensor | None = None,
    train: bool = True,
) -> BatchResult:
    """Return the batch's loss and metric; with ``train``, backward passes accumulate grads."""
    if task.kind in PER_STEP:
        return _per_step(model, task, batch, segments, h0, train)
    return _many_to_one(model, task, batch, segments, train)


def _per_step(
    model: nn.Module,
    task: Task,
    batch: Batch,
    segments: Sequence[tuple[int, int]],
    h0: torch.Tensor | None,
    train: bool,
) -> BatchResult:
    targets = batch.targets  # (B, T)
    count = (targets != 0).sum().clamp_min(1)
    total = torch.zeros((), device=targets.device)
    correct = torch.zeros((), device=targets.device)
    recall = getattr(task, "recall_length", 0)
    T = targets.shape[1]
    h, offsets = h0, []
    for start, end in segments:
        with torch.set_grad_enabled(train):
            logits, h_n = model(batch.inputs[:, start:end], h)  # (Ts, B, V)
            segment_targets = targets[:, start:end].t()  # (Ts, B)
            loss_sum = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                segment_targets.reshape(-1),
                ignore_index=0,
                reduction="sum",
            )
        if train:
            (loss_sum / count).backward()
            offsets.append(start)
        total = total + loss_sum.detach().to(total.dtype)
        if recall and end > T - recall:
            first = max(start, T - recall) - start
            hits = logits[first:].detach().argmax(-1) == segment_targets[first:]
            correct = correct + hits.sum()
        h = h_n.detach()
    loss = total / count
    if task.metric == "accuracy":
        metric = correct / (recall * targets.shape[0])
    elif task.metric == "bpc":
        metric = loss / math.log(2)
    else:
        metric = loss.exp()
    return BatchResult(loss, metric, h, offsets)


def _many_to_one(
    model: nn.Module,
    task: Task,
    batch: Batch,
    segments: Sequence[tuple[int, int]],
    train: bool,
) -> BatchResult:
    if len(segments) > 1 and batch.lengths is not None:
        raise RnnprobeError("truncated BPTT needs fixed-length sequences; use --bptt full")
    h = None
    *prefix, (start, _) = segments
    with torch.no_grad():
        for s, e in prefix:
            # many-to-one models are RNNClassifier (or RNNRegressor); nn.Module hides encode
            _, h = cast("RNNClassifier", model).encode(batch.inputs[:, s:e], h)
    with torch.set_grad_enabled(train):
        lengths = None if batch.lengths is None else batch.lengths - start
        prediction = model(batch.inputs[:, start:], lengths, h)
        if task.kind == "regression":
            loss = F.mse_loss(prediction.squeeze(-1), batch.targets)
        else:
            loss = F.cross_entropy(prediction, batch.targets)
    if train:
        loss.backward()
    if task.kind == "regression":
        metric, predicted = loss.detach(), None
    else:
        predicted = prediction.detach().argmax(-1)  # (B,)
        metric = (predicted == batch.targets).float().mean()
    return BatchResult(loss.detach(), metric, None, [start] if train else [], predicted)
