"""How BPTT is cut within a batch: full, every K steps, or at random lengths around K."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rnnprobe.errors import RnnprobeError

if TYPE_CHECKING:  # parsing a truncation needs no torch; drawing random lengths does
    import torch


def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RnnprobeError(f"{what} must be an integer >= 1, got {value!r}")
    return value


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
            return cls("fixed", _positive(spec, "bptt"))
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

        _positive(seq_len, "seq_len")
        if self.mode == "random" and generator is None:
            raise RnnprobeError("random truncation needs a torch.Generator")
        start = 0
        while start < seq_len:
            step = seq_len if self.mode == "full" else self.k
            if self.mode == "random" and torch.rand((), generator=generator).item() >= 0.95:
                step = max(1, self.k // 2)
            yield start, min(start + step, seq_len)
            start += step


def bptt_segments(
    seq_len: int, bptt: str | int | Truncation, generator: torch.Generator | None = None
) -> Iterator[tuple[int, int]]:
    """Yield the ``(start, end)`` segments of ``[0, seq_len)`` for the truncation ``bptt``."""
    truncation = bptt if isinstance(bptt, Truncation) else Truncation.parse(bptt)
    return truncation.segments(seq_len, generator)
