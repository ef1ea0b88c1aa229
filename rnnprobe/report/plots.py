"""Figures of stored run records: pure functions ``plot_x(df, *, ax=None) -> Axes``.

Each function takes tidy DataFrames shaped like the store's tables (``rnnprobe.records.store.
STANDARD_TABLES``) or a study summary, draws on ``ax`` (a new figure when None) and returns it.
None of them touches a live model, reads a file or raises on missing data: an empty table, or
one without the needed columns or finite values, gives a panel saying "no data" instead.
Colours come from seaborn's colour-blind-safe "colorblind" palette (lines) and "viridis" /
"cividis" (colour scales); magnitudes that span decades get log axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm
from matplotlib.ticker import FuncFormatter, NullFormatter
from matplotlib.transforms import offset_copy

from rnnprobe.analysis.levels import level_order

__all__ = [
    "plot_adjoint_heatmap",
    "plot_class_accuracy",
    "plot_clipping",
    "plot_confusion",
    "plot_decay_vs_mean_field",
    "plot_eigenvalues",
    "plot_gradient_reach",
    "plot_hidden_health",
    "plot_jacobian_spectra",
    "plot_loss",
    "plot_lyapunov",
    "plot_lyapunov_spectrum",
    "plot_measure_vs_axis",
    "plot_metric",
    "plot_participation_ratio",
    "plot_phase_diagram",
    "thin_steps",
]

PALETTE = "colorblind"
_NOTE_COLOR = "0.45"


def thin_steps(steps: Sequence[float] | pd.Series, limit: int) -> np.ndarray:
    """Return at most ``limit`` of the distinct ``steps``, evenly spread, first and last kept."""
    unique = np.unique(np.asarray(pd.to_numeric(pd.Series(steps), errors="coerce").dropna()))
    if len(unique) <= limit:
        return unique
    return unique[np.unique(np.round(np.linspace(0, len(unique) - 1, max(limit, 1))).astype(int))]


def plot_adjoint_heatmap(
    df: pd.DataFrame,
    *,
    layer: int | None = None,
    value: str = "adjoint_norm",
    max_steps: int = 200,
    ax: Axes | None = None,
) -> Axes:
    """Return a heatmap of ‖∂L/∂h_t‖ over time step t (y) and training step (x), log colours."""
    ax = _axes(ax)
    data = _finite(df, ["step", "layer", "t", value], positive=value)
    if data.empty:
        return _no_data(ax, "adjoint norms", "adjoint norm ‖∂L/∂h_t‖")
    layer = int(data["layer"].min()) if layer is None else layer
    data = data[data["layer"] == layer]
    data = data[data["step"].isin(thin_steps(data["step"], max_steps))]
    if data.empty:
        return _no_data(ax, f"adjoint norms of layer {layer}", "adjoint norm ‖∂L/∂h_t‖")
    grid = data.pivot_table(index="t", columns="step", values=value, aggfunc="mean")
    z = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    lo, hi = float(z.min()), float(z.max())
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    mesh = ax.pcolormesh(
        _edges(grid.columns.to_numpy(dtype=float)),
        _edges(grid.index.to_numpy(dtype=float)),
        z,
        norm=LogNorm(vmin=lo, vmax=hi),
        cmap="viridis",
        shading="flat",
    )
    ax.figure.colorbar(mesh, ax=ax, label="‖∂L/∂h_t‖ (batch mean)")
    ax.set(xlabel="training step", ylabel="time step t", title=f"adjoint norm, layer {layer}")
    return ax


def plot_gradient_reach(
    df: pd.DataFrame,
    *,
    hue: str | None = None,
    labels: dict | None = None,
    title: str = "gradient reach",
    legend_title: str | None = None,
    max_lines: int = 12,
    ax: Axes | None = None,
) -> Axes:
    """Return ‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖ against distance s − t (log), one line per ``hue``.

    Each source is divided by its own norm at distance 0, so lines start at 1 and their slope
    is the decay per step: bold, the longest source (geometric mean over repeats such as
    seeds), faint, each shorter source. ``labels`` maps a hue value to its legend text (e.g.
    the fitted rate); ``hue`` defaults to ``"label"`` when the frame has it, else ``"source"``.
    """
    ax = _axes(ax)
    data = _finite(df, ["distance", "norm"], positive="norm")
    hue = hue or ("label" if "label" in data.columns else "source")
    if data.empty or hue not in data.columns:
        return _no_data(ax, title, "‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖")
    keys = [c for c in ("label", "run_id", "step", "layer", "source") if c in data.columns]
    start = data[data["distance"] == 0].groupby(keys)["norm"].first()
    data = data.join(start.rename("start"), on=keys)
    data = data[np.isfinite(data["start"]) & (data["start"] > 0)]
    data = data.assign(relative=data["norm"] / data["start"])
    groups = [(name, g) for name, g in data.groupby(hue, sort=False)]
    order = [k for k in (labels or {}) if k in dict(groups)]  # the caller's order first
    order += [k for k in _sorted_levels(pd.Index([n for n, _ in groups])) if k not in order]
    groups = sorted(groups, key=lambda item: order.index(item[0]))
    if len(groups) > max_lines:
        keep = np.unique(np.round(np.linspace(0, len(groups) - 1, max_lines)).astype(int))
        groups = [groups[i] for i in keep]
    colours = _colours(len(groups))
    for colour, (name, group) in zip(colours, groups, strict=True):
        # Bold: the longest source (it reaches every distance), geometric mean over repeats;
        # faint: the other sources, one line each. Averaging sources of different lengths
        # would jump wherever one of them ends.
        longest = None  # the source whose curve spans the most distances (truncation cuts some)
        if "source" in group and hue != "source":
            spans = group.groupby("source")["distance"].max()
            longest = spans[spans == spans.max()].index.max()
        bold = group if longest is None else group[group["source"] == longest]
        line = np.exp(np.log(bold["relative"]).groupby(bold["distance"]).mean())
        text = (labels or {}).get(name, _label(hue, name))
        ax.plot(line.index, line.to_numpy(), color=colour, marker=".", ms=3, label=text)
        if longest is not None:
            others = group[group["source"] != longest]
            for _, one in others.groupby([k for k in keys if k != "label"], sort=False):
                one = one.sort_values("distance")
                ax.plot(one["distance"], one["relative"], color=colour, lw=0.6, alpha=0.3)
    _log_axis(ax, "y")
    ax.set(
        xlabel="distance s − t (time steps back)",
        ylabel="‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖",
        title=title,
    )
    _legend_outside(ax, title=legend_title)
    return ax


def plot_jacobian_spectra(
    df: pd.DataFrame, *, layer: int | None = None, max_steps: int = 8, ax: Axes | None = None
) -> Axes:
    """Return box plots of the one-step Jacobian singular values at a few training steps."""
    ax = _axes(ax)
    data = _finite(_quantity(df, "jacobian_singular"), ["step", "layer", "value"], "value")
    if data.empty:
        return _no_data(ax, "Jacobian spectra", "singular value σ of J_t")
    layer = int(data["layer"].min()) if layer is None else layer
    data = data[(data["layer"] == layer) & data["step"].isin(thin_steps(data["step"], max_steps))]
    if data.empty:
        return _no_data(ax, f"Jacobian spectra of layer {layer}", "singular value σ of J_t")
    steps = sorted(data["step"].unique())
    # matplotlib's own boxplot: seaborn 0.13's passes the deprecated `vert` on matplotlib ≥ 3.11
    boxes = ax.boxplot(
        [data.loc[data["step"] == s, "value"].to_numpy() for s in steps],
        positions=range(len(steps)),
        widths=0.6,
        patch_artist=True,
        flierprops={"markersize": 2},
        medianprops={"color": "0.1"},
    )
    for box in boxes["boxes"]:
        box.set_facecolor(sns.color_palette(PALETTE)[0])
    ax.set_xticks(range(len(steps)), [str(int(s)) for s in steps])
    _log_axis(ax, "y")
    ax.axhline(1.0, color="0.2", linestyle="--", linewidth=1, label="σ = 1")
    ax.legend(fontsize="small", loc="best")
    ax.set(
        xlabel="training step",
        ylabel="singular value σ of J_t",
        title=f"spectrum of J_t = diag(φ′) W_hh, layer {layer}",
    )
    return ax


def _lines_per_layer(data: pd.DataFrame, y: str, ax: Axes, marker: str | None = None) -> None:
    """Draw ``y`` against training step, one colour-blind-safe line per layer."""
    data = data.assign(layer=[f"layer {int(v)}" for v in data["layer"]])
    sns.lineplot(
        data=data, x="step", y=y, hue="layer", palette=PALETTE, marker=marker, errorbar=None, ax=ax
    )


def plot_lyapunov(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Return the largest Lyapunov exponent λ₁ over training, one line per layer, 0 marked."""
    ax = _axes(ax)
    data = _finite(df, ["step", "layer", "index", "exponent"])
    data = data[data["index"] == 0] if not data.empty else data
    if data.empty:
        return _no_data(ax, "Lyapunov exponents", "λ₁ (nats per time step)")
    _lines_per_layer(data, "exponent", ax, marker="o")
    ax.axhline(0.0, color="0.2", linestyle="--", linewidth=1)
    _step_scale(ax, data["step"])
    ax.set(
        xlabel="training step",
        ylabel="λ₁ (nats per time step)",
        title="largest Lyapunov exponent",
    )
    return ax


def plot_lyapunov_spectrum(
    df: pd.DataFrame,
    *,
    steps: Sequence[int] | None = None,
    layer: int | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return the Lyapunov spectrum (exponent by rank) at ``steps`` (default first, mid, last)."""
    ax = _axes(ax)
    data = _finite(df, ["step", "layer", "index", "exponent"])
    if data.empty:
        return _no_data(ax, "Lyapunov spectrum", "exponent λ_i (nats per time step)")
    layer = int(data["layer"].min()) if layer is None else layer
    data = data[data["layer"] == layer]
    steps = list(steps) if steps is not None else list(thin_steps(data["step"], 3))
    data = data[data["step"].isin(steps)]
    if data.empty:
        return _no_data(ax, f"Lyapunov spectrum of layer {layer}", "exponent λ_i")
    order = [f"step {int(s)}" for s in sorted(data["step"].unique())]
    data = data.assign(when=[f"step {int(s)}" for s in data["step"]])
    sns.lineplot(
        data=data,
        x="index",
        y="exponent",
        hue="when",
        hue_order=order,
        palette=PALETTE,
        marker="o",
        errorbar=None,
        ax=ax,
    )
    ax.axhline(0.0, color="0.2", linestyle="--", linewidth=1)
    ax.legend(title=None, fontsize="small")
    ax.set(
        xlabel="rank i (0 = largest)",
        ylabel="λ_i (nats per time step)",
        title=f"Lyapunov spectrum, layer {layer}",
    )
    return ax


def plot_eigenvalues(df: pd.DataFrame, *, layer: int | None = None, ax: Axes | None = None) -> Axes:
    """Return W_hh's eigenvalues in the complex plane at the first and last step, unit circle."""
    ax = _axes(ax)
    data = _finite(_quantity(df, "w_hh_eigenvalue"), ["step", "layer", "value", "imag"])
    if data.empty:
        return _no_data(ax, "W_hh eigenvalues", "Im λ")
    layer = int(data["layer"].min()) if layer is None else layer
    data = data[data["layer"] == layer]
    if data.empty:
        return _no_data(ax, f"W_hh eigenvalues of layer {layer}", "Im λ")
    first, last = data["step"].min(), data["step"].max()
    circle = np.linspace(0, 2 * np.pi, 256)
    ax.plot(np.cos(circle), np.sin(circle), color="0.3", linewidth=1, label="|λ| = 1")
    colours = sns.color_palette(PALETTE, 2)
    marks = [(first, "init" if first == 0 else "first", colours[0], "o")]
    if last != first and last > 1:  # step 1 records the weights before any update
        marks.append((last, "end", colours[1], "x"))
    for step, name, colour, marker in marks:
        rows = data[data["step"] == step]
        ax.scatter(
            rows["value"],
            rows["imag"],
            s=12,
            color=colour,
            marker=marker,
            label=f"{name} (step {int(step)})",
            alpha=0.8,
        )
    ax.set_aspect("equal", adjustable="datalim")
    ax.axhline(0, color="0.8", linewidth=0.5, zorder=0)
    ax.axvline(0, color="0.8", linewidth=0.5, zorder=0)
    ax.legend(fontsize="small", loc="upper right")
    ax.set(xlabel="Re λ", ylabel="Im λ", title=f"W_hh eigenvalues, layer {layer}")
    return ax


def plot_hidden_health(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Return saturated (tanh), inactive and dead (ReLU) unit fractions over training."""
    ax = _axes(ax)
    columns = [c for c in ("saturation", "inactive", "dead_fraction") if c in df.columns]
    data = _finite(df, ["step", "layer"])
    if data.empty or not columns:
        return _no_data(ax, "hidden-state health", "fraction of units")
    long = data.melt(id_vars=["step", "layer"], value_vars=columns, var_name="quantity")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long[np.isfinite(long["value"])]
    if long.empty:
        return _no_data(ax, "hidden-state health", "fraction of units")
    long["quantity"] = long["quantity"].str.replace("_", " ")
    long["layer"] = [f"layer {int(v)}" for v in long["layer"]]
    many = long["layer"].nunique() > 1
    sns.lineplot(
        data=long,
        x="step",
        y="value",
        hue="quantity",
        style="layer" if many else None,
        palette=PALETTE,
        errorbar=None,
        ax=ax,
    )
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small", title=None)
    ax.set(xlabel="training step", ylabel="fraction of units", title="hidden-unit health")
    return ax


def plot_participation_ratio(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Return the participation ratio (effective dimensionality of h) over training per layer."""
    ax = _axes(ax)
    data = _finite(df, ["step", "layer", "participation_ratio"])
    if data.empty:
        return _no_data(ax, "participation ratio", "participation ratio (dimensions)")
    _lines_per_layer(data, "participation_ratio", ax)
    ax.set(
        xlabel="training step",
        ylabel="participation ratio (dimensions)",
        title="hidden-state dimensionality",
    )
    return ax


def plot_loss(
    df: pd.DataFrame,
    *,
    evals: pd.DataFrame | None = None,
    baseline: float | None = None,
    unit: str = "nats per target",
    ax: Axes | None = None,
) -> Axes:
    """Return training loss (raw and smoothed), validation loss and the baseline as a line."""
    return _curve(df, "loss", evals=evals, baseline=baseline, ylabel=f"loss ({unit})", ax=ax)


def plot_metric(
    df: pd.DataFrame,
    *,
    evals: pd.DataFrame | None = None,
    baseline: float | None = None,
    metric: str = "metric",
    ax: Axes | None = None,
) -> Axes:
    """Return the task metric over training (batch and validation) with the baseline's metric."""
    return _curve(df, "metric", evals=evals, baseline=baseline, ylabel=metric, ax=ax)


def plot_clipping(
    df: pd.DataFrame, *, clipping: bool = True, window: int = 50, ax: Axes | None = None
) -> Axes:
    """Return the global gradient norm over training (log when it spans decades).

    With ``clipping``, also the post-clip norm and, on a right axis, the rolling clip rate.
    """
    ax = _axes(ax)
    data = _finite(df, ["step", "grad_norm_pre_clip"], positive="grad_norm_pre_clip")
    if data.empty:
        return _no_data(ax, "gradient norms", "global gradient norm")
    data = data.sort_values("step")
    colours = sns.color_palette(PALETTE, 3)
    label = "before clip" if clipping else "‖∇θ L‖"
    ax.plot(data["step"], data["grad_norm_pre_clip"], color=colours[0], lw=1, label=label)
    _log_if_spans(ax, data["grad_norm_pre_clip"].to_numpy(float))
    if not clipping:
        ax.set(
            xlabel="training step",
            ylabel="global gradient norm ‖∇θ L‖",
            title="gradient norm (clipping off)",
        )
        return ax
    if "grad_norm_post_clip" in data.columns:
        post = pd.to_numeric(data["grad_norm_post_clip"], errors="coerce")
        ax.plot(data["step"], post, color=colours[1], lw=1, linestyle="--", label="after clip")
    handles, labels = ax.get_legend_handles_labels()
    if "clipped" in data.columns:
        rate = data["clipped"].astype(float).rolling(max(1, window), min_periods=1).mean()
        right = ax.twinx()
        right.plot(
            data["step"], rate, color=colours[2], lw=1.5, label=f"clip rate ({window} steps)"
        )
        right.set_ylim(-0.02, 1.02)
        right.set_ylabel("fraction of steps clipped")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(
        handles,
        labels,
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.15, 1),
        borderaxespad=0,
    )
    ax.set(xlabel="training step", ylabel="global gradient norm ‖∇θ L‖", title="gradient clipping")
    return ax


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
    ax = _axes(ax)
    if matrix is None or matrix.empty:
        return _no_data(ax, title, "true class")
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
    ax = _axes(ax)
    needed = {"name", "accuracy", "valid_examples"}
    if per_class is None or per_class.empty or not needed <= set(per_class.columns):
        return _no_data(ax, "per-class accuracy", "class")
    accuracy = pd.to_numeric(per_class["accuracy"], errors="coerce").to_numpy(float)
    support = pd.to_numeric(per_class["valid_examples"], errors="coerce").fillna(0).to_numpy()
    K = len(per_class)
    y = np.arange(K) + 0.5  # cell centres, as in a heatmap's rows
    colours = sns.color_palette(PALETTE, 3)
    ax.barh(y, np.nan_to_num(accuracy), height=0.7, color=colours[0])
    small = "small" if K <= 20 else "x-small"
    for yi, acc, n in zip(y, accuracy, support, strict=True):
        note = f"{100 * acc:.0f}% (n={int(n)})" if np.isfinite(acc) else "no examples"
        ax.text(1.02, yi, note, va="center", ha="left", fontsize=small, color=_NOTE_COLOR)
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


def plot_phase_diagram(
    df: pd.DataFrame,
    *,
    x: str,
    y: str | None = None,
    value: str = "loss_ratio",
    label: str | None = None,
    log: bool = False,
    center: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return a heatmap of ``value`` (mean over repeats, e.g. seeds) over two sweep axes.

    With ``center`` the colour scale diverges from it (e.g. loss/baseline centred at 1: blue
    beats the baseline, red is worse); ∞ cells are marked.
    """
    ax = _axes(ax)
    label = label or value
    needed = [c for c in (x, y, value) if c]
    if df.empty or any(c not in df.columns for c in needed):
        return _no_data(ax, f"{label} over {x}" + (f" × {y}" if y else ""), y or "")
    data = df[needed].copy()
    data[value] = pd.to_numeric(data[value], errors="coerce")
    data = data[data[value].notna()]
    if log:
        data = data[data[value] > 0]
    if data.empty:
        return _no_data(ax, label, y or "")
    if y is None:
        data = data.assign(_row="")
    rows = y or "_row"
    grid = data.pivot_table(index=rows, columns=x, values=value, aggfunc="mean")
    grid = grid.loc[_sorted_levels(grid.index), _sorted_levels(grid.columns)]
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
    ax.set(xlabel=x, ylabel=y or "", title=label)
    return ax


def plot_decay_vs_mean_field(
    df: pd.DataFrame,
    *,
    measured: str = "decay_per_step_init",
    predicted: str = "predicted_decay",
    hue: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return init-phase measured decay per step against the mean-field √χ, y = x dashed."""
    ax = _axes(ax)
    data = _finite(df, [measured, predicted], positive=measured)
    data = data[data[predicted] > 0] if not data.empty else data
    if data.empty:
        return _no_data(ax, "measured vs predicted decay", "measured decay per step")
    hue = hue if hue and hue in data.columns else None
    levels = _sorted_levels(pd.Index(data[hue].unique())) if hue else [None]
    colours = _colours(len(levels))
    for colour, level in zip(colours, levels, strict=True):
        rows = data if hue is None else data[data[hue] == level]
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
        _log_axis(ax, "x")
        _log_axis(ax, "y")
    ax.set(
        xlabel="mean-field prediction √χ (factor per time step)",
        ylabel="measured decay at init (factor per step)",
        title="gradient decay at init: measured vs mean field",
    )
    _legend_outside(ax, title=hue.rpartition(".")[2] if hue else None)
    return ax


def plot_lyapunov_over_training(
    df: pd.DataFrame, *, hue: str = "configuration", title: str = "", ax: Axes | None = None
) -> Axes:
    """Return λ₁ against the training step: one colour per ``hue`` level, its seed mean bold and
    each run faint.

    ``df`` has ``run``, ``step``, ``exponent`` (λ₁ of the top layer) and ``hue``. Negative steps
    are pre-flossing updates (``--floss …,pre=P``): the first point of such a run, at −P, is its
    network before any update.
    """
    ax = _axes(ax)
    data = _finite(df, ["step", "exponent"])
    title = title or "largest Lyapunov exponent λ₁ over training"
    if data.empty or hue not in data:
        return _no_data(ax, title, "λ₁ (nats per step)")
    levels = list(pd.unique(data[hue].astype(str)))  # the caller's order (the study's grid)
    for level, colour in zip(levels, _colours(len(levels)), strict=True):
        rows = data[data[hue].astype(str) == level]
        for _, run in rows.groupby("run"):
            ax.plot(run["step"], run["exponent"], color=colour, lw=0.6, alpha=0.35)
        mean = rows.groupby("step")["exponent"].mean()
        ax.plot(mean.index, mean.to_numpy(), color=colour, lw=1.8, label=level)
    ax.axhline(0.0, color="0.3", linestyle=":", lw=1, label="λ₁ = 0")
    xlabel = "training step"
    if (data["step"] < 0).any():
        ax.axvline(0.5, color="0.6", lw=0.8)
        xlabel += " (< 0: pre-flossing updates)"
    ax.set(xlabel=xlabel, ylabel="λ₁ (nats per step)", title=title)
    _legend_outside(ax, title=hue)
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
    ylabel: str = "",
    title: str = "",
    ax: Axes | None = None,
) -> Axes:
    """Return summary columns against a sweep axis: mean ± sd over seeds, seeds as dots.

    ``series`` maps a legend name to a column (a line style each, e.g. init solid and end
    dashed); ``hue`` colours one line per value of a second axis; ``reference`` is a
    (column, name) drawn in black (e.g. the mean-field √χ); ``hline`` a (value, name) rule.
    """
    ax = _axes(ax)
    columns = [c for c in series.values() if c in df.columns]
    if df.empty or x not in df.columns or not columns:
        return _no_data(ax, title, ylabel)
    styles = ["-", "--", ":", "-."]
    levels = _sorted_levels(pd.Index(df[hue].astype(str).unique())) if hue else ["all"]
    colours = _colours(len(levels))
    xs = pd.to_numeric(df[x], errors="coerce")
    categorical = xs.isna().any()
    order = _sorted_levels(pd.Index(df[x].astype(str).unique()))
    position = (lambda v: order.index(str(v))) if categorical else float
    drawn = 0
    for number, ((name, column), style) in enumerate(zip(series.items(), styles, strict=False)):
        if column not in df.columns:
            continue
        if hue is None:  # one line per series: a colour each, as well as a style
            colours = [_colours(len(series))[number]]
        for colour, level in zip(colours, levels, strict=True):
            rows = df if hue is None else df[df[hue].astype(str) == level]
            values = pd.to_numeric(rows[column], errors="coerce")
            keep = np.isfinite(values.to_numpy(float)) & (
                values.to_numpy(float) > 0 if log else True
            )
            rows, values = rows[keep], values[keep]
            if rows.empty:
                continue
            px = np.array([position(v) for v in rows[x]])
            stats = pd.DataFrame({"x": px, "y": values.to_numpy(float)}).groupby("x")["y"]
            mean, sd = stats.mean(), stats.std().fillna(0.0)
            label = name if hue is None else f"{name}, {level}"
            if len(series) == 1 and hue is not None:
                label = level
            ax.errorbar(
                mean.index,
                mean.to_numpy(),
                yerr=sd.to_numpy(),
                color=colour,
                linestyle=style,
                marker="o",
                ms=4,
                capsize=2,
                label=label,
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
            )
    if not drawn:
        return _no_data(ax, title, ylabel)
    if hline is not None:
        ax.axhline(hline[0], color="0.4", linestyle=":", lw=1, label=hline[1])
    if log:
        _log_axis(ax, "y")
    if categorical:
        ax.set_xticks(range(len(order)), order)
    ax.set(xlabel=x, ylabel=ylabel, title=title)
    _legend_outside(ax, title=hue.rpartition(".")[2] if hue else None)
    return ax


def _curve(
    df: pd.DataFrame,
    column: str,
    *,
    evals: pd.DataFrame | None,
    baseline: float | None,
    ylabel: str,
    ax: Axes | None,
) -> Axes:
    ax = _axes(ax)
    data = _finite(df, ["step", column]).sort_values("step") if not df.empty else df
    bad = _nonfinite_steps(df, column)
    held = _finite(evals, ["step", column]) if evals is not None else pd.DataFrame()
    if data.empty and held.empty:
        return _no_data(ax, column, ylabel)
    colours = sns.color_palette(PALETTE, 3)
    values = []
    if not data.empty:
        window = max(1, len(data) // 50)
        smooth = data[column].rolling(window, min_periods=1).mean()
        faint = 0.3 if window > 1 else 1.0
        ax.plot(data["step"], data[column], color=colours[0], alpha=faint, lw=0.8, label="batch")
        if window > 1:
            ax.plot(
                data["step"], smooth, color=colours[0], lw=1.5, label=f"batch, mean of {window}"
            )
        values.append(data[column].to_numpy(float))
    if not held.empty:
        ax.plot(held["step"], held[column], color=colours[1], marker="o", ms=4, label="validation")
        values.append(held[column].to_numpy(float))
    if baseline is not None and math.isfinite(baseline):
        ax.axhline(baseline, color=colours[2], linestyle="--", lw=1.2, label="baseline")
        values.append(np.array([baseline]))
    if len(bad):
        ax.axvline(bad[0], color="0.3", linestyle=":", lw=1.2, label=f"first non-finite {column}")
    _log_if_spans(ax, np.concatenate(values))
    ax.legend(fontsize="small", loc="best")
    ax.set(xlabel="training step", ylabel=ylabel, title=column)
    return ax


def _nonfinite_steps(df: pd.DataFrame, column: str) -> np.ndarray:
    """Return the sorted steps whose ``column`` is NaN or ±inf (e.g. a diverging loss)."""
    if df.empty or not {"step", column} <= set(df.columns):
        return np.array([])
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
    steps = pd.to_numeric(df["step"], errors="coerce").to_numpy(float)
    return np.sort(steps[~np.isfinite(values) & np.isfinite(steps)])


def _colours(n: int) -> list:
    """Return ``n`` distinguishable colours: colour-blind-safe up to 10, then a colour ramp."""
    if n <= 10:
        return sns.color_palette(PALETTE, max(n, 1))[:n]
    return sns.color_palette("viridis", n)


def _legend_outside(ax: Axes, title: str | None = None) -> None:
    """Put the legend to the right of the axes, where it cannot hide data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            fontsize="x-small",
            title=title,
            title_fontsize="x-small",
            loc="upper left",
            bbox_to_anchor=(1.02, 1),
            borderaxespad=0,
            frameon=False,
        )


def _axes(ax: Axes | None) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.2))
    return ax


def _no_data(ax: Axes, what: str, ylabel: str) -> Axes:
    ax.text(
        0.5,
        0.5,
        f"no data: {what}",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color=_NOTE_COLOR,
        fontsize="large",
    )
    ax.set(xticks=[], yticks=[], xlabel="", ylabel=ylabel, title=what)
    return ax


def _finite(
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


def _quantity(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if df.empty or "quantity" not in df.columns:
        return df.iloc[0:0]
    return df[df["quantity"] == name]


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


def _step_scale(ax: Axes, steps: pd.Series) -> None:
    """Use a symlog step axis for log-spaced schedules (1, 2, 4, … spread over decades)."""
    unique = np.unique(steps.to_numpy(float))
    positive = unique[unique > 0]
    spread = len(positive) >= 3 and positive.max() / positive.min() >= 100
    if spread and np.median(positive[1:] / positive[:-1]) > 1.5:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)


def _log_if_spans(ax: Axes, values: np.ndarray, decades: float = 1.5) -> None:
    """Use a log y axis when the positive ``values`` span more than ``decades`` decades."""
    values = values[np.isfinite(values)]
    if values.size and (values > 0).all() and np.log10(values.max() / values.min()) > decades:
        _log_axis(ax, "y")


def _log_axis(ax: Axes, which: str) -> None:
    """Log scale with plain tick labels (0.5, 1, 2, 100); minor labels only within a decade."""
    getattr(ax, f"set_{which}scale")("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = sorted(abs(v) for v in (ax.get_ylim() if which == "y" else ax.get_xlim()))
    axis.set_major_formatter(FuncFormatter(_tick))
    few = lo > 0 and hi / lo < 20
    axis.set_minor_formatter(FuncFormatter(_tick_2_5) if few else NullFormatter())


def _tick(value: float, _: object) -> str:
    return f"{value:g}"


def _tick_2_5(value: float, _: object) -> str:
    """Label a minor log tick only at 2 and 5 × a power of ten: room between the labels."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6)
    return f"{value:g}" if mantissa in (2.0, 5.0) else ""


def _sorted_levels(index: pd.Index) -> list:
    """Return index labels in the analysis' level order: numbers numerically; in text, the
    control level (none, full, default) first, then numbers, then text."""
    frame = pd.DataFrame({"level": list(index)})
    return [index[i] for i in level_order(frame, ["level"])]


def _cell_text(value: float) -> str:
    if np.isnan(value):
        return ""
    if np.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.3g}"


def _label(hue: str, name: object) -> str:
    if hue == "source":
        return f"s = {int(name)}" if isinstance(name, int | float | np.number) else f"s = {name}"
    return str(name)


def _steps(half_life: float) -> str:
    if math.isnan(half_life):
        return "n/a"
    return "∞" if math.isinf(half_life) else f"{half_life:.3g} steps"


# -- several runs overlaid: one colour per run, the same in every panel ----------------------

__all__ += [  # the comparison's functions, kept together at the end
    "plot_run_key",
    "plot_runs_adjoints",
    "plot_runs_loss",
    "plot_runs_lyapunov",
    "plot_runs_reach",
    "run_colours",
]


def run_colours(runs: Sequence[str]) -> dict[str, tuple]:
    """Return one colour per run, distinct, in order: pass it to every panel of a comparison."""
    runs = list(dict.fromkeys(runs))
    return dict(zip(runs, _colours(len(runs)), strict=True))


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
    ax = _axes(ax)
    if df.empty or not {"run", "label"} <= set(df.columns):
        return _no_data(ax, title, "")
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
        key.get_texts()[-1].set_color(_NOTE_COLOR)
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
    ax = _axes(ax)
    data = _finite(df, ["step", "loss_ratio"])
    if data.empty or not {"run", "kind"} <= set(data.columns):
        return _no_data(ax, "loss / baseline", "loss / baseline loss")
    palette = palette or run_colours(data["run"])
    diverged = _finite(df, ["step"])
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
    _log_if_spans(ax, np.append(data["loss_ratio"].to_numpy(float), 1.0))
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
    ax = _axes(ax)
    data = _finite(df, ["source", "distance", "norm"], positive="norm")
    if data.empty or "run" not in data.columns:
        return _no_data(ax, title, "‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖")
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
    _log_axis(ax, "y")
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
    ax = _axes(ax)
    data = _finite(df, ["t", "adjoint_norm"], positive="adjoint_norm")
    if data.empty or "run" not in data.columns:
        return _no_data(ax, title, "‖∂L/∂h_t‖")
    palette = palette or run_colours(data["run"])
    for run in _runs_in(data, palette):
        rows = data[data["run"] == run].groupby("t")["adjoint_norm"].mean()
        ax.plot(rows.index, rows.to_numpy(), **_run_line(palette, run), lw=1.5, marker=".", ms=4,
                label=(labels or {}).get(run, str(run)))  # fmt: skip
    _log_axis(ax, "y")
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
    ax = _axes(ax)
    data = _finite(df, ["step", "exponent"])
    if data.empty or "run" not in data.columns:
        return _no_data(ax, "largest Lyapunov exponent", "λ₁ (nats per time step)")
    palette = palette or run_colours(data["run"])
    for run in _runs_in(data, palette):
        rows = data[data["run"] == run].groupby("step")["exponent"].mean()
        ax.plot(rows.index, rows.to_numpy(), **_run_line(palette, run), lw=1.5, marker="o", ms=4,
                label=(labels or {}).get(run, str(run)))  # fmt: skip
    ax.axhline(0.0, color="0.3", linestyle="--", lw=1)
    _step_scale(ax, data["step"])
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
