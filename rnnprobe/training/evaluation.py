"""Validation of a run: loss and metric on its fixed validation batches, and confusion counts.

Means are over targets: a shorter last batch (the end of a validation split: fewer sequences,
or fewer steps of a language model's streams) counts less.
Everything stays on the device (rows filed with :class:`~rnnprobe.records.pending.PendingRows`).
"""

from __future__ import annotations

import torch

from rnnprobe.records.pending import PendingRows
from rnnprobe.training.batch import run_batch
from rnnprobe.training.setup import RunParts

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(parts: RunParts, step: int, rows: PendingRows) -> None:
    """File the validation loss and metric of ``step`` (``evals``) and, for a many-to-one
    classifier, the count of every (true, predicted) class pair (``confusion``)."""
    task = parts.task
    losses, metrics, sizes, h = [], [], [], None
    K = task.output_size if task.kind == "many_to_one_classification" else 0
    confusion = torch.zeros(K * K, dtype=torch.int64, device=parts.device)  # (K·K,)
    for batch in parts.eval_batches:
        batch = parts.on_device(batch)
        whole = [(0, batch.inputs.shape[1])]
        result = run_batch(
            parts.model, task, batch, whole, h if batch.continues else None, train=False
        )
        h = result.h_n
        losses.append(result.loss)
        metrics.append(result.metric)
        sizes.append(batch.targets.numel())  # (B,) or (B, T): sequences, or their steps
        if K and result.predictions is not None:
            cells = batch.targets * K + result.predictions  # (B,) in [0, K²)
            confusion.scatter_add_(0, cells, torch.ones_like(cells))  # no sync, unlike bincount
    share = [n / sum(sizes) for n in sizes]
    rows.add(
        "evals",
        step=step,
        loss=sum(v.double() * w for v, w in zip(losses, share, strict=True)),
        metric=sum(v.double() * w for v, w in zip(metrics, share, strict=True)),
    )
    if K:
        cells = torch.arange(K * K)
        rows.add(
            "confusion",
            step=step,
            true=(cells // K).numpy(),
            predicted=(cells % K).numpy(),
            count=confusion,
        )
