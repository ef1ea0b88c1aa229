"""Executors: where a study's training runs happen — in-process, a local process pool, or Ray.

Each executor has ``run(jobs, started) -> Iterator[RunOutcome]``: it calls ``started(job)``
when a job goes to a worker and yields one outcome per job, in completion order. A failing
run becomes a ``failed`` outcome and never stops the others. On KeyboardInterrupt it stops
handing out jobs, interrupts the runs in flight (``train_run`` checkpoints and marks them
``interrupted``), yields their outcomes and returns.

* ``InProcessExecutor`` (``--jobs 1``): runs one after another, with ``train_run``'s own bar;
  torch's thread count is left as the caller set it.
* ``LocalPoolExecutor`` (``--jobs N``): a spawn-context process pool; every worker uses
  ``max(1, cores // N)`` torch threads — fixed by N, not by how many runs remain, so a resumed
  study computes exactly as an uninterrupted one. Workers ignore SIGINT while idle and take the
  first one per run (the terminal's and the one the parent forwards are one interrupt), and
  exit when the parent dies, so a killed study never leaves a worker writing its runs.
* ``RayExecutor`` (``--executor ray``): one Ray task per run (``num_cpus=1``, ``num_gpus=1``
  when the cluster has GPUs), one torch thread each. Workers write straight into the run
  directories the driver names, so every node must see the study directory at the same path
  (a shared filesystem). ``address=None`` starts a local Ray instance.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rnnprobe.errors import RnnprobeError, check_choice, check_count
from rnnprobe.records.index import recorded_status
from rnnprobe.training import loop
from rnnprobe.training.config import RunConfig

__all__ = [
    "Executor",
    "InProcessExecutor",
    "LocalPoolExecutor",
    "RayExecutor",
    "RunJob",
    "RunOutcome",
    "execute_job",
    "make_executor",
]

GRACE_SECONDS = 60.0  # how long interrupted runs get to checkpoint before they are killed


@dataclass(frozen=True)
class RunJob:
    """One run to train: ``resume`` continues the run already in ``run_dir``."""

    run_id: str
    config: RunConfig
    run_dir: str
    resume: bool = False


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: done, diverged, failed or interrupted; ``seconds`` of wall clock."""

    run_id: str
    status: str
    steps_done: int
    message: str
    seconds: float


Started = Callable[[RunJob], None]


class Executor(Protocol):
    """Where a study's runs happen; ``description`` says so in the study's first line."""

    description: str

    def run(self, jobs: Iterable[RunJob], started: Started) -> Generator[RunOutcome, None, None]:
        """Yield one outcome per job as it finishes."""
        ...


def execute_job(job: RunJob, *, progress: bool = False, threads: int | None = None) -> RunOutcome:
    """Return the outcome of training ``job``; every exception becomes a ``failed`` outcome."""
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        run_dir = Path(job.run_dir)
        result = loop.train_run(job.config, run_dir, resume=job.resume, progress=progress)
        status, steps, message = result.status, result.steps_done, result.message
    except KeyboardInterrupt:
        status, message = "interrupted", "interrupted"
        steps = recorded_status(job.run_dir)[1]
    except Exception as error:  # one run's failure must not stop the study
        status, steps = "failed", recorded_status(job.run_dir)[1]
        message = _one_line(error)
    return RunOutcome(job.run_id, status, steps, message, time.perf_counter() - start)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    return text if isinstance(error, RnnprobeError) else f"{type(error).__name__}: {text}"


def _stopped(job: RunJob, message: str, status: str = "interrupted") -> RunOutcome:
    recorded, steps = recorded_status(job.run_dir)
    if recorded in ("done", "diverged"):
        status, message = recorded, ""
    return RunOutcome(job.run_id, status, steps, message, 0.0)


def _stream(
    jobs: Iterable[RunJob],
    started: Callable[[RunJob], None],
    slots: int,
    submit: Callable[[RunJob], Any],
    wait: Callable[[dict], list[tuple[Any, RunOutcome]]],
    interrupt: Callable[[dict], list[RunOutcome]],
) -> Generator[RunOutcome, None, None]:
    """Keep ``slots`` jobs in flight; yield outcomes as they come; interrupt on Ctrl-C."""
    queue: deque[RunJob] = deque(jobs)
    running: dict[Any, RunJob] = {}
    try:
        while queue or running:
            while queue and len(running) < slots:
                job = queue.popleft()
                started(job)
                running[submit(job)] = job
            for handle, outcome in wait(running):
                del running[handle]
                if outcome.status == "interrupted":
                    queue.clear()
                yield outcome
    except KeyboardInterrupt:
        queue.clear()
        in_flight = dict(running)
        running.clear()
        yield from interrupt(in_flight)
    finally:
        if running:  # the consumer stopped early: do not leave runs going
            interrupt(running)


class InProcessExecutor:
    """Runs jobs one after another in this process."""

    def __init__(self, *, progress: bool = True) -> None:
        self.progress = progress
        self.description = "in-process"

    def run(self, jobs: Iterable[RunJob], started: Started) -> Generator[RunOutcome, None, None]:
        """Yield one outcome per job, one job after another; stop after an interrupted one."""
        for job in jobs:
            started(job)
            outcome = execute_job(job, progress=self.progress)
            yield outcome
            if outcome.status == "interrupted":
                return


class LocalPoolExecutor:
    """Runs up to ``jobs`` runs at once in spawned worker processes."""

    def __init__(self, jobs: int, *, threads: int | None = None, grace: float = GRACE_SECONDS):
        self.jobs, self.grace = jobs, grace
        self.threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        self.description = f"{jobs} processes x {self.threads} torch threads"
        self._pool: cf.ProcessPoolExecutor | None = None

    def run(self, jobs: Iterable[RunJob], started: Started) -> Generator[RunOutcome, None, None]:
        """Yield one outcome per job as its worker process finishes it."""
        jobs = list(jobs)
        slots = max(1, min(self.jobs, len(jobs)))
        try:
            yield from _stream(jobs, started, slots, self._submit, self._wait, self._interrupt)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def _submit(self, job: RunJob) -> cf.Future:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.threads, os.getpid()),
            )
        return self._pool.submit(_pool_execute, job)

    def _wait(self, running: dict) -> list[tuple[cf.Future, RunOutcome]]:
        done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        return [(future, self._outcome(future, running[future])) for future in done]

    def _outcome(self, future: cf.Future, job: RunJob) -> RunOutcome:
        try:
            return future.result()
        except KeyboardInterrupt:
            return _stopped(job, "interrupted")
        except cf.process.BrokenProcessPool:
            self._pool = None  # the next submit starts a fresh pool
            return _stopped(job, "worker process died (out of memory?)", "failed")
        except Exception as error:
            return _stopped(job, _one_line(error), "failed")

    def _interrupt(self, running: dict) -> list[RunOutcome]:
        for child in multiprocessing.active_children():
            with contextlib.suppress(OSError):
                if child.pid is not None:
                    os.kill(child.pid, signal.SIGINT)
        done, late = cf.wait(running, timeout=self.grace)
        if late:
            for child in multiprocessing.active_children():
                child.terminate()
        outcomes = [self._outcome(f, running[f]) for f in done]
        return outcomes + [_stopped(running[f], "killed after the grace period") for f in late]


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)  # records are crash-safe; an orphan would race the study's next invocation


def _interrupt_once(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _pool_execute(job: RunJob) -> RunOutcome:
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        return execute_job(job)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class RayExecutor:
    """Runs each job as a Ray task on the cluster at ``address`` (None: a local instance)."""

    def __init__(
        self, address: str | None = None, *, jobs: int | None = None, timeout: float = 5.0
    ) -> None:
        self.address, self.jobs, self.timeout = address, jobs, timeout
        self.description = f"ray at {address}" if address else "ray (local)"
        _import_ray()  # not installed: refused before the study writes anything
        if address not in (None, "auto"):
            _check_reachable(address, timeout)  # before the study writes anything

    def run(self, jobs: Iterable[RunJob], started: Started) -> Generator[RunOutcome, None, None]:
        """Yield one outcome per job as its Ray task finishes it."""
        ray = _import_ray()
        owned = self._connect(ray)
        try:
            resources = ray.cluster_resources()
            gpus = 1 if resources.get("GPU", 0) >= 1 else 0
            slots = self.jobs or int(resources.get("GPU" if gpus else "CPU", 1))
            task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(execute_job)

            def submit(job: RunJob) -> Any:
                return task.remote(job, threads=1)

            def wait(running: dict) -> list[tuple[Any, RunOutcome]]:
                ready, _ = ray.wait(list(running), num_returns=1)
                return [(ref, _ray_outcome(ray, ref, running[ref], None)) for ref in ready]

            def interrupt(running: dict) -> list[RunOutcome]:
                for ref in running:
                    ray.cancel(ref)
                return [_ray_outcome(ray, ref, job, GRACE_SECONDS) for ref, job in running.items()]

            yield from _stream(jobs, started, max(1, slots), submit, wait, interrupt)
        finally:
            if owned:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Connect to the cluster; return whether this executor started the connection."""
        if ray.is_initialized():
            return False
        if self.address is None:
            # Ray nices its workers (15): beside other work on this machine a run would crawl
            # (the Ray test beside two busy loops: 2 min 39 s niced, 28 s at niceness 0)
            os.environ.setdefault(RAY_WORKER_NICENESS, "0")
            ray.init(num_cpus=self.jobs or os.cpu_count(), include_dashboard=False)
            return True
        try:
            ray.init(address=self.address)
        except Exception as error:  # Ray raises many kinds here
            message = f"cannot connect to Ray at {self.address}: {_one_line(error)}"
            raise RnnprobeError(message) from None
        return True


def _ray_outcome(ray: Any, ref: Any, job: RunJob, timeout: float | None) -> RunOutcome:
    try:
        return ray.get(ref, timeout=timeout)
    except (ray.exceptions.TaskCancelledError, ray.exceptions.GetTimeoutError):
        return _stopped(job, "interrupted")
    except Exception as error:  # a crashed worker or node
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return _stopped(job, f"{type(error).__name__}: {first}", "failed")


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise RnnprobeError("--executor ray needs Ray: pip install 'rnnprobe[ray]'") from None


def _check_reachable(address: str, timeout: float) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RnnprobeError(f"--address must be HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RnnprobeError(f"cannot reach Ray at {address}: {reason}") from None


RAY_WORKER_NICENESS = "RAY_worker_niceness"  # read by the raylet a local ray.init starts


def make_executor(
    kind: str = "local", jobs: int | None = None, address: str | None = None
) -> InProcessExecutor | LocalPoolExecutor | RayExecutor:
    """Return the executor the CLI options name (``jobs`` default: the CPU count)."""
    if jobs is not None:
        check_count(jobs, "--jobs")
    if check_choice(kind, ("local", "ray"), "--executor") == "ray":
        return RayExecutor(address, jobs=jobs)
    if address is not None:
        raise RnnprobeError("--address needs --executor ray")
    jobs = jobs or os.cpu_count() or 1
    return InProcessExecutor() if jobs == 1 else LocalPoolExecutor(jobs)
