"""The few lines ``rnnprobe train`` prints at the end of a run (from its one analysis)."""

from __future__ import annotations

import math
from pathlib import Path

from rnnprobe.analysis.diagnosis import analyse_run, subnormal_note
from rnnprobe.analysis.runs import RunSummary
from rnnprobe.records.store import load_run


def format_run_summary(run_dir: str | Path) -> str:
    """Return status, outcome against the task's baseline, per-phase regimes and the run dir."""
    analysis = analyse_run(load_run(run_dir))
    (summary,), (diagnosis,) = analysis.study.runs, analysis.diagnoses
    lines = [f"run {summary.status} after {summary.steps} steps: {run_dir}"]
    lines += diagnosis.lines()[: 2 + len(diagnosis.phases)]  # headline, outcome, phases
    if summary.metric and math.isfinite(summary.final_metric):
        lines.insert(3, _metric_line(summary))
    subnormals = subnormal_note(summary)  # the one note that changes how to run it next time
    if subnormals:
        lines.append(subnormals[0].upper() + subnormals[1:] + ".")
    return "\n".join(lines)


METRIC_NAMES = {"bpc": "bits per character", "mse": "mean squared error"}


def _metric_line(summary: RunSummary) -> str:
    """Return "Metric: <name> <final> (baseline <value>)" from the summary's own numbers."""
    metric = str(summary.metric)  # set: the caller checks
    name = METRIC_NAMES.get(metric, metric)
    line = f"Metric: {name} {summary.final_metric:.4g}"
    if math.isfinite(summary.baseline_metric):
        line += f" (baseline {summary.baseline_metric:.4g})"
    return line + "."
