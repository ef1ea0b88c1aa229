"""The ``rnnprobe replay`` command: one snapshotted training step, recomputed and explained.

Register with ``main.add_command(replay)``; ``python -m rnnprobe.cli.replay`` runs it alone.
The library work is in ``rnnprobe/report/replay.py``; torch, pandas and matplotlib load inside
the command only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rnnprobe.cli.command import RnnprobeCommand

__all__ = ["replay"]

EPILOG = """\b
Examples:
  rnnprobe replay runs/train/3f2a9c01de/snapshots/412-warning.pt
  rnnprobe replay runs/train/3f2a9c01de/snapshots/430-nonfinite.pt --out blowup

\b
A run writes RUN/snapshots/<step>-warning.pt at its first warning and
<step>-nonfinite.pt at its first non-finite step (--warn, on by default): the
state that step started from. replay runs the step again, twice, checks that
the loss and every gradient tensor come out bit for bit as the run computed
them (same machine, torch version and thread count), then writes README.md,
index.html and PNG figures: ‖∂L/∂h_t‖ over t, the steps and hidden units that
∇W_hh comes from, gradient reach, Jacobian and Lyapunov spectra.

\b
Exit status 0 when the step is reproduced; 1 when it is not (the report says
what differs) or the snapshot is damaged; 2 when the file is not a snapshot.
"""


@click.command(cls=RnnprobeCommand, epilog=EPILOG)
@click.argument("snapshot", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Report directory [default: the snapshot's path without .pt, plus -replay].",
)
def replay(snapshot: Path, out: Path | None) -> None:
    """Recompute a snapshotted training step with every probe on, check that it reproduces
    the run's numbers, and report where its gradient came from."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed or wanted
    from rnnprobe.report.replay import replay_snapshot

    done = replay_snapshot(snapshot, out)
    step = f"step {done.step} ({done.kind})"
    numbers = f"loss {done.loss:.6g}, pre-clip gradient norm {done.grad_norm:.6g}"
    figures = f"{len(done.figures)} figures"
    if done.reproduced:
        click.echo(f"{step}: reproduced bit for bit ({numbers}, as recorded; twice)")
    click.echo(f"wrote {done.out / 'README.md'} and {done.out / 'index.html'} ({figures})")
    if not done.reproduced:
        failed = "; ".join(f"{c.what}: {c.expected} vs {c.got}" for c in done.checks if not c.equal)
        click.echo(f"rnnprobe: error: {step} was not reproduced ({failed})", err=True)
        sys.exit(1)


if __name__ == "__main__":
    replay(prog_name="rnnprobe replay")
