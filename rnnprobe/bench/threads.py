"""Benchmark: ``rnnprobe train``'s default threading on a machine whose cores are busy.

The README's copy example runs as a fresh ``rnnprobe train`` process beside ``load``
CPU-bound processes (``while True: pass``), once per variant: the default (what a user gets
with no flag), ``--threads N`` for N = 1 … cores, and torch's own default (a thread per core,
OpenMP waiters that spin: ``OMP_WAIT_POLICY=ACTIVE``), what rnnprobe did before it chose. Variants
alternate over ``rounds`` rounds, so drifts in the load hit all alike; each run's training
time is its own record (``seconds`` of the steps table), not counting the start-up.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rnnprobe.errors import RnnprobeError

COPY_EXAMPLE = (  # README, "Training runs": the first example, shortened
    "--task copy --seq-len 5 --nonlinearity relu --init identity --device cpu --no-progress"
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def _train_seconds(args: list[str], env: dict[str, str], out: Path) -> float:
    """Run ``rnnprobe train`` into ``out``; return its recorded training seconds."""
    from rnnprobe.records.store import load_run

    command = [sys.executable, "-m", "rnnprobe.cli.main", "train", *args, "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RnnprobeError(f"benchmark run failed: {done.stderr.strip()[-300:]}")
    return float(load_run(out, tables=("steps",)).table("steps")["seconds"].iloc[-1])


def run_busy_threads(*, steps: int = 150, load: int | None = None, rounds: int = 3) -> str:
    """Return lines: each variant's median training time and its ratio to the best variant."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    load = cores if load is None else load
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    variants: dict[str, tuple[list[str], dict[str, str]]] = {"default": ([], clean)}
    for n in range(1, cores + 1):
        variants[f"--threads {n}"] = ([f"--threads={n}"], clean)
    # what rnnprobe did before choosing: torch's default, a spinning thread per core
    spin = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "INFINITY"}  # what the CLI leaves be
    variants["torch's default"] = ([f"--threads={cores}"], {**clean, **spin})
    args = [*COPY_EXAMPLE.split(), f"--steps={steps}"]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(rounds):
                names = list(variants) if round_ % 2 == 0 else list(reversed(variants))
                for name in names:
                    extra, env = variants[name]
                    out = Path(tmp, f"{round_}-{len(times[name])}-{name.replace(' ', '')}")
                    times[name].append(_train_seconds([*args, *extra], env, out))
    finally:
        for process in busy:
            process.kill()
            process.wait()
    medians = {name: statistics.median(t) for name, t in times.items()}
    best = min(v for k, v in medians.items() if k.startswith("--threads"))
    lines = [
        f"copy example, {steps} steps, beside {load} CPU-bound processes on {cores} cores "
        f"(median of {rounds} rounds; ratio to the best --threads value):"
    ]
    lines += [f"  {name:<16s} {t:7.2f} s   ratio {t / best:.2f}" for name, t in medians.items()]
    return "\n".join(lines)
