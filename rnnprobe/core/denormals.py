"""Flush subnormal floats to zero on every CPU thread torch computes on (``train.flush_denormals``).

Once adjoints vanish below float32's smallest normal number (1.2e-38), every product that
reads them takes the CPU's slow microcode path for subnormals: a backward pass through them
runs several times slower (``README.md``, Performance). Flushing them — the CPU's FTZ and DAZ
modes — reads and writes them as 0, as XLA and TensorFlow do on CPUs by default; torch keeps
IEEE's gradual underflow, as rnnprobe does unless a run asks.

The mode is a register of each thread: ``torch.set_flush_denormal`` sets the calling thread's
only, while torch's parallel regions also run on its OpenMP workers. So the mode is set inside
one OpenMP parallel region of torch's own thread count (``GOMP_parallel`` as torch's CPU
library resolves it), then checked on products split across those threads.
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

from rnnprobe.core.threads import usable_cores
from rnnprobe.errors import RnnprobeError

_Body = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def flushing() -> bool:
    """Return whether the calling thread flushes subnormals (reads its mode by a product)."""
    return bool(torch.tensor(2.0**-100) * 2.0**-40 == 0)


def set_flush_denormal(on: bool, threads: int | None = None) -> None:
    """Set the subnormal mode of this thread and of torch's OpenMP workers (``threads`` of them
    at least, torch's count at most), and check it; where that fails, put back the mode found
    and raise a one-line error."""
    threads = max(threads or 1, torch.get_num_threads())
    found = flushing()
    if not torch.set_flush_denormal(on):
        raise RnnprobeError("this CPU cannot flush subnormal floats (no FTZ/DAZ modes)")
    parallel = _gomp_parallel()
    if parallel is not None:
        parallel(_Body(lambda _: torch.set_flush_denormal(on)), None, threads, 0)
    if not _all_threads(on, threads):
        torch.set_flush_denormal(found)
        if parallel is not None:
            parallel(_Body(lambda _: torch.set_flush_denormal(found)), None, threads, 0)
        raise RnnprobeError(
            "could not set the subnormal mode on torch's worker threads; use --threads 1"
        )


@contextmanager
def flush_denormals(on: bool, device: torch.device) -> Iterator[None]:
    """Flush subnormals to zero on the CPU threads in the block if ``on`` (keep them if not)
    when ``device`` is the CPU; afterwards, every thread takes the calling thread's mode found
    on entry (a GPU's arithmetic is not changed). A failed restore warns: the block's work was
    done in the mode asked."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or (
        not on and not flushing() and (threads == 1 or _all_threads(False, threads))
    ):
        yield  # IEEE asked, and torch's threads have it: a default run costs a check or two
        return
    threads = max(threads, usable_cores())  # every core's worker, if the block raises the count
    found = flushing()
    set_flush_denormal(on, threads)
    try:
        yield
    finally:
        try:
            set_flush_denormal(found, max(threads, torch.get_num_threads()))
        except RnnprobeError as error:
            warnings.warn(f"subnormal mode not restored: {error}", stacklevel=3)


@cache
def _gomp_parallel() -> Callable[..., None] | None:
    """Return ``GOMP_parallel`` as torch's CPU library resolves it (the OpenMP runtime torch's
    parallel regions run on, whatever other copies the process loaded), or None."""
    for path in sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*")):
        try:
            function = ctypes.CDLL(str(path)).GOMP_parallel
        except (OSError, AttributeError):
            continue
        function.argtypes = [_Body, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        function.restype = None
        return function
    return None


def _all_threads(on: bool, threads: int) -> bool:
    """Return whether an elementwise product and a matrix product that torch splits across
    ``threads`` threads flush (or keep) the subnormals in every part."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 2**16 * threads  # above torch's grain size of 32768 per thread
        elementwise = torch.full((n,), 2.0**-100) * 2.0**-40  # 2^-140: subnormal in float32
        a = torch.full((128, 128), 2.0**-70)
        matrix = a @ a  # 128 · 2^-140 = 2^-133 each
    finally:
        torch.set_num_threads(before)
    if on:
        return bool((elementwise == 0).all() and (matrix == 0).all())
    return bool((elementwise != 0).all() and (matrix != 0).all())
