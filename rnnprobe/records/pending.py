"""Table rows whose measured values still live on the device, moved to the host in one go.

Probes return device tensors; the training loop files them here as columns of tidy rows and
``drain()`` moves every pending value to the host in a single transfer (one sync per flush,
none per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class _Entry:
    table: str
    columns: dict[str, torch.Tensor | np.ndarray]
    keep: np.ndarray | None  # host-side row mask applied after the transfer


class PendingRows:
    """Collects ``{column: 1-D tensor or host array}`` blocks per table; see module docstring."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def add(self, table: str, keep: np.ndarray | None = None, **columns: object) -> None:
        """File one block of rows: every column has the same length (scalars are repeated)."""
        lengths = {
            len(v) if isinstance(v, np.ndarray) else v.numel()
            for v in columns.values()
            if isinstance(v, np.ndarray | torch.Tensor)
        }
        n = max(lengths, default=1)
        block: dict[str, torch.Tensor | np.ndarray] = {}
        for name, value in columns.items():
            if isinstance(value, torch.Tensor):
                block[name] = (
                    value.detach().reshape(-1).expand(n)
                    if value.numel() == 1
                    else (value.detach().reshape(-1))
                )
            elif isinstance(value, np.ndarray):
                block[name] = value
            else:
                block[name] = np.full(n, value, dtype=object if isinstance(value, str) else None)
        self._entries.append(_Entry(table, block, keep))

    def __len__(self) -> int:
        return len(self._entries)

    def drain(self) -> dict[str, list[dict[str, np.ndarray]]]:
        """Return ``{table: [column blocks on the host]}`` and forget them; one transfer."""
        tensors = [
            v for e in self._entries for v in e.columns.values() if isinstance(v, torch.Tensor)
        ]
        host_values = iter(_to_host(tensors))
        out: dict[str, list[dict[str, np.ndarray]]] = {}
        for entry in self._entries:
            block = {
                name: next(host_values) if isinstance(value, torch.Tensor) else value
                for name, value in entry.columns.items()
            }
            if entry.keep is not None:
                block = {name: values[entry.keep] for name, values in block.items()}
            out.setdefault(entry.table, []).append(block)
        self._entries = []
        return out


def _to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Return the tensors as numpy arrays, moved with one device-to-host copy."""
    if not tensors:
        return []
    kinds = [t.dtype for t in tensors]
    flat = torch.cat([t.to(torch.float64) for t in tensors]).cpu().numpy()
    arrays, start = [], 0
    for tensor, kind in zip(tensors, kinds, strict=True):
        values = flat[start : start + tensor.numel()]
        start += tensor.numel()
        if kind == torch.bool:
            values = values.astype(bool)
        elif not kind.is_floating_point:
            values = values.astype(np.int64)
        arrays.append(values)
    return arrays
