"""Choose the device once, from ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

from rnnprobe.errors import RnnprobeError


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name``; ``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RnnprobeError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RnnprobeError(f"--device {name} asked for a GPU, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise RnnprobeError(f"unsupported device {name!r}; use auto, cpu or cuda[:N]")
    return device
