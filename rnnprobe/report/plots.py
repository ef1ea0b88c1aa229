"""The common base of the figure modules: palette, empty-panel note, legends, log axes, filters.

The figures themselves live beside it, each module a pure function ``plot_x(df, *, ax=None) ->
Axes`` per figure: :mod:`~rnnprobe.report.plots_training` (one run over training),
:mod:`~rnnprobe.report.plots_gradients` (‖∂L/∂h_t‖, gradient reach, decay against mean field),
:mod:`~rnnprobe.report.plots_classes` (a classifier's confusion matrix and per-class accuracy),
:mod:`~rnnprobe.report.plots_study` (a study's sweep axes, and several runs overlaid), and
:mod:`~rnnprobe.report.plots_dynamics` and :mod:`~rnnprobe.report.plots_replay`.

Each figure takes tidy DataFrames shaped like the store's tables (``rnnprobe.records.schema.
STANDARD_TABLES``) or a study summary, draws on ``ax`` (a new figure when None) and returns it.
None of them touches a live model, reads a file or raises on missing data: an empty table, or
one without the needed columns or finite values, gives a panel saying "no data" instead
(:func:`no_data`). Colours come from seaborn's colour-blind-safe "colorblind" palette (lines) and
"viridis" / "cividis" (colour scales); magnitudes that span decades get log axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.container import ErrorbarContainer
from matplotlib.lines import Line2D
from matplotlib.ticker import AutoLocator, Formatter, FuncFormatter, LogLocator

from rnnprobe.analysis.levels import level_order

__all__ = [
    "NOTE_COLOR",
    "PALETTE",
    "distinct_colours",
    "ensure_axes",
    "finite_rows",
    "legend_outside",
    "log_axis",
    "log_if_spans",
    "no_data",
    "sorted_levels",
    "step_scale",
    "thin_steps",
]


PALETTE = "colorblind"
NOTE_COLOR = "0.45"  # the grey of notes written on a panel (e.g. "no data")


def thin_steps(steps: Sequence[float] | pd.Series, limit: int) -> np.ndarray:
    """Return at most ``limit`` of the distinct ``steps``: every k-th, first and last kept, so
    the gaps stay regular (an evenly spread pick of 8 of 9 left one gap twice the others)."""
    unique = np.unique(np.asarray(pd.to_numeric(pd.Series(steps), errors="coerce").dropna()))
    if len(unique) <= limit:
        return unique
    stride = -(-(len(unique) - 1) // max(limit - 1, 1))  # ceil: the last index fits the limit
    return np.unique(np.r_[unique[::stride], unique[-1]])


# seaborn's "colorblind" colours, most distinct first (worst pair over normal, deuteranope and
# protanope vision in CIELAB): blue, orange, green, sky blue, lilac, tan, grey, vermillion, then
# yellow and pink, faint on white. Its own order puts orange by vermillion, lilac by pink.
_DISTINCT_ORDER = (0, 1, 2, 9, 4, 5, 7, 3, 8, 6)


def distinct_colours(n: int) -> list:
    """Return ``n`` distinguishable colours: colour-blind-safe up to 10, then a colour ramp."""
    if n <= 10:
        palette = sns.color_palette(PALETTE, 10)
        return [palette[i] for i in _DISTINCT_ORDER[:n]]
    return sns.color_palette("viridis", n)


def legend_outside(ax: Axes, title: str | None = None, extra: Sequence[Artist] = ()) -> None:
    """Put the legend to the right of the axes, where it cannot hide data; ``extra`` handles
    (not drawn on the axes, e.g. a key to line widths) go last.

    A dashed line with a marker gets a longer key: at matplotlib's default length of 2 font
    sizes the marker, drawn in the middle, covers the one gap of a "--" pattern, and the key
    of a dashed end-phase line looked as solid as the init line beside it."""
    handles, labels = ax.get_legend_handles_labels()
    handles, labels = handles + list(extra), labels + [str(h.get_label()) for h in extra]
    if handles:
        ax.legend(
            handles,
            labels,
            fontsize="x-small",
            title=title,
            title_fontsize="x-small",
            loc="upper left",
            bbox_to_anchor=(1.02, 1),
            borderaxespad=0,
            frameon=False,
            handlelength=3.0 if any(map(_dashed_with_marker, handles)) else None,
        )


def _dashed_with_marker(handle: object) -> bool:
    """Return whether a legend ``handle`` (a line, or an errorbar's container) is a dashed,
    dotted or dash-dot line that also has a marker."""
    line = handle.lines[0] if isinstance(handle, ErrorbarContainer) else handle
    if not isinstance(line, Line2D):
        return False
    return line.get_linestyle() in ("--", "-.", ":") and line.get_marker() not in NO_MARKER


NO_MARKER = (None, "None", "none", "", " ")


def ensure_axes(ax: Axes | None) -> Axes:
    """Return ``ax``, or the axes of a new 6.4 × 4.2 in figure when it is None."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.2))
    return ax


def no_data(ax: Axes, what: str, ylabel: str) -> Axes:
    """Write a grey "no data: ``what``" in the middle of ``ax``, drop its ticks, title it so."""
    ax.text(
        0.5,
        0.5,
        f"no data: {what}",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color=NOTE_COLOR,
        fontsize="large",
    )
    ax.set(xticks=[], yticks=[], xlabel="", ylabel=ylabel, title=what)
    return ax


def finite_rows(
    df: pd.DataFrame | None, columns: Sequence[str], positive: str | None = None
) -> pd.DataFrame:
    """Return the rows of ``df`` whose ``columns`` are finite numbers (``positive`` > 0)."""
    if df is None or df.empty or any(c not in df.columns for c in columns):
        return pd.DataFrame(columns=list(columns))
    data = df.copy()
    keep = np.ones(len(data), dtype=bool)
    for c in columns:
        data[c] = pd.to_numeric(data[c], errors="coerce").astype(float)
        keep &= np.isfinite(data[c].to_numpy())
    if positive is not None:
        keep &= data[positive].to_numpy() > 0
    return data[keep]


def step_scale(ax: Axes, steps: pd.Series) -> None:
    """Use a symlog step axis for log-spaced schedules (1, 2, 4, … spread over decades)."""
    unique = np.unique(steps.to_numpy(float))
    positive = unique[unique > 0]
    spread = len(positive) >= 3 and positive.max() / positive.min() >= 100
    if spread and np.median(positive[1:] / positive[:-1]) > 1.5:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)


def log_if_spans(ax: Axes, values: np.ndarray, decades: float = 1.5) -> None:
    """Use a log y axis when the positive ``values`` span more than ``decades`` decades."""
    values = values[np.isfinite(values)]
    if values.size and (values > 0).all() and np.log10(values.max() / values.min()) > decades:
        log_axis(ax, "y")


def log_axis(ax: Axes, which: str) -> None:
    """Log scale with plain tick labels (0.5, 1, 2, 100), minor ones as the drawn span allows."""
    getattr(ax, f"set_{which}scale")("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_formatter(FuncFormatter(_tick))
    axis.set_minor_locator(_MinorLogLocator())
    axis.set_minor_formatter(_MinorLogLabels())


def _tick(value: float, _: object) -> str:
    return f"{value:g}"


class _MinorLogLocator(LogLocator):
    """Minor log ticks at 2…9 × 10^k; linear ones (0.85, 0.9, 0.95) on a span too short to
    hold three ticks that way, or that leaves half of the span bare (0.7 … 1 on 0.68 … 1.9)."""

    def __init__(self) -> None:
        super().__init__(subs="auto")

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        """Return the tick positions for the span ``vmin`` … ``vmax``."""
        ticks = np.asarray(super().tick_values(vmin, vmax))
        lo, hi = sorted((vmin, vmax))
        if lo <= 0:
            return ticks.tolist()
        majors = math.floor(math.log10(hi)) - math.ceil(math.log10(lo)) + 1
        inside = ticks[(ticks >= lo) & (ticks <= hi)]
        middle = math.sqrt(lo * hi)
        bare = not ((inside < middle).any() and (inside > middle).any())  # a half unlabelled
        if majors + len(inside) < 3 or bare:
            return AutoLocator().tick_values(lo, hi)
        return ticks.tolist()


class _MinorLogLabels(Formatter):
    """Label minor log ticks by the span drawn (read when drawing, so later limits count):
    every one within a decade, 2 and 5 × 10^k up to 2.5 decades, none beyond."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        lo, hi = sorted(abs(v) for v in self.axis.get_view_interval()) if self.axis else (0, 0)
        if x <= 0 or lo <= 0 or math.log10(hi / lo) > 2.5:
            return ""
        mantissa = round(x / 10 ** math.floor(math.log10(x) + 1e-9), 6)
        return f"{x:g}" if math.log10(hi / lo) <= 1 or mantissa in (2.0, 5.0) else ""


def sorted_levels(index: pd.Index) -> list:
    """Return index labels in the analysis' level order: numbers numerically; in text, the
    control level (none, full, default) first, then numbers, then text."""
    frame = pd.DataFrame({"level": list(index)})
    return [index[i] for i in level_order(frame, ["level"])]
