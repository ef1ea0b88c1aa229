"""Hypothesis profiles (HYPOTHESIS_PROFILE=dev|ci|intense), one torch thread everywhere, and
Triton's interpreter on a machine without a GPU.

One torch thread in this process and in every process a test starts (they inherit
OMP_NUM_THREADS): the tests' tiny tensors gain nothing from more, on busy cores a team of
threads spins waiting for its members, and rounding depends on the thread count, so records
compared across processes need the same count. Set OMP_NUM_THREADS to choose another.
"""

import os
import subprocess

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():  # the fused kernels' tests run them on CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "intense", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

TORCH_THREADS = int(os.environ["OMP_NUM_THREADS"])  # as every child process starts with


@pytest.fixture(autouse=True)
def _torch_threads_as_in_child_processes():
    """Give every test TORCH_THREADS torch threads, whatever the last one set.

    ``rnnprobe train --threads`` and pool workers run in-process set them.
    """
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    yield


@pytest.fixture
def started():
    """Yield a list for the processes a test starts; kill those still running afterwards."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()
