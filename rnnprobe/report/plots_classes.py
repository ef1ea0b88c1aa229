"""Figures of a classifier's scores: its confusion matrix and per-class accuracy.

Drawn side by side for a classification run at its last evaluation (the confusion heatmap, row
i the true class, and horizontal accuracy bars in the same row order). Pure functions
``plot_x(df, *, ax=None) -> Axes``; helpers from :mod:`rnnprobe.report.plots`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.transforms import offset_copy

from rnnprobe.report.plots import NOTE_COLOR, PALETTE, ensure_axes, no_data

__all__ = ["plot_class_accuracy", "plot_confusion"]


def plot_confusion(
    matrix: pd.DataFrame,
    *,
    title: str = "confusion matrix",
    annotate_up_to: int = 15,
    ax: Axes | None = None,
) -> Axes:
    """Return a heatmap of a row-normalised confusion matrix: rows true, columns predicted.

    ``matrix`` (K, K) holds shares in [0, 1] with class names as index and columns (a NaN
    row: a class without examples, left blank). Cells are annotated in percent up to
    ``annotate_up_to`` classes; the colour bar runs from 0 to 1.
    """
    ax = ensure_axes(ax)
    if matrix is None or matrix.empty:
        return no_data(ax, title, "true class")
    values = matrix.apply(pd.to_numeric, errors="coerce").astype(float)
    K = len(values)
    annot = annotate_up_to >= K
    text = np.vectorize(lambda v: "" if np.isnan(v) else f"{100 * v:.0f}")(values.to_numpy())
    sns.heatmap(
        values,
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        annot=text if annot else False,
        fmt="",
        annot_kws={"fontsize": "small" if K <= 10 else "x-small"},
        linewidths=0.5 if K <= 30 else 0.0,
        linecolor="white",
        cbar_kws={"label": "share of the true class's examples", "shrink": 0.8},
        xticklabels=True,
        yticklabels=True,
        ax=ax,
    )
    slanted = K > 4 or max(len(str(c)) for c in values.columns) > 8
    ax.set_xticklabels(
        ax.get_xticklabels(), rotation=45 if slanted else 0, ha="right" if slanted else "center"
    )
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.tick_params(labelsize="small" if K <= 20 else "x-small", length=0)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return ax


def plot_class_accuracy(
    per_class: pd.DataFrame,
    *,
    overall: float | None = None,
    baseline: float | None = None,
    labels: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Return horizontal bars of per-class accuracy, the first class on top, with the overall
    accuracy and the baseline's as vertical lines and each bar's share and support written.

    ``per_class`` has ``name``, ``accuracy`` and ``valid_examples`` columns (one row per class,
    in the confusion matrix's row order); ``labels=False`` leaves the class names off the y
    axis (when the bars sit beside a heatmap that names them).
    """
    ax = ensure_axes(ax)
    needed = {"name", "accuracy", "valid_examples"}
    if per_class is None or per_class.empty or not needed <= set(per_class.columns):
        return no_data(ax, "per-class accuracy", "class")
    accuracy = pd.to_numeric(per_class["accuracy"], errors="coerce").to_numpy(float)
    support = pd.to_numeric(per_class["valid_examples"], errors="coerce").fillna(0).to_numpy()
    K = len(per_class)
    y = np.arange(K) + 0.5  # cell centres, as in a heatmap's rows
    colours = sns.color_palette(PALETTE, 3)
    ax.barh(y, np.nan_to_num(accuracy), height=0.7, color=colours[0])
    small = "small" if K <= 20 else "x-small"
    for yi, acc, n in zip(y, accuracy, support, strict=True):
        note = f"{100 * acc:.0f}% (n={int(n)})" if np.isfinite(acc) else "no examples"
        ax.text(1.02, yi, note, va="center", ha="left", fontsize=small, color=NOTE_COLOR)
    if overall is not None and math.isfinite(overall):
        ax.axvline(overall, color=colours[1], lw=1.5, label=f"overall {100 * overall:.1f}%")
    if baseline is not None and math.isfinite(baseline):
        ax.axvline(
            baseline, color=colours[2], lw=1.5, ls="--", label=f"baseline {100 * baseline:.1f}%"
        )
    ax.set_ylim(K, 0)
    ax.set_xlim(0, 1)
    ax.set_yticks(y, list(per_class["name"].astype(str)) if labels else [""] * K)
    ax.tick_params(axis="y", length=0, labelsize=small)
    ax.set(xlabel="validation accuracy", title="per-class accuracy")
    if ax.get_legend_handles_labels()[0]:  # 30 points below the axes: under the x label
        # ax.figure may be a SubFigure, which offset_copy's stub leaves out though it works
        # (only its dpi_scale_trans is read)
        below = offset_copy(ax.transAxes, fig=ax.figure, y=-30, units="points")  # type: ignore[arg-type]
        ax.legend(
            fontsize="x-small",
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            bbox_transform=below,
            frameon=False,
        )
    return ax
