"""Studies: run a grid of training runs (see ``spec.py``) with resume, and keep its index.

The output directory OUT holds ``study.json`` (the index: name, fixed settings, axes and, per
run, its id, axis values, status and error) and ``runs/<id>/``, one run directory per grid
point with ``id = RunConfig.run_id()``. One study process at a time writes OUT: it holds
``OUT/.rnnprobe.lock`` (see ``records/lock.py``), and a second one stops at once naming the first.
Readers take a run's status from its own ``status.json`` wherever the index says ``running``,
so a study killed mid-run never reads as running.

Resume: rerunning a study skips runs whose own status is done or diverged, continues
interrupted (or killed) runs from their last checkpoint, and restarts failed runs from scratch
(their partial records came from the failing attempt). Two studies are *the same* when they
have the same set of run ids; OUT holding a different study is an error unless ``force_new``,
which replaces the index and reuses the runs both share (same id, same settings); the others
stay on disk under ``runs/`` but leave the study.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnprobe.errors import RecordError, RnnprobeError
from rnnprobe.records.index import (
    is_run_dir,
    is_study_dir,
    read_index,
    recorded_status,
    write_index,
)
from rnnprobe.records.lock import LOCK_NAME, DirectoryLock
from rnnprobe.records.store import load_run
from rnnprobe.study.executors import Executor, RunJob, RunOutcome
from rnnprobe.study.spec import GridPoint, StudySpec, expand, study_title

__all__ = ["StudyResult", "run_study", "study_lock"]

FINISHED = ("done", "diverged")


@dataclass(frozen=True)
class StudyResult:
    """How an invocation ended: run statuses (all runs) and whether it was interrupted."""

    out: Path
    statuses: Counter
    interrupted: bool

    @property
    def failed(self) -> int:
        """The number of runs whose status is ``failed``."""
        return self.statuses.get("failed", 0)


def _open_index(out: Path, spec: StudySpec, points: list[GridPoint], force_new: bool) -> dict:
    try:
        old = read_index(out)
    except RecordError:
        if not force_new:
            raise
        old = None  # rebuilt: the runs both share are found again by id
    old_runs = {r["id"]: r for r in old.get("runs", [])} if old else {}
    if old and set(old_runs) != {p.run_id for p in points} and not force_new:
        raise RnnprobeError(
            f"{out} holds a different study {old.get('name')!r} ({_difference(old, spec)}); "
            "use another --out, or --force-new to replace its index"
        )
    _check_holds_no_foreign_files(out)
    runs = []
    for point in points:
        entry = old_runs.get(point.run_id, {})
        runs.append(
            {
                "id": point.run_id,
                "axes": point.values,
                "status": entry.get("status", "pending"),
                "error": entry.get("error"),
            }
        )
    return {
        "name": spec.name,
        "description": spec.description,
        "question": spec.question,
        "fixed": dict(spec.fixed),
        "axes": {k: list(v) for k, v in spec.axes.items()},
        "runs": runs,
    }


def _check_holds_no_foreign_files(out: Path) -> None:
    if is_study_dir(out) or not out.is_dir():
        return
    if any(p.name != LOCK_NAME for p in out.iterdir()):
        raise RnnprobeError(f"{out} is not empty and holds no study; choose another --out")


def _difference(old: dict, spec: StudySpec) -> str:
    keys = set(old.get("fixed", {})) | set(old.get("axes", {})) | set(spec.fixed) | set(spec.axes)
    new_axes = {k: list(v) for k, v in spec.axes.items()}
    differs = [
        k
        for k in sorted(keys)
        if old.get("fixed", {}).get(k) != spec.fixed.get(k)
        or old.get("axes", {}).get(k) != new_axes.get(k)
    ]
    return f"differs in {', '.join(differs)}" if differs else "different runs"


# -- running -----------------------------------------------------------------------------


def run_study(
    spec: StudySpec,
    out: str | os.PathLike,
    executor: Executor,
    *,
    force_new: bool = False,
    echo: Callable[[str], None] = print,
) -> StudyResult:
    """Run every unfinished grid point of ``spec`` into ``out`` with ``executor``.

    Never raises for a failing run (it is marked failed and retried on the next call); a
    KeyboardInterrupt stops the study, marks running runs interrupted and returns with
    ``interrupted`` set.
    """
    out = Path(out)
    points = expand(spec)
    check_runs_can_start(points)
    with study_lock(out):
        return _run_locked(spec, out, points, executor, force_new, echo)


def check_runs_can_start(points: Iterable[GridPoint]) -> None:
    """Refuse the grid, before any run starts, when one of its runs cannot: its task cannot be
    built (a missing or non-UTF-8 corpus, a window longer than the data), its device is absent,
    or it cannot fit in memory (``training/memory.py``). These are the user's to fix: a rerun
    would fail the same way, so none is left to fail as a run."""
    from rnnprobe.core.device import resolve_device
    from rnnprobe.data.tasks import task_from_config
    from rnnprobe.training.memory import check_fits, estimate_run

    tasks: dict = {}
    for point in points:
        config = point.config
        try:
            if config.task not in tasks:
                tasks[config.task] = task_from_config(config)
            check_fits(estimate_run(config, tasks[config.task]), resolve_device(config.device))
        except RnnprobeError as error:
            where = ", ".join(f"{k}={v!r}" for k, v in point.values.items())
            raise RnnprobeError(f"{where}: {error}" if where else str(error)) from None


def study_lock(out: str | os.PathLike) -> DirectoryLock:
    """Return the held lock of study directory ``out`` (re-entrant in this process).

    Raises a one-line error when another process holds it, or when ``out`` is a file or a
    non-empty directory that holds no study (no lock file is left there).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RnnprobeError(f"--out {out} exists and is not a directory")
    _check_holds_no_foreign_files(out)  # before the lock file goes in
    return DirectoryLock(out, "--out").acquire()


def _run_locked(
    spec: StudySpec,
    out: Path,
    points: list[GridPoint],
    executor: Executor,
    force_new: bool,
    echo: Callable[[str], None],
) -> StudyResult:
    index = _open_index(out, spec, points, force_new)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    entries = {e["id"]: e for e in index["runs"]}
    jobs = []
    for point in points:
        entry, run_dir = entries[point.run_id], out / "runs" / point.run_id
        status = (recorded_status(run_dir)[0] or "interrupted") if is_run_dir(run_dir) else None
        if status in FINISHED:
            entry.update(status=status, error=None)
            continue
        resume = status is not None and status != "failed" and entry["status"] != "failed"
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # a failed attempt, or a creation cut short
        entry["status"] = "interrupted" if resume else "pending"
        jobs.append(RunJob(point.run_id, point.config, str(run_dir.resolve()), resume))
    write_index(out, index)
    total = len(points)
    named = study_title(spec.name)
    echo(
        f"{named}: {total} runs, {total - len(jobs)} finished, {len(jobs)} to run "
        f"({executor.description}) -> {out}"
    )

    def started(job: RunJob) -> None:
        entries[job.run_id].update(status="running", error=None)
        write_index(out, index)

    progress = _Progress(total, total - len(jobs), echo, out / "runs")
    interrupted = False
    # every executor's run is a generator (closed below); Executor.run promises an Iterator only
    runs = executor.run(jobs, started)
    try:
        with contextlib.closing(runs):
            for outcome in runs:
                entry = entries[outcome.run_id]
                entry["status"] = outcome.status
                entry["error"] = outcome.message if outcome.status == "failed" else None
                write_index(out, index)
                interrupted = interrupted or outcome.status == "interrupted"
                progress.finished(outcome, entry["axes"])
    except KeyboardInterrupt:
        interrupted = True
    for entry in index["runs"]:
        if entry["status"] == "running":
            entry["status"] = "interrupted"
    write_index(out, index)
    return StudyResult(out, Counter(e["status"] for e in index["runs"]), interrupted)


class _Progress:
    """One line per finished run: done/total, the run, its status and outcome, and an ETA."""

    def __init__(self, total: int, done: int, echo: Callable[[str], None], runs: Path) -> None:
        self.total, self.done, self.here, self.echo = total, done, 0, echo
        self.runs, self.start = runs, time.monotonic()

    def finished(self, outcome: RunOutcome, values: Mapping[str, Any]) -> None:
        self.done += 1
        self.here += 1
        elapsed = time.monotonic() - self.start
        left = self.total - self.done
        eta = f"ETA {_duration(elapsed / self.here * left)}" if left else "all finished"
        if outcome.status == "interrupted":  # the study stops here: no ETA, nothing finished
            eta = "study interrupted"
        where = "".join(f" {k.rpartition('.')[2]}={v}" for k, v in values.items())
        note = f" ({outcome.message})" if outcome.status in ("failed", "diverged") else ""
        if outcome.status == "done":
            note = _run_outcome(self.runs / outcome.run_id)
        self.echo(
            f"[{self.done}/{self.total}] {outcome.run_id}{where}: {outcome.status} "
            f"at step {outcome.steps_done} in {_duration(outcome.seconds)}{note}; {eta}"
        )


PROGRESS_TABLES = ("task", "steps", "evals", "events")  # all the outcome of a run needs


def _run_outcome(run_dir: Path) -> str:
    """Return " (loss/baseline R, OUTCOME)" from the run's analysis, or "" when unreadable."""
    from rnnprobe.analysis.diagnosis import outcome
    from rnnprobe.analysis.runs import summarise_run

    try:
        summary = summarise_run(load_run(run_dir, PROGRESS_TABLES))
    except RnnprobeError:  # damaged records: the study's summary names them; progress goes on
        return ""
    ratio = summary.loss_ratio
    shown = f"{ratio:.3g}" if ratio == ratio else "n/a"  # NaN: no finite loss or baseline
    return f" (loss/baseline {shown}, {outcome(summary)[0]})"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
