"""Damaged records, one writer per directory, honest status and finite checkpoints.

Every wait here is on a file or a process, never on elapsed time: the limits are hang guards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from rnnprobe.cli.main import main
from rnnprobe.data.tasks import task_from_config
from rnnprobe.errors import RecordError, RnnprobeError
from rnnprobe.records.index import read_status, read_study
from rnnprobe.records.lock import LOCK_NAME, DirectoryLock, process_identity, writer_alive
from rnnprobe.records.store import RunStore, load_checkpoint, load_run
from rnnprobe.training.config import build_config
from rnnprobe.training.loop import train_run
from rnnprobe.training.memory import estimate_run
from rnnprobe.training.setup import build_model

HANG_GUARD = 600  # seconds; only a hung process ever reaches it
QUIET_PROBES = {
    "probes.hidden": "every:4",
    "probes.spectra": "never",
    "probes.lyapunov": "never",
    "probes.reach": "every:5",
}
TINY = {
    "device": "cpu",
    "task.seq_len": 4,
    "model.hidden_size": 8,
    "model.embedding_dim": 4,
    "train.steps": 20,
    "train.batch_size": 4,
    "train.eval_every": 10,
    "train.eval_batches": 1,
    "flush_every": 2,
    "checkpoint_every": 5,
    **QUIET_PROBES,
}
RESUME_EVENTS = ("resumed", "recovered")


def records(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Return the run's tables without wall-clock columns and resume/recovery events."""
    tables = {}
    for name, df in load_run(run_dir).tables.items():
        if name == "events":
            df = df[~df["kind"].isin(RESUME_EVENTS)]
        df = df.drop(columns=[c for c in ("seconds",) if c in df]).reset_index(drop=True)
        if not df.empty:
            tables[name] = df
    return tables


def assert_same_records(a: Path, b: Path) -> None:
    left, right = records(a), records(b)
    assert left.keys() == right.keys()
    for name in left:
        pd.testing.assert_frame_equal(left[name], right[name], check_exact=True, obj=name)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """An uninterrupted 20-step run: checkpoints at 15 and 20 remain."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert train_run(build_config(TINY), run_dir, progress=False).status == "done"
    return run_dir


def interrupted_copy(finished: Path, tmp_path: Path) -> Path:
    """Return a copy of the finished run whose status says it was cut short."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    (copy / "status.json").write_text('{"status": "interr')  # truncated by a crash
    return copy


def resume(run_dir: Path):
    return train_run(build_config(TINY), run_dir, resume=True, progress=False)


def test_truncated_status_reads_as_interrupted_and_resumes(finished, tmp_path):
    run_dir = interrupted_copy(finished, tmp_path)
    assert read_status(run_dir)["status"] == "interrupted"
    assert load_run(run_dir, tables=()).status["status"] == "interrupted"
    assert resume(run_dir).status == "done"
    assert_same_records(finished, run_dir)


def test_truncated_newest_checkpoint_resumes_from_the_older_one(finished, tmp_path):
    run_dir = interrupted_copy(finished, tmp_path)
    newest = run_dir / "checkpoints" / "step-20.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    assert resume(run_dir).status == "done"
    assert_same_records(finished, run_dir)
    events = load_run(run_dir).table("events")
    recovered = events[events["kind"] == "recovered"]
    assert len(recovered) == 1 and recovered["step"].iloc[0] == 15
    assert "step-20.pt" in recovered["message"].iloc[0]
    assert (run_dir / "checkpoints" / "step-20.pt.damaged").exists()


def test_checkpoint_refused_by_weights_only_is_passed_over(finished, tmp_path):
    run_dir = interrupted_copy(finished, tmp_path)
    newest = run_dir / "checkpoints" / "step-20.pt"
    torch.save({"step": 20, "state": {"x": Path("x")}, "table_parts": {}}, newest)
    with pytest.raises(RecordError, match="never unpickles") as caught:
        load_checkpoint(newest)
    assert "weights_only=False" not in str(caught.value) and "\n" not in str(caught.value)
    assert resume(run_dir).status == "done"
    assert_same_records(finished, run_dir)


def test_corrupt_part_after_the_older_checkpoint_resumes_from_it(finished, tmp_path):
    run_dir = interrupted_copy(finished, tmp_path)
    parts = sorted((run_dir / "tables" / "steps").glob("part-*.parquet"))
    parts[-1].write_bytes(b"not parquet at all")  # written after checkpoint 15
    with pytest.raises(RecordError, match=str(parts[-1].name)):
        load_run(run_dir)
    assert resume(run_dir).status == "done"
    assert_same_records(finished, run_dir)


def test_no_sound_checkpoint_stops_before_training_naming_each(finished, tmp_path):
    run_dir = interrupted_copy(finished, tmp_path)
    first = sorted((run_dir / "tables" / "steps").glob("part-*.parquet"))[0]
    first.write_bytes(b"garbage")  # counted by every checkpoint
    with pytest.raises(RecordError, match="no checkpoint") as caught:
        resume(run_dir)
    assert "step-15.pt" in str(caught.value) and "step-20.pt" in str(caught.value)
    assert first.read_bytes() == b"garbage"  # nothing was trained or deleted


def test_every_checkpoint_tensor_is_finite_after_non_finite_steps(tmp_path):
    config = build_config(
        {
            **TINY,
            "task.name": "lm",
            "task.sampling": "sequential",
            "task.max_chars": 20000,
            "task.seq_len": 30,
            "model.nonlinearity": "relu",
            "model.init": "gaussian",
            "model.init_gain": 8.0,
            "train.steps": 12,
            "train.max_nonfinite": 100,
            "checkpoint_every": 3,
        }
    )
    assert train_run(config, tmp_path / "run", progress=False).status == "done"
    events = load_run(tmp_path / "run").table("events")
    assert (events["message"] == "update skipped, carried state reset").sum() >= 2
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    assert checkpoints
    for file in checkpoints:
        state = torch.load(file, weights_only=True)["state"]
        tensors = [*state["model"].values(), state["h"]]
        for group in state["optimizer"]["state"].values():
            tensors += [v for v in group.values() if torch.is_tensor(v)]
        for tensor in tensors:
            assert torch.isfinite(tensor).all(), file.name


def test_memory_estimate_counts_the_models_parameters_exactly():
    config = build_config({**TINY, "model.layers": 2, "model.hidden_size": 24})
    task = task_from_config(config)
    model = build_model(task, config.model)
    count = sum(p.numel() for p in model.parameters())
    assert estimate_run(config, task).parameters == 4 * 4 * count  # 4 copies of float32


def test_a_configuration_too_large_is_refused_before_anything_is_written(tmp_path):
    config = build_config({**TINY, "model.hidden_size": 10**8})
    with pytest.raises(RnnprobeError, match=r"needs at least .* free"):
        train_run(config, tmp_path / "huge", progress=False)
    assert not (tmp_path / "huge").exists()


# -- one writer per directory, and honest status ---------------------------------------------


def spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_held_lock_refuses_a_second_writer_and_a_dead_ones_is_taken_over(tmp_path):
    holder = spawn(
        "import time\n"
        "from rnnprobe.records.lock import DirectoryLock\n"
        f"DirectoryLock({str(tmp_path)!r}).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(3600)\n"
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RnnprobeError, match=f"in use by pid {holder.pid} "):
            DirectoryLock(tmp_path).acquire()
    finally:  # a failed check must not leave the holder sleeping for an hour
        holder.kill()
        holder.wait(timeout=HANG_GUARD)
        holder.stdout.close()
    with DirectoryLock(tmp_path) as lock:  # the kernel dropped the dead holder's lock
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_writer_alive_tells_a_live_process_from_a_dead_one():
    assert writer_alive(process_identity()) is True
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = {**process_identity(), "pid": int(child.stdout)}
    dead["process_start"] = "1"
    assert writer_alive(dead) is False
    assert writer_alive({**process_identity(), "host": "elsewhere"}) is None


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rnnprobe", *args]


def wait_for_status(run_dir: Path, pid: int, process: subprocess.Popen) -> None:
    """Block until ``run_dir``'s status names ``pid`` as its running writer."""
    for _ in range(HANG_GUARD * 20):
        status = read_status(run_dir) if (run_dir / "status.json").exists() else {}
        complete = (run_dir / "config.json").exists()
        if complete and status.get("pid") == pid and status.get("status") == "running":
            return
        assert process.poll() is None, "the writer exited before it started"
        time.sleep(0.05)
    raise AssertionError("hang guard: the writer never wrote its status")


MODEL_FLAGS = [
    "--task",
    "copy",
    "--hidden-size",
    "8",
    "--embedding-dim",
    "4",
    "--batch-size",
    "4",
    "--flush-every",
    "1",
    "--device",
    "cpu",
]
TRAIN_FLAGS = [*MODEL_FLAGS, "--seq-len", "4", "--no-progress"]


def test_a_killed_run_reads_as_interrupted_everywhere(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        cli("train", *TRAIN_FLAGS, "--steps", "100000", "--out", str(run_dir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_status(run_dir, process.pid, process)
    process.kill()
    process.wait(timeout=HANG_GUARD)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"  # on disk
    assert read_status(run_dir)["status"] == "interrupted"
    assert f"pid {process.pid}" in read_status(run_dir)["error"]
    assert load_run(run_dir, tables=()).status["status"] == "interrupted"
    with DirectoryLock(run_dir):  # the dead writer's lock is free: a resume may take it
        pass


def test_a_second_study_on_one_directory_stops_at_once(tmp_path):
    out = tmp_path / "study"
    flags = [
        *MODEL_FLAGS,
        "--steps",
        "30",
        "--seq-len",
        "3",
        "--seq-len",
        "5",
        "--jobs",
        "1",
        "--no-report",
        "--out",
        str(out),
    ]
    first = subprocess.Popen(
        cli("study", *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    runs = out / "runs"
    for _ in range(HANG_GUARD * 20):  # until the first study's first run is writing
        started = (
            [p for p in runs.glob("*") if (p / "status.json").exists()] if runs.exists() else []
        )
        if started:
            break
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # hold it mid-study, whatever the machine's speed
    try:  # in this process: a real second writer, without a second interpreter's start-up
        second = CliRunner().invoke(main, ["study", *flags], prog_name="rnnprobe")
    finally:
        first.send_signal(signal.SIGCONT)
    lines = second.stderr.strip().splitlines()
    assert second.exit_code == 2 and len(lines) == 1, second.stderr
    assert f"in use by pid {first.pid} " in lines[0]
    _, stderr = first.communicate(timeout=HANG_GUARD)
    assert first.returncode == 0, stderr
    index = read_study(out)
    assert [e.status for e in index.runs] == ["done", "done"]
    assert all(read_status(e.path)["status"] == "done" for e in index.runs)


def test_a_killed_study_reads_as_interrupted_not_running(tmp_path):
    out = tmp_path / "study"
    flags = [
        *MODEL_FLAGS,
        "--steps",
        "100000",
        "--seq-len",
        "3",
        "--seq-len",
        "5",
        "--jobs",
        "1",
        "--no-report",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(
        cli("study", *flags), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(HANG_GUARD * 20):
        index = (
            json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
        )
        running = [r for r in index.get("runs", []) if r["status"] == "running"]
        if running and (out / "runs" / running[0]["id"] / "status.json").exists():
            break
        assert process.poll() is None
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=HANG_GUARD)
    statuses = [e.status for e in read_study(out).runs]
    assert "running" not in statuses and "interrupted" in statuses
    assert (out / LOCK_NAME).exists()  # left behind, and free: a rerun takes it over
    with DirectoryLock(out):
        pass


def test_store_resume_of_a_run_without_checkpoints_still_works(tmp_path):
    store = RunStore.create(tmp_path / "run", {"a": 1})
    store.append("steps", {"step": 1, "loss": 1.0})
    store.flush()
    resumed = RunStore.open_for_resume(tmp_path / "run")
    assert resumed.checkpoint is None and resumed.recovered == []
