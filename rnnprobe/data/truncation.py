"""How BPTT is cut within a batch: full, every K steps, or at random lengths around K."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rnnprobe.errors import RnnprobeError, check_count

if TYPE_CHECKING:  # parsing a truncation needs no torch; drawing random lengths does
    import torch


@dataclass(frozen=True)
class Truncation:
    """How BPTT is cut within a batch of T steps: ``full``, every K steps, or randomly.

    ``random:K`` draws each segment's length as K with probability 0.95 else max(1, K // 2)
    (the first step of Merity et al.'s 2018 randomized BPTT length, without its jitter).
    """

    mode: Literal["full", "fixed", "random"]
    k: int = 0

    @classmethod
    def parse(cls, spec: str | int) -> Truncation:
        """Return the truncation named by ``"full"``, ``K`` (int or digits) or ``"random:K"``."""
        bad = RnnprobeError(f"invalid bptt {spec!r}; use full, a positive integer K or random:K")
        if isinstance(spec, bool):
            raise bad
        if isinstance(spec, int):
            return cls("fixed", check_count(spec, "bptt"))
        text = str(spec).strip()
        if text == "full":
            return cls("full")
        mode, _, digits = text.rpartition(":")
        if mode not in ("", "random") or not digits.isdigit() or int(digits) < 1:
            raise bad
        return cls("random" if mode else "fixed", int(digits))

    def segments(
        self, seq_len: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[int, int]]:
        """Yield ``(start, end)`` pairs, in order, that tile ``[0, seq_len)`` exactly."""
        import torch

        check_count(seq_len, "seq_len")
        if self.mode == "random" and generator is None:
            raise RnnprobeError("random truncation needs a torch.Generator")
        start = 0
        while start < seq_len:
            step = seq_len if self.mode == "full" else self.k
            if self.mode == "random" and torch.rand((), generator=generator).item() >= 0.95:
                step = max(1, self.k // 2)
            yield start, min(start + step, seq_len)
            start += step
