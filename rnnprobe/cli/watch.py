"""The ``rnnprobe watch`` command: a live terminal view of a run or a study directory.

Register with ``main.add_command(watch)``; ``python -m rnnprobe.cli.watch`` runs it alone.
The library work is in ``rnnprobe/study/watch.py``; torch and pandas load inside the command only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rnnprobe.cli.command import RnnprobeCommand

__all__ = ["watch"]

EPILOG = """\b
Examples:
  rnnprobe watch runs/train/3f2a9c01de          # while rnnprobe train writes it
  rnnprobe watch runs/seq_len --interval 10     # a study: one line per run
  rnnprobe watch runs/seq_len --once            # one frame, for scripts

\b
The view redraws when the records change and ends by itself, exit 0, once the run (every run
of a study) is done, diverged, failed or interrupted; Ctrl-C leaves with 130. --once exits 1
when the records are damaged.
"""


@click.command(cls=RnnprobeCommand, epilog=EPILOG)
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--interval",
    type=float,
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between looks at the records.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.pass_context
def watch(ctx: click.Context, path: Path, interval: float, once: bool) -> None:
    """Follow a run's (or a study's) records as they are written: loss against the baseline,
    gradient norm and clipping, decay per step, λ₁, regime and outcome, step and status."""
    try:  # Ctrl-C may come while torch and pandas load: they load in here too
        from rnnprobe.study.watch import follow

        code = follow(path, interval=interval, once=once, show=click.echo if once else _show)
    except KeyboardInterrupt:  # the way a live view is meant to end: no message
        code = 130
    if code:
        ctx.exit(code)


def _show(frame: str) -> None:
    """Draw ``frame``: over the last one on a terminal, after it (a blank line apart) in a log."""
    if sys.stdout.isatty():
        click.clear()
    else:
        frame += "\n"
    click.echo(frame)


if __name__ == "__main__":
    watch(prog_name="rnnprobe watch")
