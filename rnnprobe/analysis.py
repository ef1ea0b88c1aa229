r"""Summaries of stored runs: gradient-decay fits, one row per run, one table per study.

Pure functions over the tables :mod:`rnnprobe.store` wrote; no live model. A missing table or
column gives NaN, never an error.

Conventions, stated once:

* *Last recorded step*: the largest ``step`` in the table in question.
* *Top layer*: the largest ``layer`` index (the one the loss sees first). Decay, Lyapunov
  exponent, saturation and the mean-field prediction are all read for the top layer.
* *Decay*: least squares of ``ln ‖∂ℓ_s/∂h_t‖`` on the distance ``d = s − t`` over every source
  ``s`` at the last reach step (``d ≥ 1``, finite positive norms), slope ``b``:
  ``rate = e^b`` per step, ``half-life = ln 2 / −b`` (inf when ``b ≥ 0``). Without reach rows
  it falls back to the adjoints table: ``ln ‖δ_t‖`` on ``d = T − 1 − t``.
* *Final training loss*: mean over the last 10 % of recorded steps (at least one), skipping
  steps whose update was skipped or whose loss is not finite.
* *Beat the baseline*: final loss (validation if any, else training) below
  ``BEAT_BASELINE`` × the task's memoryless baseline loss.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rnnprobe.config import config_from_dict, flatten
from rnnprobe.store import Run, is_run_dir, load_run

__all__ = ["BEAT_BASELINE", "DecayFit", "fit_decay", "run_summary", "study_summary"]

BEAT_BASELINE = 0.95  # a loss within 5 % of the baseline is noise, not learning
FINAL_FRACTION = 0.10
SUMMARY_TABLES = ("task", "steps", "evals", "adjoints", "reach", "lyapunov", "health")
SUMMARY_TABLES += ("mean_field", "events")
NAN = float("nan")


@dataclass(frozen=True)
class DecayFit:
    """Gradient decay per step e^slope, its half-life in steps, the fit's R², the points used,
    and the table fitted (``reach``, ``adjoints`` or ``none``)."""

    rate_per_step: float
    half_life: float
    r2: float
    n: int
    table: str = "reach"


def fit_decay(
    reach: pd.DataFrame, adjoints: pd.DataFrame | None = None, *, layer: int | None = None
) -> DecayFit:
    """Return the exponential fit of gradient norm against distance at the last step.

    Reach curves of different source steps start from different ‖∂ℓ_s/∂h_s‖ (a loss term
    near the start of a sequence may be tiny), so each source gets its own intercept and
    only the common slope of ln ‖∂ℓ_s/∂h_t‖ against s − t is fitted.
    """
    rows = _last_step(reach, layer)
    if not rows.empty and {"distance", "norm"} <= set(rows.columns):
        groups = rows.get("source")
        return _fit(rows["distance"], rows["norm"], "reach", groups)
    rows = _last_step(adjoints, layer) if adjoints is not None else rows.iloc[0:0]
    if not rows.empty and {"t", "adjoint_norm"} <= set(rows.columns):
        distance = rows["t"].max() - rows["t"]  # T − 1 − t with T = max t + 1
        return _fit(distance, rows["adjoint_norm"], "adjoints")
    return DecayFit(NAN, NAN, NAN, 0, "none")


def _last_step(table: pd.DataFrame, layer: int | None) -> pd.DataFrame:
    """Return the rows of the table's last step and chosen layer (top layer by default)."""
    if table is None or table.empty or "step" not in table:
        return pd.DataFrame()
    rows = table[table["step"] == table["step"].max()]
    if "layer" in rows:
        rows = rows[rows["layer"] == (rows["layer"].max() if layer is None else layer)]
    return rows


def _fit(
    distance: pd.Series, norm: pd.Series, table: str, groups: pd.Series | None = None
) -> DecayFit:
    """Least-squares slope of ln norm against distance, one intercept per group."""
    x = pd.to_numeric(distance, errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(norm, errors="coerce").to_numpy(dtype=float)
    g = np.zeros(len(x)) if groups is None else groups.to_numpy()
    keep = (x >= 1) & np.isfinite(y) & (y > 0)  # decay across at least one Jacobian
    frame = pd.DataFrame({"x": x[keep], "y": np.log(y[keep]), "g": g[keep]})
    frame = frame[frame.groupby("g")["x"].transform("nunique") >= 2]  # a slope needs 2 points
    if frame.empty:
        return DecayFit(NAN, NAN, NAN, 0, table)
    dx = frame["x"] - frame.groupby("g")["x"].transform("mean")
    dy = frame["y"] - frame.groupby("g")["y"].transform("mean")
    slope = float((dx * dy).sum() / (dx * dx).sum())
    total = float((dy * dy).sum())
    residual = float(((dy - slope * dx) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else NAN
    half_life = math.log(2) / -slope if slope < 0 else math.inf
    return DecayFit(float(math.exp(slope)), float(half_life), float(r2), len(frame), table)


def run_summary(run: Run, axes: Sequence[str] = ()) -> dict[str, Any]:
    """Return one summary row of a run: its axes, outcome, loss vs baseline and gradient health.

    Keys: ``run_id``, each dotted key of ``axes`` (its config value), ``status``, ``steps``,
    ``final_loss``, ``final_valid_loss``, ``baseline_loss``, ``loss_ratio``,
    ``beat_baseline``, ``metric``, ``final_metric``, ``seq_len`` (T, the steps the network runs
    per sequence), ``decay_per_step``, ``half_life``, ``decay_r2``, ``half_life_over_seq_len``,
    ``lyapunov_max`` (top layer, last step), ``saturation`` (tanh) and ``dead_fraction``
    (ReLU) of the top layer at the last health step, ``divergence_step`` (first skipped
    update or ``diverged`` event), ``predicted_decay`` and ``predicted_half_life`` (mean
    field, top layer) and ``seconds`` of training (wall clock, not reproducible).
    """
    config = flatten(run.config or {})
    row: dict[str, Any] = {"run_id": _run_id(run)}
    row.update({key: config.get(key) for key in axes})
    steps, evals, task = run.table("steps"), run.table("evals"), run.table("task")
    row["status"] = run.status.get("status", "pending")
    row["steps"] = int(run.status.get("step", _last(steps, "step", 0)))
    row["final_loss"] = _final_mean(steps, "loss")
    row["final_valid_loss"] = _last(evals, "loss")
    row["baseline_loss"] = _first(task, "baseline_loss")
    loss = row["final_valid_loss"] if np.isfinite(row["final_valid_loss"]) else row["final_loss"]
    row["loss_ratio"] = loss / row["baseline_loss"] if row["baseline_loss"] else NAN
    row["beat_baseline"] = bool(row["loss_ratio"] < BEAT_BASELINE)
    row["metric"] = task["metric"].iloc[0] if "metric" in task and len(task) else None
    row["final_metric"] = _last(evals, "metric") if len(evals) else _final_mean(steps, "metric")
    # T, the steps the network runs (copy: the delay + 20), from the task table when present.
    steps_run = _first(task, "seq_len")
    row["seq_len"] = steps_run if np.isfinite(steps_run) else config.get("task.seq_len", NAN)
    fit = fit_decay(run.table("reach"), run.table("adjoints"))
    row["decay_per_step"], row["half_life"], row["decay_r2"] = (
        fit.rate_per_step,
        fit.half_life,
        fit.r2,
    )
    row["half_life_over_seq_len"] = fit.half_life / row["seq_len"] if row["seq_len"] else NAN
    lyapunov = _last_step(run.table("lyapunov"), None)
    row["lyapunov_max"] = float(lyapunov["exponent"].max()) if "exponent" in lyapunov else NAN
    health = _last_step(run.table("health"), None)
    row["saturation"] = _first(health, "saturation")
    row["dead_fraction"] = _first(health, "dead_fraction")
    row["divergence_step"] = _divergence_step(steps, run.table("events"))
    mean_field = run.table("mean_field")
    if "layer" in mean_field and len(mean_field):
        mean_field = mean_field[mean_field["layer"] == mean_field["layer"].max()]
    row["predicted_decay"] = _first(mean_field, "predicted_decay")
    row["predicted_half_life"] = _first(mean_field, "predicted_half_life")
    row["seconds"] = _last(steps, "seconds")
    return row


def _run_id(run: Run) -> str:
    try:
        return config_from_dict(run.config).run_id()
    except Exception:  # an old or partial config: the directory name still identifies it
        return run.path.name


def _numbers(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table or table.empty:
        return pd.Series(dtype=float)
    return pd.to_numeric(table.sort_values("step")[column] if "step" in table else table[column])


def _first(table: pd.DataFrame, column: str) -> float:
    values = _numbers(table, column)
    return float(values.iloc[0]) if len(values) else NAN


def _last(table: pd.DataFrame, column: str, default: float = NAN) -> float:
    values = _numbers(table, column)
    return float(values.iloc[-1]) if len(values) else default


def _final_mean(steps: pd.DataFrame, column: str) -> float:
    """Return the mean of ``column`` over the last 10 % of steps, skipped/non-finite dropped."""
    if column not in steps or steps.empty:
        return NAN
    steps = steps.sort_values("step")
    tail = steps.iloc[-max(1, math.ceil(FINAL_FRACTION * len(steps))) :]
    values = pd.to_numeric(tail[column], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(values)
    if "skipped" in tail:
        keep &= ~tail["skipped"].fillna(False).astype(bool).to_numpy()
    return float(values[keep].mean()) if keep.any() else NAN


def _divergence_step(steps: pd.DataFrame, events: pd.DataFrame) -> float:
    candidates = []
    if "skipped" in steps and len(steps):
        skipped = steps[steps["skipped"].fillna(False).astype(bool)]
        candidates += list(skipped["step"])
    if "kind" in events and len(events):
        candidates += list(events[events["kind"] == "diverged"]["step"])
    return float(min(candidates)) if candidates else NAN


def study_summary(study_dir: str | os.PathLike) -> pd.DataFrame:
    """Return one summary row per run of the study in ``study_dir``, in grid order.

    Reads ``study.json`` for the runs and axes (a run not started yet gets a row of NaN with
    the index's status); without an index, every run directory under ``runs/`` is summarised
    and the axes are the settings that differ between them.
    """
    from rnnprobe.study import read_index

    study_dir = Path(study_dir)
    index = read_index(study_dir)
    if index is None:
        return _summary_without_index(study_dir)
    axes = list(index.get("axes", {}))
    rows = []
    for entry in index.get("runs", []):
        path = study_dir / "runs" / entry["id"]
        run = load_run(path, SUMMARY_TABLES) if is_run_dir(path) else Run(path, {}, {})
        row = run_summary(run, axes)
        row["run_id"] = entry["id"]
        row.update(entry.get("axes", {}))
        row["status"] = entry.get("status", row["status"])
        row["error"] = entry.get("error")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else None)


def _summary_without_index(study_dir: Path) -> pd.DataFrame:
    runs_dir = study_dir / "runs"
    paths = sorted(p for p in runs_dir.iterdir() if is_run_dir(p)) if runs_dir.is_dir() else []
    runs = [load_run(p, SUMMARY_TABLES) for p in paths]
    configs = [flatten(r.config) for r in runs]
    keys = sorted({k for c in configs for k in c})
    axes = [k for k in keys if k != "device" and len({repr(c.get(k)) for c in configs}) > 1]
    return pd.DataFrame([run_summary(r, axes) for r in runs])
