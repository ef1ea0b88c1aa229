"""A live terminal view of a run or a study directory, redrawn as its records are flushed.

Each frame shows what the one analysis computed from the records on disk so far: a run's
:class:`~rnnprobe.analysis.runs.RunSummary` and :class:`~rnnprobe.analysis.diagnosis.RunDiagnosis`
(the same objects ``rnnprobe train``, ``study`` and ``report`` render), nothing recomputed here. The
one raw record shown is the gradient norm of the last recorded step (``steps`` table), as stored.

Conventions: phases are the analysis' init (step 1), training (the probe steps between,
median) and end (the latest probe step; while a run trains, it moves with it). A run has
finished when its status (``records.index.read_status``: a dead writer reads as interrupted) is one
of ``FINISHED``; a study when every run has.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rnnprobe.analysis.diagnosis import RunDiagnosis, StudyAnalysis, analyse_run, analyse_study
from rnnprobe.analysis.runs import PHASES, SUMMARY_TABLES, DecayFit, RunSummary
from rnnprobe.errors import RecordError, RnnprobeError
from rnnprobe.records.index import read_status, run_or_study
from rnnprobe.records.store import Run, load_run
from rnnprobe.study.spec import study_title

__all__ = ["FINISHED", "View", "finished", "follow", "format_frame", "look"]

FINISHED = ("done", "diverged", "failed", "interrupted")
MAX_INTERVAL = 86400.0  # seconds; a longer wait is surely a typo


@dataclass(frozen=True)
class View:
    """One look at a run or study directory: its analysis, or the one line saying why not.

    ``status`` is the run's ``read_status`` record, kept for when its tables are unreadable.
    """

    path: Path
    kind: str  # run | study
    analysis: StudyAnalysis | None = None
    status: dict = field(default_factory=dict)
    error: str | None = None  # damaged records, as the store names them


def look(path: Path) -> View:
    """Return the view of ``path`` now: its tables read once and analysed."""
    kind = run_or_study(path)
    try:
        if kind == "run":
            analysis = analyse_run(load_run(path, SUMMARY_TABLES))
        else:
            analysis = analyse_study(path)
    except (RecordError, OSError) as error:  # damaged, or a part renamed while being read
        status = read_status(path) if kind == "run" else {}
        return View(path, kind, status=status, error=" ".join(str(error).split()))
    return View(path, kind, analysis)


def finished(view: View) -> bool:
    """Return whether the run, or every run of the study, has finished (see ``FINISHED``)."""
    if view.analysis is None:
        return view.kind == "run" and view.status.get("status") in FINISHED
    return all(s.status in FINISHED for s in view.analysis.study.runs)


def follow(
    path: Path,
    *,
    interval: float = 2.0,
    once: bool = False,
    show: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show a frame of ``path`` whenever it changes, until it has finished; return the exit.

    0 when it finished (or after the one frame of ``once``); 1 when ``once`` found damaged
    records. ``show`` gets each new frame, ``sleep`` the seconds between looks.
    """
    if not (math.isfinite(interval) and 0 < interval <= MAX_INTERVAL):
        raise RnnprobeError(f"--interval must be in (0, {MAX_INTERVAL:g}] seconds, got {interval}")
    path, shown = Path(path), None
    while True:
        view = look(path)
        frame = format_frame(view)
        if frame != shown:  # an unchanged frame is not drawn again: quiet in a log file
            show(frame)
            shown = frame
        if once:
            return 1 if view.error else 0
        if finished(view):
            return 0
        sleep(interval)


# -- frames (pure) ------------------------------------------------------------------------


def format_frame(view: View) -> str:
    """Return the frame's text: a run's block, or a study's header and one line per run."""
    if view.analysis is None:
        status = view.status.get("status", "pending")
        step = view.status.get("step")
        at = f" at step {step}" if step is not None else ""
        return f"{view.kind} {view.path}: {status}{at}\nrecords unreadable: {view.error}"
    if view.kind == "run":
        (summary,), (diagnosis,) = view.analysis.study.runs, view.analysis.diagnoses
        run = view.analysis.runs.get(summary.run_id)
        return "\n".join(_run_lines(view.path, summary, diagnosis, run))
    return "\n".join(_study_lines(view.path, view.analysis))


def _run_lines(path: Path, s: RunSummary, d: RunDiagnosis, run: Run | None) -> list[str]:
    task = f"{s.task}, T = {_number(s.seq_len, '.0f')}" if s.task else "task not recorded yet"
    lines = [f"run {s.run_id}: {s.status} at step {_steps(s)} ({task}) — {path}"]
    if s.error:
        lines.append(f"error: {s.error}")
    if s.last_step is None:
        return [*lines, "waiting for records"]
    which = "validation" if math.isfinite(s.final_valid_loss) else "training"
    lines.append(
        f"{'loss/baseline':<16}{_number(s.loss_ratio)} — {d.outcome} ({which} loss "
        f"{_number(s.final_loss, '.4g')}, baseline {_number(s.baseline_loss, '.4g')}; "
        f"{_number(s.initial_loss_ratio)} at the start)"
    )
    growth = f", ×{s.grad_growth:.3g} over training" if math.isfinite(s.grad_growth) else ""
    norm = _number(s.final_grad_norm)
    lines.append(f"{'gradient norm':<16}{norm} (before clipping, last finite step){growth}")
    lines.append(f"{'clipping':<16}{_clipping(s)}")
    # the diagnosis may judge a phase no probe measured (non-finite steps): show it too
    names = [p for p in PHASES if p in s.phases or p in d.phases]
    if not names:
        return [*lines, "no probe records yet"]
    phases = [s.phase(p) for p in names]
    rows = [
        ["", *(f"{p.phase} ({_phase_steps(p.steps, d, p.phase)})" for p in phases)],
        ["regime", *(d.regime(p.phase) or "–" for p in phases)],
        ["decay per step", *(_decay(p.decay) for p in phases)],
        ["half-life", *(_half_life(p.decay) for p in phases)],
        ["λ₁", *(_number(p.lyapunov_max, "+.3g") for p in phases)],
    ]
    return lines + _columns(rows)


def _study_lines(path: Path, analysis: StudyAnalysis) -> list[str]:
    study = analysis.study
    counts: dict[str, int] = {}
    for s in study.runs:
        counts[s.status] = counts.get(s.status, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in counts.items())
    name = study_title(study.name)
    header = f"{name}: {len(study.runs)} runs{f' ({tally})' if tally else ''} — {path}"
    axes = [*study.axes, *(["seed"] if len(study.seeds) > 1 else [])]
    rows = [
        [
            "run",
            *(a.rpartition(".")[2] for a in axes),
            "status",
            "step",
            "loss/baseline",
            "outcome",
            "regime (end)",
            "decay/step (end)",
            "λ₁ (end)",
            "clip rate",
        ]
    ]
    errors = []
    for s, d in zip(study.runs, analysis.diagnoses, strict=True):
        end = s.phase("end")
        measured = s.last_step is not None
        rows.append(
            [
                s.run_id,
                *(str(s.settings.get(a, "")) for a in axes),
                s.status,
                _steps(s),
                _number(s.loss_ratio) if measured else "–",
                d.outcome if measured else "waiting for records",
                d.regime("end") or "–",
                _decay(end.decay) if end.measured else "–",
                _number(end.lyapunov_max, "+.3g") if end.measured else "–",
                _clipping(s, short=True),
            ]
        )
        if s.error:
            errors.append(f"{s.run_id}: {s.error}")
    return [header, *_columns(rows), *errors]


def _columns(rows: list[list[str]]) -> list[str]:
    """Return the rows as lines of left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(map(str.ljust, row, widths)).rstrip() for row in rows]


def _steps(s: RunSummary) -> str:
    total = s.settings.get("train.steps")
    done = str(s.steps) if s.last_step is not None else "–"
    return f"{done}/{total}" if total is not None else done


def _phase_steps(steps: tuple[int, ...], d: RunDiagnosis, phase: str) -> str:
    if len(steps) > 1:
        return f"steps {steps[0]}–{steps[-1]}"
    return f"step {steps[0]}" if steps else d.phases[phase].step


def _decay(fit: DecayFit) -> str:
    """Return the decay per step, or the fit's verdict when it gave no rate."""
    if fit.ok:
        return f"{fit.rate_per_step:.4g} ({fit.source})"
    return fit.shape


def _clipping(s: RunSummary, *, short: bool = False) -> str:
    if s.clip == "none":
        return "off"
    if not math.isfinite(s.clip_rate):  # no step whose update went through, yet
        return "–" if short else f"{s.clip}: no rate"
    if short:
        return f"{s.clip_rate:.0%}"
    text = f"{s.clip}: acted on {s.clip_rate:.1%} of steps"
    if math.isfinite(s.clip_burst):
        text += f", norms up to {s.clip_burst:.3g} × the threshold"
    return text


def _half_life(d: DecayFit) -> str:
    """Return the half-life as the diagnosis words it: steps, or flat, grows, ∞."""
    if not d.ok:
        return "n/a"
    text = d.half_life_text
    return text if text in ("flat", "grows", "∞") else f"{text} steps"


def _number(value: float, spec: str = ".3g") -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return format(value, spec)
