"""The ``rnnprobe fixed-points`` command: fixed and slow points of a trained run's layer.

Parses the flags and calls :func:`rnnprobe.report.fixed_points.analyse_run` and
``write_results`` (what is computed and written is documented there). The result line names the
checkpoint's step; for a run that diverged a warning line on stderr says so first, and weights
that are not finite are refused (exit 2). Registered by
``cli/main.py`` with ``main.add_command(fixed_points)``; only click is imported here until the
command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from rnnprobe.cli.command import RnnprobeCommand
from rnnprobe.errors import RnnprobeError, check_count
from rnnprobe.training.config import check_seed

__all__ = ["fixed_points", "parse_input"]

EPILOG = """\b
Examples:
  rnnprobe fixed-points runs/train/<id>                  # zero input, layer 0
  rnnprobe fixed-points runs/train/<id> --input mean --starts 512
  rnnprobe fixed-points runs/train/<id> --input 3 --out fp/token3   # token id 3 held

\b
Writes points.parquet/.csv, eigenvalues, coordinates, trajectories and visited (.parquet),
summary.json, fixed_points.png and README.md under RUN/fixed_points/layer<L>-<input>.
"""


@click.command("fixed-points", cls=RnnprobeCommand, epilog=EPILOG)
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--input",
    "input_spec",
    default="zero",
    show_default=True,
    metavar="zero|mean|TOKEN",
    help="The constant input: zero (u = b_ih + b_hh), mean (the mean input the layer saw), "
    "or a token id held at every step (token tasks, layer 0).",
)
@click.option("--layer", default=0, show_default=True, help="Layer index, 0 = next to the input.")
@click.option("--starts", default=256, show_default=True, help="Visited states to start from.")
@click.option("--batches", default=4, show_default=True, help="Evaluation batches to run.")
@click.option("--noise", default=0.01, show_default=True, help="Std of the noise added to starts.")
@click.option(
    "--slow-tol",
    default=1e-3,
    show_default=True,
    help="Keep minima with q = ½‖F(h) − h‖² below this as slow points (fixed: q < 1e-12).",
)
@click.option("--seed", default=0, show_default=True, help="Seeds the choice of starts.")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output directory [default: RUN/fixed_points/layer<L>-<input>].",
)
def fixed_points(
    run: Path,
    input_spec: str,
    layer: int,
    starts: int,
    batches: int,
    noise: float,
    slow_tol: float,
    seed: int,
    out: Path | None,
) -> None:
    """Find the fixed and slow points of a run's layer under a constant input."""
    held = parse_input(input_spec)
    check_seed(seed)
    check_count(starts, "--starts")
    check_count(batches, "--batches")
    check_count(layer, "--layer", 0)
    if not (noise >= 0 and 0 < slow_tol < float("inf")):
        raise RnnprobeError(f"need --noise >= 0 and --slow-tol > 0, got {noise} and {slow_tol}")
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed or wanted
    from tqdm import tqdm

    from rnnprobe.report.fixed_points import (
        analyse_run,
        count_text,
        divergence_note,
        write_results,
    )

    # the search takes seconds to minutes: a bar of its evaluations, on a terminal only
    with tqdm(unit=" evaluations", disable=None, leave=False, dynamic_ncols=True) as bar:
        shown = [""]

        def progress(stage: str) -> None:
            if stage != shown[0]:  # (a disabled bar keeps no description to compare)
                shown[0] = stage
                bar.set_description_str(f"fixed points, {stage}", refresh=False)
            bar.update()

        found = analyse_run(
            run, held, layer=layer, starts=starts, batches=batches, noise=noise,
            slow_tol=slow_tol, seed=seed, progress=progress,
        )  # fmt: skip
    out = run / "fixed_points" / f"layer{layer}-{held}" if out is None else out
    write_results(found, out)
    note = divergence_note(found.settings)
    if note is not None:
        click.echo(f"rnnprobe: warning: {note}", err=True)
    fp = found.result
    counts = ", ".join(count_text(n, category) for category, n in fp.counts().items())
    click.echo(
        f"layer {layer}, input {held}, checkpoint at step {found.settings['checkpoint_step']}: "
        f"{counts} from {fp.starts} starts ({fp.discarded} ended above q = {slow_tol:g}); "
        f"wrote {out / 'README.md'}"
    )


def parse_input(text: str) -> str | int:
    """Return "zero", "mean" or a token id (int >= 0) from ``--input``'s text."""
    text = text.strip().lower()
    if text in ("zero", "mean"):
        return text
    if text.isdigit():
        return int(text)
    raise RnnprobeError(f"--input must be zero, mean or a token id (an integer >= 0), got {text!r}")


if __name__ == "__main__":
    fixed_points(prog_name="rnnprobe fixed-points")
