"""How a probe hands its results to the records: blocks of rows, one table each.

A probe's result knows its rows (``row_blocks``); the training run files them unchanged, and
``rnnprobe.records.schema.STANDARD_TABLES`` documents every table's columns. Values may stay
tensors on the device: they move to the host with the next flush.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import numpy as np
    import torch

Column = Union["torch.Tensor", "np.ndarray", float, int, str, bool]


@dataclass(frozen=True)
class RowBlock:
    """Rows of ``table``: equal-length columns (a scalar repeats), ``keep`` an optional row mask."""

    table: str
    columns: dict[str, Column]
    keep: np.ndarray | None = None
