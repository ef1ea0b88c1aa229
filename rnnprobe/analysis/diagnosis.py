r"""Written diagnosis of a run or a study: it classifies what :mod:`rnnprobe.analysis.runs`
computed.

Nothing here reads a table or computes a measurement; every number quoted comes from a
:class:`~rnnprobe.analysis.runs.RunSummary` field, so a sentence and the table beside it agree.

Two separate questions, each answered per phase (init, training, end):

**What the gradients do** (r: decay per step; T: steps the network runs; λ₁: largest
Lyapunov exponent), the first rule that holds:

1. *exploding* — r^T ≥ ``SPAN`` (the gradient doubles in under T/4 steps back in time); or a
   non-finite loss or gradient (training phase); or, with clipping on, norms clipped on at least
   ``BURST_RATE`` of the steps with bursts ≥ ``BURST`` × the threshold (training phase: the
   clipped run looks calm but its gradients explode); or the gradient norm grew ≥ ``GROWTH`` ×
   from the first 10 % of steps to the last (training phase).
2. *chaotic* — λ₁ > ``EDGE``: nearby trajectories separate.
3. *vanishing* — r^T ≤ 1/``SPAN`` (half-life under T/4); or, without r, λ₁ < ``VANISH_LYAPUNOV``;
   or, with neither, ≥ ``STUCK`` of the units saturated (tanh) or dead (ReLU).
4. *edge of chaos* — |λ₁| ≤ ``EDGE``.
5. *stable* — gradients measured, none of the above: they decay but reach across the sequence.
6. *unknown* — nothing measured in that phase.

**What training achieved** (loss/baseline = final loss over the task's memoryless baseline):
*diverged* (stopped on non-finite values), *untrained* (fewer than ``MIN_STEPS`` steps: the run
measures its initial network), *solved* (≤ ``SOLVED``; for a language model there is no
solving, so it is *learning*), *learning* (< ``BEATS``), *did not learn* (≥ ``BEATS``).

A study's statements: outcomes per configuration (seeds pooled, mean ± sd), an axis *changes*
a quantity only with ≥ 2 levels (each of ≥ 2 runs with several seeds), ≥ ``MIN_RUNS`` runs
with values, η² ≥ ``MIN_ETA2`` and level means that differ by more than ``EFFECT`` and by more
than twice the seeds' spread (the end-phase half-life: in steps, of exponential fits only);
init-phase decay against √χ where the prediction applies (over distinct initial networks);
where λ₁ at init changes sign along a numeric axis; end-phase half-lives / T as geometric
means of the fits below ``REACH_CAP``, with growing, longer or unfitted runs counted apart.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rnnprobe.analysis.levels import level_order
from rnnprobe.analysis.runs import (
    NORMAL_MIN,
    PHASES,
    DecayFit,
    PhaseMeasures,
    RunSummary,
    StudySummary,
    aggregate,
    training_only,
)

if TYPE_CHECKING:
    from rnnprobe.records.store import Run

__all__ = [
    "OUTCOMES",
    "REGIMES",
    "SHOWN_COLUMNS",
    "PhaseVerdict",
    "RunDiagnosis",
    "StudyAnalysis",
    "StudyDiagnosis",
    "analyse_run",
    "analyse_study",
    "classify_phase",
    "diagnose_run",
    "diagnose_study",
    "outcome",
    "study_table",
    "variance_explained",
]

REGIMES = ("exploding", "chaotic", "vanishing", "edge of chaos", "stable", "unknown")
OUTCOMES = ("solved", "learning", "did not learn", "diverged", "untrained", "unknown")
METRIC_NAMES = {"bpc": "bits per character", "mse": "mean squared error"}
SPAN = 16.0  # r^T beyond 16 (or below 1/16): the gradient doubles (halves) within T/4 steps
EDGE = 0.02  # |λ₁| per step below which the dynamics are at the edge of chaos
FIRST_STEP = 2.0  # a first step back more than 2× off the fitted rate is named beside it
VANISH_LYAPUNOV = -0.1
STUCK = 0.5
BURST_RATE = 0.5
BURST = 10.0
GROWTH = 100.0
SOLVED = 0.25
BEATS = 0.95
MIN_STEPS = 10
REACH_CAP = 8.0  # half-life / T beyond which "the gradient reaches across" needs no number
CAP = f"{REACH_CAP:g} T"
MIN_RUNS = 4
MIN_ETA2 = 0.5
EFFECT = {"loss_ratio": 0.05, "log2_half_life_end": 1.0, "decay_per_step_init": 0.02}
EFFECT |= {"lyapunov_max_init": EDGE, "decay_per_step_end": 0.02}
QUANTITIES = {  # summary column -> how a statement names it
    "loss_ratio": "loss/baseline",
    "log2_half_life_end": "the half-life at the end (in steps)",
    "decay_per_step_init": "decay per step at init",
    "lyapunov_max_init": "λ₁ at init",
}


@dataclass(frozen=True)
class PhaseVerdict:
    """A phase's gradient regime and the measurements behind it."""

    phase: str
    step: str  # "step 1", "steps 50–450"
    regime: str
    reasons: list[str]


@dataclass(frozen=True)
class RunDiagnosis:
    """A run's outcome, its per-phase gradient regimes, and the supporting statements."""

    outcome: str
    outcome_reason: str
    phases: dict[str, PhaseVerdict]
    notes: list[str]
    summary: RunSummary

    def regime(self, phase: str) -> str | None:
        """Return the phase's regime, or None when the run has no such phase."""
        verdict = self.phases.get(phase)
        return verdict.regime if verdict else None

    @property
    def headline(self) -> str:
        """Return one line: outcome, then the regime of each measured phase."""
        parts = [f"{v.phase} ({v.step}): {v.regime}" for v in self.phases.values()]
        return f"Outcome: {self.outcome}. Gradients — " + ("; ".join(parts) or "not measured")

    @property
    def metric_line(self) -> str | None:
        """Return "Metric: <name> <final> (baseline <value>)." when the run has a task metric."""
        s = self.summary
        if not s.metric or not math.isfinite(s.final_metric):
            return None
        line = f"Metric: {METRIC_NAMES.get(str(s.metric), s.metric)} {s.final_metric:.4g}"
        if math.isfinite(s.baseline_metric):
            line += f" (baseline {s.baseline_metric:.4g})"
        return line + "."

    def lines(self) -> list[str]:
        """Return the headline, the outcome's reason, the task metric, each phase's reasons,
        then notes."""
        out = [self.headline + ".", f"Loss: {self.outcome_reason}."]
        out += [self.metric_line] if self.metric_line else []
        for v in self.phases.values():
            out.append(f"{v.phase.capitalize()} ({v.step}): {v.regime} — {'; '.join(v.reasons)}.")
        return out + self.notes


def _steps_text(p: PhaseMeasures) -> str:
    """Return the phase's steps; each measurement says how many of them its median takes."""
    return f"steps {p.steps[0]}–{p.steps[-1]}" if len(p.steps) > 1 else f"step {p.step}"


def classify_phase(s: RunSummary, name: str) -> tuple[str, list[str]]:
    """Return the gradient regime of phase ``name`` of ``s`` and the rules that decided it."""
    p = s.phase(name)
    d, lyap, T = p.decay, p.lyapunov_max, s.seq_len
    # r^T: how much the gradient changes across the sequence (a flat fit reads no rate to it)
    span = d.rate_per_step**T if d.ok and T > 0 and d.shape != "flat" else math.nan
    lyap_text = None
    if math.isfinite(lyap):
        over = f" (median of {p.lyapunov_steps} probe steps)" if p.lyapunov_steps > 1 else ""
        lyap_text = f"λ₁ = {lyap:+.3g} per step{over}"
    if math.isfinite(span) and span >= SPAN:
        reasons = [f"{_decay_text(p, T)}: the gradient doubles every {_doubling(d)} back in time"]
        return "exploding", reasons + ([lyap_text] if lyap_text else [])
    if name == "training":
        if s.nonfinite_steps:
            return "exploding", [
                f"{s.nonfinite_steps} steps had a non-finite loss or gradient "
                f"(first at step {s.first_nonfinite_step})"
            ]
        if s.clip_rate >= BURST_RATE and s.clip_burst >= BURST:
            return "exploding", [
                f"norm clipping acted on {s.clip_rate:.0%} of steps after step 1, with gradient "
                f"norms up to {s.clip_burst:.3g}× the threshold: explosions held down by clipping"
            ]
        if s.grad_growth >= GROWTH:
            return "exploding", [f"the gradient norm grew ×{s.grad_growth:.3g} over training"]
    if lyap > EDGE:
        return "chaotic", [f"{lyap_text} > {EDGE}: nearby trajectories separate"] + (
            [_decay_text(p, T)] if d.ok else []
        )
    if math.isfinite(span) and span <= 1 / SPAN:
        reasons = [f"{_decay_text(p, T)}: half-life {_fmt(d.half_life)} steps < T/4"]
        return "vanishing", reasons + ([lyap_text] if lyap_text else [])
    if not d.ok and lyap < VANISH_LYAPUNOV:
        return "vanishing", [f"{lyap_text} < {VANISH_LYAPUNOV}"]
    stuck = max(_or0(p.saturation), _or0(p.dead_fraction))
    if not d.ok and not math.isfinite(lyap) and stuck >= STUCK:
        return "vanishing", [f"{stuck:.0%} of units saturated or dead (≥ {STUCK:.0%})"]
    if abs(lyap) <= EDGE:
        return "edge of chaos", [f"|λ₁| = {abs(lyap):.3g} ≤ {EDGE}"] + (
            [_decay_text(p, T)] if d.ok else []
        )
    if d.ok or math.isfinite(lyap):
        across = "" if d.shape == "flat" else ": it reaches across the sequence"
        reasons = [_decay_text(p, T) + across] if d.ok else []
        return "stable", reasons + ([lyap_text] if lyap_text else [])
    why = f"decay fit: {d.shape}" if d.source != "none" else "no reach or adjoint records"
    return "unknown", [why + (f"; {p.lyapunov_note}" if p.lyapunov_note else "")]


def outcome(s: RunSummary) -> tuple[str, str]:
    """Return what training achieved and the numbers that say so."""
    if s.last_step is None:
        return "unknown", f"no records yet (status {s.status})"
    if s.divergence_step is not None:
        onset = s.first_nonfinite_step
        return "diverged", (
            f"the run stopped on non-finite values at step {s.divergence_step}"
            + (f"; its first non-finite loss or gradient was at step {onset}" if onset else "")
        )
    which = "validation" if math.isfinite(s.final_valid_loss) else "training"
    ratio = (
        f"final {which} loss {s.final_loss:.4g} = {s.loss_ratio:.3g} × the baseline "
        f"{s.baseline_loss:.4g}"
    )
    if math.isfinite(s.initial_loss_ratio):
        ratio += f" (training loss at step 1: {s.initial_loss:.4g} = {s.initial_loss_ratio:.3g} ×)"
    if s.steps < MIN_STEPS:
        return "untrained", (
            f"{s.steps} training step{'s' if s.steps != 1 else ''} (< {MIN_STEPS}): the run "
            "measures its initial network; " + ratio
        )
    if not math.isfinite(s.loss_ratio):
        return "unknown", "no finite final loss or baseline"
    if s.loss_ratio <= SOLVED and s.task_kind != "lm":
        return "solved", f"{ratio}; ≤ {SOLVED} × counts as solved"
    if s.loss_ratio < BEATS:
        return "learning", f"{ratio}; below {BEATS} × it beats the baseline"
    return "did not learn", f"{ratio}; within {1 - BEATS:.0%} of the baseline or above it"


def diagnose_run(s: RunSummary) -> RunDiagnosis:
    """Return the diagnosis of one run summary."""
    result, reason = outcome(s)
    verdicts = {}
    for name in PHASES:
        p = s.phases.get(name)
        if p is None:
            continue
        regime, reasons = classify_phase(s, name)
        verdicts[name] = PhaseVerdict(name, _steps_text(p), regime, reasons)
    first_bad, end = s.first_nonfinite_step, s.phase("end").step or s.steps + 1
    if "training" not in verdicts and first_bad is not None and first_bad < end:
        # no probe fires on a non-finite step, but the steps table still says what happened
        verdicts["training"] = PhaseVerdict(
            "training",
            f"steps {first_bad}–{end - 1}",
            "exploding",
            [f"{s.nonfinite_steps} steps had a non-finite loss or gradient"],
        )
        verdicts = {k: verdicts[k] for k in PHASES if k in verdicts}
    return RunDiagnosis(result, reason, verdicts, _notes(s), s)


def _unsettled_note(s: RunSummary) -> str | None:
    """Return where a later QR exponent came out above λ₁, one clause a phase, or None."""
    parts = []
    for p in s.phases.values():
        if not p.lyapunov_unsettled:
            continue
        by = f"by {p.lyapunov_excess:.2g}"
        if p.lyapunov_steps > 1:
            of = f"{p.lyapunov_unsettled} of {p.lyapunov_steps}"
            parts.append(f"at {of} {p.phase} probe steps ({_steps_text(p)}) {by} at most")
        else:
            parts.append(f"at {'the end' if p.phase == 'end' else p.phase} (step {p.step}) {by}")
    if not parts:
        return None
    where = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return (
        f"a later QR exponent exceeds λ₁ (index 0) {where} (per step): the exponents had not "
        "settled into descending order, so λ₁ need not be the largest"
    )


def _notes(s: RunSummary) -> list[str]:
    out = []
    init = s.phase("init")
    if s.mean_field_applies and math.isfinite(s.predicted_decay):
        line = f"mean-field prediction at init: √χ = {s.predicted_decay:.4g} per step"
        if math.isfinite(s.mean_field_ratio):
            line += (
                f"; measured at init (step {init.step}) {init.decay.rate_per_step:.4g}, "
                f"ratio {s.mean_field_ratio:.3g}"
            )
        out.append(line)
    elif s.pre_floss_updates and math.isfinite(s.predicted_decay):
        out.append(
            f"mean-field theory does not apply: step 1 follows {s.pre_floss_updates} "
            "pre-flossing updates, no longer the random initial weights"
        )
    elif s.init and math.isfinite(s.predicted_decay):
        out.append(
            f"mean-field theory does not apply: the {s.init} init is not i.i.d. random weights"
        )
    for p in s.phases.values():
        if p.lyapunov_note:
            out.append(p.lyapunov_note)
        if p.decay.shape in ("not exponential", "too few points"):
            out.append(
                f"{p.phase} ({_steps_text(p)}): gradient norm against distance is "
                f"{p.decay.shape} (R² {_fmt(p.decay.r2)}): no decay rate"
            )
    unsettled = _unsettled_note(s)
    if unsettled:
        out.append(unsettled)
    end = s.phase("end")
    for name, value in (
        ("saturated tanh units", end.saturation),
        ("dead ReLU units", end.dead_fraction),
    ):
        if math.isfinite(value):
            out.append(f"{name} at the end (step {end.step}): {value:.1%}")
    if math.isfinite(s.clip_rate):
        out.append(f"{s.clip} clipping acted on {s.clip_rate:.1%} of the steps after step 1")
    if math.isfinite(s.grad_growth):
        out.append(f"gradient norm, last 10 % of steps over the first 10 %: ×{s.grad_growth:.3g}")
    subnormals = subnormal_note(s)
    if subnormals:
        out.append(subnormals)
    return out


def subnormal_note(s: RunSummary) -> str | None:
    """Return a note on the run's subnormal adjoint norms, if it recorded any, with what makes
    CPU runs fast through them where the run did not flush them (a GPU run may have both)."""
    if not s.subnormal_share > 0:
        return None
    tiny = NORMAL_MIN[str(s.settings.get("dtype", "float32"))]
    note = (
        f"{s.subnormal_share:.1%} of the recorded adjoint norms are subnormal numbers (below "
        f"{tiny:.2g}; decay fits leave them out)"
    )
    if s.settings.get("train.flush_denormals"):
        return note
    return note + (
        ": on a CPU the steps through them run several times slower, and there "
        "--flush-denormals true reads them as 0"
    )


def _decay_text(p: PhaseMeasures, T: float) -> str:
    """Return the phase's decay, its source, the steps its median takes and the fit's R²."""
    d = p.decay
    where = "reach fit" if d.source == "reach" else "adjoint ratios"
    text = f"decay ×{d.rate_per_step:.4g} per step ({where}"
    if d.shape == "flat":
        text += f", flat: under 2× over distances {d.d_min:.0f}–{d.d_max:.0f}"
    if p.decay_fits > 1:  # the fit of median rate, and its own R²
        text += f", median of {p.decay_fits} probe steps"
    text += f", R² {d.r2:.3f}" if math.isfinite(d.r2) else ""
    first = d.first_step / d.rate_per_step  # NaN without reach rows at distances 0 and 1
    if math.isfinite(first) and not 1 / FIRST_STEP <= first <= FIRST_STEP:
        text += f"; the first step back ×{d.first_step:.3g}, which the fit leaves out"
    return text + (f"; T = {T:.0f})" if math.isfinite(T) else ")")


def _doubling(d: DecayFit) -> str:
    return f"{math.log(2) / math.log(d.rate_per_step):.3g} steps"


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "∞"
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def _or0(value: float) -> float:
    return value if math.isfinite(value) else 0.0


# -- studies --------------------------------------------------------------------------------


def study_table(study: StudySummary, diagnoses: Sequence[RunDiagnosis]) -> pd.DataFrame:
    """Return the study's summary table: analysis' numbers plus outcome and regime per phase.

    This one table is what the terminal shows, ``summary.csv`` holds and the report prints.
    """
    table = study.table()
    if table.empty:
        return table
    table.insert(len(study.axes) + 2, "outcome", [d.outcome for d in diagnoses])
    for i, name in enumerate(PHASES):
        table.insert(len(study.axes) + 3 + i, f"regime_{name}", [d.regime(name) for d in diagnoses])
    # log₂ of half-life / T, capped at REACH_CAP (growing gradients too): NaN stays NaN
    reach = pd.to_numeric(table["half_life_over_seq_len_end"], errors="coerce")
    table["log2_reach_end"] = np.log2(reach.mask(reach >= REACH_CAP, REACH_CAP))
    # for η²: log₂ of the half-life in steps, of exponential fits below REACH_CAP only. Over T
    # it would change with T by construction; a grown or capped value would set η² alone
    steps = pd.to_numeric(table["half_life_end"], errors="coerce")
    rate = pd.to_numeric(table["decay_per_step_end"], errors="coerce")
    table["log2_half_life_end"] = np.log2(steps.where((rate < 1) & (reach < REACH_CAP)))
    return table


@dataclass(frozen=True)
class StudyDiagnosis:
    """The study's answer lines (first), the other statements, and the per-axis effects."""

    answer: list[str]
    lines: list[str]
    effects: pd.DataFrame  # axis, quantity, eta2, runs, matters


def variance_explained(df: pd.DataFrame, axis: str, value: str) -> tuple[float, int]:
    """Return (η², runs): the share of ``value``'s variance explained by grouping on ``axis``."""
    if axis not in df.columns or value not in df.columns:
        return math.nan, 0
    y = pd.to_numeric(df[value], errors="coerce")
    keep = np.isfinite(y.to_numpy(float))
    y, groups = y[keep], df.loc[keep, axis].astype(str)
    if len(y) < 3 or groups.nunique() < 2:
        return math.nan, len(y)
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return 0.0, len(y)
    means = y.groupby(groups).transform("mean")
    return float(((means - y.mean()) ** 2).sum()) / total, len(y)


def diagnose_study(study: StudySummary, table: pd.DataFrame) -> StudyDiagnosis:
    """Return the study's diagnosis from its summary table (:func:`study_table`)."""
    if table.empty:
        return StudyDiagnosis(["The study has no runs."], [], pd.DataFrame())
    axes = [a for a in study.axes if a in table and table[a].astype(str).nunique() > 1]
    seeds = len(study.seeds)
    lines = [_tally(table, "outcome", OUTCOMES, "Outcomes")]
    flossed = pd.to_numeric(table.get("pre_floss_updates", pd.Series(dtype=float)), "coerce") > 0
    for name in PHASES:
        if f"regime_{name}" in table and table[f"regime_{name}"].notna().any():
            when = {"training": "during training", "end": "at the end"}.get(name, f"at {name}")
            line = _tally(table, f"regime_{name}", REGIMES, f"Gradients {when}")
            if name == "init" and flossed.any():  # not the random initial weights there
                line += f" Of these, {int(flossed.sum())} runs' step 1 follows pre-flossing."
            lines.append(line)
    # a diverged run's last loss and end-phase gradients say nothing about its configuration
    unjudged = table["outcome"].isin(["diverged", "untrained"])
    data = table.assign(loss_ratio=pd.to_numeric(table["loss_ratio"], "coerce").mask(unjudged))
    for column in ("log2_reach_end", "log2_half_life_end"):
        if column in data:
            data[column] = data[column].mask(data["outcome"] == "diverged")
    effects, effect_lines = _effects(data, axes, seeds)
    answer = _outcome_answer(data, axes) + _reach_answer(data, axes)
    answer += _truncation_answer(table, axes)
    answer += _mean_field_lines(table, axes) + _edge_lines(table, axes)
    answer += effect_lines
    if "status" in table:  # a report taken while the study runs: say the answer is partial
        counts = table.loc[~table["status"].isin(["done", "diverged"]), "status"].value_counts()
        if len(counts):
            states = ", ".join(f"{n} {state}" for state, n in counts.items())
            answer.insert(0, f"Partial: {counts.sum()} of {len(table)} runs are not done "
                             f"({states}); what follows reads the records so far.")  # fmt: skip
    if (table["outcome"] == "diverged").any():
        lines.append(
            f"{int((table['outcome'] == 'diverged').sum())} diverged run(s) are left out of "
            "loss/baseline comparisons."
        )
    return StudyDiagnosis(answer, lines, effects)


def _tally(table: pd.DataFrame, column: str, order: Sequence[str], what: str) -> str:
    counts = table[column].value_counts()
    parts = [f"{counts[k]} {k}" for k in order if k in counts]
    return f"{what} ({counts.sum()} runs): " + ", ".join(parts) + "."


def _configs(table: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    return table.apply(
        lambda r: ", ".join(f"{a.rpartition('.')[2]} = {r[a]}" for a in axes), axis=1
    )


def _outcome_answer(data: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Return which configurations solved, learned, or did not, with loss/baseline over seeds."""
    by_outcome: dict[str, list[str]] = {}
    diverged = data[data["outcome"] == "diverged"]
    if len(diverged):
        for _, cell in diverged.groupby(
            [diverged[a].astype(str) for a in axes] or [0] * len(diverged)
        ):
            first = cell.iloc[0]
            label = ", ".join(f"{a.rpartition('.')[2]} = {first[a]}" for a in axes) or "every run"
            onset = _step_range(cell["first_nonfinite_step"])
            onset = f"first non-finite loss or gradient at {onset}, " if onset else ""
            stop = _step_range(cell["divergence_step"])
            by_outcome.setdefault("diverged", []).append(
                f"{label} ({len(cell)} runs: {onset}stopped at {stop})"
            )
    judged = data[~data["outcome"].isin(["untrained", "unknown", "diverged"])]
    groups = aggregate(judged, axes, "loss_ratio")
    if groups.empty and not by_outcome:
        return []
    for g in groups.to_dict("records"):
        cell = judged
        for a in axes:
            cell = cell[cell[a].astype(str) == str(g[a])]
        label = ", ".join(f"{a.rpartition('.')[2]} = {g[a]}" for a in axes) or "every run"
        outcomes = cell["outcome"].value_counts()
        verdict = outcomes.index[0] if len(outcomes) == 1 else "mixed"
        seeds = f" ± {g['sd']:.2g}" if g["n"] > 1 else ""
        by_outcome.setdefault(verdict, []).append(f"{label} ({g['mean']:.3g}{seeds})")
    parts = [f"{k}: {'; '.join(v)}" for k in (*OUTCOMES, "mixed") if (v := by_outcome.get(k))]
    line = "Loss/baseline by configuration (mean ± sd over seeds) — " + " | ".join(parts) + "."
    if not any(k in by_outcome for k in ("solved", "learning")):
        line += " No configuration beat the baseline."
    return [line]


def _step_range(steps: pd.Series) -> str | None:
    """Return "step a" or "steps a–b" over the finite values of ``steps``, None without any."""
    values = pd.to_numeric(steps, errors="coerce").dropna().astype(int)
    if values.empty:
        return None
    low, high = values.min(), values.max()
    return f"step {low}" if low == high else f"steps {low}–{high}"


def _reach_answer(data: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Return each configuration's end-phase gradient half-life against T (seeds pooled)."""
    if "log2_reach_end" not in data or not axes:
        return []
    rows = data[data["outcome"] != "diverged"]
    parts = []
    configs = rows[list(axes)].drop_duplicates()
    for g in configs.iloc[level_order(configs, axes)].to_dict("records"):
        cell = rows[np.logical_and.reduce([rows[a].astype(str) == str(g[a]) for a in axes])]
        label = ", ".join(f"{a.rpartition('.')[2]} = {g[a]}" for a in axes)
        parts.append(f"{label}: {_reach_cell(cell, in_steps=True)}")  # unfitted ones too
    if not rows["log2_reach_end"].notna().any():
        return []
    return [
        "Gradient half-life at the end, in steps and as a fraction of the T steps the network runs "
        f"(geometric mean ×/÷ sd over seeds of the fits below {CAP}; runs whose gradient "
        f"grows, that reach ≥ {CAP} or have no exponential fit are counted, not averaged; "
        "below 0.25 T it vanishes within the sequence) — " + "; ".join(parts) + "."
    ]


def _reach_cell(rows: pd.DataFrame, in_steps: bool = False) -> str:
    """Return the end-phase half-life / T of ``rows`` (``in_steps``: in steps, then over T):
    the geometric mean (×/÷ sd) of the fits below ``REACH_CAP``, and how many runs grow,
    reach beyond it or have no fit."""
    rate = pd.to_numeric(rows["decay_per_step_end"], errors="coerce")
    reach = pd.to_numeric(rows["half_life_over_seq_len_end"], errors="coerce")
    flat = rows.get("decay_shape_end", pd.Series("", index=rows.index)) == "flat"
    fitted = (rate < 1) & (reach < REACH_CAP) & ~flat
    kinds = {
        "flat (under 2× over the distances fitted)": flat,
        "grows": (rate > 1) & ~flat,
        f"≥ {CAP}": (rate <= 1) & (reach >= REACH_CAP) & ~flat,
    }
    kinds["no exponential fit"] = ~(fitted | np.logical_or.reduce(list(kinds.values())))
    parts = []
    if fitted.any():
        logs = np.log2(reach[fitted])
        spread = f" (×/÷ {2 ** logs.std():.2g})" if len(logs) > 1 else ""
        value = f"{2 ** logs.mean():.2g} T{spread}"
        if in_steps:
            steps = np.log2(pd.to_numeric(rows["half_life_end"], errors="coerce")[fitted])
            spread = f" ×/÷ {2 ** steps.std():.2g}" if len(steps) > 1 else ""
            mean = f"{2 ** steps.mean():.3g}"
            value = f"{mean} step{'s' * (mean != '1')}{spread} ({2 ** logs.mean():.2g} T)"
        parts.append(value + _share(len(logs), len(rows)))
    parts += [k + _share(int(m.sum()), len(rows)) for k, m in kinds.items() if m.any()]
    return "; ".join(parts)


def _share(count: int, total: int) -> str:
    return "" if count == total else f" in {count} of {total} runs"


def _truncation_answer(table: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Per configuration of truncated runs: ‖full − truncated‖ / ‖full‖, and the cosine."""
    column, cosine = "truncation_dropped_training", "truncation_cosine_training"
    if column not in table or not pd.to_numeric(table[column], errors="coerce").notna().any():
        column, cosine = "truncation_dropped_end", "truncation_cosine_end"
    dropped, cosines = aggregate(table, axes, column), aggregate(table, axes, cosine)
    if dropped.empty:
        return []
    phase = column.rpartition("_")[2]
    key = [a for a in axes if a in dropped]

    def levels(frame: pd.DataFrame) -> list[tuple[str, ...]]:
        # read by column: a row of mixed dtypes (iterrows) would turn the level 4 into 4.0
        return [tuple(map(str, row)) for row in frame[key].itertuples(index=False)]

    cosine_of = dict(zip(levels(cosines), cosines["mean"], strict=True))
    parts = []
    for level, mean in zip(levels(dropped), dropped["mean"], strict=True):
        named = zip(key, level, strict=True)
        label = ", ".join(f"{a.rpartition('.')[2]} = {v}" for a, v in named) or "all runs"
        mean_cosine = cosine_of.get(level, float("nan"))
        parts.append(f"{label}: {mean:.2g} and cosine {mean_cosine:.2g}")
    return [
        f"Truncated against full BPTT of the same batches ({phase} phase, mean over seeds of "
        "the median): the norm of the gradient the cuts remove relative to the full one, "
        "‖full − truncated‖ / ‖full‖ (a ratio of norms, not a share), and the cosine of the "
        "two — " + "; ".join(parts) + "."
    ]


def _effects(data: pd.DataFrame, axes: Sequence[str], seeds: int) -> tuple[pd.DataFrame, list]:
    rows, lines = [], []
    for value, name in QUANTITIES.items():
        if value not in data:
            continue
        for axis in axes:
            # only where every level has a value: a level's missing runs (no fit, diverged)
            # must not leave its mean to other settings than the rest's
            kept, within = _complete_blocks(data, axis, [a for a in axes if a != axis], value)
            eta2, n = variance_explained(kept, axis, value)
            groups = aggregate(kept, [axis], value)
            spread = float(groups["mean"].max() - groups["mean"].min()) if len(groups) else 0.0
            noise = float(groups["sd"].max()) if len(groups) and seeds > 1 else 0.0
            matters = bool(
                len(groups) >= 2
                and n >= MIN_RUNS
                and (seeds == 1 or groups["n"].min() >= 2)  # a level's mean, not one run's
                and eta2 >= MIN_ETA2
                and spread > EFFECT.get(value, 0.0)
                and spread > 2 * noise
            )
            rows.append(
                {"axis": axis, "quantity": name, "eta2": eta2, "runs": n, "matters": matters}
            )
            if matters:
                shown = "; ".join(_level(kept, g, axis, value) for g in groups.to_dict("records"))
                how = f"; geometric mean ×/÷ sd of the exponential fits below {CAP}" * (
                    value == "log2_half_life_end"
                )
                how += f"; only {within}, where every level has a value" * bool(within)
                lines.append(f"{axis} changes {name} (η² = {eta2:.2f}, {n} runs{how}): {shown}.")
    return pd.DataFrame(rows), lines


def _complete_blocks(
    data: pd.DataFrame, axis: str, others: Sequence[str], value: str
) -> tuple[pd.DataFrame, str]:
    """Return the rows of the settings of the ``others`` axes at which every level of ``axis``
    has a finite ``value``, and, when some settings are left out, the text naming those kept."""
    others = [a for a in others if a in data]
    if not others or value not in data or axis not in data:
        return data, ""
    finite = np.isfinite(pd.to_numeric(data[value], errors="coerce").to_numpy(float))
    levels = set(data.loc[finite, axis].astype(str))
    blocks = [tuple(map(str, row)) for row in data[others].itertuples(index=False)]
    have: dict[tuple[str, ...], set[str]] = {}
    for block, level, ok in zip(blocks, data[axis].astype(str), finite, strict=True):
        if ok:
            have.setdefault(block, set()).add(level)
    complete = {b for b, seen in have.items() if seen == levels}
    if len(complete) == len(set(blocks)):
        return data, ""
    kept = data[[b in complete for b in blocks]]
    names = [a.rpartition(".")[2] for a in others]
    if 0 < len(complete) <= 2:
        within = " and ".join(
            ", ".join(f"{n} = {v}" for n, v in zip(names, b, strict=True)) for b in sorted(complete)
        )
    else:
        within = f"{len(complete)} of {len(set(blocks))} settings of {' and '.join(names)}"
    return kept, within


def _level(data: pd.DataFrame, g: dict, axis: str, value: str) -> str:
    if value == "log2_half_life_end":  # every judged run of the level, fitted or not
        rows = data[(data[axis].astype(str) == str(g[axis])) & (data["outcome"] != "diverged")]
        return f"{g[axis]}: {_reach_cell(rows, in_steps=True)}"
    spread = f" ± {g['sd']:.2g}" if g["n"] > 1 else ""
    return f"{g[axis]}: {g['mean']:.3g}{spread}"


def _spread(g: dict) -> str:
    return f"{g['mean']:+.3f}" + (f" ± {g['sd']:.2g}" if g["n"] > 1 else "")


def _mean_field_lines(table: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Return measured/predicted decay at init over the distinct initial networks: runs that
    differ only in training settings (:func:`training_only`) share one."""
    if "mean_field_applies" not in table:
        return []
    applies = table[table["mean_field_applies"].astype(bool)]
    if applies.empty:
        if "predicted_decay" in table and pd.to_numeric(table["predicted_decay"]).notna().any():
            flossed = "pre_floss_updates" in table and (table["pre_floss_updates"] > 0).any()
            why = ", or step 1 follows pre-flossing" if flossed else ""
            return [
                f"Mean-field theory does not apply to these runs (not i.i.d. random weights{why})."
            ]
        return []
    applies = applies.assign(ratio=pd.to_numeric(applies["mean_field_ratio"], "coerce"))
    applies = applies.dropna(subset=["ratio"])
    network = [a for a in (*axes, "seed") if a in applies and not training_only(a)]
    ratio = applies.groupby([applies[a].astype(str) for a in network])["ratio"].mean()
    if len(ratio) < 2:
        return []
    close = (ratio - 1).abs() <= 0.05
    verb = "follows" if close.mean() >= 0.8 else "departs from"
    runs = f", {len(applies)} runs" if len(applies) > len(ratio) else ""
    return [
        f"At init, measured decay per step {verb} the mean-field √χ: measured/predicted "
        f"{ratio.mean():.3f} ± {ratio.std():.2g} (mean ± sd over {len(ratio)} initial "
        f"networks{runs}; range {ratio.min():.3g}–{ratio.max():.3g}; {close.mean():.0%} "
        "within 5 %)."
    ]


def _edge_lines(table: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Return where the mean λ₁ at init changes sign between neighbouring numeric levels."""
    out = []
    for axis in axes:
        if pd.to_numeric(table[axis], errors="coerce").isna().any():
            continue
        groups = aggregate(table, [axis], "lyapunov_max_init")
        if len(groups) < 2:
            continue
        others = " (mean over the other axes)" if len(axes) > 1 else ""
        means = groups["mean"].to_numpy(float)
        for i in range(len(groups) - 1):
            if means[i] * means[i + 1] < 0 or means[i + 1] == 0:
                a, b = groups.to_dict("records")[i : i + 2]
                out.append(
                    f"λ₁ at init crosses 0 between {axis} = {a[axis]} (λ₁ = {_spread(a)}) and "
                    f"{b[axis]} ({_spread(b)}){others}: the edge of chaos."
                )
        if not out and len(groups) >= 2 and axis.startswith("model."):
            sign = "negative" if means.max() < 0 else "positive"
            out.append(
                f"λ₁ at init is {sign} at every {axis} level{others}: no edge of chaos in range."
            )
    return out


# -- the pipeline a command runs once -------------------------------------------------------

SHOWN_COLUMNS = (  # the columns the terminal and the report's table show; summary.csv has all
    "status",
    "outcome",
    "loss_ratio",
    "regime_init",
    "decay_per_step_init",
    "regime_end",
    "decay_per_step_end",
    "half_life_end",
    "lyapunov_max_init",
    "lyapunov_max_end",
    "mean_field_ratio",
    "clip_rate",
    "divergence_step",
)


@dataclass(frozen=True)
class StudyAnalysis:
    """Everything a study command shows, computed once: summaries, diagnoses, the table."""

    study: StudySummary
    runs: dict  # run id -> the loaded rnnprobe.records.store.Run (for figures)
    diagnoses: list[RunDiagnosis]
    table: pd.DataFrame
    diagnosis: StudyDiagnosis

    @property
    def shown(self) -> pd.DataFrame:
        """Return the table's run id, axes, seed and ``SHOWN_COLUMNS`` (present ones)."""
        front = ["run_id", *self.study.axes, "seed"]
        columns = [c for c in (*front, *SHOWN_COLUMNS) if c in self.table]
        return self.table[list(dict.fromkeys(columns))]


def analyse_study(path: str | os.PathLike[str], *, keep: Sequence[str] = ()) -> StudyAnalysis:
    """Return the analysis of the study at ``path`` (each run's tables read once)."""
    from rnnprobe.analysis.runs import study_summary

    study, runs = study_summary(path, keep=keep)
    diagnoses = [diagnose_run(s) for s in study.runs]
    table = study_table(study, diagnoses)
    return StudyAnalysis(study, runs, diagnoses, table, diagnose_study(study, table))


def analyse_run(run: Run) -> StudyAnalysis:
    """Return a single run's analysis in the shape of a one-run study (no axes)."""
    from rnnprobe.analysis.runs import summarise_run

    summary = summarise_run(run)
    name = run.path.resolve().name
    study = StudySummary(name, "", "", [], [summary.settings.get("seed")], [summary])
    diagnoses = [diagnose_run(summary)]
    table = study_table(study, diagnoses)
    return StudyAnalysis(
        study, {summary.run_id: run}, diagnoses, table, diagnose_study(study, table)
    )
