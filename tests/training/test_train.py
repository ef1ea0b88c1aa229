"""Training runs: reproducible records, crash-safe resume, non-finite guards, every task."""

from __future__ import annotations

import itertools
import math
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from rnnprobe.cli.main import main
from rnnprobe.records.store import load_run
from rnnprobe.training.callbacks import Callback
from rnnprobe.training.config import build_config
from rnnprobe.training.loop import train_run
from tests.support.processes import finish, start_pausing, wait_for_pause
from tests.support.runs import TINY, tiny

WALL_CLOCK = ("seconds",)


def comparable(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Return the run's tables without wall-clock columns, interruptions and resume events."""
    tables = {}
    for name, df in load_run(run_dir).tables.items():
        if name == "events":
            df = df[~df["kind"].isin(["resumed", "interrupted"])]
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


def test_products_probe_records_finite_time_exponents(tmp_path):
    """The one tiny run with the products probe on: its ftle records, reproducibly."""
    config = tiny(train__steps=4, model__layers=2, probes__products="every:3")
    for name in ("a", "b"):
        assert train_run(config, tmp_path / name, progress=False).status == "done"
    assert_same_records(tmp_path / "a", tmp_path / "b")
    run = load_run(tmp_path / "a")
    ftle, hidden, events = run.table("ftle"), run.table("hidden"), run.table("events")
    assert "probe_failed" not in set(events.get("kind", []))
    assert set(ftle["step"]) == set(hidden["step"])  # both every:3 from step 1, and the last
    assert set(ftle["layer"]) == {0, 1}
    T, k = int(hidden["t"].max()) + 1, min(config.probes.top_k, config.model.hidden_size)
    for _, group in ftle.groupby(["step", "layer"]):
        windows = sorted(set(group["window"]))
        assert windows[0] == 1 and windows[-1] == T, windows  # windows 1, 2, 4, …, T
        assert all(2 * a >= b for a, b in itertools.pairwise(windows))
        for _, window in group.groupby("window"):
            assert list(window["index"]) == list(range(k))
            assert window["exponent"].is_monotonic_decreasing
    assert ftle["exponent"].map(math.isfinite).all() and ftle["converged"].all()


KILLED_ARGS = [
    "--steps", "30", "--hidden-size", "16", "--seq-len", "6", "--batch-size", "8",
    "--device", "cpu", "--flush-every", "3", "--checkpoint-every", "7", "--eval-every", "10",
    "--task", "lm", "--sampling", "sequential", "--max-chars", "20000", "--no-progress",
]  # fmt: skip
THREADS = ["--threads", "1"]  # rounding depends on torch's threads: every process uses one


def train_here(args: list[str]) -> None:
    """Run ``rnnprobe train *args`` in this process, keeping this process's torch threads."""
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(main, ["train", *args, *THREADS])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output


KILLS = (signal.SIGKILL, signal.SIGINT)


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory) -> tuple[Path, dict[int, tuple[Path, int, str]]]:
    """Return the run of KILLED_ARGS uninterrupted, and killed at step 18 by each of KILLS.

    Both killed runs train at once, in fresh processes, while this one trains the
    uninterrupted run by the same command line. Killed: (run, exit code, stderr) by signal.
    """
    root = tmp_path_factory.mktemp("killed")
    processes = {
        how: start_pausing("rnnprobe", 1, 18, ["train", *KILLED_ARGS, *THREADS, "--out",
                                               str(root / how.name)])
        for how in KILLS
    }  # fmt: skip
    killed = {}
    try:
        train_here([*KILLED_ARGS, "--out", str(root / "uninterrupted")])
        for how, process in processes.items():
            wait_for_pause(process)
            process.send_signal(how)
            code, _, stderr = finish(process)  # closing its stdin ends the pause
            killed[how] = (root / how.name, code, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return root / "uninterrupted", killed


@pytest.mark.parametrize("how", KILLS)
def test_killed_run_resumes_to_the_uninterrupted_records(killed_runs, how):
    """Cut at step 18: parts of steps 15-18 lie past checkpoint 14 (SIGKILL drops them)."""
    reference, runs = killed_runs
    killed, code, stderr = runs[how]
    status = load_run(killed, tables=()).status["status"]
    if how == signal.SIGKILL:
        assert code == -signal.SIGKILL and status in ("running", "interrupted"), stderr
        assert load_run(killed).table("steps")["step"].max() == 18  # flushed past checkpoint 14
    else:
        assert code == 130 and status == "interrupted", stderr
        assert stderr.strip().splitlines()[-1].startswith("rnnprobe: interrupted")
        assert sorted((killed / "checkpoints").glob("step-18.pt"))  # stopped between steps
    train_here(["--resume", str(killed), "--no-progress"])
    assert load_run(killed, tables=()).status["status"] == "done"
    assert_same_records(reference, killed)
    events = load_run(killed).table("events")
    kept = events[events["kind"] == "interrupted"]  # the resumed run still says it stopped
    assert (list(kept["step"]) == [18]) == (how != signal.SIGKILL)


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
    adjoints = run.table("adjoints")
    assert adjoints["t"].max() < run.table("task")["seq_len"].iloc[0]
    assert (run.table("reach")["distance"] >= 0).all()


def test_init_schemes_set_the_recurrent_spectrum():
    from rnnprobe.core.initialisation import init_recurrent_weights
    from rnnprobe.core.models import ElmanRNN

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


class Recorder(Callback):
    """Writes down every callback point the loop reaches, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_start(self, trainer) -> None:
        self.calls.append(("start", trainer.step))

    def on_step_end(self, trainer, result) -> None:
        self.calls.append(("step", trainer.step, result.finite))

    def on_flush(self, trainer, tables) -> None:
        steps = tables.get("steps", {}).get("step")
        self.calls.append(("flush", trainer.step, [] if steps is None else steps.tolist()))

    def on_eval(self, trainer) -> None:
        self.calls.append(("eval", trainer.step))

    def on_checkpoint(self, trainer) -> None:
        self.calls.append(("checkpoint", trainer.step))

    def on_end(self, trainer, status) -> None:
        self.calls.append(("end", trainer.step, status))


def test_callbacks_see_every_named_point_and_change_no_record(tmp_path):
    config = tiny(train__steps=12)  # eval every 10, flush every 5, checkpoint every 10
    recorder = Recorder()
    train_run(config, tmp_path / "with", progress=False, callbacks=[recorder])
    train_run(config, tmp_path / "without", progress=False)
    assert_same_records(tmp_path / "with", tmp_path / "without")
    calls = recorder.calls
    assert calls[0] == ("start", 0)
    assert [c[1] for c in calls if c[0] == "step"] == list(range(1, 13))
    assert all(c[2] for c in calls if c[0] == "step")
    assert [c[1] for c in calls if c[0] == "eval"] == [10, 12]
    assert [c[1] for c in calls if c[0] == "checkpoint"] == [10, 12]
    flushed = [s for c in calls if c[0] == "flush" for s in c[2]]
    assert flushed == list(range(1, 13))  # every step's row reaches a callback once
    assert calls[-1] == ("end", 12, "done")
    order = [c[0] for c in calls if c[1] == 10]
    assert order == ["step", "eval", "flush", "checkpoint"]  # a checkpoint flushes first


def test_a_callback_that_interrupts_leaves_a_resumable_run(tmp_path):
    class StopAtSeven(Callback):
        def on_step_end(self, trainer, result) -> None:
            if trainer.step == 7:
                raise KeyboardInterrupt

    config = tiny(train__steps=12)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "run", progress=False, callbacks=[StopAtSeven()])
    assert load_run(tmp_path / "run").status["status"] == "interrupted"
    assert train_run(config, tmp_path / "run", resume=True, progress=False).status == "done"
    train_run(config, tmp_path / "whole", progress=False)
    assert_same_records(tmp_path / "run", tmp_path / "whole")


def test_a_step_whose_probes_read_no_backward_pass_installs_no_recorder():
    from rnnprobe.core.models import RNNLanguageModel
    from rnnprobe.training.step import probed_capture

    model = RNNLanguageModel(12, 4, 6)
    seen = []
    model.rnn.register_full_backward_pre_hook(
        lambda *_: seen.append(model.rnn.recorder_slot.recorder)
    )
    tokens = torch.randint(1, 12, (2, 5))
    for fired in (set(), {"truncation"}, {"adjoints"}, {"weight_grads"}, {"hidden"}):
        with probed_capture(model, fired, 1) as cap:
            model.next_token_loss(tokens)[0].backward()
        assert (seen.pop() is not None) == bool(fired - {"truncation"}), fired
        assert len(cap.records_on_device()) == (1 if fired - {"truncation"} else 0)


def test_a_steps_row_counts_its_own_step(tmp_path):
    seen = []

    class Clock(Callback):
        def on_step_end(self, trainer, result) -> None:
            seen.append(trainer.seconds)

    train_run(tiny(train__steps=4), tmp_path / "r", progress=False, callbacks=[Clock()])
    steps = load_run(tmp_path / "r").table("steps")
    assert seen[0] > 0  # step 1 took time: its row does not read 0
    assert steps["seconds"].tolist() == seen  # step k's row: training time through step k


def test_the_task_table_records_the_training_t_not_a_short_validation_splits(tmp_path):
    # 300 characters: the validation split's streams hold 14 steps, training windows 32
    config = build_config({"task.name": "lm", "task.max_chars": 300, "task.seq_len": 32,
                           "train.batch_size": 2, "train.steps": 2,
                           "model.hidden_size": 8})  # fmt: skip
    train_run(config, tmp_path / "r", progress=False)
    run = load_run(tmp_path / "r")
    assert int(run.table("task")["seq_len"].iloc[0]) == 32
    assert run.table("adjoints")["t"].max() == 31
