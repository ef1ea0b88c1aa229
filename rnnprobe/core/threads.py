"""How many torch threads a run gets by default: the cores that other work leaves free.

torch starts one thread per core. When other processes hold those cores, every parallel
region waits for a descheduled thread, and a run slows many times over (``rnnprobe bench
--suite busy``). So, unless the user chose (``--threads`` or ``OMP_NUM_THREADS``), a run takes
the cores that were free while it started: the CPU time the whole machine spent between two
``/proc/stat`` readings, less this process's own, gives the cores busy with other work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds at one moment: the machine's busy and total (summed over its CPUs), ours."""

    busy: float
    total: float
    own: float
    cpus: int  # CPUs /proc/stat counts


def snapshot() -> CpuSnapshot | None:
    """Return the machine's CPU counters now, or None where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    fields = [float(v) for v in lines[0].split()[1:9]]  # user … steal (guests are inside user)
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return CpuSnapshot((sum(fields) - idle) / tick, sum(fields) / tick, time.process_time(), cpus)


def usable_cores() -> int:
    """Return the cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def free_threads(before: CpuSnapshot | None, after: CpuSnapshot | None) -> int | None:
    """Return the cores other processes left free between two snapshots (at least 1).

    None when the window is too short to tell (under 50 ms of wall time) or unreadable.
    """
    if before is None or after is None or after.cpus < 1:
        return None
    wall = (after.total - before.total) / after.cpus  # seconds that passed, per CPU
    if wall < 0.05:
        return None
    others = max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall
    cores = usable_cores()
    return max(1, min(cores, round(cores - others)))


def default_threads(before: CpuSnapshot | None, after: CpuSnapshot | None) -> int | None:
    """Return the thread count to set, or None to keep the user's (``OMP_NUM_THREADS``)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return free_threads(before, after)
