"""Flushing subnormals on every thread torch computes on, and a run that asks for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnprobe import RnnprobeError
from rnnprobe.core import denormals
from rnnprobe.core.denormals import flush_denormals, flushing, set_flush_denormal
from rnnprobe.records.store import load_run
from rnnprobe.training.config import build_config
from rnnprobe.training.loop import train_run

CPU = torch.device("cpu")
TINY = float(np.finfo(np.float32).tiny)


def subnormal_products(threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An elementwise and a matrix product whose every entry is a float32 subnormal (2^-140
    and 2^-133), each large enough for torch to split it across ``threads`` threads."""
    elementwise = torch.full((2**16 * threads,), 2.0**-100) * 2.0**-40
    a = torch.full((128, 128), 2.0**-70)
    return elementwise, a @ a


@pytest.fixture
def two_threads():
    """Two torch threads, and every thread back to IEEE subnormals afterwards."""
    torch.set_num_threads(2)
    yield
    set_flush_denormal(False)


def test_the_mode_reaches_every_worker_thread_and_goes_back(two_threads):
    subnormal_products(2)  # the workers exist before the mode changes
    with flush_denormals(True, CPU):
        assert flushing()
        assert all(bool((p == 0).all()) for p in subnormal_products(2))
    assert not flushing()
    assert all(bool((p > 0).all()) for p in subnormal_products(2))


def test_without_the_openmp_region_the_workers_keep_theirs_and_it_says_so(two_threads, monkeypatch):
    subnormal_products(2)
    monkeypatch.setattr(denormals, "_gomp_parallel", lambda: None)
    with (
        pytest.raises(RnnprobeError, match="worker threads; use --threads 1"),
        flush_denormals(True, CPU),
    ):
        pass
    assert not flushing()  # put back: a later IEEE run is not refused
    assert all(bool((p > 0).all()) for p in subnormal_products(2))
    with flush_denormals(False, CPU):
        assert not flushing()


def test_workers_follow_the_thread_count_changed_inside_the_block(two_threads, monkeypatch):
    subnormal_products(2)
    with flush_denormals(True, CPU):  # entered with 2, lowered to 1 inside
        torch.set_num_threads(1)
        assert flushing()
    torch.set_num_threads(2)
    assert all(bool((p > 0).all()) for p in subnormal_products(2))
    torch.set_num_threads(1)
    with flush_denormals(True, CPU):  # entered with 1, raised to 2 inside
        torch.set_num_threads(2)
        assert all(bool((p == 0).all()) for p in subnormal_products(2))
    assert all(bool((p > 0).all()) for p in subnormal_products(2))


def test_a_restore_that_fails_warns_and_keeps_what_the_block_raised(two_threads, monkeypatch):
    subnormal_products(2)
    with (
        pytest.warns(UserWarning, match="subnormal mode not restored"),
        pytest.raises(KeyboardInterrupt),
        flush_denormals(True, CPU),
    ):
        monkeypatch.setattr(denormals, "_gomp_parallel", lambda: None)
        raise KeyboardInterrupt


def test_a_mode_the_calling_thread_alone_had_reaches_every_worker(two_threads):
    subnormal_products(2)
    torch.set_flush_denormal(True)  # torch's own call: the calling thread only
    assert not all(bool((p == 0).all()) for p in subnormal_products(2))  # the workers keep IEEE
    with flush_denormals(True, CPU):
        assert all(bool((p == 0).all()) for p in subnormal_products(2))
    assert flushing()  # the mode found on entry, now on every thread
    assert all(bool((p == 0).all()) for p in subnormal_products(2))


def test_a_gpu_run_leaves_the_cpu_mode_alone():
    with flush_denormals(True, torch.device("cuda")):
        assert not flushing()


def vanishing_run(tmp_path, flush: bool):
    """A last-step-loss run whose adjoints fall through float32's subnormals (0.5 a step)."""
    settings = {
        "task.name": "adding",
        "task.seq_len": 200,
        "model.hidden_size": 8,
        "model.init": "gaussian",
        "model.init_gain": 0.5,
        "train.steps": 2,
        "train.batch_size": 4,
        "train.flush_denormals": flush,
        "device": "cpu",
    }
    out = tmp_path / str(flush)
    train_run(build_config(settings), out, progress=False)
    return load_run(out).table("adjoints")


def test_a_run_that_flushes_records_zeros_where_ieee_keeps_subnormals(tmp_path):
    ieee, flushed = vanishing_run(tmp_path, False), vanishing_run(tmp_path, True)
    for table in (ieee, flushed):
        assert len(table) and bool((table.adjoint_norm >= TINY).any())
    subnormal = (ieee.adjoint_norm > 0) & (ieee.adjoint_norm < TINY)
    assert subnormal.any()  # the run reaches them: what the flushed run must not record
    assert not ((flushed.adjoint_norm > 0) & (flushed.adjoint_norm < TINY)).any()
    assert bool((flushed.adjoint_norm[subnormal.to_numpy()] == 0).all())
    assert not flushing()  # the run gave the mode back
