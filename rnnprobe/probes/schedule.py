"""When a probe fires: every step, every k steps, log-spaced, or never.

Parsed from short strings: ``"always"``, ``"never"``, ``"every:K"`` (steps 0, K, 2K, …) and
``"log:BASE"`` (step 0 and the steps ⌈BASE^n⌉, n = 0, 1, …; ``log:2`` fires at 0, 1, 2, 4, 8).
The defaults a training run uses live in ``config.ProbeConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from rnnprobe.errors import RnnprobeError, check_choice

ScheduleKind = Literal["always", "never", "every", "log"]


@dataclass(frozen=True)
class Schedule:
    """A firing rule: ``kind`` and its ``period`` (K for 'every', BASE for 'log')."""

    kind: ScheduleKind = "always"
    period: float = 1

    def __post_init__(self) -> None:
        check_choice(self.kind, ("always", "never", "every", "log"), "schedule kind")
        if self.kind in ("every", "log") and not math.isfinite(self.period):
            raise RnnprobeError(f"'{self.kind}' needs a finite number, got {self.period}")
        if self.kind == "every" and (self.period < 1 or self.period != int(self.period)):
            raise RnnprobeError(f"'every' needs a whole number of steps ≥ 1, got {self.period}")
        if self.kind == "log" and not self.period > 1:
            raise RnnprobeError(f"'log' needs a base greater than 1, got {self.period}")

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Return the schedule written as 'always', 'never', 'every:K' or 'log:BASE'."""
        kind, _, arg = text.strip().partition(":")
        match kind:  # (a match narrows ``kind`` to a ScheduleKind for the type checker)
            case "always" | "never" if not arg:
                return cls(kind)
            case "every" | "log" if arg:
                try:
                    value = float(arg)
                except ValueError:
                    raise RnnprobeError(f"schedule {text!r} needs a number after ':'") from None
                return cls(kind, value)
        raise RnnprobeError(f"bad schedule {text!r}; use always, never, every:K or log:BASE")

    def fires(self, step: int) -> bool:
        """Return whether the probe runs at ``step`` (0-based)."""
        if step < 0:
            raise RnnprobeError(f"step must be non-negative, got {step}")
        if self.kind in ("always", "never"):
            return self.kind == "always"
        if self.kind == "every":
            return step % int(self.period) == 0
        if step == 0:
            return True
        n = math.floor(math.log(step, self.period))
        return any(math.ceil(self.period**p - 1e-9) == step for p in (n - 1, n, n + 1) if p >= 0)

    def __str__(self) -> str:
        if self.kind in ("always", "never"):
            return self.kind
        return f"{self.kind}:{self.period:g}"
