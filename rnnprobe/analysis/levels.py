"""The order in which the levels of a sweep axis are shown, everywhere they are shown."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

CONTROLS = ("none", "full", "default")  # the no-intervention level of a text axis comes first


def level_order(frame: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    """Return the row order of ``frame`` by the levels of ``by`` (the first axis first)."""
    keys = []
    for b in reversed(list(by)):
        numbers = pd.to_numeric(frame[b], errors="coerce")
        text = frame[b].astype(str)
        if numbers.notna().all():
            keys.append(numbers.to_numpy(float))
        else:  # controls first, then numbers in numeric order, then text
            keys.append(text.to_numpy())
            keys.append(numbers.fillna(np.inf).to_numpy(float))
            keys.append(np.where(text.isin(CONTROLS), 0, 1))
    return np.lexsort(keys) if keys else np.arange(len(frame))
