"""Figures of a layer's dynamics: fixed and slow points and their linearisation.

Pure functions ``plot_x(df, *, ax=None) -> Axes`` over the tidy tables that ``rnnprobe
fixed-points`` writes (``points``, ``eigenvalues``, ``trajectories``, ``visited``; columns in
:mod:`rnnprobe.report.fixed_points`). They never touch a model or a file, and an empty table gives
a panel saying "no data". A point's ``category`` (stable, saddle, source, slow) picks both its
colour (seaborn's colour-blind-safe palette) and its marker, so the classes read in grey too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from rnnprobe.report.plots import PALETTE, ensure_axes, no_data  # one look for empty panels

__all__ = ["CATEGORY_STYLE", "plot_fixed_point_eigenvalues", "plot_fixed_points_pca"]

_PALETTE = sns.color_palette(PALETTE, 10)
# category -> (legend text, colour, marker); the order is the legend's
CATEGORY_STYLE: dict[str, tuple[str, tuple, str]] = {
    "stable": ("stable fixed point", _PALETTE[0], "o"),
    "saddle": ("saddle (some |λ| > 1)", _PALETTE[1], "X"),
    "source": ("source (all |λ| > 1)", _PALETTE[3], "^"),
    "slow": ("slow point (q > 0)", _PALETTE[4], "s"),
}
_TRAJECTORY_COLOR = "0.35"


def plot_fixed_points_pca(
    points: pd.DataFrame,
    *,
    trajectories: pd.DataFrame | None = None,
    visited: pd.DataFrame | None = None,
    explained: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return the points on the visited states' first two principal components, with a few
    visited trajectories drawn through them and the visited cloud behind.

    ``points``: ``pc1``, ``pc2``, ``category``; ``trajectories``: ``trajectory``, ``t``,
    ``pc1``, ``pc2``; ``visited``: ``pc1``, ``pc2``; ``explained``: the two components' shares
    of the variance, shown in the axis labels.
    """
    ax = ensure_axes(ax)
    drawn = False
    if visited is not None and not visited.empty:
        ax.scatter(
            visited["pc1"], visited["pc2"], s=3, color="0.8", linewidths=0, label="visited states"
        )
        drawn = True
    if trajectories is not None and not trajectories.empty:
        for n, (_, path) in enumerate(trajectories.sort_values("t").groupby("trajectory")):
            ax.plot(
                path["pc1"],
                path["pc2"],
                color=_TRAJECTORY_COLOR,
                linewidth=0.9,
                alpha=0.7,
                label="trajectories (○ start)" if n == 0 else None,
            )
            ax.plot(
                path["pc1"].iloc[:1],
                path["pc2"].iloc[:1],
                "o",
                markerfacecolor="white",
                markeredgecolor=_TRAJECTORY_COLOR,
                markersize=5,
            )
        drawn = True
    has_points = not points.empty and {"pc1", "pc2", "category"} <= set(points.columns)
    if has_points:
        for category, (text, colour, marker) in CATEGORY_STYLE.items():
            rows = points[points["category"] == category]
            if rows.empty:
                continue
            ax.scatter(
                rows["pc1"],
                rows["pc2"],
                s=70,
                color=colour,
                marker=marker,
                edgecolors="black",
                linewidths=0.6,
                zorder=3,
                label=f"{text}: {len(rows)}",
            )
    if not drawn and not has_points:
        return no_data(ax, "fixed points", "PC 2")
    ax.set(
        xlabel=_pc_label(1, explained),
        ylabel=_pc_label(2, explained),
        title="fixed and slow points on the top 2 PCs"
        if has_points
        else "no fixed or slow point found",
    )
    _legend_outside(ax)
    return ax


def plot_fixed_point_eigenvalues(eigenvalues: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Return the eigenvalues λ of each point's Jacobian J = diag(φ'(a*)) W_hh in the complex
    plane, coloured by the point's category, with the unit circle (|λ| > 1: a direction that
    grows).

    ``eigenvalues``: ``point``, ``category``, ``real``, ``imag``.
    """
    ax = ensure_axes(ax)
    needed = {"point", "category", "real", "imag"}
    if eigenvalues.empty or not needed <= set(eigenvalues.columns):
        return no_data(ax, "Jacobian eigenvalues at the points", "Im λ")
    circle = np.linspace(0, 2 * np.pi, 256)
    ax.plot(np.cos(circle), np.sin(circle), color="0.3", linewidth=1, label="|λ| = 1")
    ax.axhline(0, color="0.85", linewidth=0.5, zorder=0)
    ax.axvline(0, color="0.85", linewidth=0.5, zorder=0)
    for category, (text, colour, marker) in CATEGORY_STYLE.items():
        rows = eigenvalues[eigenvalues["category"] == category]
        if rows.empty:
            continue
        count = rows["point"].nunique()
        ax.scatter(
            rows["real"],
            rows["imag"],
            s=22,
            color=colour,
            marker=marker,
            alpha=0.75,
            linewidths=0,
            label=f"{text}: {count} point{'s' if count != 1 else ''}",
        )
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(xlabel="Re λ", ylabel="Im λ", title="eigenvalues of J at each point")
    _legend_outside(ax)
    return ax


def _pc_label(k: int, explained: tuple[float, float] | None) -> str:
    if explained is None or not np.isfinite(explained[k - 1]):
        return f"PC {k}"
    return f"PC {k} ({100 * explained[k - 1]:.0f}% of variance)"


def _legend_outside(ax: Axes) -> None:
    """Put the legend to the right of the axes, where it cannot hide data.

    Not :func:`~rnnprobe.report.plots.legend_outside`: "small" type, not "x-small", and every
    entry's marker one size, the large point markers and the small eigenvalue dots alike."""
    if not ax.get_legend_handles_labels()[0]:
        return
    legend = ax.legend(
        fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False
    )
    for handle in legend.legend_handles:  # the same marker size for every entry, however drawn
        if handle is not None and hasattr(handle, "set_sizes"):
            handle.set_sizes([30])
