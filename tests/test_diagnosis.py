"""Diagnosis of constructed runs whose regime is known, and of a constructed study."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from rnnprobe.diagnosis import (
    Evidence,
    classify,
    diagnose_run,
    diagnose_study,
    measure_run,
    variance_explained,
)
from rnnprobe.store import load_run
from tests.test_report import write_run


def test_tanh_small_gain_long_sequence_is_vanishing(tmp_path):
    run = load_run(write_run(tmp_path / "r", decay=0.5, seq_len=40, init_gain=0.5))
    diagnosis = diagnose_run(run)
    assert diagnosis.regime == "vanishing"
    ev = diagnosis.measures
    assert ev.decay_source == "reach"
    assert ev.decay_per_step == pytest.approx(0.5, rel=0.05)
    assert ev.half_life == pytest.approx(1.0, rel=0.1)
    text = " ".join(diagnosis.lines())
    assert "vanishing" in text and "T = 40" in text and "half-life" in text


def test_vanishing_is_found_from_adjoint_ratios_without_reach(tmp_path):
    tables = ("task", "steps", "adjoints", "health")
    run = load_run(write_run(tmp_path / "r", decay=0.5, seq_len=40, tables=tables))
    diagnosis = diagnose_run(run)
    assert diagnosis.regime == "vanishing"
    assert diagnosis.measures.decay_source == "adjoints"
    assert diagnosis.measures.decay_per_step == pytest.approx(0.5, rel=0.1)
    assert "Lyapunov exponents" in diagnosis.missing


def test_large_gain_without_clipping_is_exploding(tmp_path):
    path = write_run(tmp_path / "r", decay=1.3, init_gain=2.0, grad_growth=1000.0, clip="none")
    diagnosis = diagnose_run(load_run(path))
    assert diagnosis.regime == "exploding"
    ev = diagnosis.measures
    assert ev.decay_per_step == pytest.approx(1.3, rel=0.05)
    assert math.isinf(ev.half_life)
    assert ev.grad_growth > 100
    assert ev.lyapunov_max > 0.05
    assert "exploding" in diagnosis.verdict and "×1.3" in diagnosis.verdict


def test_decay_near_one_is_healthy(tmp_path):
    diagnosis = diagnose_run(load_run(write_run(tmp_path / "r", decay=0.98, seq_len=20)))
    assert diagnosis.regime == "healthy"


def test_fast_decay_on_a_short_sequence_is_healthy(tmp_path):
    # half-life of 3.1 steps reaches across a 6-step sequence (T/4 = 1.5)
    diagnosis = diagnose_run(load_run(write_run(tmp_path / "r", decay=0.8, seq_len=6)))
    assert diagnosis.regime == "healthy"
    assert "still reach" in diagnosis.verdict


def test_run_diverged_at_step_3(tmp_path):
    path = write_run(tmp_path / "r", decay=1.4, diverge_at=3, status="diverged")
    diagnosis = diagnose_run(load_run(path))
    assert diagnosis.regime == "diverged"
    assert diagnosis.measures.divergence_step == 3
    assert "step 3" in diagnosis.verdict


def test_run_without_records_says_so(tmp_path):
    diagnosis = diagnose_run(load_run(write_run(tmp_path / "r", tables=(), status="running")))
    assert diagnosis.regime == "unknown"
    assert "No records yet" in diagnosis.verdict and "running" in diagnosis.verdict


def test_relu_dead_units_are_reported(tmp_path):
    diagnosis = diagnose_run(load_run(write_run(tmp_path / "r", nonlinearity="relu")))
    assert math.isnan(diagnosis.measures.saturation)
    assert any("dead ReLU units 5.0%" in line for line in diagnosis.lines())


@pytest.mark.parametrize(
    ("evidence", "regime"),
    [
        (Evidence(last_step=5, lyapunov_max=-0.3, seq_len=50), "vanishing"),
        (Evidence(last_step=5, lyapunov_max=0.2, seq_len=50), "exploding"),
        (Evidence(last_step=5, nonfinite_steps=2, decay_per_step=0.5, seq_len=50), "exploding"),
        (Evidence(last_step=5, saturation=0.8, seq_len=50), "vanishing"),
        (Evidence(last_step=5, decay_per_step=1.0, seq_len=50), "healthy"),
        (Evidence(last_step=5, decay_per_step=0.95, lyapunov_max=-0.3, seq_len=50), "healthy"),
        (Evidence(), "unknown"),
    ],
)
def test_classify_rules(evidence, regime):
    assert classify(evidence)[0] == regime


def test_variance_explained_is_one_for_a_perfect_axis_and_zero_for_noise():
    df = pd.DataFrame({"a": [1, 1, 2, 2], "b": [1, 2, 1, 2], "y": [0.1, 0.1, 0.9, 0.9]})
    assert variance_explained(df, "a", "y")[0] == pytest.approx(1.0)
    assert variance_explained(df, "b", "y")[0] == pytest.approx(0.0)
    assert math.isnan(variance_explained(df.head(2), "a", "y")[0])  # too few runs


def test_study_diagnosis_names_the_axis_that_mattered():
    summary = pd.DataFrame(
        {
            "run_id": list("abcdef"),
            "model.init_gain": [0.5, 0.5, 1.0, 1.0, 2.0, 2.0],
            "seed": [0, 1, 0, 1, 0, 1],
            "regime": ["vanishing", "vanishing", "healthy", "healthy", "exploding", "exploding"],
            "loss_ratio": [0.9, 0.92, 0.3, 0.31, 0.95, 0.97],
            "half_life": [1.0, 1.1, 40, 38, math.inf, math.inf],
            "seq_len": [20] * 6,
            "decay_per_step": [0.5, 0.52, 0.98, 0.98, 1.3, 1.3],
            "predicted_decay": [0.51, 0.51, 1.0, 1.0, 1.33, 1.33],
        }
    )
    study = diagnose_study(summary, ["model.init_gain", "seed"])
    text = "\n".join(study.lines)
    assert "2 vanishing, 2 exploding, 2 healthy" in text
    assert "loss/baseline: model.init_gain mattered most" in text
    assert "log₁₀ half-life: model.init_gain mattered most" in text
    assert "≥ 200 (no decay)" in text
    assert "every run with model.init_gain = 0.5 is vanishing" in text
    assert "mean-field prediction" in text
    importance = study.importance.set_index(["axis", "quantity"])["variance_explained"]
    assert importance["model.init_gain", "loss/baseline"] > 0.99
    assert importance["seed", "loss/baseline"] < 0.05


def test_study_diagnosis_of_too_few_runs_says_so():
    summary = pd.DataFrame({"run_id": ["a"], "x": [1], "regime": ["healthy"], "loss_ratio": [1]})
    text = "\n".join(diagnose_study(summary, ["x"]).lines)
    assert "too few runs" in text


def test_measure_run_agrees_with_analysis_summary(tmp_path):
    from rnnprobe.analysis import run_summary

    run = load_run(write_run(tmp_path / "r", decay=0.7, seq_len=30))
    ev, base = measure_run(run), run_summary(run)
    assert ev.decay_per_step == pytest.approx(base["decay_per_step"])
    assert ev.loss_ratio == pytest.approx(base["loss_ratio"])
    assert ev.row()["run_id"] == base["run_id"]
