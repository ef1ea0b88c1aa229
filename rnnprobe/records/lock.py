"""One writer per directory, and whether the writer a file names is still alive.

``DirectoryLock(path)`` holds an exclusive ``flock`` on ``path/.rnnprobe.lock`` for as long as
the writer lives: the kernel releases it when the process ends, however it ends (exit, kill -9,
a segfault, the OOM killer), so a lock left by a dead process is simply taken over. The file
holds the owner's identity (pid, host, process start) for the message a second writer gets.
Within one process the lock is re-entrant: a study may lock its directory around its runs
and again around its report.

``writer_alive(owner)`` answers for an identity recorded in ``status.json``: True or False on
this host (the pid exists and started when the record says), None for another host.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rnnprobe.errors import RnnprobeError

try:
    import fcntl
except ImportError:  # not POSIX: no locking, liveness from the pid alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "DirectoryLock", "process_identity", "writer_alive"]

LOCK_NAME = ".rnnprobe.lock"
_HELD: dict[Path, list[int]] = {}  # lock file -> [fd, depth] held by this process


def _process_start(pid: int) -> str | None:
    """Return the kernel's start time of ``pid`` (clock ticks since boot), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22, after the command name


def process_identity() -> dict[str, Any]:
    """Return this process's ``{"pid", "host", "process_start"}``."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "process_start": _process_start(pid)}


def writer_alive(owner: dict[str, Any]) -> bool | None:
    """Return whether the process ``owner`` names is alive: None if it ran on another host."""
    pid, host = owner.get("pid"), owner.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    started = owner.get("process_start")
    return started is None or _process_start(pid) in (started, None)


class DirectoryLock:
    """An exclusive lock on a directory; ``what`` names it in the error a second writer gets."""

    def __init__(self, directory: str | os.PathLike, what: str = "directory") -> None:
        self.path = Path(directory) / LOCK_NAME
        self.what = what
        self._key: Path | None = None

    def acquire(self) -> DirectoryLock:
        """Take the lock (creating the directory), or raise naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            self._key = key
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RnnprobeError(
                    f"{self.path.parent} is in use by {_describe(owner)}; wait for it to finish, "
                    f"or choose another {self.what}"
                ) from None
        identity = {**process_identity(), "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(identity).encode(), 0)
        _HELD[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        """Drop the lock (the file stays for the next writer); a no-op when not held."""
        key, self._key = self._key, None
        if key is None:
            return
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            os.close(held[0])  # closing drops the flock

    def __enter__(self) -> DirectoryLock:
        return self if self._key is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if "pid" not in owner:
        return "another rnnprobe process"
    since = f" since {owner['since']}" if owner.get("since") else ""
    return f"pid {owner['pid']} on {owner.get('host', '?')}{since}"
