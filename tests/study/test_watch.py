"""``rnnprobe watch``: frames of a run while it is written, a study's lines, bad paths; and the
numbers ``train``'s and ``study``'s progress show."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnnprobe.analysis.diagnosis import analyse_study
from rnnprobe.analysis.runs import summarise_run
from rnnprobe.cli.watch import watch
from rnnprobe.records.store import RunStore, load_run
from rnnprobe.study.executors import InProcessExecutor
from rnnprobe.study.runner import read_index, run_study
from rnnprobe.study.spec import StudySpec
from rnnprobe.training.callbacks import PROGRESS_STEPS, RecentSteps
from rnnprobe.training.config import build_config
from tests.support.processes import HANG_GUARD, finish, go, wait_for_pause
from tests.support.runs import TINY_SETTINGS, tiny_spec

STEPS = 60
RUN = {
    "device": "cpu",
    "task.name": "copy",
    "task.seq_len": 3,
    "model.hidden_size": 8,
    "model.embedding_dim": 4,
    "train.batch_size": 4,
    "train.steps": STEPS,
    "train.eval_every": 1000,  # the final step's only: live frames read training losses
    "train.eval_batches": 1,
    "flush_every": 5,
    "checkpoint_every": 10,
    "probes.spectra": "never",
    "probes.products": "never",
}
PAUSES = (10, 30)
# A training run in a fresh process that pauses after the records of each step in PAUSES
# (its "running" status, written after a flush) until the test writes a line to its stdin,
# so the test looks at records of known steps whatever the load on the machine.
PAUSING = textwrap.dedent(
    """
    import json, os, sys
    from rnnprobe.training.config import build_config
    from rnnprobe.records.store import RunStore
    from rnnprobe.training.loop import train_run

    settings, out, pauses = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    real = RunStore.set_status

    def set_status(self, status, step, error=None):
        real(self, status, step, error)
        if status == "running" and step in pauses:
            pauses.remove(step)
            print(f"paused in run 1 at step {step}", flush=True)
            os.read(0, 1)  # until the test writes a line, or closes stdin

    RunStore.set_status = set_status
    train_run(build_config(settings), out, progress=False)
    """
)


def start_paused_run(out: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", PAUSING, json.dumps(RUN), str(out), json.dumps(PAUSES)]
    pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.Popen(command, text=True, **pipes)


def start_watch(path: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "rnnprobe.cli.watch", str(path), *args]
    return subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def next_frame(process: subprocess.Popen) -> str:
    """Return the next frame a watch process prints (frames end with a blank line in a pipe)."""
    guard = threading.Timer(HANG_GUARD, process.kill)  # only a hung process waits this long
    guard.start()
    lines = []
    try:
        for line in iter(process.stdout.readline, ""):
            if line == "\n":
                return "".join(lines)
            lines.append(line)
    finally:
        guard.cancel()
    raise AssertionError(f"watch ended (exit {process.wait()}) before a frame: {lines}")


def frames_of(text: str) -> list[str]:
    return [f for f in text.split("\n\n") if f.strip()]


def step_of(frame: str) -> int:
    return int(re.search(rf"at step (\d+)/{STEPS}", frame).group(1))


def ratio_of(frame: str) -> str:
    """Return the loss/baseline number of a run's frame, as shown."""
    line = next(line for line in frame.splitlines() if line.startswith("loss/baseline"))
    return line.split()[1]


def shown_ratio(run_dir: Path) -> str:
    """Return the loss ratio the analysis computes from the records on disk now, as shown."""
    return f"{summarise_run(load_run(run_dir)).loss_ratio:.3g}"


def once(path: Path):
    return CliRunner().invoke(watch, [str(path), "--once"])


def test_watch_follows_a_run_while_it_is_written_and_ends_with_it(tmp_path, started):
    run_dir = tmp_path / "run"
    started.append(trainer := start_paused_run(run_dir))
    wait_for_pause(trainer)  # step 10
    started.append(follower := start_watch(run_dir, "--interval", "0.25"))

    result = once(run_dir)
    assert result.exit_code == 0, result.output
    assert f"running at step 10/{STEPS}" in result.output
    assert ratio_of(result.output) == shown_ratio(run_dir)

    first = next_frame(follower)
    assert step_of(first) == 10 and ratio_of(first) == shown_ratio(run_dir)
    go(trainer)
    wait_for_pause(trainer)  # step 30
    seen = [10]
    while seen[-1] < 30:  # the frames of the records flushed meanwhile, in order
        frame = next_frame(follower)
        seen.append(step_of(frame))
        assert "running" in frame.splitlines()[0], frame
    assert seen == sorted(seen) and ratio_of(frame) == shown_ratio(run_dir)

    code, _, stderr = finish(trainer)  # closing stdin lets it run to the end
    assert code == 0, stderr
    rest, stderr = follower.communicate(timeout=HANG_GUARD)  # it ends by itself
    assert follower.returncode == 0 and stderr == "", stderr
    last = frames_of(rest)[-1]
    assert f"run run: done at step {STEPS}/{STEPS}" in last
    assert ratio_of(last) == shown_ratio(run_dir)
    assert "validation loss" in last and "λ₁" in last and "decay per step" in last
    assert [step_of(f) for f in frames_of(rest)] == sorted(step_of(f) for f in frames_of(rest))

    result = CliRunner().invoke(watch, [str(run_dir), "--interval", "600"])  # finished: at once
    assert result.exit_code == 0 and result.output.strip() == last.strip()

    damaged = next((run_dir / "tables" / "steps").glob("part-*.parquet"))
    damaged.write_bytes(b"not parquet")
    result = once(run_dir)
    assert result.exit_code == 1
    header, reason = result.output.strip().splitlines()  # one line says why, no traceback
    assert header == f"run {run_dir}: done at step {STEPS}"
    assert reason.startswith(f"records unreadable: {damaged} is damaged ("), reason
    result = CliRunner().invoke(watch, [str(run_dir)])  # the run is done: no waiting
    assert result.exit_code == 0 and "records unreadable" in result.output


def test_a_run_without_records_is_waiting(tmp_path):
    config = build_config({**RUN, "train.steps": 10})
    with RunStore.create(tmp_path / "new", config.to_dict()):
        result = once(tmp_path / "new")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [
        f"run new: running at step –/10 (task not recorded yet) — {tmp_path / 'new'}",
        "waiting for records",
    ]


class NothingRuns:
    """An executor that starts no run: the study's runs stay pending."""

    description = "nothing"

    def run(self, jobs, started):
        yield from ()


def test_study_shows_one_line_per_run_with_the_analysis_numbers(tmp_path):
    out, lines = tmp_path / "tiny", []
    run_study(tiny_spec(), out, InProcessExecutor(progress=False), echo=lines.append)
    table = analyse_study(out).table
    ids = [r["id"] for r in read_index(out)["runs"]]
    ratios = [f"{v:.3g}" for v in table["loss_ratio"]]
    assert lines[0].startswith("study 'tiny': 2 runs, 0 finished, 2 to run")
    for line, ratio, run_id in zip(lines[1:], ratios, ids, strict=True):
        assert f"{run_id} seq_len=" in line and f"(loss/baseline {ratio}, " in line

    result = once(out)
    assert result.exit_code == 0, result.output
    header, columns, *rows = result.output.strip().splitlines()
    assert header == f"study 'tiny': 2 runs (2 done) — {out}"
    assert columns.split()[:4] == ["run", "seq_len", "status", "step"]
    assert [r.split()[:5] for r in rows] == [
        [i, str(t), "done", "10/10", ratio]
        for i, t, ratio in zip(ids, table["task.seq_len"], ratios, strict=True)
    ]
    assert CliRunner().invoke(watch, [str(out)]).exit_code == 0  # every run finished


def test_study_not_started_is_waiting_under_its_default_name(tmp_path):
    lines = []
    spec = StudySpec("study", dict(TINY_SETTINGS), {"task.seq_len": (3, 5)})
    run_study(spec, tmp_path, NothingRuns(), echo=lines.append)
    assert lines[0].startswith("study: 2 runs, 0 finished, 2 to run (nothing)")
    result = once(tmp_path)
    assert result.exit_code == 0, result.output
    header, _, *rows = result.output.strip().splitlines()
    assert header == f"study: 2 runs (2 pending) — {tmp_path}"
    assert all("pending" in r and "waiting for records" in r for r in rows), rows


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("absent", [], "absent: no such file or directory"),
        ("empty", [], "is neither a run (no config.json) nor a study (no study.json or runs/)"),
        ("file", [], "is neither a run (no config.json)"),
        ("empty", ["--interval", "0"], "--interval must be in"),
        ("empty", ["--interval", "nan"], "--interval must be in"),
    ],
)
def test_bad_path_or_interval_is_one_line_and_exit_2(tmp_path, name, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a run")
    result = CliRunner().invoke(watch, [str(tmp_path / name), "--once", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnprobe: error: ") and message in lines[0]


def test_ctrl_c_while_watching_exits_130_quietly(tmp_path, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr("rnnprobe.study.watch.look", interrupted)
    result = CliRunner().invoke(watch, [str(tmp_path)])
    assert result.exit_code == 130 and result.output == ""


def test_watch_command_module_loads_no_heavy_library():
    probe = "import sys, rnnprobe.cli.watch; print(sorted({'torch', 'pandas', 'matplotlib', "
    probe += "'pyarrow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr


def test_progress_bar_shows_recent_loss_validation_loss_and_clip_rate():
    recent = RecentSteps()
    assert recent.postfix(clipping=True) == {}
    steps = np.arange(1, PROGRESS_STEPS + 11)
    loss = np.where(steps < 10, 100.0, 2.0)  # steps 1-9 have left the window of steps 10-59
    loss[-1] = np.nan  # a skipped step's loss is never shown
    skipped = np.isnan(loss)
    clipped = steps % 2 == 0
    recent.observe("steps", {"step": steps, "loss": loss, "clipped": clipped, "skipped": skipped})
    recent.observe("evals", {"step": np.array([50]), "loss": np.array([1.5])})
    assert recent.postfix(clipping=False) == {"loss": "2", "val_loss": "1.5"}
    window = clipped[-PROGRESS_STEPS - 1 : -1]  # steps 10-59
    assert recent.postfix(clipping=True)["clip"] == f"{window.mean():.0%}"


def test_the_watch_words_a_half_life_as_the_diagnosis_does():
    import math

    from rnnprobe.analysis.runs import DecayFit
    from rnnprobe.study.watch import _half_life

    assert _half_life(DecayFit(0.5, 1.0, shape="exponential")) == "1 steps"
    assert _half_life(DecayFit(0.98, math.inf, shape="flat")) == "flat"  # was '∞ steps'
    assert _half_life(DecayFit(1.2, math.inf, shape="exponential")) == "grows"
    assert _half_life(DecayFit(shape="not exponential")) == "n/a"
