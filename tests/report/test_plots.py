"""Plot functions: pure, labelled, log where magnitudes span decades, and calm without data."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rnnprobe.records.schema import STANDARD_TABLES
from rnnprobe.records.store import load_run
from rnnprobe.report import plots, plots_gradients, plots_study, plots_training
from tests.support.records import write_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots") / "run"
    return load_run(write_run(path, decay=0.6, steps=60, seq_len=12, layers=2, clip="norm",
                              grad_growth=50.0))  # fmt: skip


def _ax():
    return Figure().subplots()


def _texts(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


def _check_labels(ax) -> None:
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


SUMMARY = pd.DataFrame(
    {
        "model.init_gain": [0.5, 0.5, 1.0, 1.0, 2.0, 2.0],
        "task.seq_len": [8, 24, 8, 24, 8, 24],
        "loss_ratio": [0.7, 1.0, 0.3, 0.32, 0.9, 0.92],
        "half_life": [1.0, 1.0, 35.0, 34.0, np.inf, np.inf],
        "decay_per_step_init": [0.5, 0.5, 0.98, 0.98, 1.3, 1.3],
        "seed": [0, 1, 0, 1, 0, 1],
        "predicted_decay": [0.51, 0.51, 1.0, 1.0, 1.33, 1.33],
    }
)


def _figures(run):
    t = run.table
    reach = t("reach")
    return {
        "adjoints": lambda ax: plots_gradients.plot_adjoint_heatmap(t("adjoints"), layer=1, ax=ax),
        "reach": lambda ax: plots_gradients.plot_gradient_reach(
            reach[reach["step"] == reach["step"].max()], ax=ax),
        "jacobian": lambda ax: plots_training.plot_jacobian_spectra(t("spectra"), ax=ax),
        "lyapunov": lambda ax: plots_training.plot_lyapunov(t("lyapunov"), ax=ax),
        "spectrum": lambda ax: plots_training.plot_lyapunov_spectrum(t("lyapunov"), ax=ax),
        "eigenvalues": lambda ax: plots_training.plot_eigenvalues(t("spectra"), ax=ax),
        "health": lambda ax: plots_training.plot_hidden_health(t("health"), ax=ax),
        "participation": lambda ax: plots_training.plot_participation_ratio(t("health"), ax=ax),
        "loss": lambda ax: plots_training.plot_loss(t("steps"), evals=t("evals"), baseline=2.0,
                                                    ax=ax),
        "metric": lambda ax: plots_training.plot_metric(t("steps"), evals=t("evals"), baseline=0.1,
                                                        metric="accuracy", ax=ax),
        "clipping": lambda ax: plots_training.plot_clipping(t("steps"), ax=ax),
        "phase": lambda ax: plots_study.plot_phase_diagram(SUMMARY, x="model.init_gain",
                                                           y="task.seq_len", ax=ax),
        "decay": lambda ax: plots_gradients.plot_decay_vs_mean_field(SUMMARY,
                                                                     hue="model.init_gain", ax=ax),
        "versus": lambda ax: plots_study.plot_measure_vs_axis(
            SUMMARY, x="model.init_gain", series={"init": "decay_per_step_init"},
            title="decay", ylabel="factor per step", ax=ax),
    }  # fmt: skip


FIGURES = [
    "adjoints", "reach", "jacobian", "lyapunov", "spectrum", "eigenvalues", "health",
    "participation", "loss", "metric", "clipping", "phase", "decay", "versus",
]  # fmt: skip


@pytest.mark.parametrize("name", FIGURES)
def test_figure_draws_labelled_axes_from_records(run, name):
    ax = _ax()
    assert _figures(run)[name](ax) is ax
    _check_labels(ax)
    assert "no data" not in _texts(ax)
    ax.figure.savefig(io.BytesIO(), format="png", dpi=40)


@pytest.mark.parametrize("name", FIGURES)
def test_figure_with_empty_tables_says_no_data(tmp_path, name):
    empty = load_run(write_run(tmp_path / "r", tables=()))
    figures = _figures(empty)
    figures["phase"] = lambda ax: plots_study.plot_phase_diagram(SUMMARY.iloc[0:0], x="a", ax=ax)
    figures["decay"] = lambda ax: plots_gradients.plot_decay_vs_mean_field(pd.DataFrame(), ax=ax)
    figures["versus"] = lambda ax: plots_study.plot_measure_vs_axis(
        pd.DataFrame(), x="a", series={"v": "v"}, title="t", ylabel="y", ax=ax)  # fmt: skip
    ax = figures[name](_ax())
    assert "no data" in _texts(ax)
    ax.figure.savefig(io.BytesIO(), format="png", dpi=40)


@pytest.mark.parametrize("table", ["adjoints", "reach", "spectra", "lyapunov", "health", "steps"])
def test_all_nan_values_say_no_data(run, table):
    frame = run.table(table).copy()
    for column in frame.columns:
        if column not in ("step", "layer", "t", "index", "quantity", "source", "distance"):
            frame[column] = np.nan
    draw = {
        "adjoints": plots_gradients.plot_adjoint_heatmap,
        "reach": plots_gradients.plot_gradient_reach,
        "spectra": plots_training.plot_jacobian_spectra, "lyapunov": plots_training.plot_lyapunov,
        "health": plots_training.plot_participation_ratio, "steps": plots_training.plot_clipping,
    }[table]  # fmt: skip
    assert "no data" in _texts(draw(frame, ax=_ax()))


def test_adjoint_heatmap_uses_log_colours_and_at_most_max_steps(run):
    ax = plots_gradients.plot_adjoint_heatmap(run.table("adjoints"), max_steps=20, ax=_ax())
    mesh = ax.collections[0]
    assert isinstance(mesh.norm, LogNorm)
    assert 10 <= mesh.get_array().shape[1] <= 20  # 60 recorded steps: every 4th, and the last
    assert "layer 0" in ax.get_title()


def test_gradient_reach_is_normalised_log_one_line_per_source(run):
    reach = run.table("reach")
    ax = plots_gradients.plot_gradient_reach(reach[reach["step"] == reach["step"].max()], ax=_ax())
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "s = 0" and labels[-1] == "s = 11"
    assert all(line.get_ydata()[0] == 1.0 for line in ax.lines)  # divided by ‖∂ℓ_s/∂h_s‖


def test_reach_one_line_per_configuration_label_with_given_legend_text():
    rows = [
        {"step": 1, "layer": 0, "source": 9, "distance": d, "norm": 3 * r**d, "label": f"gain {g}"}
        for g, r in ((2.0, 1.3), (0.5, 0.5))
        for d in range(10)
    ]
    ax = plots_gradients.plot_gradient_reach(pd.DataFrame(rows),
                                             labels={"gain 0.5": "gain 0.5: ×0.5"},
                                             ax=_ax())  # fmt: skip
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["gain 0.5: ×0.5", "gain 2.0"]  # numeric order, given text where known
    slope = np.diff(np.log(ax.lines[0].get_ydata()))
    assert np.allclose(slope, np.log(0.5))


def test_measure_against_an_axis_averages_seeds_with_error_bars():
    series = {"init": "decay_per_step_init"}
    ax = plots_study.plot_measure_vs_axis(SUMMARY, x="model.init_gain", series=series,
                                          reference=("predicted_decay", "√χ"),
                                          hline=(1.0, "no decay"), ax=_ax())  # fmt: skip
    means = ax.lines[0].get_ydata()
    assert np.allclose(means, [0.5, 0.98, 1.3])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "√χ" in labels and "no decay" in labels


def _visible_gaps(key: Line2D) -> list[tuple[float, float]]:
    """Return the gaps (points) of a dashed legend key that its centred marker leaves open."""
    x0, x1 = sorted(key.get_xdata())
    centre, half = (x0 + x1) / 2, key.get_markersize() / 2
    offset, pattern = key._dash_pattern
    gaps, at, k = [], x0 - offset, 0
    while at < x1:
        end = at + pattern[k % len(pattern)]
        if k % 2 and min(end, x1) - max(at, x0) > 0:
            for lo, hi in ((max(at, x0), min(end, x1, centre - half)),
                           (max(at, x0, centre + half), min(end, x1))):  # fmt: skip
                if hi - lo >= 1.0:  # a point or more: a gap one sees
                    gaps.append((lo, hi))
        at, k = end, k + 1
    return gaps


def test_legend_key_of_a_dashed_line_with_markers_shows_its_dashes():
    # init solid with circles, end dashed with squares: at the default key length the
    # square covered the dash pattern's one gap and "end" read as solid as "init"
    summary = SUMMARY.assign(decay_per_step_end=[0.6, 0.62, 0.9, 0.91, 1.1, 1.12])
    series = {"init (step 1)": "decay_per_step_init", "end (step 60)": "decay_per_step_end"}
    ax = plots_study.plot_measure_vs_axis(summary, x="model.init_gain", series=series, ax=_ax())
    ax.figure.canvas.draw()
    keys = [line for line in ax.get_legend().findobj(Line2D)
            if line.get_linestyle() == "--" and len(line.get_xdata()) == 2]  # fmt: skip
    assert len(keys) == 1 and _visible_gaps(keys[0])
    solid = plots.legend_outside  # a legend of plain lines keeps matplotlib's key length
    ax = _ax()
    ax.plot([0, 1], [0, 1], label="a")
    solid(ax)
    assert ax.get_legend().handlelength == plt.rcParams["legend.handlelength"]


def test_jacobian_spectra_mark_sigma_one_on_log_axis(run):
    ax = plots_training.plot_jacobian_spectra(run.table("spectra"), ax=_ax())
    assert ax.get_yscale() == "log"
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax.lines)


def test_eigenvalues_draw_unit_circle_init_and_end(run):
    ax = plots_training.plot_eigenvalues(run.table("spectra"), ax=_ax())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["|λ| = 1", "init (step 0, before any update)"] and "end" in labels[2]
    circle = ax.lines[0]
    assert np.allclose(np.hypot(circle.get_xdata(), circle.get_ydata()), 1.0)


def test_loss_draws_baseline_line(run):
    ax = plots_training.plot_loss(run.table("steps"), baseline=2.0, ax=_ax())
    assert any(list(line.get_ydata()) == [2.0, 2.0] for line in ax.lines)
    assert "nats" in ax.get_ylabel()


def test_without_clipping_the_panel_shows_only_the_norm(run):
    ax = plots_training.plot_clipping(run.table("steps"), clipping=False, ax=_ax())
    assert "clipping off" in ax.get_title() and len(ax.lines) == 1 and ax.get_legend() is None


def test_loss_phase_diagram_diverges_from_one():
    ax = plots_study.plot_phase_diagram(SUMMARY, x="model.init_gain", y="task.seq_len", center=1.0,
                                        ax=_ax())  # fmt: skip
    norm = ax.collections[0].norm
    assert norm.vcenter == 1.0 and norm.vmin <= 0.3 and norm.vmax >= 2.0


def test_clipping_has_log_norms_and_clip_rate_axis(run):
    ax = plots_training.plot_clipping(run.table("steps"), ax=_ax())
    assert ax.get_yscale() == "log"  # gradient norms span ~2 decades
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["before clip", "after clip"] and "clip rate" in labels[2]


def test_phase_diagram_marks_infinite_half_life():
    ax = plots_study.plot_phase_diagram(SUMMARY, x="model.init_gain", y="task.seq_len",
                                        value="half_life", log=True, ax=_ax())  # fmt: skip
    assert "∞" in _texts(ax)
    assert ax.get_xlabel() == "model.init_gain" and ax.get_ylabel() == "task.seq_len"


def test_phase_diagram_with_one_axis_is_one_row():
    ax = plots_study.plot_phase_diagram(SUMMARY, x="model.init_gain", ax=_ax())
    assert ax.collections[0].get_array().size == 3


def test_decay_scatter_has_identity_line():
    ax = plots_gradients.plot_decay_vs_mean_field(SUMMARY, ax=_ax())
    assert "y = x" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_without_ax_makes_its_own_figure(run):
    ax = plots_training.plot_lyapunov(run.table("lyapunov"))
    try:
        assert ax.figure is not None
    finally:
        plt.close(ax.figure)


def test_thin_steps_keeps_first_and_last_at_regular_gaps():
    kept = plots.thin_steps(range(2000), 200)
    assert len(kept) <= 200 and kept[0] == 0 and kept[-1] == 1999
    assert len(set(np.diff(kept[:-1]))) == 1  # one stride, the last gap aside
    assert list(plots.thin_steps([3, 1, 2, 2], 10)) == [1, 2, 3]
    probes = [1, 101, 201, 301, 401, 501, 601, 701, 800]  # 9 probe steps, room for 8
    assert list(plots.thin_steps(probes, 8)) == [1, 201, 401, 601, 800]  # not a gap at 401


def test_empty_standard_tables_never_raise():
    for columns in STANDARD_TABLES.values():
        frame = pd.DataFrame(columns=list(columns))
        for draw in (
            plots_gradients.plot_adjoint_heatmap,
            plots_training.plot_hidden_health,
            plots_training.plot_loss,
        ):
            draw(frame, ax=_ax())


def _visible_tick_labels(ax) -> list[str]:
    ax.figure.savefig(io.BytesIO(), format="png", dpi=40)  # sets the tick labels' text
    axis = ax.yaxis
    lo, hi = sorted(axis.get_view_interval())
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [t.label1.get_text() for t in ticks
            if t.label1.get_text() and lo <= t.get_loc() <= hi]  # fmt: skip


@pytest.mark.parametrize(("data", "limits"), [((0.82, 1.0), None), ((1e-3, 1e3), (0.9, 4.0))])
def test_log_axis_labels_at_least_three_ticks_of_the_span_drawn(data, limits):
    ax = _ax()
    ax.plot([0, 1], data)
    plots.log_axis(ax, "y")
    if limits:
        ax.set_ylim(*limits)  # limits set after log_axis still decide the labels
    labels = _visible_tick_labels(ax)
    assert len(labels) >= 3, labels


def test_distinct_colours_for_few_lines_are_far_apart_and_stable():
    for n in range(2, 8):
        colours = np.array(plots.distinct_colours(n))
        gaps = [np.linalg.norm(a - b) for i, a in enumerate(colours) for b in colours[i + 1 :]]
        assert min(gaps) > 0.25, n  # seaborn's own order: orange by vermillion (0.196) at n = 4
    ten = plots.distinct_colours(10)
    assert len({tuple(c) for c in ten}) == 10 and ten == plots.distinct_colours(10)
    assert plots.distinct_colours(3) == ten[:3] and len(plots.distinct_colours(12)) == 12


def _jacobian_rows(steps, values_at) -> pd.DataFrame:
    return pd.DataFrame([
        {"step": s, "layer": 0, "quantity": "jacobian_singular", "sample": i // 8, "index": i % 8,
         "value": v, "imag": 0.0}
        for s in steps for i, v in enumerate(values_at(s))
    ])  # fmt: skip


def test_jacobian_spectra_ignore_an_extreme_outlier_and_say_so():
    spread = lambda s: np.r_[np.geomspace(0.5, 2, 63), 1e-94 if s == 301 else 1.0]  # noqa: E731
    ax = plots_training.plot_jacobian_spectra(_jacobian_rows([1, 101, 301, 401], spread), ax=_ax())
    low, high = ax.get_ylim()
    assert 1e-3 < low < 0.5 and high > 2  # the boxes fill the axis, not 94 decades
    assert "1 of 256 σ ≈ 0" in _texts(ax) and "1 at step 301" in _texts(ax)  # a numerical zero
    medians = sorted(np.mean(line.get_xdata()) for line in ax.lines if line.get_color() == "0.1")
    assert np.allclose(medians, [1, 101, 301, 401])  # each box at its own step, not 0, 1, 2, 3


def _lyapunov_rows(exponents: dict[int, list[float]]) -> pd.DataFrame:
    rows = [(s, 0, i, e) for s, values in exponents.items() for i, e in enumerate(values)]
    return pd.DataFrame(rows, columns=["step", "layer", "index", "exponent"])


def test_lyapunov_spectrum_is_labelled_by_qr_index_and_notes_minus_infinity_and_order():
    # QR order: index 1 above index 0 at step 800, as in a frame not yet converged
    rows = _lyapunov_rows({1: [-0.01, -0.02, -np.inf, -np.inf], 800: [-0.0135, -0.0068, -0.2, -1]})
    ax = plots_training.plot_lyapunov_spectrum(rows, ax=_ax())
    assert "QR index" in ax.get_xlabel() and "largest" not in ax.get_xlabel()
    assert "step 1: 2 exponents\n= −∞" in _texts(ax) and "not drawn" in _texts(ax)
    # λ₁ is index 0 in the diagnosis and the λ₁ panel beside it: no λ_1 naming index 1 here
    assert "step 800: index 1\nabove index 0 (λ₁)\nby 0.0067: QR order" in _texts(ax)
    assert "λ_" not in _texts(ax) + ax.get_ylabel()
    assert "step 1: index" not in _texts(ax)  # descending there: no note
    assert sorted(len(line.get_xdata()) for line in ax.lines if len(line.get_xdata()) > 2) == [4]


def test_schema_calls_lyapunov_indices_qr_order_and_singular_values_ranks():
    for table in ("lyapunov", "floss"):
        text = STANDARD_TABLES[table]["index"]
        assert "QR index" in text and "0 = largest" not in text and "not sorted" in text
    assert "0 = largest" in STANDARD_TABLES["spectra"]["index"]


def test_jacobian_spectra_thinned_keep_a_regular_linear_axis_and_say_so():
    probes = [1, 101, 201, 301, 401, 501, 601, 701, 800]
    rows = _jacobian_rows(probes, lambda s: np.geomspace(0.5, 2, 64))
    ax = plots_training.plot_jacobian_spectra(rows, max_steps=8, ax=_ax())
    assert ax.get_xscale() == "linear"  # the schedule is linear, though 1 → 201 is ×201
    medians = sorted(np.mean(line.get_xdata()) for line in ax.lines if line.get_color() == "0.1")
    assert np.allclose(medians, [1, 201, 401, 601, 800])
    assert "5 of 9 probe" in _texts(ax)
