"""Analysis: decay fits recover known rates; summaries read the stored tables, NaN when absent."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnnprobe.analysis import BEAT_BASELINE, DecayFit, fit_decay, run_summary, study_summary
from rnnprobe.config import build_config
from rnnprobe.executors import InProcessExecutor
from rnnprobe.store import Run
from rnnprobe.study import StudySpec, read_index, run_study


def reach_table(rates: dict[tuple[int, int], float], T: int = 12, sources=(4, 11)) -> pd.DataFrame:
    """Return reach rows with norm = 3·rate^(s−t) for every (step, layer) → rate."""
    rows = [
        {
            "step": step,
            "layer": layer,
            "source": s,
            "t": t,
            "distance": s - t,
            "norm": 3.0 * rate ** (s - t),
        }
        for (step, layer), rate in rates.items()
        for s in sources
        for t in range(s + 1)
    ]
    return pd.DataFrame(rows)


def test_fit_recovers_the_rate_of_the_top_layer_at_the_last_step():
    reach = reach_table({(8, 0): 0.5, (8, 1): 0.8, (1, 1): 0.3})
    fit = fit_decay(reach)
    assert fit.rate_per_step == pytest.approx(0.8)
    assert fit.half_life == pytest.approx(math.log(2) / -math.log(0.8))
    assert fit.r2 == pytest.approx(1.0) and fit.table == "reach"
    assert fit.n == 4 + 11  # distances ≥ 1 of sources 4 and 11
    assert fit_decay(reach, layer=0).rate_per_step == pytest.approx(0.5)


def test_fit_ignores_distance_zero_and_unusable_norms():
    reach = reach_table({(3, 0): 0.7})
    reach.loc[reach["distance"] == 0, "norm"] = 1e9
    for bad in (0.0, -1.0, np.nan, np.inf):
        reach.loc[len(reach)] = {
            "step": 3,
            "layer": 0,
            "source": 4,
            "t": 0,
            "distance": 4,
            "norm": bad,
        }
    fit = fit_decay(reach)
    assert fit.rate_per_step == pytest.approx(0.7) and fit.n == 15


def test_growing_gradients_have_infinite_half_life():
    fit = fit_decay(reach_table({(1, 0): 1.1}))
    assert fit.rate_per_step == pytest.approx(1.1) and fit.half_life == math.inf


def test_fit_falls_back_to_adjoint_norms_against_steps_to_the_end():
    T = 10
    adjoints = pd.DataFrame(
        [
            {"step": step, "layer": 0, "t": t, "adjoint_norm": rate ** (T - 1 - t)}
            for step, rate in ((1, 0.2), (5, 0.6))
            for t in range(T)
        ]
    )
    fit = fit_decay(pd.DataFrame(columns=["step", "layer", "distance", "norm"]), adjoints)
    assert fit.table == "adjoints" and fit.rate_per_step == pytest.approx(0.6) and fit.n == T - 1


def test_fit_gives_each_source_its_own_intercept():
    reach = reach_table({(2, 0): 0.6})
    tiny_source = reach["source"] == reach["source"].min()
    reach.loc[tiny_source, "norm"] *= 1e-12  # an early loss term with a tiny gradient
    assert fit_decay(reach).rate_per_step == pytest.approx(0.6)


def test_fit_without_usable_points_is_nan():
    assert fit_decay(pd.DataFrame()).table == "none"
    single = reach_table({(1, 0): 0.5}, sources=(1,))  # one distance: no slope
    fit = fit_decay(single)
    assert math.isnan(fit.rate_per_step) and fit.n == 0  # no source has two usable points
    assert isinstance(fit, DecayFit)


def synthetic_run(tmp_path: Path) -> Run:
    config = build_config({"task.seq_len": 10, "model.nonlinearity": "relu"})
    steps = pd.DataFrame(
        {
            "step": range(1, 21),
            "loss": [1.0 / s for s in range(1, 21)],
            "metric": [s / 20 for s in range(1, 21)],
            "skipped": [s == 19 for s in range(1, 21)],
            "seconds": np.linspace(0.1, 2.0, 20),
        }
    )
    steps.loc[18, "loss"] = np.inf  # step 19: skipped, non-finite
    tables = {
        "steps": steps,
        "evals": pd.DataFrame({"step": [20, 10], "loss": [0.5, 0.9], "metric": [0.7, 0.2]}),
        "task": pd.DataFrame({"metric": ["accuracy"], "baseline_loss": [1.0], "seq_len": [30]}),
        "reach": reach_table({(16, 0): 0.9, (16, 1): 0.5}),
        "lyapunov": pd.DataFrame(
            {
                "step": [4, 4, 16, 16, 16, 16],
                "layer": [1, 1, 0, 0, 1, 1],
                "index": [0, 1, 0, 1, 0, 1],
                "exponent": [5.0, 4.0, 0.3, 0.1, -0.2, -0.6],
            }
        ),
        "health": pd.DataFrame(
            {
                "step": [10, 20, 20],
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
    run = synthetic_run(tmp_path)
    row = run_summary(run, axes=("task.seq_len", "model.nonlinearity"))
    assert (
        row["run_id"] == build_config({"task.seq_len": 10, "model.nonlinearity": "relu"}).run_id()
    )
    assert row["task.seq_len"] == 10 and row["model.nonlinearity"] == "relu"
    assert row["status"] == "diverged" and row["steps"] == 20
    assert row["final_loss"] == pytest.approx(1 / 20)  # last 10 %: steps 19 (skipped) and 20
    assert row["final_valid_loss"] == 0.5 and row["final_metric"] == 0.7
    assert row["baseline_loss"] == 1.0 and row["loss_ratio"] == 0.5
    assert row["beat_baseline"] is True and BEAT_BASELINE > 0.5
    assert row["metric"] == "accuracy" and row["seq_len"] == 30  # T from the task table
    assert row["decay_per_step"] == pytest.approx(0.5)
    assert row["half_life_over_seq_len"] == pytest.approx(math.log(2) / -math.log(0.5) / 30)
    assert row["lyapunov_max"] == pytest.approx(-0.2)
    assert row["dead_fraction"] == 0.25 and math.isnan(row["saturation"])
    assert row["divergence_step"] == 19
    assert row["predicted_decay"] == 0.6 and row["predicted_half_life"] == 1.4
    assert row["seconds"] == pytest.approx(2.0)


def test_run_summary_without_tables_is_nan_not_an_error(tmp_path):
    row = run_summary(Run(tmp_path / "x", {}, {}))
    assert row["status"] == "pending" and row["steps"] == 0
    numbers = [
        "final_loss",
        "final_valid_loss",
        "loss_ratio",
        "decay_per_step",
        "half_life",
        "lyapunov_max",
        "saturation",
        "divergence_step",
        "predicted_decay",
        "seconds",
    ]
    assert all(math.isnan(row[key]) for key in numbers)
    assert row["beat_baseline"] is False


def test_train_loss_stands_in_when_there_is_no_validation(tmp_path):
    run = synthetic_run(tmp_path)
    del run.tables["evals"]
    row = run_summary(run)
    assert math.isnan(row["final_valid_loss"]) and row["loss_ratio"] == pytest.approx(1 / 20)
    assert row["final_metric"] == pytest.approx(1.0)  # mean train metric of the kept steps


def test_study_summary_has_one_row_per_run_in_grid_order(tmp_path):
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
    spec = StudySpec("s", tiny, {"task.seq_len": (4, 3), "model.nonlinearity": ("relu", "tanh")})
    run_study(spec, tmp_path, InProcessExecutor(progress=False), echo=lambda s: None)
    table = study_summary(tmp_path)
    assert list(table["task.seq_len"]) == [4, 4, 3, 3]
    assert list(table["model.nonlinearity"]) == ["relu", "tanh", "relu", "tanh"]
    assert list(table.columns[:4]) == ["run_id", "task.seq_len", "model.nonlinearity", "status"]
    assert set(table["status"]) == {"done"} and table["error"].isna().all()
    assert (table["steps"] == 6).all() and table["final_loss"].notna().all()
    assert table["decay_per_step"].between(0, 10).all()
    assert table["saturation"].isna().tolist() == [True, False, True, False]

    missing = read_index(tmp_path)["runs"][1]["id"]
    shutil.rmtree(tmp_path / "runs" / missing)
    row = study_summary(tmp_path).iloc[1]
    assert row["run_id"] == missing and row["model.nonlinearity"] == "tanh"
    assert math.isnan(row["final_loss"])

    (tmp_path / "study.json").unlink()  # without an index: axes are the settings that differ
    table = study_summary(tmp_path)
    assert len(table) == 3 and {"model.nonlinearity", "task.seq_len"} <= set(table.columns)
