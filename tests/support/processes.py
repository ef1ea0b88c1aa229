"""Test processes that pause at a known step of a run, and waiting on them with a hang guard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

# The kill tests (test_train, test_study) start a real process that pauses in its RUN-th run
# right after the records of step STEP (RunStore.set_status("running", STEP), written after a
# flush or checkpoint) and waits for its stdin to close, so the signal lands at a known point,
# whatever the load. A gated one first does the imports that take seconds, then waits for a
# line on stdin.
PAUSING = textwrap.dedent(
    """
    import importlib, inspect, os, runpy, sys
    from rnnprobe.records.store import RunStore

    module, run, step, gated = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    del sys.argv[1:5]
    runs, real = [], RunStore.set_status

    def set_status(self, *args, **kwargs):
        real(self, *args, **kwargs)
        called, path = inspect.signature(real).bind(self, *args, **kwargs).arguments, self.path
        runs.extend([] if path in runs else [path])
        if (called["status"], called["step"], runs.index(path)) == ("running", step, run - 1):
            RunStore.set_status = real  # once
            print(f"paused in run {run} at step {step}", flush=True)
            os.read(0, 1)  # until the test closes stdin, or kills this process here

    RunStore.set_status = set_status
    if gated == "gated":
        # the latter: imported by the first optimizer
        for name in ("rnnprobe.training.loop", "torch._dynamo"):
            importlib.import_module(name)
        while os.read(0, 1) not in (b"\\n", b""):
            pass
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    """
)
HANG_GUARD = 600  # seconds; only a hung process ever waits this long


def start_pausing(
    module: str, run: int, step: int, args: list[str], gated: bool = False, **popen
) -> subprocess.Popen:
    """Start ``python -m module *args`` in a fresh process that pauses as PAUSING says.

    A ``gated`` one starts when ``go`` is called on it.
    """
    gate = "gated" if gated else "open"
    command = [sys.executable, "-c", PAUSING, module, str(run), str(step), gate, *args]
    pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.Popen(command, text=True, **pipes, **popen)


def go(process: subprocess.Popen) -> None:
    """Let a gated process (see start_pausing) start."""
    process.stdin.write("\n")
    process.stdin.flush()


def wait_for_pause(process: subprocess.Popen) -> str:
    """Return the process's output up to its pause; fail if it exits (or hangs) before."""
    hung = threading.Event()
    guard = threading.Timer(HANG_GUARD, lambda: (hung.set(), process.kill()))
    guard.start()
    lines = []
    try:
        for line in iter(process.stdout.readline, ""):
            lines.append(line)
            if line.startswith("paused in run"):
                return "".join(lines)
    finally:
        guard.cancel()
    stderr = process.communicate()[1]
    why = f"hung for {HANG_GUARD} s, killed" if hung.is_set() else f"exit {process.returncode}"
    raise AssertionError(f"{why} before the pause: {''.join(lines)}{stderr}")


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    """Close the process's stdin; return (exit code, rest of stdout, stderr) once it exits."""
    try:
        stdout, stderr = process.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"still running after {HANG_GUARD} s: killed") from None
    return process.returncode, stdout, stderr
