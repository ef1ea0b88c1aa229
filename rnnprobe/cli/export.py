"""The ``rnnprobe export`` command: a run's or a study's stored records in another format.

Registered by ``cli/main.py`` with ``main.add_command(export)``; ``python -m rnnprobe.cli.export``
runs it alone. Only click is imported here; torch, pandas, matplotlib and tensorboard load when
the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rnnprobe.cli.command import RnnprobeCommand

__all__ = ["export"]

EPILOG = """\b
Examples:
  rnnprobe export runs/train/<id> --tensorboard tb
  rnnprobe export runs/seq_len --tensorboard tb/seq_len    # a study: one TensorBoard run each
  tensorboard --logdir tb

\b
Each run goes to DIR/<run name> (a study's runs: <id>_<axis>=<value>_...); exporting again
replaces those event files. A study's runs without records yet are skipped with a note; exit
status 1 when some run's records are damaged.
Needs the tensorboard package: pip install 'rnnprobe[tensorboard]'.
"""


@click.command(cls=RnnprobeCommand, epilog=EPILOG)
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--tensorboard",
    "tensorboard_dir",
    type=click.Path(path_type=Path),
    required=True,
    metavar="DIR",
    help="Write TensorBoard event files under DIR (created if needed).",
)
def export(path: Path, tensorboard_dir: Path) -> None:
    """Write a run's or a study's records as TensorBoard event files (scalars, heatmaps)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed or wanted
    from rnnprobe.report.export import export_tensorboard

    done = export_tensorboard(path, tensorboard_dir)
    for run_id, reason in done.skipped + done.damaged:
        click.echo(f"rnnprobe: skipped {run_id}: {reason}", err=True)
    points = sum(run.points for run in done.runs)
    images = sum(len(run.image_tags) for run in done.runs)
    click.echo(
        f"wrote {_count(len(done.runs), 'run')} ({_count(points, 'scalar')}, "
        f"{_count(images, 'heatmap')}) to {done.directory}; "
        f"view with: tensorboard --logdir {done.directory}"
    )
    if done.damaged:  # damaged records that cannot be recovered: exit 1, as elsewhere
        sys.exit(1)


def _count(n: int, noun: str) -> str:
    """Return "1 run", "2 runs": ``n`` and the noun, plural unless n is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


if __name__ == "__main__":
    export(prog_name="rnnprobe export")
