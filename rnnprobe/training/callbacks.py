"""The loop's callback points, and the progress bar that is one of them.

A :class:`Callback` sees the run at named points (once at the start, after a step, a flush,
a validation, a checkpoint, and once at the end); records it sees are on the host already, so
no point adds a host sync. ``train_run(..., callbacks=[...])`` adds a user's own.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    from rnnprobe.training.loop import Trainer
    from rnnprobe.training.step import StepResult

__all__ = ["Callback", "Columns", "ProgressBar", "RecentSteps", "ResumeHint"]

PROGRESS_STEPS = 50  # the bar's loss and clip rate are over this many recent recorded steps
Columns = dict[str, np.ndarray]


class Callback:
    """The loop's named points; override the ones you need. ``trainer.step`` is the step done.

    Records a callback sees are on the host already: none of these points adds a host sync.
    """

    def on_start(self, trainer: Trainer) -> None:
        """Once the run has started (its directory and lock are held), before the first step."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """After every optimizer step (``result.finite``: whether the update went through)."""

    def on_flush(self, trainer: Trainer, tables: dict[str, Columns]) -> None:
        """After records moved to the host: ``{table: {column: values}}`` of this flush."""

    def on_eval(self, trainer: Trainer) -> None:
        """After a validation (its rows are filed with the next flush)."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        """After a checkpoint was written (or refused: non-finite state)."""

    def on_end(self, trainer: Trainer, status: str) -> None:
        """Once, as the run stops: done, diverged, interrupted or failed (then it raises)."""


class ResumeHint(Callback):
    """Print, as the run starts, where it is and the command that continues it after Ctrl-C."""

    def on_start(self, trainer: Trainer) -> None:
        """Name the run directory on stderr."""
        where = trainer.run_store.path
        print(f"run {where}; after Ctrl-C: rnnprobe train --resume {where}", file=sys.stderr)


class ProgressBar(Callback):
    """A tqdm bar on stderr: steps, and at each flush the recent loss, the last validation
    loss, the clip rate and the throughput, from rows already on the host (no sync)."""

    def __init__(self, total: int, done: int, *, clipping: bool) -> None:
        self.bar = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, leave=False)
        self.recent, self.clipping, self.closed = RecentSteps(), clipping, False

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """Advance the bar by one step."""
        self.bar.update(1)

    def on_flush(self, trainer: Trainer, tables: dict[str, Columns]) -> None:
        """Show the flushed records' loss, validation loss, clip rate and tokens per second."""
        for table, columns in tables.items():
            self.recent.observe(table, columns)
        if self.closed or trainer.seconds == 0:
            return
        shown = self.recent.postfix(clipping=self.clipping)
        tokens_per_s = {"tokens_per_s": f"{trainer.tokens / trainer.seconds:,.0f}"}
        self.bar.set_postfix(shown | tokens_per_s)

    def on_end(self, trainer: Trainer, status: str) -> None:
        """Close the bar (it leaves no line behind)."""
        self.bar.close()
        self.closed = True


class RecentSteps:
    """The progress bar's numbers, from rows already moved to the host at a flush.

    ``loss`` and ``clip`` are the mean training loss and the share of clipped steps over the
    last ``PROGRESS_STEPS`` recorded steps whose update went through (finite losses only);
    ``val_loss`` is the last validation loss flushed so far.
    """

    def __init__(self) -> None:
        self.losses: deque[float] = deque(maxlen=PROGRESS_STEPS)
        self.clipped: deque[bool] = deque(maxlen=PROGRESS_STEPS)
        self.valid_loss = math.nan

    def observe(self, table: str, columns: Columns) -> None:
        """Take the values of one flushed block of ``steps`` or ``evals`` rows."""
        if table == "steps":
            went_through = ~columns["skipped"].astype(bool)
            self.losses.extend(columns["loss"][went_through].tolist())
            self.clipped.extend(columns["clipped"][went_through].astype(bool).tolist())
        elif table == "evals" and len(columns["loss"]):
            self.valid_loss = float(columns["loss"][-1])

    def postfix(self, *, clipping: bool) -> dict[str, str]:
        """Return the bar's ``{name: text}``: loss, val_loss once evaluated, clip when on."""
        shown = {}
        losses = np.asarray(self.losses, dtype=float)
        losses = losses[np.isfinite(losses)]
        if len(losses):
            shown["loss"] = f"{losses.mean():.4g}"
        if math.isfinite(self.valid_loss):
            shown["val_loss"] = f"{self.valid_loss:.4g}"
        if clipping and self.clipped:
            shown["clip"] = f"{np.mean(self.clipped):.0%}"
        return shown
