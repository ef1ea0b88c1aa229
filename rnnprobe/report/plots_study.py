"""Figures of a study and of a comparison: measures over the sweep axes, runs overlaid.

A study's figures take its summary (one row per run, a column per sweep axis and measure): a
heatmap over two sweep axes (the phase diagram), measures against one axis (mean ± sd over
seeds) and λ₁ over training per configuration. The comparison's figures
(:mod:`rnnprobe.report.compare`) overlay a few runs, one colour and dash pattern per run, the
same in every panel (:func:`run_colours`), with the key in a panel of its own. Pure functions
``plot_x(df, *, ax=None) -> Axes``; helpers from :mod:`rnnprobe.report.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm

from rnnprobe.report.plots import (
    NOTE_COLOR,
    distinct_colours,
    ensure_axes,
    finite_rows,
    legend_outside,
    log_axis,
    log_if_spans,
    no_data,
    sorted_levels,
    step_scale,
)

__all__ = [
    "plot_lyapunov_over_training",
    "plot_measure_vs_axis",
    "plot_phase_diagram",
    "plot_run_key",
    "plot_runs_adjoints",
    "plot_runs_loss",
    "plot_runs_lyapunov",
    "plot_runs_reach",
    "run_colours",
]


def plot_phase_diagram(
    df: pd.DataFrame,
    *,
    x: str,
    y: str | None = None,
    value: str = "loss_ratio",
    label: str | None = None,
    log: bool = False,
    center: float | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return a heatmap of ``value`` (mean over repeats, e.g. seeds) over two sweep axes.

    With ``center`` the colour scale diverges from it (e.g. loss/baseline centred at 1: blue
    beats the baseline, red is worse); ∞ cells are marked. ``label`` names the colour bar,
    ``title`` (default ``label``) the panel: there say the step the value was taken at.
    """
    ax = ensure_axes(ax)
    label = label or value
    needed = [c for c in (x, y, value) if c]
    if df.empty or any(c not in df.columns for c in needed):
        return no_data(ax, f"{label} over {x}" + (f" × {y}" if y else ""), y or "")
    data = df[needed].copy()
    data[value] = pd.to_numeric(data[value], errors="coerce")
    data = data[data[value].notna()]
    if log:
        data = data[data[value] > 0]
    if data.empty:
        return no_data(ax, label, y or "")
    if y is None:
        data = data.assign(_row="")
    rows = y or "_row"
    grid = data.pivot_table(index=rows, columns=x, values=value, aggfunc="mean")
    grid = grid.loc[sorted_levels(grid.index), sorted_levels(grid.columns)]
    values = grid.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    annot = np.vectorize(_cell_text)(values)
    if finite.size == 0:  # every cell ±∞: colour them alike, the text says which
        colour_values, lo, hi = np.where(np.isnan(values), np.nan, 1.0), 0.5, 2.0
    else:
        lo, hi = float(finite.min()), float(finite.max())
        colour_values = np.clip(np.where(np.isnan(values), np.nan, values), lo, hi)
    if hi <= lo:
        lo, hi = (lo / 2, hi * 2) if log else (lo - 1, hi + 1)
    norm = LogNorm(vmin=lo, vmax=hi) if log else Normalize(vmin=lo, vmax=hi)
    cmap = "cividis"
    if center is not None:  # e.g. 0 … 1 … ≥ 2 for loss/baseline: blue beats it, red is worse
        low, high = min(lo, 0.0, center - 1e-6), max(hi, 2 * center, center + 1e-6)
        norm, cmap = TwoSlopeNorm(center, vmin=low, vmax=high), "RdBu_r"
    sns.heatmap(
        pd.DataFrame(colour_values, index=grid.index, columns=grid.columns),
        annot=annot,
        fmt="",
        cmap=cmap,
        norm=norm,
        cbar_kws={"label": label},
        ax=ax,
        annot_kws={"fontsize": "small"},
    )
    ax.set(xlabel=x, ylabel=y or "", title=title or label)
    rows_text = [str(level) for level in grid.index]
    if max(map(len, rows_text)) > 10:  # "identity, norm": two short lines leave the label room
        ax.set_yticks(ax.get_yticks(), [t.replace(", ", ",\n") for t in rows_text], rotation=0)
    return ax


def plot_lyapunov_over_training(
    df: pd.DataFrame,
    *,
    hue: str = "configuration",
    styles: dict | None = None,
    title: str = "",
    legend_title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return λ₁ against the training step: one line per ``hue`` level (``styles`` maps a level
    to its colour and dashes, else one distinct colour each), its seed mean bold and each run
    faint.

    ``df`` has ``run``, ``step``, ``exponent`` (λ₁ of the top layer) and ``hue``. Negative steps
    are pre-flossing updates (``--floss …,pre=P``): the first point of such a run, at −P, is its
    network before any update.
    """
    ax = ensure_axes(ax)
    data = finite_rows(df, ["step", "exponent"])
    title = title or "largest Lyapunov exponent λ₁ over training"
    if data.empty or hue not in data:
        return no_data(ax, title, "λ₁ (nats per step)")
    levels = list(pd.unique(data[hue].astype(str)))  # the caller's order (the study's grid)
    palette = distinct_colours(len(levels))
    for level, default in zip(levels, palette, strict=True):
        style = {"color": default, **(styles or {}).get(level, {})}
        colour = style["color"]
        rows = data[data[hue].astype(str) == level]
        for _, run in rows.groupby("run"):
            ax.plot(run["step"], run["exponent"], color=colour, lw=0.6, alpha=0.35)
        mean = rows.groupby("step")["exponent"].mean()
        ax.plot(mean.index, mean.to_numpy(), lw=1.8, label=level, **style)
    ax.axhline(0.0, color="0.3", linestyle=":", lw=1, label="λ₁ = 0")
    xlabel = "training step"
    if (data["step"] < 0).any():
        ax.axvline(0.5, color="0.6", lw=0.8)
        xlabel += " (< 0: pre-flossing updates)"
    ax.set(xlabel=xlabel, ylabel="λ₁ (nats per step)", title=title)
    legend_outside(ax, title=legend_title or hue)
    return ax


def plot_measure_vs_axis(
    df: pd.DataFrame,
    *,
    x: str,
    series: dict[str, str],
    hue: str | None = None,
    reference: tuple[str, str] | None = None,
    hline: tuple[float, str] | None = None,
    log: bool = False,
    palette: dict | None = None,
    ylabel: str = "",
    title: str = "",
    ax: Axes | None = None,
) -> Axes:
    """Return summary columns against a sweep axis: mean ± sd over seeds, seeds as dots.

    ``series`` maps a legend name to a column (a line style and marker each, e.g. init solid
    with circles and end dashed with squares); ``hue`` colours one line per value of a second
    axis (``palette`` maps a level to its colour, as other panels draw it); ``reference`` is a
    (column, name) drawn in black (e.g. the mean-field √χ); ``hline``
    a (value, name) rule. On a ``log`` axis the mean is geometric and the bar ×/÷ the geometric
    sd. A hollow marker averages fewer seeds than the configurations that have all of them
    (the others not finite, e.g. an infinite half-life, or not positive on a log axis).
    """
    ax = ensure_axes(ax)
    columns = [c for c in series.values() if c in df.columns]
    if df.empty or x not in df.columns or not columns:
        return no_data(ax, title, ylabel)
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]
    group = [x] if hue is None else [x, hue]
    full = int(df.groupby([df[c].astype(str) for c in group]).size().max())  # seeds per point
    hollow = False
    levels = sorted_levels(pd.Index(df[hue].astype(str).unique())) if hue else ["all"]
    colours = distinct_colours(len(levels))
    if palette:
        colours = [
            palette.get(level, colour) for level, colour in zip(levels, colours, strict=True)
        ]
    xs = pd.to_numeric(df[x], errors="coerce")
    categorical = xs.isna().any()
    order = sorted_levels(pd.Index(df[x].astype(str).unique()))
    position = (lambda v: order.index(str(v))) if categorical else float
    drawn = 0
    for number, ((name, column), style, marker) in enumerate(
        zip(series.items(), styles, markers, strict=False)
    ):
        if column not in df.columns:
            continue
        if hue is None:  # one line per series: a colour each, as well as a style
            colours = [distinct_colours(len(series))[number]]
        # Levels with the same values (λ₁ at init over a training setting: one network) make
        # one line, named for all of them, not k lines on top of each other.
        groups = _alike(df, x, hue, column, levels) if hue is not None else [levels]
        every = hue is not None and len(groups) == 1 and len(levels) > 1
        lines = [("0.3" if every else colours[levels.index(g[0])], g) for g in groups]
        for colour, alike in lines:
            level = alike[0]
            rows = df if hue is None else df[df[hue].astype(str) == level]
            values = pd.to_numeric(rows[column], errors="coerce")
            keep = np.isfinite(values.to_numpy(float)) & (
                values.to_numpy(float) > 0 if log else True
            )
            rows, values = rows[keep], values[keep]
            if rows.empty:
                continue
            px = np.array([position(v) for v in rows[x]])
            y = values.to_numpy(float)
            stats = pd.DataFrame({"x": px, "y": np.log(y) if log else y}).groupby("x")["y"]
            mean, sd = stats.mean(), stats.std().fillna(0.0)
            if log:  # geometric: the bar spans mean ×/÷ the geometric sd
                mean, spread = np.exp(mean), np.exp(sd)
                yerr = np.vstack([mean - mean / spread, mean * spread - mean])
            else:
                yerr = sd.to_numpy()
            label = name if hue is None else f"{name}, {level}"
            if len(series) == 1 and hue is not None:
                label = level
            if every and hue is not None:
                label = f"{name}, every {hue.rpartition('.')[2]}"
            elif len(alike) > 1:
                label = f"{name}, {' = '.join(alike)}"
            ax.errorbar(
                mean.index,
                mean.to_numpy(),
                yerr=yerr,
                color=colour,
                linestyle=style,
                marker=marker,
                ms=4,
                capsize=2,
                label=label,
            )
            few = (stats.count() < full).to_numpy()
            if few.any():  # a white face over the point: fewer seeds than the others
                hollow = True
                ax.scatter(
                    mean.index[few],
                    mean.to_numpy()[few],
                    marker=marker,
                    s=22,
                    facecolor="white",
                    edgecolor=colour,
                    linewidth=1.2,
                    zorder=3,
                )
            ax.scatter(px, values, color=colour, s=8, alpha=0.35)
            drawn += 1
    if reference is not None and reference[0] in df.columns:  # one per hue level, dotted
        for colour, level in zip(colours, levels, strict=True):
            rows = df if hue is None else df[df[hue].astype(str) == level]
            ref_y = pd.to_numeric(rows[reference[0]], errors="coerce")
            ref = pd.DataFrame({"x": [position(v) for v in rows[x]], "y": ref_y}).dropna()
            if ref.empty:
                continue
            line = ref.groupby("x")["y"].mean()
            label = reference[1] if hue is None else f"{reference[1]}, {level}"
            ax.plot(
                line.index,
                line.to_numpy(),
                color="black" if hue is None else colour,
                lw=1,
                linestyle=":",
                marker="x",
                ms=6,
                label=label,
                zorder=4,  # the prediction's cross stays visible on the measured point
            )
    if not drawn:
        return no_data(ax, title, ylabel)
    if hline is not None:
        ax.axhline(hline[0], color="0.4", linestyle=":", lw=1, label=hline[1])
    if hollow:
        ax.scatter([], [], marker="o", s=12, facecolor="white", edgecolor="0.3",
                   label="hollow marker: fewer seeds")  # fmt: skip
    if log:
        log_axis(ax, "y")
    if categorical:
        ax.set_xticks(range(len(order)), order)
    ax.set(xlabel=x, ylabel=ylabel, title=title)
    legend_outside(ax, title=hue.rpartition(".")[2] if hue else None)
    return ax


def _alike(df: pd.DataFrame, x: str, hue: str, column: str, levels: list[str]) -> list[list[str]]:
    """Return ``levels`` of ``hue`` grouped by their values of ``column`` at each ``x`` (equal
    to 12 decimals): a group of several has the same values, seed by seed."""
    values = pd.to_numeric(df[column], errors="coerce").round(12)
    keyed = pd.DataFrame({"x": df[x].map(str), "v": values.map(str)})  # NaN: "nan", sortable
    hues = df[hue].astype(str).to_numpy()
    groups: dict[tuple, list[str]] = {}
    for level in levels:
        rows = keyed[hues == level]
        groups.setdefault(tuple(sorted(zip(rows["x"], rows["v"], strict=True))), []).append(level)
    return list(groups.values())


def _cell_text(value: float) -> str:
    if np.isnan(value):
        return ""
    if np.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.3g}"


# -- several runs overlaid: one colour per run, the same in every panel ----------------------


def run_colours(runs: Sequence[str]) -> dict[str, tuple]:
    """Return one colour per run, distinct, in order: pass it to every panel of a comparison."""
    runs = list(dict.fromkeys(runs))
    return dict(zip(runs, distinct_colours(len(runs)), strict=True))


def plot_run_key(
    df: pd.DataFrame,
    *,
    palette: dict[str, tuple] | None = None,
    note: str | None = None,
    title: str = "runs",
    ax: Axes | None = None,
) -> Axes:
    """Return an axes that holds only the key: each run's colour beside its ``label``.

    ``df`` has ``run`` and ``label`` columns, one row per run in the order of the key; ``note``
    (e.g. the settings all runs share) is written in grey under the last run.
    """
    ax = ensure_axes(ax)
    if df.empty or not {"run", "label"} <= set(df.columns):
        return no_data(ax, title, "")
    palette = palette or run_colours(df["run"])
    handles = [
        plt.Line2D([], [], **_run_line(palette, run), lw=2.5, marker="o", ms=5, label=label)
        for run, label in zip(df["run"], df["label"], strict=True)
    ]
    if note:  # an entry without a line: the note sits right under the runs, aligned with them
        handles.append(plt.Line2D([], [], lw=0, label=note))
    ax.set_axis_off()
    key = ax.legend(
        handles=handles,
        title=title,
        loc="upper left",
        bbox_to_anchor=(0.0, 1.0),
        frameon=False,
        fontsize="small",
        title_fontsize="medium",
        alignment="left",
        labelspacing=0.8,
        handlelength=3.5,
    )
    if note:
        key.get_texts()[-1].set_color(NOTE_COLOR)
    return ax


def plot_runs_loss(
    df: pd.DataFrame,
    *,
    palette: dict[str, tuple] | None = None,
    labels: dict[str, str] | None = None,
    legend_title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return loss / baseline over training, one colour per run, the baseline (1) dashed.

    ``df`` is tidy: ``run``, ``step``, ``loss_ratio`` and ``kind`` (``batch`` rows are drawn
    as a rolling mean over 2 % of a run's steps, ``validation`` rows as dots, a ``diverged``
    row's step as a vertical line in the run's colour).
    """
    ax = ensure_axes(ax)
    data = finite_rows(df, ["step", "loss_ratio"])
    if data.empty or not {"run", "kind"} <= set(data.columns):
        return no_data(ax, "loss / baseline", "loss / baseline loss")
    palette = palette or run_colours(data["run"])
    diverged = finite_rows(df, ["step"])
    diverged = diverged[diverged["kind"] == "diverged"] if "kind" in diverged else diverged
    for run, step in zip(diverged.get("run", []), diverged.get("step", []), strict=True):
        ax.axvline(step, color=palette[run], linestyle=":", lw=1.5)
    smoothed = False
    for run in _runs_in(data, palette):
        rows = data[data["run"] == run].sort_values("step")
        batch, held = rows[rows["kind"] == "batch"], rows[rows["kind"] == "validation"]
        text: str | None = (labels or {}).get(run, str(run))
        if len(batch):
            window = max(1, len(batch) // 50)
            smoothed |= window > 1
            smooth = batch["loss_ratio"].rolling(window, min_periods=1).mean()
            ax.plot(batch["step"], smooth, **_run_line(palette, run), lw=1.5, label=text)
            text = None  # one legend entry per run
        if len(held):
            ax.plot(held["step"], held["loss_ratio"], color=palette[run], ls="none", marker="o",
                    ms=5, mec="white", mew=0.6, label=text)  # fmt: skip
    ax.axhline(1.0, color="0.3", linestyle="--", lw=1)
    log_if_spans(ax, np.append(data["loss_ratio"].to_numpy(float), 1.0))
    kinds = set(data["kind"])
    batch_text = "batch (smoothed)" if smoothed else "batch"
    styles = [
        *([plt.Line2D([], [], color="0.4", lw=1.5, label=batch_text)] if "batch" in kinds else []),
        *([plt.Line2D([], [], color="0.4", ls="none", marker="o", label="validation")]
          if "validation" in kinds else []),
        plt.Line2D([], [], color="0.3", ls="--", lw=1, label="baseline (= 1)"),
        *([plt.Line2D([], [], color="0.4", ls=":", lw=1.5, label="diverged (non-finite)")]
          if len(diverged) else []),
    ]  # fmt: skip
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    _legend_with(ax, styles, title=legend_title)
    ax.set(xlabel="training step", ylabel="loss / baseline loss", title="loss / baseline")
    return ax


def plot_runs_reach(
    df: pd.DataFrame,
    *,
    palette: dict[str, tuple] | None = None,
    labels: dict[str, str] | None = None,
    title: str = "gradient reach",
    legend_title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return ‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖ against distance s − t (log), one colour per run.

    ``df`` has ``run``, ``source``, ``distance`` and ``norm`` (one step of each run). Each
    source is divided by its own norm at distance 0: bold, each run's longest source; faint,
    its shorter sources. The slope is the decay per step.
    """
    ax = ensure_axes(ax)
    data = finite_rows(df, ["source", "distance", "norm"], positive="norm")
    if data.empty or "run" not in data.columns:
        return no_data(ax, title, "‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖")
    palette = palette or run_colours(data["run"])
    for run in _runs_in(data, palette):
        rows = data[data["run"] == run]
        start = rows[rows["distance"] == 0].groupby("source")["norm"].first()
        rows = rows.join(start.rename("start"), on="source").dropna(subset=["start"])
        rows = rows.assign(relative=rows["norm"] / rows["start"]).sort_values("distance")
        if rows.empty:
            continue
        longest = rows.groupby("source")["distance"].max().idxmax()
        for source, one in rows.groupby("source"):
            bold = source == longest
            ax.plot(
                one["distance"],
                one["relative"],
                **_run_line(palette, run),
                lw=1.8 if bold else 0.6,
                alpha=1.0 if bold else 0.35,
                marker="." if bold else None,
                ms=4,
                label=(labels or {}).get(run, str(run)) if bold else None,
            )
    log_axis(ax, "y")
    ax.set(
        xlabel="distance s − t (time steps back)",
        ylabel="‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖",
        title=title,
    )
    styles = [
        plt.Line2D([], [], color="0.3", lw=1.8, marker=".", label="longest source s"),
        plt.Line2D([], [], color="0.3", lw=0.6, alpha=0.35, label="shorter sources"),
    ]
    _legend_with(ax, styles, title=legend_title)
    return ax


def plot_runs_adjoints(
    df: pd.DataFrame,
    *,
    palette: dict[str, tuple] | None = None,
    labels: dict[str, str] | None = None,
    title: str = "adjoint norm over t",
    legend_title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return ‖∂L/∂h_t‖ (batch mean, log) over time step t, one line per run.

    ``df`` has ``run``, ``t`` and ``adjoint_norm`` (one step and layer of each run).
    """
    ax = ensure_axes(ax)
    data = finite_rows(df, ["t", "adjoint_norm"], positive="adjoint_norm")
    if data.empty or "run" not in data.columns:
        return no_data(ax, title, "‖∂L/∂h_t‖")
    palette = palette or run_colours(data["run"])
    for run in _runs_in(data, palette):
        rows = data[data["run"] == run].groupby("t")["adjoint_norm"].mean()
        ax.plot(rows.index, rows.to_numpy(), **_run_line(palette, run), lw=1.5, marker=".", ms=4,
                label=(labels or {}).get(run, str(run)))  # fmt: skip
    log_axis(ax, "y")
    ax.set(xlabel="time step t", ylabel="‖∂L/∂h_t‖ (batch mean)", title=title)
    _legend_with(ax, [], title=legend_title)
    return ax


def plot_runs_lyapunov(
    df: pd.DataFrame,
    *,
    palette: dict[str, tuple] | None = None,
    labels: dict[str, str] | None = None,
    legend_title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return the largest Lyapunov exponent λ₁ over training, one line per run, 0 dashed.

    ``df`` has ``run``, ``step`` and ``exponent`` (λ₁ of one layer of each run).
    """
    ax = ensure_axes(ax)
    data = finite_rows(df, ["step", "exponent"])
    if data.empty or "run" not in data.columns:
        return no_data(ax, "largest Lyapunov exponent", "λ₁ (nats per time step)")
    palette = palette or run_colours(data["run"])
    for run in _runs_in(data, palette):
        rows = data[data["run"] == run].groupby("step")["exponent"].mean()
        ax.plot(rows.index, rows.to_numpy(), **_run_line(palette, run), lw=1.5, marker="o", ms=4,
                label=(labels or {}).get(run, str(run)))  # fmt: skip
    ax.axhline(0.0, color="0.3", linestyle="--", lw=1)
    step_scale(ax, data["step"])
    if ax.get_xscale() == "linear":
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    styles = [plt.Line2D([], [], color="0.3", ls="--", lw=1, label="λ₁ = 0 (edge of chaos)")]
    _legend_with(ax, styles, title=legend_title)
    ax.set(
        xlabel="training step",
        ylabel="λ₁ (nats per time step)",
        title="largest Lyapunov exponent λ₁",
    )
    return ax


def _run_line(palette: dict[str, tuple], run: str) -> dict:
    """Return the run's colour and dash pattern: runs with equal curves (e.g. the same initial
    network) still show each other through the gaps."""
    order = list(palette).index(run)
    return {"color": palette[run], "linestyle": _RUN_DASHES[order % len(_RUN_DASHES)]}


_RUN_DASHES = ("-", (0, (5, 2)), (0, (1.5, 1.5)), (0, (5, 2, 1.5, 2)))


def _runs_in(data: pd.DataFrame, palette: dict[str, tuple]) -> list:
    """Return the runs of ``data`` in the palette's order (a run missing from it raises)."""
    present = set(data["run"])
    missing = present - set(palette)
    if missing:
        raise KeyError(f"no colour for run(s) {sorted(missing, key=str)}")
    return [run for run in palette if run in present]


def _legend_with(ax: Axes, styles: list, title: str | None = None) -> None:
    """Put the runs' legend right of the axes at the top, the line ``styles``' at the bottom."""
    options = {"fontsize": "x-small", "borderaxespad": 0, "frameon": False, "handlelength": 3}
    handles, texts = ax.get_legend_handles_labels()
    if handles:
        runs = ax.legend(handles, texts, title=title, title_fontsize="x-small", loc="upper left",
                         bbox_to_anchor=(1.02, 1), **options)  # fmt: skip
        if styles:  # a second ax.legend replaces the first: keep it as an artist
            ax.add_artist(runs)
    if styles:
        ax.legend(handles=styles, loc="lower left", bbox_to_anchor=(1.02, 0), **options)
