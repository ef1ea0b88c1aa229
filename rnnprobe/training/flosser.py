"""Gradient flossing inside a training run: the penalty's gradient, its rows, pre-flossing.

The math is :mod:`rnnprobe.training.flossing`. Here a run records its recurrent stack's inputs
during the forward pass (``step.rnn_calls``), re-runs every layer on them with the fixed frame
Q_0 and adds weight·∇P to the task gradients before clipping (:meth:`Flosser.add_gradients`),
and runs the ``pre`` flossing-only updates before step 1 (:meth:`Flosser.pre_floss`).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch

from rnnprobe.probes.lyapunov import initial_frame
from rnnprobe.records.pending import PendingRows
from rnnprobe.seeds import derived_seed
from rnnprobe.training.batch import run_batch
from rnnprobe.training.flossing import FlossSpec, floss_layers
from rnnprobe.training.setup import RunParts, make_optimizer
from rnnprobe.training.step import RnnCall, clip_gradients, rnn_calls

__all__ = ["Flosser"]


class Flosser:
    """A run's flossing: its spec and fixed frame Q_0 (H, K) on the run's device."""

    def __init__(self, spec: FlossSpec, parts: RunParts) -> None:
        self.spec, self.parts = spec, parts
        H, seed = parts.config.model.hidden_size, derived_seed(parts.config.seed, "floss_frame")
        self.frame = initial_frame(H, spec.k, seed=seed, device=parts.device)

    def fires(self, step: int) -> bool:
        """Whether the penalty joins the loss at training step ``step``."""
        return self.spec.fires(step)

    def add_gradients(
        self, calls: list[RnnCall], step: int, weight: float, rows: PendingRows
    ) -> None:
        """Add weight·∇P to the gradients and file the ``floss`` rows of ``step`` (no sync).

        P gets a backward pass of its own rather than being added to the task loss: those
        passes follow the BPTT cuts, while P re-runs every layer over the whole (sub-)batch
        from the stack's recorded inputs, so the two graphs share nothing. Gradients add, so
        the optimizer sees ∇(L + weight·P) all the same, clipped as one.
        """
        spec, rnn = self.spec, self.parts.rnn
        x = torch.cat([c[0] for c in calls])  # (T, B, I): the stack's input, segments joined
        h0 = calls[0][1]  # (L, B, H) or None: the state the batch started from
        if spec.batch:
            x, h0 = x[:, : spec.batch], None if h0 is None else h0[:, : spec.batch]
        layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
        layers = []
        for layer in range(rnn.num_layers):
            w_ih, w_hh = rnn.layer_weights(layer)
            b_ih = getattr(rnn, f"bias_ih_l{layer}", None)
            b_hh = getattr(rnn, f"bias_hh_l{layer}", None)
            layers.append((w_ih, w_hh, b_ih, b_hh))
        with torch.set_grad_enabled(weight > 0):
            measures = floss_layers(
                x,
                h0,
                layers,
                nonlinearity=rnn.nonlinearity,
                k=spec.k,
                warmup=spec.warmup,
                qr_every=spec.qr,
                frame=self.frame,
            )
            if weight > 0:
                # one measure per layer (at least one), so the sum is a tensor, never the int 0
                penalty = cast(torch.Tensor, sum(m.penalty for m in measures))
                (weight * penalty).backward()
        for layer, measure in enumerate(measures):
            rows.add(
                "floss",
                step=step,
                layer=layer,
                index=np.arange(spec.k),
                exponent=measure.exponents,
                penalty=measure.penalty,
            )

    def pre_floss(self, rows: PendingRows) -> None:
        """Run the ``pre`` flossing-only updates, filed as steps −pre … −1 of ``floss``.

        They minimise P alone (``weight`` scales P in training steps only) with a fresh
        optimizer of the run's kind and lr, on batches of their own generator: training then
        starts from the optimizer state and data stream of a run without pre-flossing.
        """
        parts = self.parts
        cfg = parts.config.train
        optimizer = make_optimizer(parts.model, parts.config)
        generator = torch.Generator().manual_seed(derived_seed(parts.config.seed, "pre_floss"))
        batches = parts.task.batches(cfg.batch_size, generator)
        for step in range(-self.spec.pre, 0):
            batch = parts.on_device(next(batches))
            with rnn_calls(parts.rnn, True) as calls:  # a forward pass records the inputs
                run_batch(parts.model, parts.task, batch, [(0, batch.inputs.shape[1])], train=False)
            optimizer.zero_grad(set_to_none=True)
            self.add_gradients(calls, step, 1.0, rows)
            pre, _ = clip_gradients(parts.params, cfg.clip, cfg.clip_value)
            if bool(torch.isfinite(pre)):  # a training step's guard, and its one sync
                optimizer.step()
            else:
                message = "pre-flossing update skipped"
                rows.add("events", step=step, kind="nonfinite", message=message)
        optimizer.zero_grad(set_to_none=True)
