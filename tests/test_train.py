"""Training runs: reproducible records, crash-safe resume, non-finite guards, every task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from rnnprobe.config import build_config
from rnnprobe.store import load_run
from rnnprobe.train import train_run

WALL_CLOCK = ("seconds",)
TINY = {
    "device": "cpu",
    "model.hidden_size": 16,
    "task.seq_len": 6,
    "train.batch_size": 8,
    "train.eval_every": 10,
    "train.eval_batches": 2,
    "flush_every": 5,
    "checkpoint_every": 10,
    "probes.hidden": "every:3",
    "probes.spectra": "every:4",
    "probes.lyapunov": "every:4",
    "probes.reach": "every:5",
    "probes.products": "every:6",
}


def tiny(**settings):
    return build_config({**TINY, **{k.replace("__", "."): v for k, v in settings.items()}})


def comparable(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Return the run's tables without wall-clock columns and resume events."""
    tables = {}
    for name, df in load_run(run_dir).tables.items():
        if name == "events":
            df = df[df["kind"] != "resumed"]
        if not df.empty:
            tables[name] = df.drop(columns=[c for c in WALL_CLOCK if c in df])
            tables[name] = tables[name].reset_index(drop=True)
    return tables


def assert_same_records(a: Path, b: Path) -> None:
    left, right = comparable(a), comparable(b)
    assert left.keys() == right.keys()
    for name in left:
        pd.testing.assert_frame_equal(left[name], right[name], check_exact=True, obj=name)


def test_same_seed_and_config_give_identical_records(tmp_path):
    config = tiny(train__steps=20, model__layers=2, train__bptt="random:4")
    assert train_run(config, tmp_path / "a", progress=False).status == "done"
    assert train_run(config, tmp_path / "b", progress=False).status == "done"
    assert_same_records(tmp_path / "a", tmp_path / "b")
    steps = load_run(tmp_path / "a").table("steps")
    assert list(steps["step"]) == list(range(1, 21))


def test_different_seed_gives_different_records(tmp_path):
    train_run(tiny(train__steps=5), tmp_path / "a", progress=False)
    train_run(tiny(train__steps=5, seed=1), tmp_path / "b", progress=False)
    a, b = load_run(tmp_path / "a").table("steps"), load_run(tmp_path / "b").table("steps")
    assert not a["loss"].equals(b["loss"])


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_the_uninterrupted_records(tmp_path, how):
    args = [
        "--steps",
        "60",
        "--hidden-size",
        "16",
        "--seq-len",
        "6",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--flush-every",
        "3",
        "--checkpoint-every",
        "7",
        "--eval-every",
        "10",
        "--task",
        "lm",
        "--sampling",
        "sequential",
        "--max-chars",
        "20000",
        "--no-progress",
    ]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_cli([*args, "--out", str(reference)])
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnprobe", "train", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-14.pt")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(how)
    process.wait(timeout=60)
    status = load_run(killed, tables=()).status["status"]
    assert status in ("running", "interrupted")
    run_cli(["--resume", str(killed), "--no-progress"])
    assert load_run(killed, tables=()).status["status"] == "done"
    assert_same_records(reference, killed)


def run_cli(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rnnprobe", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


EXPLODING = dict(
    train__steps=30,
    model__nonlinearity="relu",
    model__init="gaussian",
    model__init_gain=6.0,
    train__optimizer="sgd",
    train__lr=50.0,
    train__momentum=0.0,
    task__seq_len=40,
)


def test_non_finite_gradients_are_skipped_and_never_reach_the_weights(tmp_path):
    config = tiny(**EXPLODING, train__max_nonfinite=3)
    result = train_run(config, tmp_path / "run", progress=False)
    assert result.status == "diverged"
    run = load_run(tmp_path / "run")
    steps, events = run.table("steps"), run.table("events")
    assert steps["skipped"].any()
    assert {"nonfinite", "diverged"} <= set(events["kind"])
    assert run.status["status"] == "diverged"
    checkpoint = torch.load(
        sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=True
    )
    for tensor in checkpoint["state"]["model"].values():
        assert torch.isfinite(tensor).all()


def test_stop_on_first_non_finite_when_asked(tmp_path):
    config = tiny(**EXPLODING, train__on_nonfinite="stop")
    result = train_run(config, tmp_path / "run", progress=False)
    steps = load_run(tmp_path / "run").table("steps")
    assert result.status == "diverged"
    assert int(steps["skipped"].sum()) == 1 and bool(steps["skipped"].iloc[-1])


@pytest.mark.parametrize(
    "settings",
    [
        {"task.name": "adding", "task.seq_len": 12, "train.bptt": "4"},
        {"task.name": "recall", "task.seq_len": 8, "task.variable_length": True},
        {"task.name": "recall", "task.seq_len": 8, "train.bptt": "random:3"},
        {
            "task.name": "lm",
            "task.max_chars": 20000,
            "task.sampling": "sequential",
            "train.bptt": "3",
            "model.layers": 2,
        },
        {"task.name": "copy", "train.clip": "value", "train.optimizer": "rmsprop"},
        {
            "task.name": "copy",
            "train.clip": "norm",
            "train.optimizer": "adagrad",
            "dtype": "float64",
            "model.init": "orthogonal",
        },
        {
            "task.name": "copy",
            "model.init": "spectral",
            "model.init_radius": 1.1,
            "model.nonlinearity": "relu",
        },
    ],
)
def test_every_task_and_knob_trains_and_records(tmp_path, settings):
    config = build_config({**TINY, "train.steps": 12, **settings})
    assert train_run(config, tmp_path / "run", progress=False).status == "done"
    run = load_run(tmp_path / "run")
    for table in (
        "task",
        "steps",
        "evals",
        "adjoints",
        "hidden",
        "health",
        "weights",
        "spectra",
        "lyapunov",
        "reach",
        "mean_field",
    ):
        assert not run.table(table).empty, table
    ftle, events = run.table("ftle"), run.table("events")
    assert not ftle.empty or "probe_failed" in set(events.get("kind", []))
    adjoints = run.table("adjoints")
    assert adjoints["t"].max() < run.table("task")["seq_len"].iloc[0]
    assert (run.table("reach")["distance"] >= 0).all()


def test_init_schemes_set_the_recurrent_spectrum():
    from rnnprobe.init import init_recurrent_weights
    from rnnprobe.model import ElmanRNN

    rnn = ElmanRNN(3, 64, num_layers=2)
    init_recurrent_weights(rnn, "spectral", radius=0.7)
    for layer in range(2):
        rho = torch.linalg.eigvals(rnn.layer_weights(layer)[1].detach().double()).abs().max()
        assert abs(float(rho) - 0.7) < 1e-5
    init_recurrent_weights(rnn, "orthogonal", gain=1.3)
    sv = torch.linalg.svdvals(rnn.weight_hh_l0.detach().double())
    assert torch.allclose(sv, torch.full_like(sv, 1.3), atol=1e-5)
    init_recurrent_weights(rnn, "identity")
    assert torch.equal(rnn.weight_hh_l1, torch.eye(64)) and not rnn.bias_hh_l1.any()
