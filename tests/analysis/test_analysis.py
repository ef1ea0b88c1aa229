"""The analysis layer: decay fits that refuse noise and bent curves, phases, one summary per run."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from rnnprobe.analysis.runs import (
    MIN_FIT_POINTS,
    DecayFit,
    PhaseMeasures,
    aggregate,
    fit_decay,
    phase_steps,
    study_summary,
    summarise_run,
)
from rnnprobe.records.store import Run, load_run
from rnnprobe.study.executors import InProcessExecutor
from rnnprobe.study.runner import read_index, run_study
from rnnprobe.study.spec import StudySpec
from rnnprobe.training.config import build_config
from tests.support.records import write_run


def reach_table(rates: dict[tuple[int, int], float], T: int = 12, sources=(5, 11)) -> pd.DataFrame:
    """Reach rows with ‖∂ℓ_s/∂h_t‖ = (s + 1) · rate^(s − t) for each (step, layer) -> rate."""
    rows = []
    for (step, layer), rate in rates.items():
        for s in sources:
            for t in range(s + 1):
                norm = (s + 1) * rate ** (s - t)
                rows.append({"step": step, "layer": layer, "source": s, "t": t,
                             "distance": s - t, "norm": norm})  # fmt: skip
    return pd.DataFrame(rows)


def curve(norms, step: int = 1) -> pd.DataFrame:
    """One source at t = len − 1 whose norm at distance d is norms[d]."""
    s = len(norms) - 1
    return pd.DataFrame({"step": step, "layer": 0, "source": s, "t": [s - d for d in range(s + 1)],
                         "distance": range(s + 1), "norm": norms})  # fmt: skip


def test_fit_recovers_the_rate_of_the_top_layer_at_the_asked_step():
    reach = reach_table({(1, 0): 0.9, (1, 1): 0.5, (8, 1): 0.7})
    assert fit_decay(reach).rate_per_step == pytest.approx(0.7)  # last step, top layer
    fit = fit_decay(reach, step=1)
    assert fit.rate_per_step == pytest.approx(0.5) and fit.step == 1 and fit.shape == "exponential"
    assert fit_decay(reach, step=1, layer=0).rate_per_step == pytest.approx(0.9)
    assert fit.half_life == pytest.approx(1.0) and fit.r2 == pytest.approx(1.0)


def test_each_source_gets_its_own_intercept():
    fit = fit_decay(reach_table({(1, 0): 0.8}))  # sources start at 6 and 12
    assert fit.rate_per_step == pytest.approx(0.8) and fit.r2 == pytest.approx(1.0)


def test_growing_gradients_have_infinite_half_life():
    fit = fit_decay(reach_table({(1, 0): 1.2}))
    assert fit.rate_per_step == pytest.approx(1.2) and math.isinf(fit.half_life)


@pytest.mark.parametrize("dtype, floor", [("float32", 1.2e-7), ("float64", 2.3e-16)])
def test_fit_ignores_values_below_the_dtype_noise_floor(dtype, floor):
    # 0.5 per step for 12 steps, then numerical noise at ~floor/10 that a fit would follow
    norms = [0.5**d for d in range(13)] + [floor / 10 * (1 + 0.5 * (d % 2)) for d in range(30)]
    if dtype == "float64":
        norms = [0.5**d for d in range(50)] + [floor / 10] * 30
    fit = fit_decay(curve(norms), dtype=dtype)
    assert fit.rate_per_step == pytest.approx(0.5, rel=1e-9)
    assert fit.d_max < len(norms) - 1


def test_fit_needs_enough_points():
    assert fit_decay(curve([1.0, 0.5, 0.25])).shape == "too few points"  # distances 1, 2
    assert not fit_decay(curve([1.0, 0.5, 0.25])).ok
    assert fit_decay(curve([0.5**d for d in range(MIN_FIT_POINTS + 1)])).ok


def test_u_shaped_curve_is_not_exponential():
    norms = [0.7**d for d in range(10)] + [0.7**9 * 1.4 ** (d + 1) for d in range(10)]
    fit = fit_decay(curve(norms))
    assert fit.shape == "not exponential" and math.isnan(fit.rate_per_step)


def test_a_jump_of_decades_is_not_exponential():
    norms = [1.0] * 8 + [1e-6] * 8  # flat, six decades down, flat: what truncation leaves
    fit = fit_decay(curve(norms))
    assert fit.shape == "not exponential" and fit.r2 < 0.9


def test_without_reach_the_adjoint_one_step_factor_stands_in():
    T, r = 10, 0.6
    t = np.arange(T)
    # a language model: fresh ε_t of 1 at every step, recurrent part 0.6 × the next δ
    adjoint = np.ones(T)
    for k in range(T - 2, -1, -1):
        adjoint[k] = 1.0 + r * adjoint[k + 1]
    recurrent = np.append(r * adjoint[1:], 0.0)
    adjoints = pd.DataFrame({"step": 3, "layer": 0, "t": t, "adjoint_norm": adjoint,
                             "recurrent_norm": recurrent})  # fmt: skip
    fit = fit_decay(pd.DataFrame(), adjoints)
    assert fit.source == "adjoints" and fit.shape == "ratio" and fit.step == 3
    assert fit.rate_per_step == pytest.approx(r)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_decay_ignores_subnormal_norms_which_keep_a_few_bits(dtype):
    # 0.5 per step down from 1e-33: in float32 the subnormals are rounded to its grid of
    # 2^-149, so their one-step ratios drift from 0.5 to 1. A float64 run keeps them exact.
    tiny, grid = float(np.finfo(np.float32).tiny), 2.0**-149
    exact = 1e-33 * 0.5 ** np.arange(40)  # by distance from the loss
    rounded = np.where(exact < tiny, np.maximum(np.round(exact / grid), 1) * grid, exact)
    norms = rounded if dtype == "float32" else exact
    assert fit_decay(curve(list(norms)), dtype=dtype).rate_per_step == pytest.approx(0.5)
    # A loss at the last step only: δ_t − ε_t = δ_t before it, and 0 there (through h_n).
    adjoint = norms[::-1]  # by step t, the last the largest
    adjoints = pd.DataFrame({"step": 1, "layer": 0, "t": np.arange(len(norms)),
                             "adjoint_norm": adjoint,
                             "recurrent_norm": np.append(adjoint[:-1], 0.0)})  # fmt: skip
    fit = fit_decay(pd.DataFrame(), adjoints, dtype=dtype)
    assert fit.rate_per_step == pytest.approx(0.5)
    normal = adjoint >= (tiny if dtype == "float32" else 0)
    assert fit.n == int((normal[:-1] & normal[1:]).sum())


def test_fit_without_usable_points_is_no_data():
    assert fit_decay(pd.DataFrame()).shape == "no data"
    zeros = curve([0.0] * 8)
    assert fit_decay(zeros).shape == "too few points"


def test_phases_are_step_one_the_last_step_and_those_between():
    table = pd.DataFrame({"step": [0, 1, 1, 50, 100, 100, 150]})
    assert phase_steps(table) == {"init": (1,), "end": (150,), "training": (50, 100)}
    assert phase_steps(pd.DataFrame({"step": [1, 1]})) == {"init": (1,)}
    assert phase_steps(pd.DataFrame({"step": [20, 40]})) == {"end": (40,), "training": (20,)}
    assert phase_steps(pd.DataFrame()) == {}
    # the run's end is later than the table's last step: that step is training, no end here
    assert phase_steps(pd.DataFrame({"step": [1, 26, 51]}), last=82) == {
        "init": (1,),
        "training": (26, 51),
    }


def test_a_diverged_runs_end_is_its_last_probe_step_and_training_comes_before(tmp_path):
    # probes at 1, 2, 4, 8, 16 and 30; the reach probe stopped at 16, the adjoints ran to 30
    run = load_run(write_run(tmp_path / "r", steps=40, diverge_at=30, status="diverged"))
    reach = run.table("reach")
    run.tables["reach"] = reach[reach["step"] < 30]
    s = summarise_run(run)
    training, end = s.phase("training"), s.phase("end")
    assert end.steps == (30,) and max(training.steps) < 30
    assert end.decay.source == training.decay.source == "adjoints"
    assert s.phase("init").decay.source == "reach"


def test_half_life_text_says_grows_when_the_gradient_grows():
    assert DecayFit(1.2, math.inf).half_life_text == "grows"
    assert DecayFit(1.0, math.inf).half_life_text == "∞"
    assert DecayFit(0.5, 1.0).half_life_text == "1"


def synthetic_run(tmp_path, init: str = "gaussian") -> Run:
    config = build_config({"task.seq_len": 10, "model.nonlinearity": "relu", "model.init": init,
                           "train.clip": "norm", "train.clip_value": 1.0})  # fmt: skip
    steps = pd.DataFrame(
        {
            "step": range(1, 21),
            "loss": [1.0 / s for s in range(1, 21)],
            "metric": [s / 20 for s in range(1, 21)],
            "grad_norm_pre_clip": [0.5 + 0.1 * s for s in range(1, 21)],
            "clipped": [0.5 + 0.1 * s > 1.0 for s in range(1, 21)],
            "skipped": [s == 19 for s in range(1, 21)],
            "seconds": np.linspace(0.1, 2.0, 20),
        }
    )
    steps.loc[18, "loss"] = np.inf  # step 19: skipped, non-finite
    tables = {
        "steps": steps,
        "evals": pd.DataFrame({"step": [20, 10], "loss": [0.5, 0.9], "metric": [0.7, 0.2]}),
        "task": pd.DataFrame(
            {
                "name": ["copy"],
                "kind": ["per_step_classification"],
                "metric": ["accuracy"],
                "baseline_loss": [1.0],
                "seq_len": [30],
            }
        ),
        "reach": reach_table({(1, 0): 0.9, (1, 1): 0.5, (10, 1): 0.6, (20, 1): 0.8}),
        "lyapunov": pd.DataFrame(
            {
                "step": [1, 1, 1, 1, 20, 20],
                "layer": [0, 0, 1, 1, 1, 1],
                "index": [0, 1, 0, 1, 0, 1],
                "exponent": [5.0, 4.0, 0.3, 0.1, -np.inf, -np.inf],
            }
        ),
        "health": pd.DataFrame(
            {
                "step": [1, 20, 20],
                "layer": [1, 0, 1],
                "saturation": [np.nan] * 3,
                "dead_fraction": [0.9, 0.1, 0.25],
            }
        ),
        "events": pd.DataFrame({"step": [20], "kind": ["diverged"], "message": ["x"]}),
        "mean_field": pd.DataFrame(
            {"layer": [0, 1], "predicted_decay": [0.9, 0.6], "predicted_half_life": [6.6, 1.4]}
        ),
    }
    status = {"status": "diverged", "step": 20}
    return Run(tmp_path / "run", config.to_dict(), status, tables)


def test_run_summary_reads_every_quantity_from_the_tables(tmp_path):
    s = summarise_run(synthetic_run(tmp_path))
    assert s.status == "diverged" and s.steps == 20 and s.task == "copy"
    assert s.final_train_loss == pytest.approx(1 / 20)  # last 10 %: 19 (skipped) and 20
    assert s.final_valid_loss == 0.5 and s.final_loss == 0.5 and s.final_metric == 0.7
    assert s.baseline_loss == 1.0 and s.loss_ratio == 0.5
    assert s.initial_loss == 1.0 and s.initial_loss_ratio == 1.0  # step 1's, not a mean
    assert s.seq_len == 30  # T from the task table, not the delay
    init, training, end = (s.phase(p) for p in ("init", "training", "end"))
    assert init.step == 1 and training.steps == (10,) and end.step == 20
    assert init.decay.rate_per_step == pytest.approx(0.5)  # top layer
    assert training.decay.rate_per_step == pytest.approx(0.6)
    assert end.decay.rate_per_step == pytest.approx(0.8)
    assert init.lyapunov_max == pytest.approx(0.3)
    assert math.isnan(end.lyapunov_max) and "every unit was off" in end.lyapunov_note
    assert init.dead_fraction == 0.9 and end.dead_fraction == 0.25
    assert s.divergence_step == 20 and s.nonfinite_steps == 1 and s.first_nonfinite_step == 19
    assert s.clip_rate == pytest.approx(np.mean([0.5 + 0.1 * k > 1 for k in range(2, 21)
                                                 if k != 19]))  # fmt: skip  # after step 1
    assert s.clip_burst == pytest.approx(2.5)
    assert s.predicted_decay == 0.6 and s.mean_field_applies
    assert s.mean_field_ratio == pytest.approx(0.5 / 0.6)
    assert s.seconds == pytest.approx(2.0)
    row = s.row()
    assert row["decay_per_step_init"] == init.decay.rate_per_step
    assert row["half_life_over_seq_len_end"] == pytest.approx(end.decay.half_life / 30)


@pytest.mark.parametrize("init", ["identity", "orthogonal", "spectral"])
def test_mean_field_does_not_apply_to_structured_inits(tmp_path, init):
    s = summarise_run(synthetic_run(tmp_path, init=init))
    assert not s.mean_field_applies and math.isnan(s.mean_field_ratio)


def test_run_summary_without_tables_is_nan_not_an_error(tmp_path):
    s = summarise_run(Run(tmp_path / "x", {}, {}))
    assert s.status == "pending" and s.steps == 0 and s.last_step is None and not s.phases
    row = s.row()
    for key in ("final_loss", "loss_ratio", "decay_per_step_init", "half_life_end",
                "lyapunov_max_init", "predicted_decay", "seconds"):  # fmt: skip
        assert math.isnan(row[key]), key
    assert row["divergence_step"] is None


def test_aggregate_orders_numeric_levels_numerically():
    table = pd.DataFrame({"a": [128, 16, 64, 16], "v": [1.0, 2.0, 3.0, 4.0]})
    out = aggregate(table, ["a"], "v")
    assert list(out["a"]) == [16, 64, 128]
    assert list(out["mean"]) == [3.0, 3.0, 1.0] and list(out["n"]) == [2, 1, 1]
    assert out["sd"].iloc[0] == pytest.approx(np.std([2.0, 4.0], ddof=1))


def test_study_summary_has_one_summary_per_run_in_grid_order(tmp_path):
    tiny = {
        "device": "cpu",
        "model.hidden_size": 8,
        "train.steps": 6,
        "train.batch_size": 4,
        "train.eval_every": 3,
        "train.eval_batches": 1,
        "probes.spectra": "never",
        "probes.reach": "every:3",
    }
    spec = StudySpec("s", tiny, {"task.seq_len": (4, 3), "model.nonlinearity": ("relu", "tanh")},
                     question="does it run?")  # fmt: skip
    run_study(spec, tmp_path, InProcessExecutor(progress=False), echo=lambda s: None)
    study, runs = study_summary(tmp_path)
    assert study.question == "does it run?" and len(runs) == 4
    table = study.table()
    assert list(table["task.seq_len"]) == [4, 4, 3, 3]
    assert list(table["model.nonlinearity"]) == ["relu", "tanh", "relu", "tanh"]
    assert list(table.columns[:4]) == ["run_id", "task.seq_len", "model.nonlinearity", "seed"]
    assert set(table["status"]) == {"done"} and table["error"].isna().all()
    assert (table["steps"] == 6).all() and table["final_loss"].notna().all()
    # probes fire at step 1 and at the last step whatever their schedule (every:3 → 1, 4, 6)
    assert (table["init_step"] == 1).all() and (table["end_step"] == 6).all()
    assert table["decay_per_step_init"].between(0, 10).all()
    assert table["saturation_end"].isna().tolist() == [True, False, True, False]

    missing = read_index(tmp_path)["runs"][1]["id"]
    shutil.rmtree(tmp_path / "runs" / missing)
    row = study_summary(tmp_path)[0].table().iloc[1]
    assert row["run_id"] == missing and row["model.nonlinearity"] == "tanh"
    assert math.isnan(row["final_loss"])

    (tmp_path / "study.json").unlink()  # without an index: axes are the settings that differ
    study, _ = study_summary(tmp_path)
    assert len(study.runs) == 3 and set(study.axes) == {"model.nonlinearity", "task.seq_len"}


def test_a_nearly_flat_noisy_curve_is_still_measured():
    rng = np.random.default_rng(0)
    norms = [0.995**d * (1 + 0.03 * rng.standard_normal()) for d in range(30)]
    fit = fit_decay(curve(norms))
    # low R², clean residuals: the rate is measured, but 0.995^28 loses 13 %: a half-life
    # (138 steps) would lie far beyond the distances fitted, so there is none
    assert fit.r2 < 0.9 and fit.shape == "flat" and fit.half_life_text == "flat"
    assert fit.rate_per_step == pytest.approx(0.995, abs=0.005) and math.isinf(fit.half_life)


def test_a_flat_curve_neither_grows_nor_fails_the_fit():
    # irnn_adding 2a3df62ab0 at its end: 0.825 → 0.879 over distances 1–9, all below 1
    slight = fit_decay(curve([1.0, 0.825, 0.809, 0.815, 0.816, 0.818, 0.824, 0.836, 0.856, 0.879]))
    assert slight.shape == "flat" and slight.half_life_text == "flat"  # not "grows"
    # 03c0dd5821: scatter around 1.35; the same curve in two phases reads one way
    scatter = fit_decay(curve([1.0, 1.343, 1.457, 1.352, 1.367, 1.495, 1.528, 1.356, 1.352, 1.329]))
    assert scatter.shape == "flat"
    steep = fit_decay(curve([0.7**d for d in range(10)]))
    assert steep.shape == "exponential" and steep.rate_per_step == pytest.approx(0.7)


def test_a_phase_without_reach_rows_falls_back_to_adjoint_ratios(tmp_path):
    from rnnprobe.records.store import load_run
    from tests.support.records import write_run

    run = load_run(write_run(tmp_path / "r", decay=0.6, steps=40, seq_len=12))
    reach = run.table("reach")
    run.tables["reach"] = reach[reach["step"].isin([1, 40])]  # reach at init and end only
    s = summarise_run(run)
    assert s.phase("init").decay.source == "reach" and s.phase("end").decay.source == "reach"
    training = s.phase("training").decay
    assert training.source == "adjoints" and training.rate_per_step == pytest.approx(0.6, rel=0.1)


def test_a_later_qr_exponent_above_lambda_1_is_counted_and_said(tmp_path):
    from rnnprobe.analysis.diagnosis import diagnose_run

    run = synthetic_run(tmp_path)
    settled = summarise_run(run)
    assert all(p.lyapunov_unsettled == 0 for p in settled.phases.values())
    assert not any("QR exponent" in line for line in diagnose_run(settled).notes)
    lyapunov = run.tables["lyapunov"]
    lyapunov.loc[(lyapunov["layer"] == 1) & (lyapunov["step"] == 1), "exponent"] = [0.3, 0.35]
    lyapunov.loc[(lyapunov["layer"] == 0) & (lyapunov["step"] == 1), "exponent"] = [4.0, 5.0]
    s = summarise_run(run)
    init = s.phase("init")
    assert init.lyapunov_max == pytest.approx(0.3)  # still index 0, of the top layer
    assert (init.lyapunov_unsettled, init.lyapunov_steps) == (1, 1)
    assert init.lyapunov_excess == pytest.approx(0.05)
    assert s.phase("end").lyapunov_unsettled == 0  # −∞ exponents are not compared
    (line,) = [line for line in diagnose_run(s).notes if "QR exponent" in line]
    assert line == (
        "a later QR exponent exceeds λ₁ (index 0) at init (step 1) by 0.05 (per step): the "
        "exponents had not settled into descending order, so λ₁ need not be the largest"
    )


def test_a_first_step_far_off_the_rate_is_measured_and_named_beside_it():
    from rnnprobe.analysis.diagnosis import _decay_text

    # the first J_t divides the arriving gradient by 10, then ×0.9 a step: the fit (d ≥ 1)
    fit = fit_decay(curve([1.0] + [0.1 * 0.9 ** (d - 1) for d in range(1, 13)]))
    assert fit.rate_per_step == pytest.approx(0.9) and fit.first_step == pytest.approx(0.1)
    text = _decay_text(PhaseMeasures(phase="end", steps=(1,), decay=fit), 12)
    assert text == (
        "decay ×0.9 per step (reach fit, R² 1.000; the first step back ×0.1, which the fit "
        "leaves out; T = 12)"
    )
    on_the_rate = fit_decay(reach_table({(1, 0): 0.8}))  # the first step as every other
    assert on_the_rate.first_step == pytest.approx(0.8)
    assert "first step" not in _decay_text(PhaseMeasures(phase="end", decay=on_the_rate), 12)
    assert math.isnan(fit_decay(curve([0.0] + [0.9**d for d in range(1, 13)])).first_step)


def test_a_fit_reads_in_a_legend_as_the_answer_words_it():
    assert DecayFit(0.5, 1.0, shape="exponential").brief == "×0.5, t½ 1"
    assert DecayFit(0.984, math.inf, shape="flat").brief == "×0.984, flat"  # was 't½ flat'
    assert DecayFit(1.01, math.inf, shape="exponential").brief == "×1.01, grows"
    assert DecayFit(shape="not exponential").brief == "not exponential"
