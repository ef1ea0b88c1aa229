r"""Every number a user sees, computed once: a :class:`RunSummary` per run, a study's summaries.

Pure functions over the tables :mod:`rnnprobe.records.store` wrote; no live model. A missing table
or column gives NaN (or None), never an error. The terminal table, ``summary.csv``, the report and
the diagnosis all read these objects; nothing downstream recomputes a number.

Conventions, stated once:

* *Top layer*: the largest ``layer`` index (the one the loss sees first). Decay, Lyapunov
  exponent, saturation and the mean-field prediction are read for the top layer.
* *Phases*: every probe fires at step 1 (before the first update: the initial weights) and at
  the run's final step. ``init`` is a table's step 1 (step 0 for W_hh records), ``end`` the
  run's last probe step (over all its probe tables: a diverged run's probes may stop at
  different steps, and a table that stopped earlier has no end phase), ``training`` the steps
  in between (the median over them, the decay over at most ``FIT_STEPS`` of them evenly
  spread).
* *Decay per step* r at a phase step: least squares of ``ln ‖∂ℓ_s/∂h_t‖`` on the distance
  ``d = s − t`` over the top layer's reach rows, one intercept per source ``s``, common slope
  ``b``, ``r = e^b``. Points used: ``d ≥ 1`` and norms above the dtype's noise floor (ε ×
  the source's largest norm: a contribution below it is lost when summed in that precision)
  and at least its smallest normal number (a subnormal keeps a few bits, or reads 0 in a run
  that flushes them: ``train.flush_denormals``).
  At least ``MIN_FIT_POINTS`` distances are needed. A curve of two regimes is "not
  exponential" and has no rate: the slopes of its two halves (split at the median distance)
  have opposite signs and differ by more than ``BEND`` per step (a U), or one half's slope is
  further than ``BEND`` and ``KINK`` × |slope| from the whole fit's (a jump, a bend). R² is
  reported; scatter alone does not reject a fit. Without reach rows (after init: without a
  reach probe that ran to the run's last step, as a diverged run's may not), r is the
  geometric mean over t of the one-step factor ‖δ_t − ε_t‖ / ‖δ_{t+1}‖ of the adjoints (the
  recurrent part of δ_t is δ_{t+1} J_{t+1}; both norms normal numbers), source ``adjoints``.
  Half-life ``ln 2 / −ln r`` steps (∞ when r ≥ 1; its text says "grows" when r > 1).
* *λ₁*: the largest Lyapunov exponent (``lyapunov`` table, index 0, batch mean). A value of
  −∞ means a sampled sequence had every unit off at some step (ReLU): it is reported as a note,
  never averaged into a number. Index 0 is the largest once the QR frame has settled; a probe
  step where a later index exceeds it by more than ``UNSETTLED`` per step is counted
  (``lyapunov_unsettled``, with the largest excess) and the diagnosis says so.
* *Final loss*: the last validation loss if any, else the mean training loss over the last
  10 % of steps (skipped or non-finite steps dropped); ``loss_ratio`` = final loss / the task's
  memoryless baseline loss. *Initial loss*: the training loss at step 1 (the initial network
  on the first batch: the loss panel's first point); NaN when not finite.
* *Classifiers* (many-to-one classification): ``final_metric`` is the validation accuracy at
  the last evaluation and ``baseline_metric`` the baseline's (classify: the majority class's
  share of the training split); ``classes`` holds the per-class accuracy and the confusion
  matrix of that evaluation (:mod:`rnnprobe.analysis.class_scores`).
* *Mean-field prediction* √χ (``mean_field`` table) is a statement about random weights at
  initialisation; it applies only to the ``default`` (uniform) and ``gaussian`` inits and is
  compared only with the init-phase decay.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rnnprobe.analysis.class_scores import ClassScores, class_scores
from rnnprobe.analysis.levels import level_order
from rnnprobe.errors import RnnprobeError
from rnnprobe.records.index import is_run_dir
from rnnprobe.records.store import Run, load_run
from rnnprobe.training.config import flatten

__all__ = [
    "MEAN_FIELD_INITS",
    "PHASES",
    "DecayFit",
    "PhaseMeasures",
    "RunSummary",
    "StudySummary",
    "aggregate",
    "fit_decay",
    "phase_steps",
    "study_summary",
    "summarise_run",
    "training_only",
]

PHASES = ("init", "training", "end")
MEAN_FIELD_INITS = ("default", "gaussian")  # i.i.d. random weights: the theory's premise
MIN_FIT_POINTS = 4  # distinct distances a decay fit needs
BEND = 0.05  # ln-slope difference per step between the fit's halves that makes two curves
KINK = 0.5  # … or this fraction of the whole fit's slope
FLAT = math.log(2)  # a fit that changes the norm less than this (ln) over its distances
FINAL_FRACTION = 0.10
GROWTH_MIN_STEPS = 10
UNSETTLED = 1e-3  # a later QR exponent above index 0 by more than this (per step): not settled
FIT_STEPS = 32  # probe steps the training phase's median decay is taken over, at most
NOISE_EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(float).eps)}
# the smallest normal number: a norm below it is a subnormal, rounded to a few bits (or 0)
NORMAL_MIN = {"float32": float(np.finfo(np.float32).tiny), "float64": float(np.finfo(float).tiny)}
# what the analysis reads; plots read more (spectra, hidden, weights, ftle)
SUMMARY_TABLES: tuple[str, ...] = ("task", "steps", "evals", "adjoints", "reach", "lyapunov")
SUMMARY_TABLES += ("health", "mean_field", "events", "classes", "confusion", "truncation")
NAN = float("nan")


@dataclass(frozen=True)
class DecayFit:
    """Gradient decay per step r, half-life, R², points, distances fitted and the verdict.

    ``shape`` is ``exponential`` (r is the fit), ``flat`` (r is the fit, but it changes the
    norm less than 2× over the distances fitted: no half-life can be read within them, so it
    is ∞), ``ratio`` (r from adjoint ratios, no fit), ``not exponential``, ``too few points``
    or ``no data``; r is NaN unless the first three. ``first_step`` (reach only) is the factor
    from distance 0 to 1, median over the sources: the first J_t, applied to the gradient as
    it arrives at h_s, which the fit (distances ≥ 1) leaves out.
    """

    rate_per_step: float = NAN
    half_life: float = NAN
    r2: float = NAN
    n: int = 0
    source: str = "none"  # reach, adjoints or none
    step: int | None = None
    d_min: float = NAN
    d_max: float = NAN
    shape: str = "no data"
    first_step: float = NAN

    @property
    def ok(self) -> bool:
        """Return whether there is a rate (the fit, or the adjoint ratios): r is finite."""
        return math.isfinite(self.rate_per_step)

    @property
    def half_life_text(self) -> str:
        """Return the half-life in steps as text: "flat" (< 2× over the distances fitted),
        "grows" when r > 1, "∞" when r = 1."""
        if self.shape == "flat":
            return "flat"
        if self.rate_per_step > 1:
            return "grows"
        return "∞" if math.isinf(self.half_life) else f"{self.half_life:.3g}"

    @property
    def brief(self) -> str:
        """Return the fit in a legend's words: "×0.5, t½ 1", "×0.984, flat", "×1.01, grows",
        or its shape when it has no rate."""
        if not self.ok:
            return self.shape
        half = self.half_life_text
        return f"×{self.rate_per_step:.3g}, {half if half in ('flat', 'grows') else f't½ {half}'}"


@dataclass(frozen=True)
class PhaseMeasures:
    """The gradient and hidden-state measurements of one phase (top layer)."""

    phase: str
    steps: tuple[int, ...] = ()  # probe steps the phase covers
    decay: DecayFit = field(default_factory=DecayFit)
    lyapunov_max: float = NAN
    lyapunov_note: str | None = None
    saturation: float = NAN
    dead_fraction: float = NAN
    # truncated BPTT against full BPTT of the same batch (all tensors as one vector), median
    truncation_cosine: float = NAN
    truncation_dropped: float = NAN  # ‖full − truncated‖ / ‖full‖
    decay_fits: int = 0  # good fits the decay is the median of (the phase's probe steps)
    lyapunov_steps: int = 0  # finite λ₁ values lyapunov_max is the median of
    lyapunov_unsettled: int = 0  # of those steps, where a later QR exponent exceeds index 0
    lyapunov_excess: float = NAN  # the largest such excess (per step)

    @property
    def step(self) -> int | None:
        """The phase's step (the first of the training phase's range)."""
        return self.steps[0] if self.steps else None

    @property
    def measured(self) -> bool:
        """Return whether the phase has any measurement (a finite value, or a λ₁ note)."""
        values = (self.decay.rate_per_step, self.lyapunov_max, self.saturation, self.dead_fraction)
        return any(math.isfinite(v) for v in values) or self.lyapunov_note is not None


@dataclass(frozen=True)
class RunSummary:
    """One run: its settings, outcome numbers and per-phase gradient measurements."""

    run_id: str
    settings: dict[str, Any]  # flat config (dotted keys)
    status: str = "pending"
    error: str | None = None
    steps: int = 0  # optimizer steps recorded
    task: str | None = None
    task_kind: str | None = None
    seq_len: float = NAN  # T, the steps the network runs (copy: delay + 20)
    final_loss: float = NAN
    final_train_loss: float = NAN
    final_valid_loss: float = NAN
    initial_loss: float = NAN  # training loss at step 1 (NaN when not finite)
    baseline_loss: float = NAN
    loss_ratio: float = NAN
    initial_loss_ratio: float = NAN
    metric: str | None = None
    final_metric: float = NAN  # classifiers: validation accuracy at the last evaluation
    baseline_metric: float = NAN  # the baseline's metric (classify: majority-class accuracy)
    clip: str = "none"
    clip_rate: float = NAN  # steps clipped after step 1 (fraction); NaN when clipping is off
    clip_burst: float = NAN  # max pre-clip norm after step 1 / clip threshold (norm clipping)
    grad_growth: float = NAN  # median pre-clip norm, last 10 % of steps / first 10 %
    final_grad_norm: float = NAN  # pre-clip global gradient norm, last step with a finite one
    nonfinite_steps: int = 0
    first_nonfinite_step: int | None = None
    divergence_step: int | None = None
    init: str | None = None
    predicted_decay: float = NAN
    predicted_half_life: float = NAN
    mean_field_applies: bool = False
    pre_floss_updates: int = 0  # --floss …,pre=P: P updates before step 1 (its init phase)
    phases: dict[str, PhaseMeasures] = field(default_factory=dict)
    seconds: float = NAN
    classes: ClassScores | None = None  # per-class results at the last evaluation
    # share of the recorded adjoint norms (batch means, every layer and step) that are
    # subnormals of the run's dtype: 0 < norm < its smallest normal number (NaN: no adjoints)
    subnormal_share: float = NAN

    @property
    def balanced_accuracy(self) -> float:
        """Mean per-class validation accuracy at the last evaluation (classifiers)."""
        return self.classes.balanced_accuracy if self.classes is not None else NAN

    @property
    def last_step(self) -> int | None:
        """Return the number of optimizer steps recorded, None when there are none."""
        return self.steps or None

    def phase(self, name: str) -> PhaseMeasures:
        """Return the measurements of phase ``name``; empty (all NaN) when not measured."""
        return self.phases.get(name, PhaseMeasures(name))

    @property
    def mean_field_ratio(self) -> float:
        """Init-phase measured decay / √χ, when the prediction applies."""
        measured = self.phase("init").decay.rate_per_step
        if not self.mean_field_applies or not self.predicted_decay > 0:
            return NAN
        return measured / self.predicted_decay

    def row(self) -> dict[str, Any]:
        """Return the flat summary row: settings' swept keys are added by the caller."""
        own = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("settings", "phases", "run_id", "init", "classes")
        }
        row: dict[str, Any] = {"run_id": self.run_id, **own}
        row["mean_field_ratio"] = self.mean_field_ratio
        row["balanced_accuracy"] = self.balanced_accuracy
        for name in PHASES:
            p = self.phase(name)
            d = p.decay
            row[f"{name}_step"] = p.step
            row[f"decay_per_step_{name}"] = d.rate_per_step
            row[f"half_life_{name}"] = d.half_life
            row[f"half_life_over_seq_len_{name}"] = (
                d.half_life / self.seq_len if self.seq_len > 0 else NAN
            )
            row[f"decay_r2_{name}"] = d.r2
            row[f"decay_source_{name}"] = d.source if d.source != "none" else None
            row[f"decay_shape_{name}"] = d.shape
            row[f"lyapunov_max_{name}"] = p.lyapunov_max
            row[f"saturation_{name}"] = p.saturation
            row[f"dead_fraction_{name}"] = p.dead_fraction
            row[f"truncation_cosine_{name}"] = p.truncation_cosine
            row[f"truncation_dropped_{name}"] = p.truncation_dropped
        return row


ALWAYS_SHOWN = ("task.name", "task.seq_len", "model.nonlinearity", "model.init",
                "model.hidden_size", "train.optimizer", "train.lr", "train.momentum",
                "train.clip", "train.clip_value", "train.batch_size", "train.steps")  # fmt: skip


@dataclass(frozen=True)
class StudySummary:
    """A study's run summaries in grid order, its swept axes (seed apart) and seeds."""

    name: str
    question: str
    description: str
    axes: list[str]  # swept settings, seed excluded
    seeds: list[Any]
    runs: list[RunSummary]

    def fixed_settings(self) -> dict[str, Any]:
        """Return the settings every run shares that shape what it measures: the task, model
        and training ones that differ from the defaults, and the few a reader always needs
        (task, nonlinearity, init, optimizer, learning rate, clipping, steps)."""
        from rnnprobe.training.config import RunConfig  # plain Python: no torch

        defaults = RunConfig().flat()
        shared = {
            key: value
            for key, value in (self.runs[0].settings.items() if self.runs else ())
            if key.split(".")[0] in ("task", "model", "train", "dtype")
            and key not in self.axes
            and all(r.settings.get(key) == value for r in self.runs)
        }
        if shared.get("train.clip") == "none":
            shared.pop("train.clip_value", None)
        if shared.get("train.optimizer") != "sgd":
            shared.pop("train.momentum", None)
        group = {"task": 0, "model": 1, "train": 2}
        return {
            k: shared[k]
            for k in sorted(shared, key=lambda k: (group.get(k.split(".")[0], 3), k))
            if k in ALWAYS_SHOWN or shared[k] != defaults.get(k)
        }

    def table(self) -> pd.DataFrame:
        """Return one row per run: run id, axis values and seed, then every summary number."""
        rows = []
        for r in self.runs:
            values = {a: r.settings.get(a) for a in self.axes}
            rows.append({"run_id": r.run_id, **values, "seed": r.settings.get("seed"), **r.row()})
        return pd.DataFrame(rows)


def training_only(axis: str) -> bool:
    """Return whether the setting leaves the initial network (and its reach) unchanged: runs
    that differ only in such settings start from one network.

    Truncation is not one (the reach is recorded per backward segment), nor is flossing (its
    pre-flossing updates come before step 1).
    """
    return axis.startswith("train.") and axis not in ("train.bptt", "train.floss")


# -- phases ---------------------------------------------------------------------------------


def phase_steps(
    table: pd.DataFrame, *, first: int = 1, last: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Return the steps of ``table`` per phase: init (≤ ``first``), training, end.

    The end is step ``last`` (default: the table's last step); a table without it has no end
    phase, and its steps after ``first`` are training.
    """
    if table is None or table.empty or "step" not in table:
        return {}
    steps = np.unique(pd.to_numeric(table["step"], errors="coerce").dropna().astype(int))
    out: dict[str, tuple[int, ...]] = {}
    init = steps[steps <= first]
    if len(init):
        out["init"] = (int(init.max()),)
    rest = steps[steps > first]
    if not len(rest):
        return out
    end = int(rest.max()) if last is None else last
    if end in rest:
        out["end"] = (end,)
    if (rest < end).any():
        out["training"] = tuple(int(s) for s in rest[rest < end])
    return out


# -- decay fits -----------------------------------------------------------------------------


def fit_decay(
    reach: pd.DataFrame | None,
    adjoints: pd.DataFrame | None = None,
    *,
    step: int | None = None,
    layer: int | None = None,
    dtype: str = "float32",
) -> DecayFit:
    """Return the decay per step at ``step`` (default: the last) of the top (or given) layer.

    The reach fit comes first; the adjoint one-step ratios stand in without reach rows.
    """
    rows = _rows_at(reach, step, layer)
    if not rows.empty and {"distance", "norm"} <= set(rows.columns):
        at = int(rows["step"].iloc[0])
        floor = NOISE_EPS[dtype], NORMAL_MIN[dtype]
        return _fit(rows["distance"], rows["norm"], rows.get("source"), at, *floor)
    rows = _rows_at(adjoints, step, layer)
    if not rows.empty and {"t", "adjoint_norm", "recurrent_norm"} <= set(rows.columns):
        return _ratio(rows, NORMAL_MIN[dtype])
    return DecayFit()


def _rows_at(table: pd.DataFrame | None, step: int | None, layer: int | None) -> pd.DataFrame:
    """Return the rows of ``step`` (default: the table's last) and layer (default: top)."""
    if table is None or table.empty or "step" not in table:
        return pd.DataFrame()
    steps = pd.to_numeric(table["step"], errors="coerce")
    rows = table[steps == (steps.max() if step is None else step)]
    if "layer" in rows and len(rows):
        rows = rows[rows["layer"] == (rows["layer"].max() if layer is None else layer)]
    return rows


def _fit(
    distance: pd.Series,
    norm: pd.Series,
    groups: pd.Series | None,
    step: int,
    eps: float,
    normal_min: float,
) -> DecayFit:
    x = pd.to_numeric(distance, errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(norm, errors="coerce").to_numpy(dtype=float)
    g = np.zeros(len(x)) if groups is None else groups.to_numpy()
    usable = np.isfinite(y) & (y > 0) & np.isfinite(x)
    x, y, g = x[usable], y[usable], g[usable]
    _, g = np.unique(g, return_inverse=True)
    peak = np.zeros(g.max() + 1 if len(g) else 0)
    np.maximum.at(peak, g, y)
    first = _first_step(x, y, g, normal_min)
    keep = (x >= 1) & (y > eps * peak[g]) & (y >= normal_min)  # across ≥ 1 J_t, not noise
    x, y, g = x[keep], np.log(y[keep]), g[keep]
    base = DecayFit(source="reach", step=step, n=len(x), first_step=first)
    if len(np.unique(x)) < MIN_FIT_POINTS:
        return replace(base, shape="too few points")
    slope, r2, _ = _slope(x, y, g)
    base = replace(base, r2=r2, d_min=float(x.min()), d_max=float(x.max()))
    if abs(slope) * (x.max() - x.min()) < FLAT:  # under 2× end to end: scatter, not a rate
        return replace(base, rate_per_step=math.exp(slope), half_life=math.inf, shape="flat")
    middle = np.median(x)
    halves = [x <= middle, x > middle]
    # Two regimes, not one rate: the halves' slopes have opposite signs (a U), or one half's
    # slope is far from the whole fit's (a jump of decades, a bend). Scatter alone (a low R²
    # on a nearly flat curve) is no reason: the rate is still well measured.
    two_regimes = False
    if all(len(np.unique(x[h])) >= 2 for h in halves):
        s1, s2 = (_slope(x[h], y[h], g[h])[0] for h in halves)
        bent = s1 * s2 < 0 and abs(s1 - s2) > BEND
        kinked = max(abs(s1 - slope), abs(s2 - slope)) > max(BEND, KINK * abs(slope))
        two_regimes = bent or kinked
    if two_regimes:
        return replace(base, shape="not exponential")
    rate = math.exp(slope)
    return replace(base, rate_per_step=rate, half_life=_half_life(rate), shape="exponential")


def _first_step(x: np.ndarray, y: np.ndarray, g: np.ndarray, normal_min: float) -> float:
    """Return the median over groups g of y(1) / y(0): the norm's factor at the first step
    back (NaN when no group has both, as normal numbers)."""
    ratios = []
    for group in np.unique(g):
        at = {d: y[(g == group) & (x == d)] for d in (0, 1)}
        if len(at[0]) == 1 == len(at[1]) and min(at[0][0], at[1][0]) >= normal_min:
            ratios.append(at[1][0] / at[0][0])
    return float(np.median(ratios)) if ratios else NAN


def _slope(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[float, float, float]:
    """Return the common slope of y on x (one intercept per group g), its R² and rms residual.

    A group with one point carries no slope and is left out.
    """
    count = np.bincount(g)
    own = count[g] >= 2
    x, y, g = x[own], y[own], g[own]
    if not len(x):
        return NAN, NAN, NAN
    count = np.bincount(g)
    present = count > 0
    mean_x = np.bincount(g, x)[present] / count[present]
    mean_y = np.bincount(g, y)[present] / count[present]
    index = np.cumsum(present) - 1
    dx, dy = x - mean_x[index[g]], y - mean_y[index[g]]
    sxx = float(dx @ dx)
    if sxx == 0:
        return NAN, NAN, NAN
    slope = float(dx @ dy) / sxx
    total = float(dy @ dy)
    residual = float(((dy - slope * dx) ** 2).sum())
    rms = math.sqrt(residual / len(x))
    return slope, (1.0 - residual / total if total > 0 else 1.0), rms


def _ratio(rows: pd.DataFrame, normal_min: float) -> DecayFit:
    """Return the geometric-mean one-step factor ‖δ_t − ε_t‖ / ‖δ_{t+1}‖ over the t whose two
    norms are normal numbers (at least ``normal_min``)."""
    top = rows.sort_values("t")
    ahead = pd.to_numeric(top["adjoint_norm"], errors="coerce").to_numpy(float)[1:]
    carried = pd.to_numeric(top["recurrent_norm"], errors="coerce").to_numpy(float)[:-1]
    keep = np.isfinite(ahead) & np.isfinite(carried) & (ahead >= normal_min)
    keep &= carried >= normal_min
    step = int(top["step"].iloc[0])
    if keep.sum() < MIN_FIT_POINTS - 1:
        return DecayFit(source="adjoints", step=step, n=int(keep.sum()), shape="too few points")
    rate = float(np.exp(np.mean(np.log(carried[keep] / ahead[keep]))))
    return DecayFit(
        rate, _half_life(rate), NAN, int(keep.sum()), "adjoints", step, 1.0, 1.0, "ratio"
    )


def _half_life(rate: float) -> float:
    if not math.isfinite(rate) or rate <= 0:
        return NAN
    return math.log(2) / -math.log(rate) if rate < 1 else math.inf


# -- one run --------------------------------------------------------------------------------


def summarise_run(run: Run, run_id: str | None = None) -> RunSummary:
    """Return the summary of a loaded run (tables missing from ``run`` count as empty)."""
    settings = flatten(run.config or {})
    steps, evals, task = run.table("steps"), run.table("evals"), run.table("task")
    events = run.table("events")
    status = str(run.status.get("status", "pending"))
    last = int(_last(steps, "step", run.status.get("step", 0)) or 0)
    valid = _last(evals, "loss")
    train = _tail_mean(steps, "loss")
    final = valid if math.isfinite(valid) else train
    initial = _at_step_one(steps, "loss")
    baseline = _first(task, "baseline_loss")
    seq_len = _first(task, "seq_len")
    if not math.isfinite(seq_len):
        seq_len = float(settings.get("task.seq_len", NAN) or NAN)
    clip = str(settings.get("train.clip", "none"))
    clip_rate, burst = _clipping(steps, clip, settings.get("train.clip_value"))
    nonfinite = _nonfinite_steps(steps)
    mean_field = run.table("mean_field")
    if "layer" in mean_field and len(mean_field):
        mean_field = mean_field[mean_field["layer"] == mean_field["layer"].max()]
    init = settings.get("model.init")
    pre_floss = _pre_floss_updates(settings)
    return RunSummary(
        run_id=run_id or run.path.name,
        settings=settings,
        status=status,
        error=run.status.get("error"),
        steps=last,
        task=_text(task, "name"),
        task_kind=_text(task, "kind"),
        seq_len=seq_len,
        final_loss=final,
        final_train_loss=train,
        final_valid_loss=valid,
        initial_loss=initial,
        baseline_loss=baseline,
        loss_ratio=final / baseline if baseline > 0 else NAN,
        initial_loss_ratio=initial / baseline if baseline > 0 else NAN,
        metric=_text(task, "metric"),
        final_metric=_last(evals, "metric") if len(evals) else _tail_mean(steps, "metric"),
        baseline_metric=_first(task, "baseline_metric"),
        clip=clip,
        clip_rate=clip_rate,
        clip_burst=burst,
        grad_growth=_growth(steps),
        final_grad_norm=_last(steps, "grad_norm_pre_clip"),
        nonfinite_steps=len(nonfinite),
        first_nonfinite_step=int(nonfinite[0]) if len(nonfinite) else None,
        divergence_step=_divergence_step(run.status, events),
        init=init,
        predicted_decay=_first(mean_field, "predicted_decay"),
        predicted_half_life=_first(mean_field, "predicted_half_life"),
        # after pre-flossing, step 1 no longer holds the random weights the theory is about
        mean_field_applies=init in MEAN_FIELD_INITS and len(mean_field) > 0 and not pre_floss,
        pre_floss_updates=pre_floss,
        phases=_phases(run, str(settings.get("dtype", "float32"))),
        seconds=_last(steps, "seconds"),
        classes=class_scores(run.table("confusion"), run.table("classes")),
        subnormal_share=_subnormal_share(run.table("adjoints"), settings.get("dtype", "float32")),
    )


def _phases(run: Run, dtype: str) -> dict[str, PhaseMeasures]:
    reach, adjoints = _top(run.table("reach")), _top(run.table("adjoints"))
    lyapunov, health = _top(run.table("lyapunov")), _top(run.table("health"))
    reach_by = dict(tuple(reach.groupby("step"))) if len(reach) else {}
    adjoints_by = dict(tuple(adjoints.groupby("step"))) if len(adjoints) else {}
    truncation = run.table("truncation")
    if "tensor" in truncation:
        truncation = truncation[truncation["tensor"] == "total"]
    tables = (reach, adjoints, lyapunov, health, truncation)
    last = max((int(t["step"].max()) for t in tables if "step" in t and len(t)), default=None)
    reach_steps, adjoint_steps, lyap_steps, health_steps, cut_steps = (
        phase_steps(t, last=last) for t in tables
    )
    # per phase the reach fit where the phase has reach rows, else the adjoints' one-step factor;
    # after init, only a reach probe that ran to the end (a diverged run's may stop earlier)
    reach_steps = reach_steps if "end" in reach_steps else {"init": reach_steps.get("init", ())}
    decay_steps = {p: reach_steps.get(p) or adjoint_steps.get(p, ()) for p in PHASES}
    cut_by = _by_step(truncation)
    lyap_by = _by_step(lyapunov[lyapunov["index"] == 0] if "index" in lyapunov else lyapunov)
    excess_by = _qr_excess(lyapunov)
    health_by = _by_step(health)
    out = {}
    for name in PHASES:
        # the training phase's median comes from at most FIT_STEPS evenly spread probe steps
        fit_steps = _spread(decay_steps.get(name, ()), FIT_STEPS)
        fits = [
            fit_decay(reach_by.get(s), adjoints_by.get(s), step=s, dtype=dtype) for s in fit_steps
        ]
        lyap = [_lyapunov(lyap_by, s) for s in lyap_steps.get(name, ())]
        hsteps, csteps = health_steps.get(name, ()), cut_steps.get(name, ())
        steps = decay_steps.get(name, ()) + lyap_steps.get(name, ()) + hsteps + csteps
        steps = tuple(sorted(set(steps)))
        if not steps:
            continue
        notes = [n for _, n in lyap if n]
        excess = [excess_by.get(s, NAN) for s in lyap_steps.get(name, ())]
        unsettled = [e for e in excess if e > UNSETTLED]
        out[name] = PhaseMeasures(
            phase=name,
            steps=steps,
            decay=_median_fit(fits),
            decay_fits=sum(f.ok for f in fits),
            lyapunov_steps=sum(math.isfinite(v) for v, _ in lyap),
            lyapunov_max=_median([v for v, _ in lyap]),
            lyapunov_note=notes[0] if notes else None,
            lyapunov_unsettled=len(unsettled),
            lyapunov_excess=max(unsettled, default=NAN),
            saturation=_median([_at(health_by, s, "saturation") for s in hsteps]),
            dead_fraction=_median([_at(health_by, s, "dead_fraction") for s in hsteps]),
            truncation_cosine=_median([_at(cut_by, s, "cosine") for s in csteps]),
            truncation_dropped=_median([_at(cut_by, s, "dropped") for s in csteps]),
        )
    return out


def _pre_floss_updates(settings: dict[str, Any]) -> int:
    """Return the pre-flossing updates a run made before step 1 (0 without flossing)."""
    from rnnprobe.training.flossing import FlossSpec  # plain Python: no torch

    try:
        spec = FlossSpec.parse(settings.get("train.floss", "none"))
    except RnnprobeError:
        return 0
    return spec.pre if spec is not None else 0


def _top(table: pd.DataFrame) -> pd.DataFrame:
    """Return the rows of the table's top layer (all rows when it has no layer column)."""
    if table.empty or "layer" not in table:
        return table
    return table[table["layer"] == table["layer"].max()]


def _by_step(table: pd.DataFrame) -> pd.DataFrame:
    """Return the first row per step, indexed by step."""
    if table.empty or "step" not in table:
        return pd.DataFrame()
    return table.groupby("step").first()


def _at(by_step: pd.DataFrame, step: int, column: str) -> float:
    if column not in by_step or step not in by_step.index:
        return NAN
    return float(pd.to_numeric(by_step.at[step, column], errors="coerce"))


def _spread(steps: tuple[int, ...], limit: int) -> tuple[int, ...]:
    if len(steps) <= limit:
        return steps
    keep = np.unique(np.round(np.linspace(0, len(steps) - 1, limit)).astype(int))
    return tuple(steps[i] for i in keep)


def _median_fit(fits: list[DecayFit]) -> DecayFit:
    """Return the one fit, or for a phase of many steps the fit of median rate."""
    if not fits:
        return DecayFit()
    good = sorted((f for f in fits if f.ok), key=lambda f: f.rate_per_step)
    if not good:
        return fits[-1]
    return good[(len(good) - 1) // 2]


def _qr_excess(lyapunov: pd.DataFrame) -> dict[int, float]:
    """Return per step how far the largest later QR exponent lies above index 0 (per step;
    negative when index 0 is the largest), from the finite exponents of the top layer's rows."""
    if lyapunov.empty or "index" not in lyapunov:
        return {}
    finite = lyapunov[np.isfinite(pd.to_numeric(lyapunov["exponent"], errors="coerce"))]
    first = finite[finite["index"] == 0].groupby("step")["exponent"].first()
    later = finite[finite["index"] > 0].groupby("step")["exponent"].max()
    return {int(s): float(later[s] - first[s]) for s in first.index.intersection(later.index)}


def _lyapunov(by_step: pd.DataFrame, step: int) -> tuple[float, str | None]:
    value = _at(by_step, step, "exponent")
    if math.isfinite(value) or (math.isnan(value) and step not in by_step.index):
        return value, None
    if value == -math.inf:
        return NAN, (
            f"λ₁ = −∞ at step {step}: every unit was off at some time step of a sampled "
            "sequence, so the Jacobian product is zero there"
        )
    return NAN, f"λ₁ not finite ({value}) at step {step}: the state overflowed"


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else NAN


def _numbers(table: pd.DataFrame, column: str) -> pd.Series:
    if table is None or column not in table or table.empty:
        return pd.Series(dtype=float)
    ordered = table.sort_values("step") if "step" in table else table
    return pd.to_numeric(ordered[column], errors="coerce")


def _first(table: pd.DataFrame, column: str) -> float:
    values = _numbers(table, column).dropna()
    return float(values.iloc[0]) if len(values) else NAN


def _last(table: pd.DataFrame, column: str, default: float = NAN) -> float:
    values = _numbers(table, column).dropna()
    return float(values.iloc[-1]) if len(values) else default


def _at_step_one(steps: pd.DataFrame, column: str) -> float:
    """Return ``column`` at step 1 when it is finite, else NaN."""
    if column not in steps or "step" not in steps:
        return NAN
    values = pd.to_numeric(steps.loc[steps["step"] == 1, column], errors="coerce")
    return float(values.iloc[0]) if len(values) and math.isfinite(values.iloc[0]) else NAN


def _text(table: pd.DataFrame, column: str) -> str | None:
    return str(table[column].iloc[0]) if column in table and len(table) else None


def _good_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """Return the steps whose update went through (not skipped)."""
    if "skipped" in steps and len(steps):
        return steps[~steps["skipped"].fillna(False).astype(bool)]
    return steps


def _tail_mean(steps: pd.DataFrame, column: str) -> float:
    """Return the mean of ``column`` over the last 10 % of steps, finite only."""
    if column not in steps or steps.empty:
        return NAN
    ordered = steps.sort_values("step")
    count = max(1, math.ceil(FINAL_FRACTION * len(ordered)))
    part = _good_steps(ordered.iloc[-count:])
    values = pd.to_numeric(part[column], errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else NAN


def _clipping(steps: pd.DataFrame, clip: str, threshold: object) -> tuple[float, float]:
    """Return (fraction of steps clipped, max pre-clip norm / threshold) when clipping is on,
    over the steps after step 1: the training phase's, whose verdict they decide (step 1's
    gradient is the initial network's, the init phase's)."""
    if clip == "none" or steps.empty or "clipped" not in steps:
        return NAN, NAN
    good = _good_steps(steps[pd.to_numeric(steps["step"], errors="coerce") > 1])
    rate = float(good["clipped"].astype(float).mean()) if len(good) else NAN
    pre = _numbers(good, "grad_norm_pre_clip").to_numpy(float)
    pre = pre[np.isfinite(pre)]
    burst = NAN
    if clip == "norm" and len(pre) and isinstance(threshold, int | float) and threshold > 0:
        burst = float(pre.max() / threshold)
    return rate, burst


def _subnormal_share(adjoints: pd.DataFrame, dtype: str) -> float:
    """Return the share of ``adjoint_norm`` values in (0, the dtype's smallest normal)."""
    if "adjoint_norm" not in adjoints or adjoints.empty or dtype not in NORMAL_MIN:
        return NAN
    norms = pd.to_numeric(adjoints["adjoint_norm"], errors="coerce").to_numpy(float)
    return float(np.mean((norms > 0) & (norms < NORMAL_MIN[dtype])))


def _growth(steps: pd.DataFrame) -> float:
    norms = _numbers(_good_steps(steps), "grad_norm_pre_clip").to_numpy(float)
    norms = norms[np.isfinite(norms) & (norms > 0)]
    if len(norms) < GROWTH_MIN_STEPS:
        return NAN
    tenth = len(norms) // 10
    return float(np.median(norms[-tenth:]) / np.median(norms[:tenth]))


def _nonfinite_steps(steps: pd.DataFrame) -> np.ndarray:
    """Return the sorted steps whose loss or gradient was not finite, or was skipped."""
    if steps.empty or "step" not in steps:
        return np.array([], dtype=int)
    bad = np.zeros(len(steps), dtype=bool)
    for column in ("loss", "grad_norm_pre_clip"):
        if column in steps:
            bad |= ~np.isfinite(pd.to_numeric(steps[column], errors="coerce").to_numpy(float))
    if "skipped" in steps:
        bad |= steps["skipped"].fillna(False).astype(bool).to_numpy()
    return np.sort(steps["step"].to_numpy()[bad].astype(int))


def _divergence_step(status: dict, events: pd.DataFrame) -> int | None:
    """Return the step of the first ``diverged`` event, or the step of a diverged status."""
    if "kind" in events and (events["kind"] == "diverged").any():
        return int(pd.to_numeric(events.loc[events["kind"] == "diverged", "step"]).min())
    if status.get("status") == "diverged":
        return int(status.get("step", 0))
    return None


# -- a study --------------------------------------------------------------------------------


def study_summary(
    study_dir: str | os.PathLike, *, keep: Iterable[str] = ()
) -> tuple[StudySummary, dict[str, Run]]:
    """Return the study's summary and the loaded runs (tables ``SUMMARY_TABLES`` + ``keep``).

    Each run's tables are read once; the report draws its figures from the returned runs.
    A run not started yet gets a summary with the index's status and no numbers.
    """
    from rnnprobe.records.index import read_study

    index = read_study(Path(study_dir))
    tables = tuple(dict.fromkeys([*SUMMARY_TABLES, *keep]))
    summaries, runs = [], {}
    for entry in index.runs:
        run, error = None, entry.error
        if is_run_dir(entry.path):
            try:
                run = load_run(entry.path, tables)
            except Exception as err:  # a damaged run must not hide the others: name it
                error = f"unreadable records in {entry.path}: {type(err).__name__}: {err}"
        elif entry.status not in (None, "pending"):
            error = error or f"no readable run directory at {entry.path}"
        if run is None:
            summary = RunSummary(entry.id, {**entry.axes}, entry.status or "pending", error)
        else:
            runs[entry.id] = run
            summary = summarise_run(run, entry.id)
            status = entry.status if entry.status not in (None, "pending") else summary.status
            summary = replace(summary, status=status, error=summary.error or entry.error)
        summaries.append(summary)
    axes = [a for a in index.axes if a != "seed"]
    seeds = sorted({s.settings.get("seed") for s in summaries if "seed" in s.settings}, key=str)
    study = StudySummary(index.name, index.question, index.description, axes, seeds, summaries)
    return study, runs


def aggregate(table: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Return mean, sd, min, max and n of ``value`` over seeds for each level of ``by``.

    Levels come out in numeric order when they are all numbers; non-finite values are left out.
    """
    by = [b for b in by if b in table.columns]
    if value not in table or table.empty:
        return pd.DataFrame(columns=[*by, "mean", "sd", "min", "max", "n"])
    data = table[[*by, value]].copy()
    data[value] = pd.to_numeric(data[value], errors="coerce")
    data = data[np.isfinite(data[value].to_numpy(float))]
    if data.empty:
        return pd.DataFrame(columns=[*by, "mean", "sd", "min", "max", "n"])
    if not by:
        data = data.assign(_all="all")
        by = ["_all"]
    grouped = data.groupby([data[b].astype(str) for b in by], sort=False)[value]
    out = grouped.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out = out.rename(columns={"std": "sd", "count": "n"})
    out["sd"] = out["sd"].fillna(0.0)
    # back to the original level values, then numeric order
    firsts = data.groupby([data[b].astype(str) for b in by], sort=False)[by].first()
    for b in by:
        out[b] = firsts[b].to_numpy()
    return out.iloc[level_order(out, by)].reset_index(drop=True)
