"""Checks that a probe's row blocks are rows of the store's documented tables."""

from __future__ import annotations

import numpy as np
import torch

from rnnprobe.probes._rows import RowBlock
from rnnprobe.records.schema import STANDARD_TABLES


def check_row_blocks(blocks: list[RowBlock]) -> dict[str, int]:
    """Assert every block has exactly its table's documented columns, all of one length (a
    scalar repeats); return the number of rows (kept) per table."""
    rows: dict[str, int] = {}
    for block in blocks:
        assert set(block.columns) == set(STANDARD_TABLES[block.table]), block.table
        lengths = {
            len(v) if isinstance(v, np.ndarray) else v.numel()
            for v in block.columns.values()
            if isinstance(v, np.ndarray | torch.Tensor)
            and (np.size(v) if isinstance(v, np.ndarray) else v.numel()) != 1
        }
        assert len(lengths) <= 1, f"{block.table}: columns of lengths {sorted(lengths)}"
        n = lengths.pop() if lengths else 1
        kept = n if block.keep is None else int(np.count_nonzero(block.keep))
        assert block.keep is None or len(block.keep) == n
        rows[block.table] = rows.get(block.table, 0) + kept
    return rows
