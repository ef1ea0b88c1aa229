"""The few lines ``rnnprobe train`` prints at the end of a run (from its one analysis)."""

from __future__ import annotations

from pathlib import Path

from rnnprobe.diagnosis import analyse_run
from rnnprobe.store import load_run


def format_run_summary(run_dir: str | Path) -> str:
    """Return status, outcome against the task's baseline, per-phase regimes and the run dir."""
    analysis = analyse_run(load_run(run_dir))
    (summary,), (diagnosis,) = analysis.study.runs, analysis.diagnoses
    lines = [f"run {summary.status} after {summary.steps} steps: {run_dir}"]
    lines += diagnosis.lines()[: 2 + len(diagnosis.phases)]  # headline, outcome, phases
    return "\n".join(lines)
