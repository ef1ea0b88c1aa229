"""Per-run figures read on the page: nothing hidden under a legend, notes that match the axes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rnnprobe.report import plots, plots_gradients, plots_training


def _ax():
    return Figure(figsize=(8, 4.2)).subplots()


def _drawn(ax):
    ax.figure.savefig(io.BytesIO(), format="png", dpi=40)
    return ax


def _eigenvalue_rows(values: dict[int, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame([
        {"step": s, "layer": 0, "quantity": "w_hh_eigenvalue", "sample": 0, "index": i,
         "value": z.real, "imag": z.imag}
        for s, zs in values.items() for i, z in enumerate(zs)
    ])  # fmt: skip


def test_eigenvalue_legend_stands_outside_and_identity_init_is_drawn_on_top():
    end = np.r_[np.full(60, 1.0 + 0j), 1.4 + 0.1j, 1.4 - 0.1j, 1.5 + 0.73j, 1.5 - 0.73j]
    rows = _eigenvalue_rows({0: np.ones(64, complex), 1: np.ones(64, complex), 2000: end})
    ax = _drawn(plots_training.plot_eigenvalues(rows, ax=_ax()))
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes: hides no eigenvalue
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1:] == ["init (step 0, before any update): all 64 λ = 1", "end (step 2000)"]
    init, last = ax.collections  # the init rings over the end crosses and the circle
    assert init.get_zorder() > last.get_zorder() > ax.lines[0].get_zorder()


def test_eigenvalues_that_differ_get_no_all_equal_note():
    rng = np.random.default_rng(0)
    z = rng.normal(size=16) + 1j * rng.normal(size=16)
    ax = plots_training.plot_eigenvalues(_eigenvalue_rows({0: z, 50: z * 1.1}), ax=_ax())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1:] == ["init (step 0, before any update)", "end (step 50)"]


def _jacobian_rows(steps, values_at, k: int = 8) -> pd.DataFrame:
    return pd.DataFrame([
        {"step": s, "layer": 0, "quantity": "jacobian_singular", "sample": i // k, "index": i % k,
         "value": v, "imag": 0.0}
        for s in steps for i, v in enumerate(values_at(s))
    ])  # fmt: skip


def test_jacobian_spectra_title_says_only_the_top_k_are_shown():
    rows = _jacobian_rows([1, 101, 201], lambda s: np.geomspace(0.5, 2, 64)[::-1])
    ax = plots_training.plot_jacobian_spectra(rows, ax=_ax())
    assert ax.get_title().startswith("top 8 σ of J_t")
    units = _eigenvalue_rows({0: np.ones(32, complex)})
    ax = plots_training.plot_jacobian_spectra(pd.concat([rows, units]), ax=_ax())
    assert ax.get_title().startswith("top 8 σ") and "(of 32)" in ax.get_ylabel()
    units = _eigenvalue_rows({0: np.ones(8, complex)})
    ax = plots_training.plot_jacobian_spectra(pd.concat([rows, units]), ax=_ax())
    assert ax.get_title().startswith("all 8 σ") and "(of" not in ax.get_ylabel()


def _boxes(ax) -> list[tuple[float, float]]:
    """Return each box's (q1, q3), read off its patch."""
    return [
        (float(p.get_path().vertices[:, 1].min()), float(p.get_path().vertices[:, 1].max()))
        for p in ax.patches
    ]


def test_jacobian_spectra_count_numerical_zeros_apart_from_the_boxes():
    # step 901: 20 of 64 σ are numerical zeros (all units off), the rest lie in 0.9 … 1.3
    def at(step):
        values = np.geomspace(1.3, 0.9, 64)
        if step == 901:
            values[-20:] = np.r_[1e-90, 1e-24, 5e-9, 0.0, np.full(16, 1e-16)]
        return values

    ax = _drawn(plots_training.plot_jacobian_spectra(_jacobian_rows([1, 901], at), ax=_ax()))
    _, (late_q1, _) = _boxes(ax)
    assert late_q1 > 0.85  # no box through the empty decades below 0.9
    assert ax.get_ylim()[0] > 0.5  # nor an axis stretched over 90 decades
    text = " ".join(t.get_text() for t in ax.texts)
    assert "20 of 128 σ ≈ 0 (below\n1e-6 σ_max)" in text and "20 at step 901" in text
    assert "below\nthe axis" not in text


def test_jacobian_spectra_count_below_the_axis_drawn_not_the_whisker():
    # σ in 0.98 … 1.02 with fliers: 3 above pads the axis's foot below the lowest whisker,
    # so the flier at 0.94 is drawn (lm_text 61b9c9bc89 said "below the axis, to 0.779")
    def at(step):
        return np.r_[np.geomspace(1.02, 0.98, 62), 3.0, 0.94 if step == 101 else 1.0]

    ax = _drawn(plots_training.plot_jacobian_spectra(_jacobian_rows([1, 101], at), ax=_ax()))
    fliers = np.concatenate([line.get_ydata() for line in ax.lines if line.get_marker() == "o"])
    assert fliers.min() == 0.94 > ax.get_ylim()[0]  # a flier, drawn on the axis
    assert "below" not in " ".join(t.get_text() for t in ax.texts)


def _adjoint_rows(steps, norm_at) -> pd.DataFrame:
    return pd.DataFrame([
        {"step": s, "layer": 0, "t": t, "adjoint_norm": norm_at(s, t)}
        for s in steps for t in range(32)
    ])  # fmt: skip


def test_adjoint_colours_are_set_by_the_bulk_of_training_not_its_first_steps():
    # steps 1-3 reach 1e3; the other 157 steps hold 1e-3.3 … 1e-2.5, rising with t
    rows = _adjoint_rows(range(1, 161), lambda s, t: 1e3 if s <= 3 else 10 ** (-3.3 + t / 40))
    ax = plots_gradients.plot_adjoint_heatmap(rows, ax=_ax())
    mesh = ax.collections[0]
    assert mesh.norm.vmax < 10**-2.4 and mesh.norm.vmin >= 10**-3.3
    assert mesh.colorbar.extend in ("max", "both")
    note = " ".join(t.get_text() for t in mesh.colorbar.ax.texts)
    assert "2nd–98th percentile" in note and "end colours" in note


def test_adjoint_colours_of_an_even_spread_span_all_values_without_a_note():
    rows = _adjoint_rows(range(1, 41), lambda s, t: 10 ** (-8 + 6 * t / 31))
    ax = plots_gradients.plot_adjoint_heatmap(rows, ax=_ax())
    mesh = ax.collections[0]
    assert np.isclose(mesh.norm.vmin, 1e-8) and np.isclose(mesh.norm.vmax, 1e-2)
    assert mesh.colorbar.extend == "neither" and not mesh.colorbar.ax.texts


def test_loss_axis_leaves_out_the_warm_up_spike_and_keeps_the_baseline():
    # seq_len ae6d638e11: 6.1 at the start, 0.28 at the end, baseline 0.416; a 0-6 axis
    steps = np.arange(1, 401)
    loss = 0.27 + 0.1 * np.exp(-steps / 150) + 5.8 * np.exp(-steps / 5)
    train = pd.DataFrame({"step": steps, "loss": loss})
    evals = pd.DataFrame({"step": [100, 200, 300, 400], "loss": [0.34, 0.31, 0.29, 0.276]})
    ax = _drawn(plots_training.plot_loss(train, evals=evals, baseline=0.416, ax=_ax()))
    low, high = ax.get_ylim()
    assert ax.get_yscale() == "linear" and 0.2 < low < 0.27 and 0.416 < high < 0.6
    note = " ".join(t.get_text() for t in ax.texts)
    assert "loss above the axis\nat 21 steps in 1–21,\nto 5.12" in note
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


def test_loss_without_a_warm_up_spike_keeps_every_value_on_the_axis():
    steps = np.arange(1, 401)
    train = pd.DataFrame({"step": steps, "loss": 0.8 - 0.001 * steps})
    ax = _drawn(plots_training.plot_loss(train, baseline=0.9, ax=_ax()))
    low, high = ax.get_ylim()
    assert low < 0.4 and high > 0.9 and not ax.texts


def _reach_rows(rates: dict[int, float], reach: int) -> pd.DataFrame:
    """Sources s reaching ``min(s, reach)`` steps back, each decaying at its own rate."""
    return pd.DataFrame([
        {"step": 1, "layer": 0, "source": s, "distance": d, "norm": 2 * r**d, "label": "init"}
        for s, r in rates.items() for d in range(min(s, reach) + 1)
    ])  # fmt: skip


def test_reach_of_sources_tied_on_reach_draws_their_geometric_mean_bold():
    # truncated BPTT (bptt = 4): sources 3, 7, 11 all reach 3 steps back
    rates = {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.5, 7: 0.8, 11: 0.2}
    ax = plots_gradients.plot_gradient_reach(_reach_rows(rates, reach=3), ax=_ax())
    bold = ax.lines[0]
    expected = (0.5 * 0.8 * 0.2) ** (1 / 3)
    assert np.allclose(bold.get_ydata(), expected ** np.arange(4))  # not the last source's 0.2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["init", "bold: geometric mean of the 3\nsources reaching 3 steps back"]
    ticks = _drawn(ax).get_xticks()
    assert np.allclose(ticks, np.round(ticks))  # whole distances, no 0.5


def test_reach_with_one_furthest_source_draws_it_bold_without_a_note():
    rates = {0: 0.9, 1: 0.8, 2: 0.7, 5: 0.5}
    ax = plots_gradients.plot_gradient_reach(_reach_rows(rates, reach=8), ax=_ax())
    assert np.allclose(ax.lines[0].get_ydata(), 0.5 ** np.arange(6))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["init"]


def test_adjoint_heatmap_ticks_whole_time_steps():
    rows = _adjoint_rows(range(1, 11), lambda s, t: 1.0 + t)
    rows = rows[rows["t"] < 4]  # T = 4: matplotlib would tick 0.5, 1.5, …
    ax = _drawn(plots_gradients.plot_adjoint_heatmap(rows, ax=_ax()))
    ticks = ax.get_yticks()
    assert np.allclose(ticks, np.round(ticks))


def test_reach_legend_keys_ties_of_several_configurations_once():
    rates = {0: 0.9, 3: 0.5, 7: 0.8, 11: 0.2}
    rows = pd.concat([_reach_rows(rates, reach=3).assign(label="bptt 4"),
                      _reach_rows(rates, reach=7).assign(label="bptt 8")])  # fmt: skip
    ax = plots_gradients.plot_gradient_reach(rows, ax=_ax())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["bptt 4", "bptt 8", "bold: where sources tie on\nreach, their geometric mean"]


def test_log_axis_labels_both_halves_of_a_short_span():
    # 0.68 … 1.9: log ticks 0.7, 0.8, 0.9, 1 label the lower half only (J_t of cfdf0bd94d)
    ax = _ax()
    ax.plot([0, 1], [0.68, 1.9])
    plots.log_axis(ax, "y")
    ax.set_ylim(0.68, 1.9)
    _drawn(ax)
    lo, hi = ax.get_ylim()
    ticks = [t for t in ax.yaxis.get_minor_ticks() + ax.yaxis.get_major_ticks()
             if t.label1.get_text() and lo <= t.get_loc() <= hi]  # fmt: skip
    middle = np.sqrt(lo * hi)
    assert any(t.get_loc() > middle * 1.2 for t in ticks), [t.label1.get_text() for t in ticks]


def test_over_training_legends_stand_outside_the_axes():
    steps = np.arange(0, 2001, 100)
    # λ₁ of seq_len ae6d638e11 peaks by the upper right, where the legend stood
    lyapunov = pd.DataFrame({"step": steps, "layer": 0, "index": 0,
                             "exponent": np.linspace(-0.03, 0.02, len(steps))})  # fmt: skip
    health = pd.DataFrame({"step": steps, "layer": 0, "saturation": 0.4,
                           "participation_ratio": 12.0})  # fmt: skip
    for ax in (
        plots_training.plot_lyapunov(lyapunov, ax=_ax()),
        plots_training.plot_hidden_health(health, ax=_ax()),
        plots_training.plot_participation_ratio(health, ax=_ax()),
    ):
        legend = _drawn(ax).get_legend().get_window_extent()
        assert legend.x0 >= ax.get_window_extent().x1, ax.get_title()
