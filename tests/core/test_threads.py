"""Default torch threads: the cores other work leaves free while a run starts."""

from __future__ import annotations

import pytest

from rnnprobe.core import threads
from rnnprobe.core.threads import CpuSnapshot, default_threads, free_threads, snapshot


def window(others: float, own: float = 0.0, wall: float = 1.0, cpus: int = 2):
    """Two snapshots ``wall`` seconds apart: ``others`` + ``own`` busy CPU seconds between."""
    before = CpuSnapshot(busy=100.0, total=1000.0, own=5.0, cpus=cpus)
    after = CpuSnapshot(
        busy=100.0 + others + own, total=1000.0 + wall * cpus, own=5.0 + own, cpus=cpus
    )
    return before, after


@pytest.mark.parametrize(
    ("others", "own", "expected"),
    [
        (0.0, 0.0, 2),  # idle machine: every core
        (0.0, 1.0, 2),  # our own start-up (importing torch) is not other work
        (1.0, 0.9, 1),  # one core busy elsewhere
        (2.0, 0.5, 1),  # both busy: still one thread, never zero
        (0.4, 0.0, 2),  # a light load rounds to free
    ],
)
def test_free_threads_counts_cores_other_processes_leave(monkeypatch, others, own, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert free_threads(*window(others, own)) == expected


def test_too_short_or_unreadable_windows_keep_torchs_default(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert free_threads(*window(0.0, wall=0.01)) is None
    assert free_threads(None, None) is None


def test_omp_num_threads_is_the_users_choice(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_threads(*window(2.0)) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads(*window(2.0)) == 1


def test_snapshot_reads_this_machine():
    now = snapshot()
    if now is None:
        pytest.skip("no /proc/stat on this system")
    assert now.cpus >= 1 and 0 <= now.busy <= now.total and now.own >= 0
