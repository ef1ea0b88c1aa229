"""Figures of one run over training: loss, metric, gradient norms and clipping, dynamics, health.

Training and validation loss and the task metric against the baseline, the global gradient norm
with clipping, the one-step Jacobian's singular values and W_hh's eigenvalues at a few steps,
the Lyapunov exponent λ₁ over training and the spectrum by QR index, and the hidden units'
health (saturated, inactive, dead) and participation ratio. Pure functions ``plot_x(df, *,
ax=None) -> Axes`` over one run's ``steps``, ``evals``, ``spectra``, ``lyapunov`` and ``health``
tables; helpers from :mod:`rnnprobe.report.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.cbook import boxplot_stats
from matplotlib.ticker import MaxNLocator

from rnnprobe.analysis.runs import UNSETTLED
from rnnprobe.report.plots import (
    NOTE_COLOR,
    PALETTE,
    ensure_axes,
    finite_rows,
    legend_outside,
    log_axis,
    log_if_spans,
    no_data,
    step_scale,
    thin_steps,
)

__all__ = [
    "plot_clipping",
    "plot_eigenvalues",
    "plot_hidden_health",
    "plot_jacobian_spectra",
    "plot_loss",
    "plot_lyapunov",
    "plot_lyapunov_spectrum",
    "plot_metric",
    "plot_participation_ratio",
]

YLABEL_SPECTRUM = "exponent at index i (nats per time step)"
ZERO_FLOOR = 1e-6  # a σ of J_t below this × its step's largest σ is a numerical zero


def plot_jacobian_spectra(
    df: pd.DataFrame, *, layer: int | None = None, max_steps: int = 8, ax: Axes | None = None
) -> Axes:
    """Return box plots of the one-step Jacobian singular values at a few training steps.

    The probe keeps the top k σ of each sampled J_t (``probes.top_k``): the title says k, read
    from the ranks recorded, and the y label of how many (H, W_hh's eigenvalues per step). Boxes
    stand at their step on a numeric axis; quartiles and whiskers (1.5 IQR) are taken in
    decades, and the y axis reaches a little below the lowest whisker, not the outliers: a note
    counts the σ below the axis drawn (not below the whisker: a flier above the foot shows).
    A σ below ``ZERO_FLOOR`` × its step's largest (a J_t whose units are all off, σ like 1e-90
    beside σ ≈ 1) is a numerical zero: the note counts it, the boxes leave it out, as a box
    through the empty decades between would show σ where there are none."""
    ax = ensure_axes(ax)
    data = finite_rows(_quantity(df, "jacobian_singular"), ["step", "layer", "value"])
    if data.empty:
        return no_data(ax, "Jacobian spectra", "singular value σ of J_t")
    layer = int(data["layer"].min()) if layer is None else layer
    data = data[data["layer"] == layer]
    probed = data["step"]  # the schedule, before thinning, sets the axis's scale
    data = data[data["step"].isin(thin_steps(probed, max_steps))]
    peak = data.groupby("step")["value"].transform("max")
    zero = (data["value"] <= 0) | (data["value"] < ZERO_FLOOR * peak)
    shown = data[~zero]
    if shown.empty:
        return no_data(ax, f"Jacobian spectra of layer {layer}", "singular value σ of J_t")
    steps = np.sort(shown["step"].unique()).astype(float)
    stats = _log_box_stats([shown.loc[shown["step"] == s, "value"].to_numpy(float) for s in steps])
    step_scale(ax, probed)  # first: the box widths depend on the scale
    ax.set_autoscalex_on(True)  # the boxes, not step_scale's left end at 0, set the range
    ax.bxp(
        stats,
        positions=steps,
        widths=_box_widths(ax, steps),
        patch_artist=True,
        boxprops={"facecolor": sns.color_palette(PALETTE)[0]},
        flierprops={"markersize": 2},
        medianprops={"color": "0.1"},
        manage_ticks=False,
    )
    if ax.get_xscale() == "linear":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # steps are whole
    log_axis(ax, "y")
    values = shown["value"].to_numpy(float)
    low = min(min(s["whislo"] for s in stats), 1.0)
    high = max(values.max(), 1.0)
    pad = (high / low) ** 0.05
    ax.set_ylim(low / pad, high * pad)
    below, notes = values[values < ax.get_ylim()[0]], []  # the axis drawn, not the whisker
    if zero.any():
        notes.append(_zero_note(data.loc[zero, "step"], len(data)))
    if len(below):
        notes.append(f"{len(below)} of {len(data)} σ below\nthe axis, to {below.min():.3g}")
    if len(steps) < probed.nunique():
        notes.append(f"{len(steps)} of {probed.nunique()} probe\nsteps shown")
    if notes:
        _side_note(ax, "\n".join(notes))
    ax.axhline(1.0, color="0.2", linestyle="--", linewidth=1, label="σ = 1")
    legend_outside(ax)
    k = int(data["index"].max()) + 1 if "index" in data else None
    units = _hidden_size(df, layer)
    top = "" if k is None else ("all " if k == units else "top ") + f"{k} "
    of = f" (of {units})" if units and k and k < units else ""
    ax.set(
        xlabel="training step",
        ylabel=f"{top}singular values σ of J_t{of}",
        title=f"{top}σ of J_t = diag(φ′) W_hh, layer {layer}",
    )
    return ax


def _hidden_size(df: pd.DataFrame, layer: int) -> int | None:
    """Return the layer's hidden size H: how many W_hh eigenvalues a step records; else None."""
    rows = _quantity(df, "w_hh_eigenvalue")
    rows = rows[rows["layer"] == layer] if "layer" in rows else rows
    return int(rows.groupby("step").size().max()) if "step" in rows and len(rows) else None


def _zero_note(steps: pd.Series, total: int) -> str:
    """Return "n of total σ ≈ 0 …" with how many at each step, for the zeros' ``steps`` (n,)."""
    counts = [f"{n} at {int(s)}" for s, n in steps.value_counts().sort_index().items()]
    counts[0] = counts[0].replace(" at ", " at step ")
    lines = [", ".join(counts[i : i + 2]) for i in range(0, len(counts), 2)]
    floor = f"1e{math.log10(ZERO_FLOOR):.0f}"
    return f"{len(steps)} of {total} σ ≈ 0 (below\n{floor} σ_max), not drawn:\n" + ",\n".join(lines)


def _log_box_stats(groups: list[np.ndarray]) -> list[dict]:
    """Return box-plot statistics of log₁₀ of each positive group, back in its own units."""
    stats = boxplot_stats([np.log10(g) for g in groups])
    for box in stats:
        for key in ("mean", "med", "q1", "q3", "cilo", "cihi", "whislo", "whishi", "fliers"):
            box[key] = 10.0 ** np.asarray(box[key])
    return stats


def _box_widths(ax: Axes, steps: np.ndarray) -> np.ndarray:
    """Return box widths of 0.6 × the gap to the nearest other step (at most the median gap),
    as drawn on ``ax``'s x scale (linear, or symlog for log-spaced steps)."""
    if len(steps) < 2:
        return np.full(len(steps), 0.6)
    scale = ax.xaxis.get_transform()
    x = scale.transform(steps)
    gaps = np.diff(x)
    near = np.minimum(np.r_[gaps[:1], gaps], np.r_[gaps, gaps[-1:]]).clip(max=np.median(gaps))
    back = scale.inverted()
    return back.transform(x + 0.3 * near) - back.transform(x - 0.3 * near)


def _side_note(ax: Axes, text: str) -> None:
    """Write a grey note right of ``ax``, at its foot, clear of the data and of a legend."""
    ax.text(1.02, 0, text, va="bottom", fontsize="x-small", color=NOTE_COLOR,
            transform=ax.transAxes)  # fmt: skip


def _lines_per_layer(data: pd.DataFrame, y: str, ax: Axes, marker: str | None = None) -> None:
    """Draw ``y`` against training step, one colour-blind-safe line per layer, legend outside."""
    data = data.assign(layer=[f"layer {int(v)}" for v in data["layer"]])
    sns.lineplot(
        data=data, x="step", y=y, hue="layer", palette=PALETTE, marker=marker, errorbar=None, ax=ax
    )
    legend_outside(ax)


def plot_lyapunov(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Return λ₁ over training, one line per layer, 0 marked: the exponent of QR index 0, the
    largest once the probe's frame has converged."""
    ax = ensure_axes(ax)
    data = finite_rows(df, ["step", "layer", "index", "exponent"])
    data = data[data["index"] == 0] if not data.empty else data
    if data.empty:
        return no_data(ax, "Lyapunov exponents", "λ₁ (nats per time step)")
    _lines_per_layer(data, "exponent", ax, marker="o")
    ax.axhline(0.0, color="0.2", linestyle="--", linewidth=1)
    step_scale(ax, data["step"])
    ax.set(
        xlabel="training step",
        ylabel="λ₁ (nats per time step)",
        title="Lyapunov exponent λ₁ (QR index 0)",
    )
    return ax


def plot_lyapunov_spectrum(
    df: pd.DataFrame,
    *,
    steps: Sequence[int] | None = None,
    layer: int | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Return the Lyapunov exponents by QR index at ``steps`` (default first, mid, last).

    The probe leaves them in QR order, descending only once its frame has converged; exponents
    of −∞ cannot be drawn, a note counts them. Indices are named as such ("index 1 above index
    0 (λ₁)"), not λ_i: the λ₁ of the diagnosis and of the λ₁ panel is index 0, and a note's
    "λ_1 above λ_0" named index 1 with the symbol the figure gives index 0."""
    ax = ensure_axes(ax)
    data = finite_rows(df, ["step", "layer", "index", "exponent"])
    if data.empty:
        return no_data(ax, "Lyapunov spectrum", YLABEL_SPECTRUM)
    layer = int(data["layer"].min()) if layer is None else layer
    data = data[data["layer"] == layer]
    steps = list(steps) if steps is not None else list(thin_steps(data["step"], 3))
    data = data[data["step"].isin(steps)]
    if data.empty:
        return no_data(ax, f"Lyapunov spectrum of layer {layer}", YLABEL_SPECTRUM)
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
    legend_outside(ax)
    cut = df[(df["layer"] == layer) & df["step"].isin(steps) & (df["exponent"] == -np.inf)]
    counts = cut.groupby("step").size().items()
    notes = [f"step {int(s)}: {n} exponents\n= −∞ (not drawn)" for s, n in counts]
    for step, rows in data.groupby("step"):  # a later index above index 0: order not settled
        first, later = rows.loc[rows["index"] == 0, "exponent"], rows[rows["index"] > 0]
        if len(first) and len(later):
            top = later.loc[later["exponent"].idxmax()]
            excess = float(top["exponent"]) - float(first.iloc[0])
            if excess > UNSETTLED:
                where = f"step {int(step)}: index {int(top['index'])}\nabove index 0 (λ₁)"
                notes.append(f"{where}\nby {excess:.2g}: QR order\nnot settled")
    if notes:
        _side_note(ax, "\n".join(notes))
    ax.set(
        xlabel="QR index i (descending once converged)",
        ylabel=YLABEL_SPECTRUM,
        title=f"Lyapunov spectrum, layer {layer}",
    )
    return ax


def plot_eigenvalues(df: pd.DataFrame, *, layer: int | None = None, ax: Axes | None = None) -> Axes:
    """Return W_hh's eigenvalues in the complex plane at the first and last step, unit circle.

    The first step's rings are drawn over the last step's crosses and the circle, so an init
    that puts every λ at one point (identity: all λ = 1) stays visible; its label says so. The
    legend stands outside the axes, clear of eigenvalues far from the circle."""
    ax = ensure_axes(ax)
    data = finite_rows(_quantity(df, "w_hh_eigenvalue"), ["step", "layer", "value", "imag"])
    if data.empty:
        return no_data(ax, "W_hh eigenvalues", "Im λ")
    layer = int(data["layer"].min()) if layer is None else layer
    data = data[data["layer"] == layer]
    if data.empty:
        return no_data(ax, f"W_hh eigenvalues of layer {layer}", "Im λ")
    first, last = data["step"].min(), data["step"].max()
    circle = np.linspace(0, 2 * np.pi, 256)
    ax.plot(np.cos(circle), np.sin(circle), color="0.3", linewidth=1, label="|λ| = 1", zorder=1)
    colours = sns.color_palette(PALETTE, 2)
    rows = data[data["step"] == first]
    label = "init (step 0, before any update)" if first == 0 else f"first (step {int(first)})"
    point = _one_point(rows["value"].to_numpy(float) + 1j * rows["imag"].to_numpy(float))
    if point is not None:
        label += f": all {len(rows)} λ = {point}"
    ax.scatter(
        rows["value"],
        rows["imag"],
        s=16 if point is None else 40,  # one point: a big ring, the crosses beneath it show
        facecolors="none",
        edgecolors=colours[0],
        linewidths=0.8 if point is None else 1.2,
        marker="o",
        label=label,
        zorder=3,
    )
    if last != first and last > 1:  # step 1 records the weights before any update
        rows = data[data["step"] == last]
        ax.scatter(
            rows["value"],
            rows["imag"],
            s=14,
            color=colours[1],
            marker="x",
            label=f"end (step {int(last)})",
            zorder=2,
        )
    ax.set_aspect("equal", adjustable="datalim")
    ax.axhline(0, color="0.8", linewidth=0.5, zorder=0)
    ax.axvline(0, color="0.8", linewidth=0.5, zorder=0)
    legend_outside(ax)
    ax.set(xlabel="Re λ", ylabel="Im λ", title=f"W_hh eigenvalues, layer {layer}")
    return ax


def _one_point(z: np.ndarray) -> str | None:
    """Return the value shared by all of several eigenvalues ``z`` (n,), as text; else None."""
    if len(z) < 2 or not np.allclose(z, z[0], rtol=0, atol=1e-6 * max(1.0, abs(z[0]))):
        return None
    return f"{z[0].real:.3g}" if abs(z[0].imag) < 1e-9 else f"{z[0]:.3g}".strip("()")


def plot_hidden_health(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Return saturated (tanh), inactive and dead (ReLU) unit fractions over training."""
    ax = ensure_axes(ax)
    columns = [c for c in ("saturation", "inactive", "dead_fraction") if c in df.columns]
    data = finite_rows(df, ["step", "layer"])
    if data.empty or not columns:
        return no_data(ax, "hidden-state health", "fraction of units")
    long = data.melt(id_vars=["step", "layer"], value_vars=columns, var_name="quantity")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long[np.isfinite(long["value"])]
    if long.empty:
        return no_data(ax, "hidden-state health", "fraction of units")
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
    legend_outside(ax)
    ax.set(xlabel="training step", ylabel="fraction of units", title="hidden-unit health")
    return ax


def plot_participation_ratio(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Return the participation ratio (effective dimensionality of h) over training per layer."""
    ax = ensure_axes(ax)
    data = finite_rows(df, ["step", "layer", "participation_ratio"])
    if data.empty:
        return no_data(ax, "participation ratio", "participation ratio (dimensions)")
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
    ax = ensure_axes(ax)
    data = finite_rows(df, ["step", "grad_norm_pre_clip"], positive="grad_norm_pre_clip")
    if data.empty:
        return no_data(ax, "gradient norms", "global gradient norm")
    data = data.sort_values("step")
    colours = sns.color_palette(PALETTE, 3)
    label = "before clip" if clipping else "‖∇θ L‖"
    ax.plot(data["step"], data["grad_norm_pre_clip"], color=colours[0], lw=1, label=label)
    log_if_spans(ax, data["grad_norm_pre_clip"].to_numpy(float))
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


def _curve(
    df: pd.DataFrame,
    column: str,
    *,
    evals: pd.DataFrame | None,
    baseline: float | None,
    ylabel: str,
    ax: Axes | None,
) -> Axes:
    """Return ``column`` over training: batch values (raw and smoothed), validation, baseline.

    Log y when the values span decades; else, when the warm-up's peak would squeeze the rest
    of training into the foot of a linear axis, the axis ends above the later values and the
    baseline (:func:`_warm_up_limits`), and a note says which steps reach above it."""
    ax = ensure_axes(ax)
    data = finite_rows(df, ["step", column]).sort_values("step") if not df.empty else df
    bad = _nonfinite_steps(df, column)
    held = finite_rows(evals, ["step", column]) if evals is not None else pd.DataFrame()
    if data.empty and held.empty:
        return no_data(ax, column, ylabel)
    colours = sns.color_palette(PALETTE, 3)
    points = [f[["step", column]] for f in (data, held) if not f.empty]
    if not data.empty:
        window = max(1, len(data) // 50)
        smooth = data[column].rolling(window, min_periods=1).mean()
        faint = 0.3 if window > 1 else 1.0
        ax.plot(data["step"], data[column], color=colours[0], alpha=faint, lw=0.8, label="batch")
        if window > 1:
            ax.plot(
                data["step"], smooth, color=colours[0], lw=1.5, label=f"batch, mean of {window}"
            )
    if not held.empty:
        ax.plot(held["step"], held[column], color=colours[1], marker="o", ms=4, label="validation")
    if baseline is not None and not math.isfinite(baseline):
        baseline = None
    if baseline is not None:
        ax.axhline(baseline, color=colours[2], linestyle="--", lw=1.2, label="baseline")
    if len(bad):
        ax.axvline(bad[0], color="0.3", linestyle=":", lw=1.2, label=f"first non-finite {column}")
    drawn = pd.concat(points, ignore_index=True)
    steps, values = drawn["step"].to_numpy(float), drawn[column].to_numpy(float)
    log_if_spans(ax, values if baseline is None else np.r_[values, baseline])
    limits = _warm_up_limits(steps, values, baseline)
    if ax.get_yscale() == "linear" and limits is not None:
        ax.set_ylim(*limits)
        over = np.unique(steps[values > limits[1]])
        if len(over):
            span = f"{over[0]:.0f}–{over[-1]:.0f}" if len(over) > 1 else f"{over[0]:.0f}"
            where = f"{len(over)} steps in {span}" if len(over) > 1 else f"step {span}"
            _side_note(ax, f"{column} above the axis\nat {where},\nto {values.max():.3g}")
    legend_outside(ax)
    ax.set(xlabel="training step", ylabel=ylabel, title=column)
    return ax


def _warm_up_limits(
    steps: np.ndarray, values: np.ndarray, baseline: float | None, *, warm_up: float = 0.1
) -> tuple[float, float] | None:
    """Return y limits for the ``values`` (n,) at ``steps`` (n,) after the first ``warm_up``
    of training, all values' minimum and the ``baseline`` (margins 5 % below, 10 % above), when
    the later values fill less than a third of the range all of them span; else None."""
    cut = steps.min() + warm_up * (steps.max() - steps.min())
    later = values[steps >= cut]
    if steps.max() <= steps.min() or not len(later):
        return None
    kept = np.r_[later, values.min()] if baseline is None else np.r_[later, values.min(), baseline]
    low, top = float(kept.min()), float(kept.max())
    if top - low >= (values.max() - low) / 3:
        return None
    return low - 0.05 * (top - low), top + 0.1 * (top - low)  # room above the baseline


def _nonfinite_steps(df: pd.DataFrame, column: str) -> np.ndarray:
    """Return the sorted steps whose ``column`` is NaN or ±inf (e.g. a diverging loss)."""
    if df.empty or not {"step", column} <= set(df.columns):
        return np.array([])
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
    steps = pd.to_numeric(df["step"], errors="coerce").to_numpy(float)
    return np.sort(steps[~np.isfinite(values) & np.isfinite(steps)])


def _quantity(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if df.empty or "quantity" not in df.columns:
        return df.iloc[0:0]
    return df[df["quantity"] == name]
