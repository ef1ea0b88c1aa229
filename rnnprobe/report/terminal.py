"""The few lines ``rnnprobe train`` prints at the end of a run (from its one analysis)."""

from __future__ import annotations

from pathlib import Path

from rnnprobe.analysis.diagnosis import analyse_run, subnormal_note
from rnnprobe.records.store import Run, load_run


def format_run_summary(run_dir: str | Path) -> str:
    """Return status, outcome against the task's baseline, per-phase regimes and the run dir;
    then the early warning and the snapshots to replay, if any, and the report to run next."""
    run = load_run(run_dir)
    analysis = analyse_run(run)
    (summary,), (diagnosis,) = analysis.study.runs, analysis.diagnoses
    lines = [f"run {summary.status} after {summary.steps} steps: {run_dir}"]
    metric = diagnosis.metric_line is not None
    lines += diagnosis.lines()[: 2 + metric + len(diagnosis.phases)]  # to the phases' lines
    subnormals = subnormal_note(summary)  # the one note that changes how to run it next time
    if subnormals:
        lines.append(subnormals[0].upper() + subnormals[1:] + ".")
    lines += _warning_lines(run, Path(run_dir))
    lines.append(f"Figures and the full diagnosis: rnnprobe report {run_dir}")
    return "\n".join(lines)


def _warning_lines(run: Run, run_dir: Path) -> list[str]:
    """Return the first early warning (its sign and numbers) and a replay command for each
    snapshot the run wrote (the first warning's and the first non-finite step's)."""
    lines = []
    events = run.table("events")
    if "kind" in events:
        warned = events[events["kind"] == "warning"]
        if len(warned):
            first = warned.sort_values("step").iloc[0]
            sign = str(first["message"]).split("; snapshot ")[0]  # the replay line names it
            lines.append(f"Early warning at step {int(first['step'])}: {sign}.")
    # training.warning writes snapshots/<step>-<kind>.pt (temporaries start with a dot)
    snapshots = sorted(
        (int(file.name.split("-")[0]), file.name)
        for file in (run_dir / "snapshots").glob("[0-9]*-*.pt")
    )
    for step, name in snapshots:
        kind = name.removesuffix(".pt").partition("-")[2]
        lines.append(f"Replay step {step} ({kind}): rnnprobe replay {run_dir / 'snapshots' / name}")
    return lines
