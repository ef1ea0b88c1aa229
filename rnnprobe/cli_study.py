"""``rnnprobe study``: a resumable grid of training runs, from flags and/or a TOML spec.

Register with ``main.add_command(study)``; ``python -m rnnprobe.cli_study`` runs it alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pandas as pd

from rnnprobe.errors import RnnprobeError
from rnnprobe.options import pop_settings, setting_options

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
"""

# summary column -> printed header; axes are printed first under their last key part
SHOWN = {
    "status": "status",
    "steps": "steps",
    "final_loss": "loss",
    "final_valid_loss": "valid",
    "loss_ratio": "/baseline",
    "final_metric": "metric",
    "decay_per_step": "decay",
    "predicted_decay": "mf_decay",
    "half_life": "half_life",
    "half_life_over_seq_len": "hl/T",
    "lyapunov_max": "lyap",
    "divergence_step": "div_step",
}


@click.command(epilog=EPILOG)
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
    try:
        code = _study(**options)
    except RnnprobeError as error:  # also handled by the group; this keeps `-m` one-line
        click.echo(f"rnnprobe: error: {error}", err=True)
        code = 2
    except KeyboardInterrupt:  # after the runs: while summarising or reporting
        click.echo("rnnprobe: interrupted", err=True)
        code = 130
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
    from rnnprobe.analysis import study_summary
    from rnnprobe.config import parse_assignment
    from rnnprobe.executors import make_executor
    from rnnprobe.study import StudySpec, load_spec, override, run_study

    flags = pop_settings(settings)
    spec = load_spec(spec_file) if spec_file is not None else StudySpec("study")
    spec = override(spec, flags, [parse_assignment(a) for a in assignments], seeds=seeds)
    out = out if out is not None else Path("runs") / spec.name
    executor = make_executor(executor_kind, jobs, address)
    result = run_study(spec, out, executor, force_new=force_new, echo=click.echo)
    if result.interrupted:
        unfinished = sum(n for s, n in result.statuses.items() if s not in ("done", "diverged"))
        left = f"{unfinished} runs unfinished" if unfinished else "every run finished"
        click.echo(
            f"rnnprobe: study interrupted with {left}; rerun the same command to continue",
            err=True,
        )
        return 130
    table = study_summary(out)
    write_summary(table, out)
    click.echo(format_summary(table))
    click.echo(f"summary: {out / 'summary.csv'}")
    if report:
        _build_report(out, report_dir if report_dir is not None else out / "report")
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


def format_summary(table: pd.DataFrame) -> str:
    """Return the summary as a concise text table: axes, outcome, loss and gradient decay."""
    if table.empty:
        return "(no runs)"
    start = table.columns.get_loc("run_id") + 1
    axes = list(table.columns[start : table.columns.get_loc("status")])
    short = [a.rpartition(".")[2] for a in axes]
    names = {"run_id": "run"}
    names.update({a: s if short.count(s) == 1 else a for a, s in zip(axes, short, strict=True)})
    names.update({k: v for k, v in SHOWN.items() if k in table})
    shown = table[list(names)].rename(columns=names)
    shown = shown.dropna(axis=1, how="all")
    return shown.to_string(index=False, float_format=lambda x: f"{x:.4g}")


def _build_report(out: Path, report_dir: Path) -> None:
    try:
        from rnnprobe.report import build_report
    except ImportError:
        click.echo("no report: rnnprobe.report is not available")
        return
    built = build_report(out, report_dir)
    click.echo(f"report: {built if built is not None else report_dir}")


if __name__ == "__main__":
    sys.exit(study(prog_name="rnnprobe study"))
