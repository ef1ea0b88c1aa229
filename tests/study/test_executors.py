"""Executors: the local process pool and Ray run the same records; failures stay contained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from rnnprobe.cli.study import study
from rnnprobe.errors import RnnprobeError
from rnnprobe.records.store import load_run
from rnnprobe.study.executors import (
    RAY_WORKER_NICENESS,
    InProcessExecutor,
    LocalPoolExecutor,
    RayExecutor,
    RunJob,
    make_executor,
    recorded_status,
)
from rnnprobe.study.runner import read_index
from rnnprobe.training.config import build_config

WALL_CLOCK = ["seconds"]
TINY = {
    "device": "cpu",
    "model.hidden_size": 8,
    "model.embedding_dim": 4,
    "train.batch_size": 4,
    "train.steps": 10,
    "train.eval_every": 10,
    "train.eval_batches": 1,
    "flush_every": 10,
    "checkpoint_every": 10,
    "probes.spectra": "never",
    "probes.reach": "every:5",
}


def make_jobs(root: Path) -> list[RunJob]:
    """Two tiny runs, and one whose corpus does not exist (fails inside the worker)."""
    configs = {
        "a": build_config({**TINY, "task.seq_len": 3}),
        "b": build_config({**TINY, "task.seq_len": 4, "model.nonlinearity": "relu"}),
        "bad": build_config({**TINY, "task.name": "lm", "task.corpus": str(root / "none.txt")}),
    }
    return [RunJob(name, c, str(root / name)) for name, c in configs.items()]


def comparable(run_dir: Path) -> dict[str, pd.DataFrame]:
    tables = load_run(run_dir).tables
    return {n: t.drop(columns=[c for c in WALL_CLOCK if c in t]) for n, t in tables.items()}


@pytest.fixture(scope="module")
def pool_runs(tmp_path_factory) -> tuple[Path, dict]:
    """Run the jobs once through a 2-process pool; return the root and outcomes by id."""
    root = tmp_path_factory.mktemp("pool")
    started = []
    outcomes = {o.run_id: o for o in LocalPoolExecutor(2).run(make_jobs(root), started.append)}
    assert [j.run_id for j in started] == ["a", "b", "bad"]
    return root, outcomes


def test_make_executor_follows_jobs_and_kind():
    assert isinstance(make_executor("local", 1), InProcessExecutor)
    pool = make_executor("local", 2)
    assert isinstance(pool, LocalPoolExecutor)
    assert pool.threads == max(1, (os.cpu_count() or 1) // 2)
    assert isinstance(make_executor("local", None), InProcessExecutor | LocalPoolExecutor)
    for args, message in [
        (("local", 0), "--jobs must be at least 1"),
        (("local", 2, "host:1"), "--address needs --executor ray"),
        (("ray", None, "nohost"), "--address must be HOST:PORT"),
    ]:
        with pytest.raises(RnnprobeError, match=message):
            make_executor(*args)


def test_unreachable_ray_address_is_one_line_naming_it():
    with pytest.raises(RnnprobeError, match=r"^cannot reach Ray at 127\.0\.0\.1:1: [^\n]+$"):
        RayExecutor("127.0.0.1:1", timeout=2)


def test_pool_runs_every_job_and_contains_a_failing_one(pool_runs):
    root, outcomes = pool_runs
    assert {k: o.status for k, o in outcomes.items()} == {"a": "done", "b": "done", "bad": "failed"}
    assert outcomes["a"].steps_done == 10 and outcomes["a"].seconds > 0
    assert "none.txt" in outcomes["bad"].message and "\n" not in outcomes["bad"].message
    assert recorded_status(root / "a") == ("done", 10)


def test_pool_records_match_in_process_records(pool_runs, tmp_path):
    root, _ = pool_runs
    job = make_jobs(tmp_path)[0]
    outcome = next(InProcessExecutor(progress=False).run([job], lambda job: None))
    assert outcome.status == "done"
    expected, got = comparable(root / "a"), comparable(tmp_path / "a")
    assert expected.keys() == got.keys()
    for name in expected:  # in-process uses torch's threads, workers one: allow rounding
        pd.testing.assert_frame_equal(expected[name], got[name], rtol=1e-4, obj=name)


def test_ray_executor_gives_the_records_of_the_local_pool(pool_runs, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray's own import-time deprecations
        ray = pytest.importorskip(
            "ray", reason="Ray is an optional extra: pip install rnnprobe[ray]"
        )
    root, pool_outcomes = pool_runs
    monkeypatch.setenv(RAY_WORKER_NICENESS, "0")  # as RayExecutor's own local Ray: not niced
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        started = []
        outcomes = list(RayExecutor(None).run(make_jobs(tmp_path), started.append))
    finally:
        ray.shutdown()
    assert {o.run_id: o.status for o in outcomes} == {k: o.status for k, o in pool_outcomes.items()}
    assert "none.txt" in next(o.message for o in outcomes if o.run_id == "bad")
    for name in ("a", "b"):
        expected, got = comparable(root / name), comparable(tmp_path / name)
        assert expected.keys() == got.keys()
        for table in expected:
            pd.testing.assert_frame_equal(expected[table], got[table], check_exact=True)


# The study of the test below, in a process whose pool never kills its workers after a grace
# period: it can only stop because the workers took the interrupt themselves.
WITHOUT_GRACE_KILL = textwrap.dedent(
    """
    import runpy
    from rnnprobe.study.executors import LocalPoolExecutor

    LocalPoolExecutor.__init__.__kwdefaults__["grace"] = 86400.0  # a day: never, in a test
    runpy.run_module("rnnprobe.cli.study", run_name="__main__", alter_sys=True)
    """
)
HANG_GUARD = 600  # seconds; only a hung study takes this long


@pytest.mark.slow  # ~30 s: two studies in fresh processes
def test_sigint_reaches_pool_workers_and_rerun_finishes(tmp_path):
    out = tmp_path / "s"
    flags = {"--device": "cpu", "--hidden-size": "8", "--batch-size": "4", "--steps": "200",
             "--eval-every": "200", "--flush-every": "10", "--checkpoint-every": "10",
             "--spectra": "never", "--jobs": "2", "--out": str(out)}  # fmt: skip
    args = [sys.executable, "-c", WITHOUT_GRACE_KILL, *(p for f in flags.items() for p in f)]
    args += ["--seq-len", "3", "--seq-len", "4", "--seq-len", "5", "--no-report"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hang_guard = time.monotonic() + HANG_GUARD
        while process.poll() is None:  # until a run is done: the others are then in flight
            index = read_index(out) if (out / "study.json").is_file() else None
            if index and any(r["status"] == "done" for r in index["runs"]):
                break
            assert time.monotonic() < hang_guard, f"no run finished in {HANG_GUARD} s"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=HANG_GUARD)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"study still running {HANG_GUARD} s after SIGINT") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr  # the workers took the interrupt: no grace kill
    assert stderr.strip().splitlines()[-1].startswith("rnnprobe: study interrupted")
    runs = read_index(out)["runs"]
    assert "running" not in {r["status"] for r in runs}
    for run in runs:  # every run the index calls interrupted was reported so by its worker
        if run["status"] == "interrupted":
            assert f"{run['id']} seq_len=" in stdout and ": interrupted at step" in stdout
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=HANG_GUARD)
    assert rerun.returncode == 0, rerun.stderr
    assert {r["status"] for r in read_index(out)["runs"]} == {"done"}


@pytest.mark.slow
def test_bench_jobs_speedup(tmp_path):
    """Time a 4-run study with --jobs 1 and --jobs 2 in this process; print the ratio.

    ``RNNPROBE_BENCH_DEVICE=cuda``: the four runs share one GPU, --jobs 4 against --jobs 1.
    """
    device = os.environ.get("RNNPROBE_BENCH_DEVICE", "cpu")
    many = 2 if device == "cpu" else 4
    flags = {"--device": device, "--hidden-size": "64", "--steps": "1500", "--flush-every": "100",
             "--checkpoint-every": "100", "--spectra": "never"}  # fmt: skip
    args = [*(p for f in flags.items() for p in f), "--no-report"]
    sweep = {"--seq-len": ("30", "60"), "--nonlinearity": ("tanh", "relu")}
    args += [p for flag, values in sweep.items() for v in values for p in (flag, v)]
    seconds = {}
    torch.set_num_threads(os.cpu_count() or 1)  # --jobs 1 as a user's: every core (conftest)
    for jobs in (1, many):
        start = time.perf_counter()
        result = CliRunner().invoke(
            study, [*args, "--jobs", str(jobs), "--out", str(tmp_path / str(jobs))]
        )
        seconds[jobs] = time.perf_counter() - start
        assert result.exit_code == 0, result.output
    ratio = seconds[1] / seconds[many]
    print(
        f"\n4-run study on {device}: --jobs 1 {seconds[1]:.1f}s, --jobs {many} "
        f"{seconds[many]:.1f}s, {ratio:.2f}x"
    )
    # target 1.6x; measured 1.74x on a quiet 2-core machine, 1.43x beside other work (each
    # worker pays ~4 s of imports), so the assertion only catches a pool that is not parallel
    assert ratio >= 1.3
