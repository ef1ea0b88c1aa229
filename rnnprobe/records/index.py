"""The small JSON records (a run's ``status.json`` and ``config.json``, a study's index
``study.json``) and the atomic write every file of a run or study goes through.

Readers never trust a ``running`` status blindly: :func:`read_status` reports a run whose
writer has died (on this host) as ``interrupted``, and one whose heartbeat on another host is
older than ``STALE_SECONDS`` as ``stale``. ``study.json`` lists a study's name, fixed settings,
axes and, per run, its id, axis values, status and error; a reader takes a run's status from
the run's own ``status.json`` wherever the index says ``running`` (:func:`read_study`), so a
study killed mid-run never reads as running. :func:`write_atomic` and :func:`write_atomic_with`
write through a fsynced temporary and ``os.replace`` (the store's parts and checkpoints too).
This module loads no torch, pandas or pyarrow, so status and index reads stay cheap.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from rnnprobe.errors import RecordError, RnnprobeError
from rnnprobe.records.lock import writer_alive

__all__ = [
    "INDEX_NAME",
    "STATUSES",
    "StudyEntry",
    "StudyIndex",
    "flatten",
    "is_run_dir",
    "is_study_dir",
    "read_index",
    "read_status",
    "read_study",
    "recorded_status",
    "write_atomic",
    "write_atomic_with",
    "write_index",
]

INDEX_NAME = "study.json"
TMP_MARK = ".tmp-"  # temporaries are named .<target><TMP_MARK>…; readers skip them

STATUSES = ("running", "done", "failed", "diverged", "interrupted")
HEARTBEAT_SECONDS = 60.0  # a running writer rewrites status.json at least this often
STALE_SECONDS = 600.0  # a writer on another host silent this long is reported stale


def is_run_dir(path: str | os.PathLike) -> bool:
    """Return whether ``path`` is a directory holding a ``config.json`` written by the store."""
    return (Path(path) / "config.json").is_file()


def read_status(path: str | os.PathLike) -> dict:
    """Return the run's ``status.json`` as readers should see it; ``{}`` when there is none.

    A status that cannot be read (cut short by a crash) reads as ``interrupted``; a
    ``running`` status whose writer is gone reads as ``interrupted`` (this host) or ``stale``
    (another host, no heartbeat for ``STALE_SECONDS``), with the reason in ``error``.
    """
    target = Path(path) / "status.json"
    try:
        record = json.loads(target.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError):
        return {"status": "interrupted", "step": 0, "error": f"{target} is unreadable"}
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        return {"status": "interrupted", "step": 0, "error": f"{target} is not a run status"}
    if record["status"] == "running":
        alive = writer_alive(record)
        if alive is False:
            pid = record.get("pid")
            record = {**record, "status": "interrupted", "error": f"its writer (pid {pid}) died"}
        elif alive is None and _age(record.get("updated")) > STALE_SECONDS:
            host = record.get("host", "another host")
            error = f"no heartbeat from {host} since {record.get('updated')}"
            record = {**record, "status": "stale", "error": error}
    return record


def _age(stamp: Any) -> float:
    """Return seconds since an ISO time stamp (0 when it cannot be parsed)."""
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(str(stamp))).total_seconds()
    except ValueError:
        return 0.0


def read_config_file(path: Path) -> dict:
    """Return the JSON object in ``path`` (a run's ``config.json``); RecordError if damaged."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise RecordError(f"{path} is missing") from None
    except (OSError, ValueError) as error:
        raise RecordError(f"{path} is damaged ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} is damaged (not a JSON object)")
    return data


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a fsynced temporary and ``os.replace``."""
    write_atomic_with(target, lambda f: f.write(data))


def write_atomic_with(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary beside ``target``, fsync it, then rename it over."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}{TMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_index(out: str | os.PathLike) -> dict | None:
    """Return the study index in ``out``, or None if there is none."""
    path = Path(out) / INDEX_NAME
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise RecordError(
            f"{path} is damaged ({type(error).__name__}); rerun the study with --force-new to "
            "rebuild it"
        ) from None
    if not isinstance(index, dict) or not isinstance(index.get("runs", []), list):
        raise RecordError(f"{path} is not a study index; rerun with --force-new to rebuild it")
    return index


@dataclass(frozen=True)
class StudyEntry:
    """One run of a study as the index lists it: id, directory, axis values, status, error."""

    id: str
    path: Path
    axes: dict[str, Any]
    status: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class StudyIndex:
    """A study directory as a reader sees it: name, question, swept axes and runs in order."""

    name: str
    question: str
    description: str
    axes: list[str]
    runs: list[StudyEntry]


def read_study(out: str | os.PathLike) -> StudyIndex:
    """Return the study in ``out`` from its index, or from ``runs/*`` when it has none.

    Without an index the axes are the settings that differ between the run directories.
    """
    out = Path(out)
    index = read_index(out)
    if index is not None:
        runs = [
            _entry(out / "runs" / str(r["id"]), r)
            for r in index.get("runs", [])
            if isinstance(r, dict) and "id" in r
        ]
        return StudyIndex(
            str(index.get("name") or out.resolve().name),
            str(index.get("question") or ""),
            str(index.get("description") or ""),
            list(index.get("axes") or {}),
            runs,
        )
    runs_dir = out / "runs"
    paths = sorted(p for p in runs_dir.iterdir() if is_run_dir(p)) if runs_dir.is_dir() else []
    configs = {p: flatten(read_config_file(p / "config.json")) for p in paths}
    keys = sorted({k for c in configs.values() for k in c})
    axes = [
        k for k in keys if k != "device" and len({repr(c.get(k)) for c in configs.values()}) > 1
    ]
    runs = [StudyEntry(p.name, p, {a: configs[p].get(a) for a in axes}) for p in paths]
    return StudyIndex(out.resolve().name, "", "", axes, runs)


def _entry(run_dir: Path, record: dict) -> StudyEntry:
    """Return an index record as a reader sees it: ``running`` checked against the run itself."""
    status, error = record.get("status"), record.get("error")
    if status == "running":  # the index's writer may be gone: the run's own status decides
        own = read_status(run_dir)
        status = own.get("status", "interrupted")
        error = own.get("error") if status in ("interrupted", "stale", "failed") else None
        if not own:
            error = "the study stopped before the run wrote its status"
    return StudyEntry(str(record["id"]), run_dir, dict(record.get("axes") or {}), status, error)


def write_index(out: Path, index: dict) -> None:
    """Write ``study.json`` atomically (fsynced temporary, then ``os.replace``)."""
    index["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_atomic(out / INDEX_NAME, json.dumps(index, indent=2).encode())


def recorded_status(run_dir: str | os.PathLike) -> tuple[str | None, int]:
    """Return the (status, step) :func:`read_status` reads, or (None, 0) without a status."""
    record = read_status(run_dir)
    return record.get("status"), int(record.get("step") or 0)


def is_study_dir(path: str | os.PathLike) -> bool:
    """Return whether ``path`` holds a study: an index, or a ``runs/`` folder of runs."""
    path = Path(path)
    return (path / INDEX_NAME).is_file() or (path / "runs").is_dir()


def run_or_study(path: str | os.PathLike) -> str:
    """Return ``"run"`` or ``"study"`` for ``path``; raise a one-line error for anything else
    (a folder of runs, as ``rnnprobe train`` fills ``runs/train``, gets its runs named)."""
    path = Path(path)
    if not path.exists():
        raise RnnprobeError(f"{path}: no such file or directory; give a run or a study directory")
    if is_run_dir(path):
        return "run"
    if is_study_dir(path):
        return "study"
    runs = sorted(p for p in path.iterdir() if is_run_dir(p)) if path.is_dir() else []
    hint = ""
    if runs:
        shown = ", ".join(map(str, runs[:3])) + (", …" if len(runs) > 3 else "")
        hint = f"; it holds {len(runs)} run{'s' * (len(runs) > 1)}: give one ({shown})"
    raise RnnprobeError(
        f"{path} is neither a run (no config.json) nor a study (no {INDEX_NAME} or runs/){hint}"
    )


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return ``{dotted key: value}`` for a nested dict (a run's config)."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
