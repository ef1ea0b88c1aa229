"""The memory a training run needs, estimated before anything is allocated, against what is free.

The estimate is a lower bound: only buffers a step cannot do without are counted, so a refused
configuration would certainly not have fitted. Letters: ``T`` steps, ``B`` batch, ``H`` hidden
units, ``L`` layers, ``E`` embedding size, ``V`` input tokens, ``O`` outputs, ``s`` bytes per
element.

    parameters    P = V·E + Σ_l H·(in_l + H + 2) + O·(H + 1), times 4 (weights, gradients and
                  two optimizer moments)
    activations   L·T·B·H · 3 (h_t, φ'(a_t), δ_t) + T·B·E (embeddings) + T·B·O · 2 (logits and
                  their gradient, per-step tasks) + 8·T·B·(1 + eval batches) (int64 ids)
    records       per-step rows buffered between flushes: L·T rows of 8 eight-byte columns per
                  step for adjoints (when on), 5·L·T rows of 6 columns for reach (when on)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rnnprobe.errors import RnnprobeError

if TYPE_CHECKING:
    from rnnprobe.data.tasks import Task
    from rnnprobe.training.config import RunConfig

__all__ = [
    "MemoryEstimate",
    "available_bytes",
    "check_fits",
    "estimate_run",
    "estimate_training",
    "format_bytes",
]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by what holds them; ``total`` is their sum."""

    parameters: int
    activations: int
    records: int

    @property
    def total(self) -> int:
        """All three estimates added, in bytes."""
        return self.parameters + self.activations + self.records

    def describe(self) -> str:
        """Return the non-zero parts as text, e.g. "parameters and optimizer state 1.2 MB, …"."""
        parts = [("parameters and optimizer state", self.parameters)]
        parts += [("activations", self.activations), ("buffered records", self.records)]
        return ", ".join(f"{name} {format_bytes(n)}" for name, n in parts if n)


def estimate_training(
    *,
    steps: int,
    batch_size: int,
    hidden_size: int,
    layers: int,
    input_size: int,
    embedding_dim: int | None,
    output_size: int,
    per_step_outputs: bool,
    element_size: int,
    eval_batches: int = 0,
    adjoint_steps: int = 0,
    reach: bool = False,
) -> MemoryEstimate:
    """Return the lower-bound estimate above (plain Python ints).

    ``adjoint_steps`` is the number of steps whose adjoint rows wait for one flush.
    """
    T, B, H, L, O = steps, batch_size, hidden_size, layers, output_size
    first_in = embedding_dim if embedding_dim is not None else input_size
    embedding = input_size * embedding_dim if embedding_dim is not None else 0
    recurrent = sum(H * ((first_in if l == 0 else H) + H + 2) for l in range(L))
    parameters = 4 * (embedding + recurrent + O * (H + 1)) * element_size
    activations = (3 * L * T * B * H + T * B * (embedding_dim or input_size)) * element_size
    activations += 2 * (T * B * O if per_step_outputs else B * O) * element_size
    activations += 8 * T * B * (1 + eval_batches)
    records = 8 * 8 * L * T * adjoint_steps + (5 * 6 * 8 * L * T if reach else 0)
    return MemoryEstimate(parameters, activations, records)


def available_bytes(device: torch.device) -> int | None:
    """Return the memory free for a run on ``device`` (CPU: MemAvailable), or None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(estimate: MemoryEstimate, device: torch.device) -> None:
    """Raise a one-line error naming the estimate when it exceeds the memory free on ``device``."""
    free = available_bytes(device)
    if free is None or estimate.total <= free:
        return
    raise RnnprobeError(
        f"this configuration needs at least {format_bytes(estimate.total)} "
        f"({estimate.describe()}) but {device} has {format_bytes(free)} free; "
        f"{_advice(estimate)}"
    )


def _advice(estimate: MemoryEstimate) -> str:
    if estimate.records > max(estimate.parameters, estimate.activations):
        return "record less often (--flush-every, --adjoints never) or shorten --seq-len"
    if estimate.parameters > estimate.activations:
        return "reduce --hidden-size, --embedding-dim or the vocabulary"
    return "reduce --batch-size, --seq-len or --hidden-size"


def format_bytes(n: float) -> str:
    """Return ``n`` bytes as a short human-readable size (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def estimate_run(config: RunConfig, task: Task) -> MemoryEstimate:
    """Return the estimate for training ``config`` on ``task`` (``task.steps`` steps long)."""
    tokens = task.input_kind == "tokens"
    return estimate_training(
        steps=task.steps,
        batch_size=config.train.batch_size,
        hidden_size=config.model.hidden_size,
        layers=config.model.layers,
        input_size=task.input_size,
        embedding_dim=config.model.embedding_dim if tokens else None,
        output_size=task.output_size,
        per_step_outputs=task.kind in ("lm", "per_step_classification"),
        element_size=8 if config.dtype == "float64" else 4,
        eval_batches=config.train.eval_batches,
        adjoint_steps=0 if config.probes.adjoints == "never" else config.flush_every,
        reach=config.probes.reach != "never",
    )
