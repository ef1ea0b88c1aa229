"""Flush subnormal floats to zero on every CPU thread torch computes on (``train.flush_denormals``).

Once adjoints vanish below float32's smallest normal number (1.2e-38), every product that
reads them takes the CPU's slow microcode path for subnormals: a backward pass through them
runs several times slower (``README.md``, Performance). Flushing them — the CPU's FTZ and DAZ
modes — reads and writes them as 0, as XLA and TensorFlow do on CPUs by default; torch keeps
IEEE's gradual underflow, as rnnprobe does unless a run asks.

The mode is a register of each thread: ``torch.set_flush_denormal`` sets the calling thread's
only, while torch's parallel regions also run on its OpenMP workers. So the mode is set inside
one OpenMP parallel region of torch's own thread count (``GOMP_parallel`` of the libgomp torch
loaded), then checked on a product split across those threads.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import torch

from rnnprobe.errors import RnnprobeError

_Body = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def flushing() -> bool:
    """Return whether the calling thread flushes subnormals (reads its mode by a product)."""
    return bool(torch.tensor(2.0**-100) * 2.0**-40 == 0)


def set_flush_denormal(on: bool) -> None:
    """Set the subnormal mode of this thread and of torch's OpenMP workers; raise a one-line
    error where the CPU or the threading cannot."""
    if not torch.set_flush_denormal(on):
        raise RnnprobeError("this CPU cannot flush subnormal floats (no FTZ/DAZ modes)")
    threads = torch.get_num_threads()
    parallel = _gomp_parallel()
    if threads > 1 and parallel is not None:
        body = _Body(lambda _: torch.set_flush_denormal(on))
        parallel(body, None, threads, 0)
    if not _all_threads_flush(on):
        raise RnnprobeError(
            "could not set the subnormal mode on torch's worker threads; use --threads 1"
        )


@contextmanager
def flush_denormals(on: bool, device: torch.device) -> Iterator[None]:
    """Flush subnormals to zero on the CPU threads in the block if ``on`` (keep them if not)
    when ``device`` is the CPU; afterwards, every thread takes the calling thread's mode found
    on entry (a GPU's arithmetic is not changed)."""
    if device.type != "cpu" or not (on or flushing()):  # IEEE asked and found: nothing to do
        yield
        return
    found = flushing()
    set_flush_denormal(on)
    try:
        yield
    finally:
        set_flush_denormal(found)


@cache
def _gomp_parallel() -> Callable[..., None] | None:
    """Return ``GOMP_parallel`` of the libgomp in this process, or None if there is none."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return None
    for path in sorted(paths):
        function = getattr(ctypes.CDLL(path), "GOMP_parallel", None)
        if function is not None:
            function.argtypes = [_Body, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            function.restype = None
            return function
    return None


def _all_threads_flush(on: bool) -> bool:
    """Return whether an elementwise product and a matrix product that torch splits across
    all its threads flush (or keep) the subnormals in every part."""
    n = 2**16 * torch.get_num_threads()  # above torch's grain size of 32768 per thread
    elementwise = torch.full((n,), 2.0**-100) * 2.0**-40  # 2^-140: subnormal in float32
    a = torch.full((128, 128), 2.0**-70)
    matrix = a @ a  # 128 · 2^-140 = 2^-133 each
    if on:
        return bool((elementwise == 0).all() and (matrix == 0).all())
    return bool((elementwise != 0).all() and (matrix != 0).all())
