"""Figures of the backward pass: how ‖∂L/∂h_t‖ decays with the distance it travels back in time.

The adjoint-norm heatmap over time step and training step, gradient reach (each source's adjoint
against distance s − t, divided by its own norm at distance 0) and the init-phase measured decay
per step against the mean-field prediction √χ. Pure functions ``plot_x(df, *, ax=None) -> Axes``
over a run's ``adjoints`` and ``reach`` tables or a study summary; helpers from
:mod:`rnnprobe.report.plots`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from rnnprobe.report.plots import (
    NOTE_COLOR,
    distinct_colours,
    ensure_axes,
    finite_rows,
    legend_outside,
    log_axis,
    no_data,
    sorted_levels,
    thin_steps,
)

__all__ = [
    "colour_limits",
    "plot_adjoint_heatmap",
    "plot_decay_vs_mean_field",
    "plot_gradient_reach",
]


def plot_adjoint_heatmap(
    df: pd.DataFrame,
    *,
    layer: int | None = None,
    value: str = "adjoint_norm",
    max_steps: int = 200,
    ax: Axes | None = None,
) -> Axes:
    """Return a heatmap of ‖∂L/∂h_t‖ over time step t (y) and training step (x), log colours.

    When a few cells (an early transient, say) would stretch the colour range, the colours span
    the 2nd–98th percentile of log ‖∂L/∂h_t‖ instead (:func:`colour_limits`): cells beyond take
    the end colours, the colour bar's arrows and a note say so."""
    ax = ensure_axes(ax)
    data = finite_rows(df, ["step", "layer", "t", value], positive=value)
    if data.empty:
        return no_data(ax, "adjoint norms", "adjoint norm ‖∂L/∂h_t‖")
    layer = int(data["layer"].min()) if layer is None else layer
    data = data[data["layer"] == layer]
    data = data[data["step"].isin(thin_steps(data["step"], max_steps))]
    if data.empty:
        return no_data(ax, f"adjoint norms of layer {layer}", "adjoint norm ‖∂L/∂h_t‖")
    grid = data.pivot_table(index="t", columns="step", values=value, aggfunc="mean")
    z = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    logs = np.log10(z.compressed())
    lo, hi = (10.0**v for v in colour_limits(logs))
    mesh = ax.pcolormesh(
        _edges(grid.columns.to_numpy(dtype=float)),
        _edges(grid.index.to_numpy(dtype=float)),
        z,
        norm=LogNorm(vmin=lo, vmax=hi),
        cmap="viridis",
        shading="flat",
    )
    under, over = (z < lo).sum(), (z > hi).sum()
    extend = {(0, 0): "neither", (1, 0): "min", (0, 1): "max"}.get((min(under, 1), min(over, 1)))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # t is an index
    bar = ax.figure.colorbar(mesh, ax=ax, extend=extend or "both", label="‖∂L/∂h_t‖ (batch mean)")
    if under or over:
        share = (under + over) / len(logs)
        bar.ax.text(0, -0.08, f"colours: 2nd–98th percentile;\n{share:.0%} of cells beyond take\n"
                    "the end colours", transform=bar.ax.transAxes, ha="left", va="top",
                    fontsize="x-small", color=NOTE_COLOR)  # fmt: skip
    ax.set(xlabel="training step", ylabel="time step t", title=f"adjoint norm, layer {layer}")
    return ax


def colour_limits(logs: np.ndarray, *, share: float = 0.2) -> tuple[float, float]:
    """Return the colour range of the values ``logs`` (n,): their 2nd and 98th percentiles when
    the 4 % of values beyond would take more than ``share`` of the full range, else min and max
    (widened ±log₁₀ 2 when all are equal)."""
    lo, hi = float(logs.min()), float(logs.max())
    if hi <= lo:
        return lo - np.log10(2), hi + np.log10(2)
    inner_lo, inner_hi = (float(v) for v in np.percentile(logs, [2, 98]))
    if inner_hi > inner_lo and (inner_hi - inner_lo) < (1 - share) * (hi - lo):
        return inner_lo, inner_hi
    return lo, hi


def plot_gradient_reach(
    df: pd.DataFrame,
    *,
    hue: str | None = None,
    labels: dict | None = None,
    styles: dict | None = None,
    title: str = "gradient reach",
    legend_title: str | None = None,
    max_lines: int = 12,
    ax: Axes | None = None,
) -> Axes:
    """Return ‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖ against distance s − t (log), one line per ``hue``.

    Each source is divided by its own norm at distance 0, so lines start at 1 and their slope
    is the decay per step: bold, the source that reaches furthest back (geometric mean over
    repeats such as seeds, and over sources tied on reach, which the legend then says), faint,
    each other source. ``labels`` maps a hue value to its legend text (e.g.
    the fitted rate), ``styles`` to its line's colour and dashes (else one distinct colour per
    line); ``hue``
    defaults to ``"label"`` when the frame has it, else ``"source"``.
    """
    ax = ensure_axes(ax)
    data = finite_rows(df, ["distance", "norm"], positive="norm")
    hue = hue or ("label" if "label" in data.columns else "source")
    if data.empty or hue not in data.columns:
        return no_data(ax, title, "‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖")
    keys = [c for c in ("label", "run_id", "step", "layer", "source") if c in data.columns]
    start = data[data["distance"] == 0].groupby(keys)["norm"].first()
    data = data.join(start.rename("start"), on=keys)
    data = data[np.isfinite(data["start"]) & (data["start"] > 0)]
    data = data.assign(relative=data["norm"] / data["start"])
    groups = [(name, g) for name, g in data.groupby(hue, sort=False)]
    order = [k for k in (labels or {}) if k in dict(groups)]  # the caller's order first
    order += [k for k in sorted_levels(pd.Index([n for n, _ in groups])) if k not in order]
    groups = sorted(groups, key=lambda item: order.index(item[0]))
    if len(groups) > max_lines:
        keep = np.unique(np.round(np.linspace(0, len(groups) - 1, max_lines)).astype(int))
        groups = [groups[i] for i in keep]
    palette = distinct_colours(len(groups))
    ties: set[tuple[int, float]] = set()  # (sources, distance) of each bold line that is a mean
    for number, (name, group) in enumerate(groups):
        style = {"color": palette[number], **(styles or {}).get(name, {})}
        text = (labels or {}).get(name, _label(hue, name))
        # Bold: the source that reaches furthest back (it spans every distance), geometric
        # mean over repeats, or over the sources that tie on reach (truncated BPTT: every
        # k-th); faint: each other source. Averaging sources of different lengths would
        # jump wherever one of them ends.
        furthest = None  # the sources whose curves span the most distances
        if "source" in group and hue != "source":
            spans = group.groupby("source")["distance"].max()
            furthest = spans.index[spans == spans.max()]
            if len(furthest) > 1:
                ties.add((len(furthest), float(spans.max())))
        bold = group if furthest is None else group[group["source"].isin(furthest)]
        line = np.exp(np.log(bold["relative"]).groupby(bold["distance"]).mean())
        ax.plot(line.index, line.to_numpy(), marker=".", ms=3, label=text, **style)
        if furthest is not None:
            others = group if len(furthest) > 1 else group[~group["source"].isin(furthest)]
            for _, one in others.groupby([k for k in keys if k != "label"], sort=False):
                one = one.sort_values("distance")
                ax.plot(one["distance"], one["relative"], color=style["color"], lw=0.6, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # distances are whole steps
    log_axis(ax, "y")
    ax.set(
        xlabel="distance s − t (time steps back)",
        ylabel="‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖",
        title=title,
    )
    legend_outside(ax, title=legend_title, extra=[_tie_handle(ties)] if ties else [])
    return ax


def _tie_handle(ties: set[tuple[int, float]]) -> Line2D:
    """Return a legend entry saying the bold lines average the sources tied on reach."""
    if len(ties) > 1:
        text = "bold: where sources tie on\nreach, their geometric mean"
    else:
        ((count, distance),) = ties
        back = f"{distance:g} step{'' if distance == 1 else 's'} back"
        text = f"bold: geometric mean of the {count}\nsources reaching {back}"
    return Line2D([], [], color="0.3", lw=1.5, label=text)


def plot_decay_vs_mean_field(
    df: pd.DataFrame,
    *,
    measured: str = "decay_per_step_init",
    predicted: str = "predicted_decay",
    hue: str | None = None,
    palette: dict | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return init-phase measured decay per step against the mean-field √χ, y = x dashed; one
    colour per level of ``hue`` (``palette`` maps a level to it, as other panels draw it)."""
    ax = ensure_axes(ax)
    data = finite_rows(df, [measured, predicted], positive=measured)
    data = data[data[predicted] > 0] if not data.empty else data
    if data.empty:
        return no_data(ax, "measured vs predicted decay", "measured decay per step")
    hue = hue if hue and hue in data.columns else None
    levels = sorted_levels(pd.Index(data[hue].astype(str).unique())) if hue else [None]
    colours = distinct_colours(len(levels))
    for colour, level in zip(colours, levels, strict=True):
        colour = (palette or {}).get(level, colour)
        rows = data if hue is None else data[data[hue].astype(str) == level]
        ax.scatter(
            rows[predicted],
            rows[measured],
            s=28,
            color=colour,
            alpha=0.85,
            label=None if hue is None else str(level),
        )
    both = np.concatenate([data[measured].to_numpy(float), data[predicted].to_numpy(float)])
    lo, hi = float(both.min()) * 0.95, float(both.max()) * 1.05
    ax.plot([lo, hi], [lo, hi], color="0.3", linestyle="--", linewidth=1, label="y = x")
    if hi / lo > 10:
        log_axis(ax, "x")
        log_axis(ax, "y")
    ax.set(
        xlabel="mean-field prediction √χ (factor per time step)",
        ylabel="measured decay at init (factor per step)",
        title="gradient decay at init: measured vs mean field",
    )
    legend_outside(ax, title=hue.rpartition(".")[2] if hue else None)
    return ax


def _edges(centres: np.ndarray) -> np.ndarray:
    """Return cell edges halfway between sorted ``centres`` (±0.5 at a lone or outer cell)."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    middle = (centres[1:] + centres[:-1]) / 2
    return np.concatenate(
        [
            [centres[0] - (middle[0] - centres[0])],
            middle,
            [centres[-1] + (centres[-1] - middle[-1])],
        ]
    )


def _label(hue: str, name: object) -> str:
    if hue == "source":
        return f"s = {int(name)}" if isinstance(name, int | float | np.number) else f"s = {name}"
    return str(name)
