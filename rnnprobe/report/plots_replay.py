r"""Figures of one replayed training step: pure functions ``plot_x(df, *, ax=None) -> Axes``.

They take the tidy tables of a replay (shaped like the store's ``adjoints``, ``reach``,
``spectra``, ``lyapunov`` and ``steps``/``events`` tables, or the per-unit frames of
:mod:`rnnprobe.report.replay`), draw on ``ax`` (a new figure when None) and return it; missing or
non-finite data gives a panel that says so. :func:`plot_panel_grid` lays such panels out on one
figure of the report, :func:`figure_png` turns it into PNG bytes. Conventions as in
:mod:`rnnprobe.core.capture`: δ_t = ∂L/∂h_t, g_t = φ'(a_t) ⊙ δ_t, step t's share of ∇W_hh is
‖g_tᵀ h_{t−1}‖_F, J_t = diag(φ'(a_t)) W_hh.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
from numpy.typing import ArrayLike

from rnnprobe.report import plots_gradients, plots_training
from rnnprobe.report.plots import PALETTE

__all__ = [
    "Panel",
    "figure_png",
    "note",
    "plot_panel_grid",
    "plot_run_until",
    "plot_state_norms",
    "plot_step_adjoints",
    "plot_step_jacobian_spectrum",
    "plot_step_lyapunov",
    "plot_step_reach",
    "plot_unit_adjoints",
    "plot_unit_gradients",
    "plot_weight_grad_shares",
]

Panel = Callable[[Axes], object]  # draws one panel of a figure on the axes it is given


def plot_step_adjoints(
    adjoints: pd.DataFrame, *, cuts: Sequence[int] = (), ax: Axes | None = None
) -> Axes:
    """Return ‖δ_t‖ (all paths, solid) and its direct part ‖ε_t‖ (dashed) over t, per layer.

    ``cuts``: the time steps where a truncated-BPTT segment starts (dotted lines).
    """
    ax = _axes(ax)
    data = _finite(adjoints, ["layer", "t", "adjoint_norm"])
    if data.empty:
        return _missing(ax, adjoints, "adjoint_norm", "adjoint norms ‖∂L/∂h_t‖", "‖∂L/∂h_t‖")
    layers = sorted(data["layer"].unique())
    norms = data["adjoint_norm"].to_numpy(float)
    scale = _scale(norms)
    for colour, layer in zip(sns.color_palette(PALETTE, len(layers)), layers, strict=True):
        one = data[data["layer"] == layer].sort_values("t")
        ax.plot(
            one["t"], scale(one["adjoint_norm"]), color=colour, lw=1.8, label=f"layer {layer}: δ_t"
        )
        if "direct_norm" in one:
            ax.plot(
                one["t"],
                scale(one["direct_norm"]),
                color=colour,
                lw=1,
                ls="--",
                label=f"layer {layer}: direct part ε_t",
            )
    for cut in cuts:
        ax.axvline(cut - 0.5, color="0.5", ls=":", lw=1)
    if len(cuts):
        ax.plot([], [], color="0.5", ls=":", lw=1, label="BPTT cut")
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))  # no offset text above the axis
    if scale is _identity:
        _log_if_positive(ax, norms)  # the axis follows δ_t: a vanishing direct part may leave it
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="time step t",
        ylabel=_scaled_label(scale, "‖∂L/∂h_t‖, batch mean"),
        title="adjoint norm along the sequence",
    )
    _legend_outside(ax)
    return ax


def plot_state_norms(states: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Return ‖h_t‖ (batch mean) over t per layer, and where h_t stops being finite (dotted).

    ``states`` has columns ``layer``, ``t``, ``norm``; NaN or inf marks a non-finite h_t.
    """
    ax = _axes(ax)
    if states is None or states.empty:
        return _no_data(ax, "hidden states", "‖h_t‖")
    layers = sorted(states["layer"].unique())
    scale = _scale(states["norm"].to_numpy(float))
    for colour, layer in zip(sns.color_palette(PALETTE, len(layers)), layers, strict=True):
        one = states[states["layer"] == layer].sort_values("t")
        norms = one["norm"].to_numpy(float)
        good = np.isfinite(norms)
        ax.plot(one["t"][good], scale(norms[good]), color=colour, lw=1.8, label=f"layer {layer}")
        if not good.all():
            first = int(one["t"].to_numpy()[~good][0])
            ax.axvline(first - 0.5, color=colour, ls=":", lw=1.5,
                       label=f"layer {layer}: not finite from t = {first}")  # fmt: skip
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
    if scale is _identity:
        _log_if_positive(ax, states["norm"].to_numpy(float))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="time step t",
        ylabel=_scaled_label(scale, "‖h_t‖, batch mean"),
        title="hidden state along the sequence",
    )
    _legend_outside(ax)
    return ax


def plot_weight_grad_shares(
    adjoints: pd.DataFrame, *, top: int = 3, ax: Axes | None = None
) -> Axes:
    """Return step t's share of ∇W_hh, ‖g_tᵀ h_{t−1}‖_F, over t per layer; the ``top``
    largest marked with their t."""
    ax = _axes(ax)
    data = _finite(adjoints, ["layer", "t", "grad_w_hh_norm"])
    if data.empty:
        return _missing(
            ax, adjoints, "grad_w_hh_norm", "per-step shares of ∇W_hh", "‖g_tᵀ h_{t−1}‖_F"
        )
    if not (data["grad_w_hh_norm"] > 0).any():
        return note(ax, "∇W_hh is 0: at every step φ′ = 0 wherever δ_t ≠ 0", "‖g_tᵀ h_{t−1}‖_F")
    layers = sorted(data["layer"].unique())
    colours = sns.color_palette(PALETTE, len(layers))
    width = 0.8 / len(layers)
    for i, (colour, layer) in enumerate(zip(colours, layers, strict=True)):
        one = data[data["layer"] == layer].sort_values("t")
        x = one["t"].to_numpy(float) + (i - (len(layers) - 1) / 2) * width
        ax.bar(x, one["grad_w_hh_norm"], width=width, color=colour, label=f"layer {layer}")
        largest = one[one["grad_w_hh_norm"] > 0].nlargest(top, "grad_w_hh_norm")
        for _, row in largest.iterrows():
            ax.annotate(
                f"t={int(row['t'])}",
                (row["t"] + (i - (len(layers) - 1) / 2) * width, row["grad_w_hh_norm"]),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                rotation=90,
                fontsize="small",
            )
    tallest = float(data["grad_w_hh_norm"].max())
    if tallest > 0:
        ax.set_ylim(0, tallest * 1.25)  # room for the labels
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))  # no offset text above the axis
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="time step t",
        ylabel="‖g_tᵀ h_{t−1}‖_F (sum over the batch)",
        title="step t's contribution to ∇W_hh",
    )
    _legend_outside(ax)
    return ax


def plot_step_jacobian_spectrum(
    spectra: pd.DataFrame, *, layer: int | None = None, ax: Axes | None = None
) -> Axes:
    """Return the singular values σ_i of the sampled J_t (thin lines) and of W_hh (bold) by
    rank i, log scale, σ = 1 dashed."""
    ax = _axes(ax)
    data = _finite(spectra, ["layer", "quantity", "index", "value"])
    data = data[data["value"] > 0] if not data.empty else data
    layer = int(data["layer"].min()) if layer is None and not data.empty else (layer or 0)
    data = data[data["layer"] == layer] if not data.empty else data
    jac = data[data["quantity"] == "jacobian_singular"] if not data.empty else data
    w = data[data["quantity"] == "w_hh_singular"].sort_values("index") if not data.empty else data
    if jac.empty and w.empty:
        return _no_data(ax, f"Jacobian spectrum of layer {layer}", "singular value σ_i")
    top = max(float(data["value"].max()), 1.0)
    low = top * 1e-8  # the directions that grow or barely shrink are what matters here
    colour = sns.color_palette(PALETTE)[0]
    samples = sorted(jac["sample"].unique()) if "sample" in jac else []
    for n, sample in enumerate(samples):
        one = jac[jac["sample"] == sample].sort_values("index")
        label = f"J_t = diag(φ′(a_t)) W_hh at {len(samples)} sampled (t, b)" if n == 0 else None
        ax.plot(one["index"], one["value"], color=colour, lw=0.8, marker=".", ms=3, alpha=0.6,
                label=label)  # fmt: skip
    if not w.empty:
        ax.plot(w["index"], w["value"], color="0.1", lw=2, label="W_hh")
    ax.axhline(1.0, color="0.3", ls="--", lw=1, label="σ = 1")
    ax.set_yscale("log")
    _plain_ticks(ax.yaxis)
    ax.set_ylim(low / 2, top * 2)
    if jac.empty or jac["value"].max() < low:  # every sampled J_t (nearly) 0: say so
        note(ax, "every sampled J_t has σ < 1e-8·σ_max: φ′ ≈ 0 (saturated or inactive units)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="rank i (0 = largest)",
        ylabel="singular value σ_i",
        title=f"one-step Jacobian spectrum, layer {layer}",
    )
    _legend_outside(ax)
    return ax


def plot_unit_adjoints(units: pd.DataFrame, *, layer: int = 0, ax: Axes | None = None) -> Axes:
    """Return a heatmap of mean_b |δ_t,i| over time step t (x) and unit i (y), log colours.

    ``units`` has columns ``t``, ``unit``, ``value``; the units are drawn in the order they
    first appear (the caller's ranking, top row first).
    """
    ax = _axes(ax)
    data = _finite(units, ["t", "unit", "value"])
    if data.empty or not (data["value"] > 0).any():
        return _missing(ax, units, "value", f"|∂L/∂h_t,i| of layer {layer}", "unit i")
    order = list(dict.fromkeys(units["unit"]))
    grid = data.pivot_table(index="unit", columns="t", values="value").reindex(order)
    values = grid.to_numpy(float)
    z = np.ma.masked_where(~(np.isfinite(values) & (values > 0)), values)
    lo, hi = float(z.min()), float(z.max())
    hi = hi if hi > lo else lo * 10
    ax.set_facecolor("0.85")  # cells left out of the colour scale: exactly 0, or not finite
    t = grid.columns.to_numpy(float)
    mesh = ax.pcolormesh(
        np.append(t - 0.5, t[-1] + 0.5),
        np.arange(len(order) + 1),
        z,
        norm=LogNorm(vmin=lo, vmax=hi),
        cmap="viridis",
        shading="flat",
    )
    bar = ax.figure.colorbar(mesh, ax=ax, label="|∂L/∂h_t,i|, batch mean (grey: 0)")
    _plain_ticks(bar.ax.yaxis)
    if hi < 100 * lo:  # under two decades: a few plain ticks, not the decades alone
        bar.ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.set_yticks(np.arange(len(order)) + 0.5, [str(u) for u in order], fontsize="small")
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="time step t",
        ylabel="unit i (largest ∇W_hh row first)",
        title=f"adjoint by unit and step, layer {layer}",
    )
    return ax


def plot_unit_gradients(units: pd.DataFrame, *, layer: int = 0, ax: Axes | None = None) -> Axes:
    """Return horizontal bars of ‖∂L/∂W_hh[i, :]‖ per unit i, largest on top, each labelled
    with its share of ‖∇W_hh‖_F² (``units``: columns ``unit``, ``row_norm``, ``share``)."""
    ax = _axes(ax)
    data = _finite(units, ["unit", "row_norm"])
    if data.empty:
        return _missing(ax, units, "row_norm", f"∇W_hh rows of layer {layer}", "unit i")
    if not (data["row_norm"] > 0).any():
        return note(ax, f"∇W_hh of layer {layer} is 0: no unit's row gets a gradient", "unit i")
    y = np.arange(len(data))
    ax.barh(y, data["row_norm"], color=sns.color_palette(PALETTE)[1])
    ax.set_yticks(y, [str(u) for u in data["unit"]], fontsize="small")
    ax.invert_yaxis()
    if "share" in data:
        for i, share in enumerate(data["share"]):
            if not share >= 0.005:  # a bar without a label is below 1 %
                continue
            ax.annotate(
                f"{share:.0%}",
                (data["row_norm"].iloc[i], i),
                textcoords="offset points",
                xytext=(3, 0),
                va="center",
                fontsize="small",
            )
    longest = float(data["row_norm"].max())
    if longest > 0:
        ax.set_xlim(0, longest * 1.2)  # room for the labels
    ax.xaxis.set_major_formatter(FuncFormatter(_tick))  # no offset text over the label
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.set(
        xlabel="‖∂L/∂W_hh[i, :]‖ (label: share of ‖∇W_hh‖_F², if ≥ 1 %)",
        ylabel="unit i",
        title=f"units whose recurrent weights get the gradient, layer {layer}",
    )
    return ax


def plot_run_until(
    steps: pd.DataFrame,
    events: pd.DataFrame | None = None,
    *,
    step: int,
    value: str = "grad_norm_pre_clip",
    ax: Axes | None = None,
) -> Axes:
    """Return ``value`` (pre-clip gradient norm or loss) over training up to ``step`` and a
    little after, the replayed step, the first warning and the non-finite steps marked."""
    labels = {"grad_norm_pre_clip": "gradient norm ‖∇θ L‖ before clipping", "loss": "loss"}
    ax = _axes(ax)
    label = labels.get(value, value)
    if steps.empty or value not in steps:
        return _no_data(ax, label, label)
    data = steps.sort_values("step")
    values = pd.to_numeric(data[value], errors="coerce").to_numpy(float)
    finite = np.isfinite(values)
    colours = sns.color_palette(PALETTE, 4)
    ax.plot(data["step"][finite], values[finite], color=colours[0], lw=1, marker=".", ms=3)
    events = events if events is not None else pd.DataFrame(columns=["step", "kind"])
    warned = events[events["kind"] == "warning"]["step"] if "kind" in events else []
    for n, at in enumerate(warned):
        ax.axvline(at, color=colours[1], ls="--", lw=1.5, label="first warning" if n == 0 else None)
    here = (data["step"] == step).to_numpy() & finite
    if here.any():
        ax.plot(step, values[here][-1], "o", ms=9, mfc="none", mec="0.1", mew=1.5,
                label=f"replayed step {step}")  # fmt: skip
    else:
        ax.axvline(step, color="0.1", lw=1, ls=":", label=f"replayed step {step} (not finite)")
    bad = data["step"][~finite]
    if len(bad):
        top = np.nanmax(values[finite]) if finite.any() else 1.0
        ax.plot(bad, np.full(len(bad), top), "x", color=colours[3], label="not finite (no value)")
    _log_if_positive(ax, values[finite])
    ax.set(xlabel="training step", ylabel=label, title=f"{label.split(' ‖')[0]} during the run")
    _legend_outside(ax)
    return ax


def plot_step_reach(reach: pd.DataFrame | None, *, layer: int = 0, ax: Axes | None = None) -> Axes:
    """Return the gradient reach of the step, ‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖ against s − t, or a
    note that no loss term reaches back at all (``reach``: this layer's rows of the table)."""
    ax = _axes(ax)
    title = f"gradient reach, layer {layer}, whole batch"
    ax = plots_gradients.plot_gradient_reach(reach, title=title, ax=ax)
    back = reach[reach["distance"] > 0] if reach is not None and not reach.empty else None
    if back is not None and not (back["norm"] > 0).any():
        note(ax, "no loss term reaches an earlier step: ‖∂ℓ_s/∂h_t‖ = 0 for every t < s")
    return ax


def plot_step_lyapunov(
    lyapunov: pd.DataFrame | None, *, layer: int = 0, ax: Axes | None = None
) -> Axes:
    """Return the Lyapunov spectrum of ``layer``, cut off 10 below its largest exponent:
    exponents far below (dead ReLU directions read as ln(tiny) per step) would flatten the ones
    that decide growth. All −inf gives a note instead."""
    ax = _axes(ax)
    values = np.array([])
    if lyapunov is not None and not lyapunov.empty:
        values = lyapunov[lyapunov["layer"] == layer]["exponent"].to_numpy(float)
    if len(values) and (values == -np.inf).all():
        text = "every exponent = −∞: φ′ = 0 cuts every direction (saturated tanh or inactive ReLU)"
        title = f"Lyapunov spectrum, layer {layer}"
        note(ax, text, plots_training.YLABEL_SPECTRUM).set_title(title)
        return ax
    plots_training.plot_lyapunov_spectrum(lyapunov, layer=layer, ax=ax)
    values = values[np.isfinite(values)]
    if len(values) and values.min() < values.max() - 10:
        ax.set_ylim(values.max() - 10, max(values.max(), 0) + 0.5)
        ax.set_title(ax.get_title() + " (down to 10 below the largest)")  # λ₁ is index 0
    return ax


# an axes' width and height, the room left of it for tick labels and right of it for its
# legend or colour bar (inches): fixed margins, since a layout engine doubles the drawing time
PANEL_INCHES, HEIGHT_INCHES, LEFT_INCHES, RIGHT_INCHES = 4.4, 3.2, 1.1, 2.3
DPI = 80  # of the report's PNGs


def plot_panel_grid(panels: Sequence[Panel], *, columns: int) -> Figure:
    """Return a figure of ``panels`` drawn on a grid ``columns`` wide, row by row; a panel that
    fails says why instead, and the cells left over stay blank."""
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    width = (PANEL_INCHES + LEFT_INCHES + RIGHT_INCHES) * columns
    height = (HEIGHT_INCHES + 1.1) * rows
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=LEFT_INCHES / width,
        right=1 - RIGHT_INCHES / width,
        bottom=0.6 / height,
        top=1 - 0.45 / height,
        wspace=(LEFT_INCHES + RIGHT_INCHES) / PANEL_INCHES,
        hspace=1.1 / HEIGHT_INCHES,
    )
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, draw in zip(axes, panels, strict=False):
        try:
            draw(ax)
        except Exception as error:  # a report must still come out; the panel names the failure
            ax.clear()
            ax.text(0.5, 0.5, f"could not draw:\n{type(error).__name__}: {error}"[:200],
                    ha="center", va="center", transform=ax.transAxes, wrap=True)  # fmt: skip
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    return fig


def figure_png(fig: Figure) -> bytes:
    """Return ``fig`` as PNG bytes at the report's DPI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")  # no legend cut off
    return buffer.getvalue()


# -- helpers: each draws differently from its namesake in rnnprobe.report.plots (see there) ---
def _axes(ax: Axes | None) -> Axes:
    # not plots.ensure_axes: a figure outside pyplot (nothing to close), 6 × 4 in, not 6.4 × 4.2
    return Figure(figsize=(6, 4)).add_subplot() if ax is None else ax


def _finite(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Return the rows of ``df`` with every numeric column of ``columns`` finite.

    Not :func:`~rnnprobe.report.plots.finite_rows`: that one casts every column to float (a
    text column such as ``quantity`` turns NaN and drops every row; ``layer`` 0 reads 0.0)."""
    if df is None or df.empty or not set(columns) <= set(df.columns):
        return pd.DataFrame(columns=columns)
    keep = np.ones(len(df), dtype=bool)
    for column in columns:
        if pd.api.types.is_numeric_dtype(df[column]):
            keep &= np.isfinite(pd.to_numeric(df[column], errors="coerce").to_numpy(float))
    return df[keep]


def _log_if_positive(ax: Axes, values: np.ndarray) -> None:
    """Use a log y axis when the finite positive values span more than a decade (zeros are
    then left out of the line).

    Not :func:`~rnnprobe.report.plots.log_if_spans` (1.5 decades, no zero allowed, no limits)."""
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() > 10 * values.min():
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis)
        ax.set_ylim(values.min() / 10, values.max() * 10)


HUGE = 1e300  # a log axis overflows laying out its ticks near the largest float (1.8e308)


def _scale(values: np.ndarray) -> Callable[[ArrayLike], ArrayLike]:
    """Return the function to apply to ``values`` before plotting: log₁₀ when some finite
    value exceeds HUGE (drawn then on a linear axis), else the identity."""
    finite = values[np.isfinite(values)]
    return _log10 if len(finite) and np.abs(finite).max() > HUGE else _identity


def _identity(values: ArrayLike) -> ArrayLike:
    return values


def _log10(values: ArrayLike) -> np.ndarray:
    with np.errstate(divide="ignore"):  # log₁₀ 0 = −inf: left out of the line
        return np.log10(np.asarray(values, dtype=float))


def _scaled_label(scale: Callable[[ArrayLike], ArrayLike], label: str) -> str:
    return f"log₁₀ {label}" if scale is _log10 else label


def _plain_ticks(axis: Axis) -> None:
    """Label a log axis 1e-05, 0.01, 1, 100, 1e+08: plain text (mathtext parsing costs seconds
    per report), minor ticks unlabelled.

    Not :func:`~rnnprobe.report.plots.log_axis`, which labels minor ticks 2 and 5 on a short
    axis and writes every tick ``{:g}``."""
    axis.set_major_formatter(FuncFormatter(_tick))
    axis.set_minor_formatter(NullFormatter())


def _tick(value: float, _: object = None) -> str:
    return f"{value:g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.3g}"


def _legend_outside(ax: Axes) -> None:
    # not plots.legend_outside: framed, in "small" type (that one: no frame, "x-small")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def note(ax: Axes, text: str, ylabel: str | None = None) -> Axes:
    """Write ``text`` across the middle of ``ax``, wrapped to fit; with ``ylabel``, the panel
    holds nothing else (its ticks go). Return ``ax``."""
    ax.text(0.5, 0.5, textwrap.fill(text, 42), ha="center", va="center", fontsize="small",
            transform=ax.transAxes, bbox={"facecolor": "white", "edgecolor": "0.7"})  # fmt: skip
    if ylabel is not None:
        ax.set(ylabel=ylabel, xticks=[], yticks=[])
    return ax


def _missing(ax: Axes, df: pd.DataFrame | None, column: str, what: str, ylabel: str) -> Axes:
    """Say why a panel is empty: values there but none finite, or no values at all."""
    if df is not None and column in df and len(df):
        return note(ax, f"{what}: not finite anywhere (NaN or inf)", ylabel)
    return _no_data(ax, what, ylabel)


def _no_data(ax: Axes, what: str, ylabel: str) -> Axes:
    # not plots.no_data: the boxed note of every other empty panel here, no title
    return note(ax, f"no data: {what}", ylabel)
