"""The ``rnnprobe report`` command: stored records into an HTML report.

One run or one study gets its own report (:func:`rnnprobe.report.pages.build_report`); two or more
runs get a comparison report that overlays them (:func:`rnnprobe.report.compare.build_comparison`).
Registered by ``cli/main.py`` with ``main.add_command(report)``; ``python -m rnnprobe.cli.report``
runs it alone. Ctrl-C part-way (exit 130, ``rnnprobe: interrupted``) or an error leaves the output
directory as it was: no half-written report (:mod:`rnnprobe.report.staging`).
"""

from __future__ import annotations

from pathlib import Path

import click

from rnnprobe.cli.command import RnnprobeCommand

__all__ = ["report"]


@click.command(
    cls=RnnprobeCommand,
    epilog="Examples: rnnprobe report runs/train/3f2a9c01de; "
    "rnnprobe report runs/train/3f2a9c01de runs/train/8b1e44d2a0 (a comparison); "
    "rnnprobe report runs/init_gain -o reports/init_gain",
)
@click.argument(
    "paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(path_type=Path)
)
@click.option(
    "-o",
    "--out",
    "--output",  # its first name, kept for scripts that use it
    "output",
    type=click.Path(path_type=Path),
    default=None,
    help="Report directory [default: RUN/report for a run, STUDY/report for a study, "
    "./compare-<first run id>-<n>runs for several runs].",
)
def report(paths: tuple[Path, ...], output: Path | None) -> None:
    """Write index.html, README.md with PNG figures, and summary.csv for a run or study dir.

    Given two or more run directories, write a comparison report instead: their loss,
    gradient reach, adjoint norms and λ₁ overlaid, one colour per run, and one summary row
    per run.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed or wanted
    if len(paths) == 1:
        from rnnprobe.report.pages import build_report

        out = build_report(paths[0], output)
    else:
        from rnnprobe.report.compare import build_comparison

        out = build_comparison(paths, output)
    click.echo(f"wrote {out / 'index.html'}, {out / 'README.md'} and {out / 'summary.csv'}")


if __name__ == "__main__":
    report(prog_name="rnnprobe report")
