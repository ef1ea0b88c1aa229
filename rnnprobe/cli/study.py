"""``rnnprobe study``: a resumable grid of training runs, from flags and/or a TOML spec.

Register with ``main.add_command(study)``; ``python -m rnnprobe.cli.study`` runs it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pandas as pd

    from rnnprobe.analysis.diagnosis import StudyAnalysis
    from rnnprobe.study.executors import Executor
    from rnnprobe.study.spec import StudySpec
from rnnprobe.cli.command import RnnprobeCommand
from rnnprobe.cli.options import pop_settings, setting_options
from rnnprobe.errors import RnnprobeError
from rnnprobe.training.config import SCHEDULE_HELP

__all__ = ["format_summary", "study", "write_summary"]

EPILOG = """\b
Examples:
  rnnprobe study --seq-len 8 --seq-len 32 --nonlinearity tanh --nonlinearity relu --steps 50
  rnnprobe study --task copy --seq-len 10 --seq-len 50 --seeds 3 --steps 2000 --out runs/seq_len
  rnnprobe study studies/seq_len.toml --set train.steps=200 --jobs 2
  rnnprobe study studies/smoke.toml --executor ray --address 10.0.0.5:6379

\b
A flag given several times is a sweep axis; given once it fixes the setting (over the spec's).
Rerun the same command to resume: finished runs are skipped, interrupted ones continue from
their last checkpoint, failed ones start over. Exit status: 0 all finished, 1 some runs
failed, 2 bad input, 130 interrupted.

\b
Columns of the summary (and OUT/summary.csv): README.md, "Reading a diagnosis".
"""


@click.command(cls=RnnprobeCommand, epilog=f"{EPILOG}\n{SCHEDULE_HELP}")
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@setting_options(multiple=True)
@click.option("--seeds", type=int, default=None, help="Run seeds 0..N-1 (an axis on seed).")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Fix a setting by dotted key, e.g. train.steps=200 (repeatable).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Study directory [default: runs/<spec name>, or runs/study].",
)
@click.option("--jobs", type=int, default=None, help="Runs at once [default: CPU count].")
@click.option(
    "--executor",
    "executor_kind",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine; ray: one Ray task per run (shared filesystem).",
)
@click.option("--address", default=None, help="Ray cluster HOST:PORT [default: a local Ray].")
@click.option(
    "--force-new",
    is_flag=True,
    help="Replace a different study's index in --out; runs both share are reused.",
)
@click.option("--report/--no-report", default=True, help="Build the report at the end.")
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the report goes [default: OUT/report].",
)
@click.pass_context
def study(ctx: click.Context, **options: object) -> None:
    """Run a grid of training runs (resumable) and summarise them.

    SPEC_FILE is an optional TOML study spec (see studies/); flags override its settings.
    """
    code = _study(**options)  # type: ignore[arg-type]
    if code:
        ctx.exit(code)


def _study(
    spec_file: Path | None,
    seeds: int | None,
    assignments: tuple[str, ...],
    out: Path | None,
    jobs: int | None,
    executor_kind: str,
    address: str | None,
    force_new: bool,
    report: bool,
    report_dir: Path | None,
    **settings: object,
) -> int:
    from rnnprobe.study.spec import StudySpec, expand, load_spec, override
    from rnnprobe.training.config import parse_assignment

    flags = pop_settings(settings)
    spec = load_spec(spec_file) if spec_file is not None else StudySpec("study")
    spec = override(spec, flags, [parse_assignment(a) for a in assignments], seeds=seeds)
    out = out if out is not None else Path("runs") / spec.name
    try:  # a bad grid is refused before torch loads or the lock file goes in
        points = expand(spec)
    except RnnprobeError as error:
        if spec_file is None:
            raise
        where = f"{spec_file} with the options given" if flags or assignments else spec_file
        raise RnnprobeError(f"{where}: {error}") from None
    from rnnprobe.study.executors import make_executor
    from rnnprobe.study.runner import check_runs_can_start, study_lock

    check_runs_can_start(points)  # bad data or device: before the study directory exists

    executor = make_executor(executor_kind, jobs, address)
    with study_lock(out):  # one study process per directory, through its report
        return _run_and_report(spec, out, executor, force_new, report, report_dir)


def _run_and_report(
    spec: StudySpec,
    out: Path,
    executor: Executor,
    force_new: bool,
    report: bool,
    report_dir: Path | None,
) -> int:
    from rnnprobe.analysis.diagnosis import analyse_study
    from rnnprobe.report.pages import PLOT_TABLES, build_report
    from rnnprobe.study.runner import run_study

    result = run_study(spec, out, executor, force_new=force_new, echo=click.echo)
    if result.interrupted:
        unfinished = sum(n for s, n in result.statuses.items() if s not in ("done", "diverged"))
        left = f"{unfinished} runs unfinished" if unfinished else "every run finished"
        click.echo(
            f"rnnprobe: study interrupted with {left}; rerun the same command to continue",
            err=True,
        )
        return 130
    analysis = analyse_study(out, keep=PLOT_TABLES if report else ())
    write_summary(analysis.table, out)
    click.echo(format_summary(analysis))
    click.echo(f"summary: {out / 'summary.csv'}")
    if report:
        built = build_report(
            out, report_dir if report_dir is not None else out / "report", analysis=analysis
        )
        click.echo(f"report: {built}")
    if result.failed:
        click.echo(
            f"rnnprobe: {result.failed} runs failed (errors in {out / 'study.json'}); "
            "rerun the same command to retry them",
            err=True,
        )
        return 1
    return 0


def write_summary(table: pd.DataFrame, out: Path) -> None:
    """Write the summary table as ``out/summary.csv`` and ``out/summary.parquet``."""
    table.to_csv(out / "summary.csv", index=False)
    table.to_parquet(out / "summary.parquet", index=False)


def format_summary(analysis: StudyAnalysis) -> str:
    """Return the answer lines, then the summary table's shown columns (same names as the CSV),
    each cell as the report's table writes it ("grows" or "flat" for a half-life, not inf)."""
    from rnnprobe.report.pages import display_table

    if analysis.table.empty:
        return "(no runs)"
    table = display_table(analysis.shown, analysis.table).to_string(index=False)
    return "\n".join([*analysis.diagnosis.answer, "", table])


if __name__ == "__main__":
    study(prog_name="rnnprobe study")
