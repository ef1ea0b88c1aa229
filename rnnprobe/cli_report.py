"""The ``rnnprobe report`` command: a run's or a study's stored records into an HTML report.

Registered by ``cli.py`` with ``main.add_command(report)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["report"]


@click.command(
    epilog="Examples: rnnprobe report runs/copy-tanh; "
    "rnnprobe report runs/init_gain -o reports/init_gain",
)
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Report directory [default: reports/<name of PATH>].",
)
def report(path: Path, output: Path | None) -> None:
    """Write index.html, README.md with PNG figures, and summary.csv for a run or study dir."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed or wanted
    from rnnprobe.cli import report_error
    from rnnprobe.report import build_report

    try:
        out = build_report(path, output)
    except Exception as error:  # also when used outside the rnnprobe group
        sys.exit(report_error(error))
    click.echo(f"wrote {out / 'index.html'}, {out / 'README.md'} and {out / 'summary.csv'}")


if __name__ == "__main__":
    report()
