r"""Written diagnosis of a run or a study from its stored records: which gradient regime, and why.

Convention: δ_t = ∂L/∂h_t, J_t = ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh; gradients carried back
``d`` steps scale like r^d, r the *decay per step*; their half-life is ln 2 / (−ln r) steps
(∞ when r ≥ 1). T is the task's sequence length.

Where the numbers come from: :func:`rnnprobe.analysis.run_summary` (last recorded step, top
layer: loss/baseline, decay fit of the ``reach`` table, half-life, λ₁, saturation / dead
fraction, mean-field prediction), plus what a diagnosis needs beyond it:

- decay per step r without reach records: the geometric mean over t of ‖δ_t − ε_t‖ / ‖δ_{t+1}‖
  (``adjoints``, top layer, last step). The recurrent part of δ_t is δ_{t+1} J_{t+1}, so the
  ratio is the one-step factor whatever the task injects at each step (a fit of ‖δ_t‖ against
  T − 1 − t, analysis' fallback, reads "no decay" for a language model's fresh ε_t).
- gradient-norm growth: median pre-clip norm of the last 10 % of steps over the first 10 %.
- non-finite steps: steps whose loss or gradient was not finite, or whose update was skipped.
- divergence: status "diverged" or a "diverged" event (a skipped step alone is not one).

Rules, checked in this order (thresholds below as module constants):

1. **diverged** — status "diverged" or a "diverged" event; the step is reported.
2. **exploding** — any of: r > 1.05; λ₁ > +0.05 (when r is unknown or ≥ 1); a non-finite
   loss or gradient; gradient norm grown ≥ 100× over training.
3. **vanishing** — r < 0.9 with half-life < T/4; or, without r, λ₁ < −0.1; or, with neither,
   saturated (tanh) or dead (ReLU) fraction ≥ 0.5.
4. **healthy** — some of those measurements exist and none of the above holds.
5. **unknown** — no records to judge by.

A study's diagnosis counts the regimes and names the sweep axis that mattered most: for the
final loss/baseline ratio and for log₁₀ half-life (capped at 10·max T so that "no decay" counts
as long reach), the fraction of variance across runs explained by the axis' values (η² of a
one-way grouping); at least 3 runs with values and 2 distinct axis values are needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from rnnprobe.analysis import DecayFit, fit_decay, run_summary
from rnnprobe.store import Run

__all__ = [
    "REGIMES",
    "Evidence",
    "RunDiagnosis",
    "StudyDiagnosis",
    "classify",
    "diagnose_run",
    "diagnose_study",
    "measure_run",
    "variance_explained",
]

REGIMES = ("vanishing", "exploding", "healthy", "diverged", "unknown")
VANISH_DECAY = 0.9  # r below this …
VANISH_REACH = 0.25  # … and a half-life below this fraction of T
VANISH_LYAPUNOV = -0.1  # λ₁ below this: perturbations shrink by e^-0.1 per step or faster
EXPLODE_DECAY = 1.05
EXPLODE_LYAPUNOV = 0.05
EXPLODE_GRAD_GROWTH = 100.0
SATURATED = 0.5  # fraction of units
HALF_LIFE_CAP = 10.0  # × max T, for log half-life in study comparisons


@dataclass(frozen=True)
class Evidence:
    """The numbers a diagnosis rests on; NaN or None where the run has no records."""

    status: str = "unknown"
    last_step: int | None = None
    seq_len: float = math.nan
    final_loss: float = math.nan
    baseline_loss: float = math.nan
    loss_ratio: float = math.nan
    decay_per_step: float = math.nan
    half_life: float = math.nan
    decay_source: str | None = None  # reach or adjoints
    decay_step: int | None = None
    lyapunov_max: float = math.nan
    lyapunov_step: int | None = None
    saturation: float = math.nan
    dead_fraction: float = math.nan
    grad_growth: float = math.nan
    nonfinite_steps: int = 0
    divergence_step: int | None = None
    predicted_decay: float = math.nan
    predicted_half_life: float = math.nan
    clip_rate: float = math.nan
    summary: dict = field(default_factory=dict, repr=False)  # analysis.run_summary's row

    @property
    def half_life_over_seq_len(self) -> float:
        return self.half_life / self.seq_len if self.seq_len > 0 else math.nan

    @property
    def has_records(self) -> bool:
        return self.last_step is not None

    def row(self) -> dict:
        """Return analysis' summary row updated with these numbers (one flat dict)."""
        own = {k: v for k, v in asdict(self).items() if k != "summary"}
        return {**self.summary, **own, "half_life_over_seq_len": self.half_life_over_seq_len}


def measure_run(run: Run) -> Evidence:
    """Return the evidence of ``run`` read from its stored tables."""
    base = run_summary(run)
    steps = _numeric(run.table("steps"), ["step", "loss", "grad_norm_pre_clip"])
    decay, decay_step, source = _decay(run)
    lyapunov = _numeric(run.table("lyapunov"), ["step"])
    recorded = [
        float(pd.to_numeric(t["step"], errors="coerce").max())
        for t in (steps, run.table("adjoints"), run.table("reach"))
        if "step" in t.columns and len(t)
    ]
    recorded = [int(s) for s in recorded if math.isfinite(s)]
    final = base.get("final_valid_loss", math.nan)
    return Evidence(
        status=str(run.status.get("status", "unknown")),
        last_step=max(recorded) if recorded else None,
        seq_len=_number(base.get("seq_len")),
        final_loss=final if math.isfinite(final) else base.get("final_loss", math.nan),
        baseline_loss=base.get("baseline_loss", math.nan),
        loss_ratio=base.get("loss_ratio", math.nan),
        decay_per_step=decay,
        half_life=_half_life(decay),
        decay_source=source,
        decay_step=decay_step,
        lyapunov_max=base.get("lyapunov_max", math.nan),
        lyapunov_step=int(lyapunov["step"].max()) if len(lyapunov) else None,
        saturation=base.get("saturation", math.nan),
        dead_fraction=base.get("dead_fraction", math.nan),
        grad_growth=_growth(steps),
        nonfinite_steps=_nonfinite(steps, run.table("events")),
        divergence_step=_divergence(run.status, run.table("events")),
        predicted_decay=base.get("predicted_decay", math.nan),
        predicted_half_life=base.get("predicted_half_life", math.nan),
        clip_rate=_mean(run.table("steps"), "clipped"),
        summary=base,
    )


def classify(ev: Evidence) -> tuple[str, list[str]]:
    """Return the regime of ``ev`` and the reasons (the rules that fired), per the module doc."""
    r, lyap, T = ev.decay_per_step, ev.lyapunov_max, ev.seq_len
    if ev.divergence_step is not None:
        return "diverged", [f"the run diverged at step {ev.divergence_step}"]
    exploding = []
    if r > EXPLODE_DECAY:
        exploding.append(f"gradients grow ×{r:.3g} per step back in time (> {EXPLODE_DECAY})")
    if lyap > EXPLODE_LYAPUNOV and not r < 1:
        exploding.append(f"λ₁ = {lyap:+.3g} per step (> {EXPLODE_LYAPUNOV:+})")
    if ev.nonfinite_steps > 0:
        exploding.append(f"{ev.nonfinite_steps} steps had a non-finite loss or gradient")
    if ev.grad_growth >= EXPLODE_GRAD_GROWTH:
        exploding.append(f"the gradient norm grew ×{ev.grad_growth:.3g} over training")
    if exploding:
        return "exploding", exploding
    short = ev.half_life < VANISH_REACH * T if math.isfinite(T) else True
    if r < VANISH_DECAY and short:
        return "vanishing", [
            f"gradients shrink ×{r:.3g} per step (< {VANISH_DECAY}): half-life "
            f"{ev.half_life:.3g} steps < T/4 = {VANISH_REACH * T:.3g}"
        ]
    if math.isnan(r) and lyap < VANISH_LYAPUNOV:
        return "vanishing", [f"λ₁ = {lyap:+.3g} per step (< {VANISH_LYAPUNOV})"]
    stuck = max(_or0(ev.saturation), _or0(ev.dead_fraction))
    if math.isnan(r) and math.isnan(lyap) and stuck >= SATURATED:
        return "vanishing", [f"{stuck:.0%} of units saturated or dead (≥ {SATURATED:.0%})"]
    if r < VANISH_DECAY:
        return "healthy", [
            f"gradients shrink ×{r:.3g} per step, but the half-life {ev.half_life:.3g} steps "
            f"is at least T/4 = {VANISH_REACH * T:.3g}: they still reach across the sequence"
        ]
    if ev.has_records and not (math.isnan(r) and math.isnan(lyap) and math.isnan(ev.grad_growth)):
        return "healthy", ["no vanishing or exploding rule fired"]
    return "unknown", ["no records to judge the gradients by"]


@dataclass(frozen=True)
class RunDiagnosis:
    """A run's regime, a one-line verdict and the evidence, one statement per line."""

    regime: str
    verdict: str
    evidence: list[str]
    missing: list[str]
    measures: Evidence = field(repr=False)

    def lines(self) -> list[str]:
        """Return the verdict, the evidence and what is missing, as plain lines."""
        gone = [f"no finite value for: {', '.join(self.missing)}"] if self.missing else []
        return [self.verdict, *self.evidence, *gone]


def diagnose_run(run: Run | Evidence) -> RunDiagnosis:
    """Return the written diagnosis of a run (or of evidence already measured)."""
    ev = run if isinstance(run, Evidence) else measure_run(run)
    regime, reasons = classify(ev)
    if not ev.has_records:
        verdict = f"No records yet (status {ev.status}); nothing to diagnose."
        return RunDiagnosis("unknown", verdict, [], [], ev)
    verdict = f"Regime: {regime} — " + "; ".join(reasons) + "."
    return RunDiagnosis(regime, verdict, _statements(ev), _missing(ev), ev)


def _statements(ev: Evidence) -> list[str]:
    out = []
    if math.isfinite(ev.final_loss):
        line = f"final loss {ev.final_loss:.4g}"
        if math.isfinite(ev.loss_ratio):
            beat = "beats" if ev.loss_ratio < 0.95 else "does not beat"
            line += f" = {ev.loss_ratio:.3g} × baseline {ev.baseline_loss:.4g} ({beat} it)"
        out.append(line)
    if math.isfinite(ev.decay_per_step):
        where = "gradient reach" if ev.decay_source == "reach" else "adjoint ratios"
        line = f"decay per step {ev.decay_per_step:.3g} ({where}, step {ev.decay_step})"
        line += f", half-life {_fmt_steps(ev.half_life)}"
        if math.isfinite(ev.seq_len):
            line += f" against T = {ev.seq_len:.0f} (T/4 = {ev.seq_len / 4:.3g})"
        out.append(line)
    if math.isfinite(ev.predicted_decay):
        out.append(f"mean-field prediction at init: {ev.predicted_decay:.3g} per step")
    if math.isfinite(ev.lyapunov_max):
        out.append(f"largest Lyapunov exponent {ev.lyapunov_max:+.3g} (step {ev.lyapunov_step})")
    if math.isfinite(ev.saturation):
        out.append(f"saturated tanh units {ev.saturation:.1%}")
    if math.isfinite(ev.dead_fraction):
        out.append(f"dead ReLU units {ev.dead_fraction:.1%}")
    if math.isfinite(ev.grad_growth):
        out.append(f"gradient norm late/early ×{ev.grad_growth:.3g}")
    if math.isfinite(ev.clip_rate):
        out.append(f"clipped on {ev.clip_rate:.1%} of steps")
    if ev.nonfinite_steps:
        out.append(f"{ev.nonfinite_steps} non-finite steps")
    if ev.divergence_step is not None:
        out.append(f"diverged at step {ev.divergence_step}")
    return out


def _missing(ev: Evidence) -> list[str]:
    checks = {
        "final loss": ev.final_loss,
        "baseline loss": ev.baseline_loss,
        "gradient reach or adjoints": ev.decay_per_step,
        "Lyapunov exponents": ev.lyapunov_max,
        "hidden-unit health": _or_nan(ev.saturation, ev.dead_fraction),
    }
    return [name for name, value in checks.items() if not math.isfinite(value)]


@dataclass(frozen=True)
class StudyDiagnosis:
    """Statements about a study, and the variance each axis explains per quantity."""

    lines: list[str]
    importance: pd.DataFrame  # axis, quantity, variance_explained, runs


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


def diagnose_study(summary: pd.DataFrame, axes: Sequence[str]) -> StudyDiagnosis:
    """Return a study's diagnosis from its summary (one row per run, ``regime`` column)."""
    if summary.empty:
        return StudyDiagnosis(["The study has no runs."], pd.DataFrame())
    counts = summary.get("regime", pd.Series(dtype=str)).value_counts()
    tally = ", ".join(f"{counts[r]} {r}" for r in REGIMES if r in counts)
    lines = [f"{len(summary)} runs: {tally or 'none diagnosed'}."]
    data = summary.copy()
    seq = pd.to_numeric(data.get("seq_len", pd.Series(np.nan, index=data.index)), errors="coerce")
    cap = HALF_LIFE_CAP * (np.nanmax(seq) if seq.notna().any() else 100.0)
    half = pd.to_numeric(data.get("half_life", pd.Series(np.nan, index=data.index)), "coerce")
    data["log10_half_life"] = np.log10(half.clip(upper=cap))
    if "loss_ratio" in data:  # a diverged run's last loss says nothing about its configuration
        diverged = data.get("regime", pd.Series("", index=data.index)) == "diverged"
        data["loss_ratio"] = pd.to_numeric(data["loss_ratio"], errors="coerce").mask(diverged)
        if diverged.any():
            lines.append(f"{int(diverged.sum())} diverged run(s) left out of the loss comparison.")
    rows = []
    quantities = {"loss_ratio": "loss/baseline", "log10_half_life": "log₁₀ half-life"}
    for value, name in quantities.items():
        scores = {a: variance_explained(data, a, value) for a in axes}
        for a, (eta2, n) in scores.items():
            rows.append({"axis": a, "quantity": name, "variance_explained": eta2, "runs": n})
        ranked = sorted((s[0], a) for a, s in scores.items() if math.isfinite(s[0]))
        if not ranked:
            lines.append(f"{name}: too few runs with values to compare the sweep axes.")
            continue
        eta2, best = ranked[-1]
        means = data.groupby(data[best].astype(str))[value].mean()
        what, shown = "mean", {k: f"{v:.3g}" for k, v in means.items() if math.isfinite(v)}
        if value == "log10_half_life":  # back to steps: the geometric-mean half-life
            what = "geometric-mean half-life in steps"
            shown = {k: _capped(10**v, cap) for k, v in means.items() if math.isfinite(v)}
        spread = ", ".join(f"{k}: {v}" for k, v in shown.items())
        lines.append(
            f"{name}: {best} mattered most, explaining {eta2:.0%} of the variance across runs "
            f"({what} by {best}: {spread})."
        )
    lines += _regime_patterns(summary, axes)
    lines += _mean_field_agreement(summary)
    return StudyDiagnosis(lines, pd.DataFrame(rows))


def _regime_patterns(summary: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Return statements 'every run with axis = v is <regime>' for unanimous, non-healthy cells."""
    out = []
    if "regime" not in summary.columns:
        return out
    for axis in axes:
        if axis not in summary.columns or summary[axis].astype(str).nunique() < 2:
            continue
        for value, group in summary.groupby(summary[axis].astype(str)):
            regimes = group["regime"].unique()
            if len(group) >= 2 and len(regimes) == 1 and regimes[0] not in ("healthy", "unknown"):
                out.append(f"every run with {axis} = {value} is {regimes[0]} ({len(group)} runs).")
    return out


def _mean_field_agreement(summary: pd.DataFrame) -> list[str]:
    if not {"decay_per_step", "predicted_decay"} <= set(summary.columns):
        return []
    measured = pd.to_numeric(summary["decay_per_step"], errors="coerce")
    predicted = pd.to_numeric(summary["predicted_decay"], errors="coerce")
    ratio = (measured / predicted)[(measured > 0) & (predicted > 0)]
    ratio = ratio[np.isfinite(ratio)]
    if len(ratio) < 2:
        return []
    return [
        f"measured decay / mean-field prediction: median {ratio.median():.3g} over "
        f"{len(ratio)} runs (range {ratio.min():.3g}–{ratio.max():.3g})."
    ]


def _decay(run: Run) -> tuple[float, int | None, str | None]:
    """Return (decay per step, probe step, source): reach fit, else adjoint ratios."""
    reach = run.table("reach")
    fit: DecayFit = fit_decay(reach)
    if math.isfinite(fit.rate_per_step):
        return fit.rate_per_step, int(pd.to_numeric(reach["step"]).max()), "reach"
    columns = ["step", "layer", "t", "adjoint_norm", "recurrent_norm"]
    adjoints = _last_step_rows(_numeric(run.table("adjoints"), columns), columns[3:])
    if adjoints.empty:
        return math.nan, None, None
    top = adjoints[adjoints["layer"] == adjoints["layer"].max()].sort_values("t")
    ahead = top["adjoint_norm"].to_numpy()[1:]
    carried = top["recurrent_norm"].to_numpy()[:-1]
    keep = np.isfinite(ahead) & np.isfinite(carried) & (ahead > 0) & (carried > 0)
    if not keep.any():
        return math.nan, None, None
    rate = float(np.exp(np.mean(np.log(carried[keep] / ahead[keep]))))
    return rate, int(top["step"].iloc[0]), "adjoints"


def _growth(steps: pd.DataFrame) -> float:
    (norms,) = _columns(steps.sort_values("step"), "grad_norm_pre_clip")
    norms = norms[np.isfinite(norms) & (norms > 0)]
    if len(norms) < 10:
        return math.nan
    tenth = len(norms) // 10
    return float(np.median(norms[-tenth:]) / np.median(norms[:tenth]))


def _nonfinite(steps: pd.DataFrame, events: pd.DataFrame) -> int:
    bad = 0
    if not steps.empty:
        flagged = ~np.isfinite(steps["loss"]) | ~np.isfinite(steps["grad_norm_pre_clip"])
        if "skipped" in steps.columns:
            flagged |= np.array([v is True or v == 1 for v in steps["skipped"]], dtype=bool)
        bad = int(flagged.sum())
    if "kind" in events.columns:
        bad = max(bad, int((events["kind"] == "nonfinite").sum()))
    return bad


def _divergence(status: dict, events: pd.DataFrame) -> int | None:
    if "kind" in events.columns and (events["kind"] == "diverged").any():
        return int(pd.to_numeric(events.loc[events["kind"] == "diverged", "step"]).min())
    if status.get("status") == "diverged":
        return int(status.get("step", 0))
    return None


def _numeric(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Return ``df`` with ``columns`` numeric; an empty frame when one is missing."""
    if df.empty or any(c not in df.columns for c in columns):
        return pd.DataFrame(columns=list(columns), dtype=float)
    out = df.copy()
    for c in columns:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out[out["step"].notna()] if "step" in columns else out


def _last_step_rows(df: pd.DataFrame, values: Sequence[str]) -> pd.DataFrame:
    """Return the rows of the last step where any of ``values`` is finite."""
    present = [c for c in values if c in df.columns]
    if df.empty or not present:
        return df.iloc[0:0]
    numbers = df[present].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    good = df[np.isfinite(numbers).any(axis=1)]
    return good[good["step"] == good["step"].max()] if not good.empty else good


def _columns(df: pd.DataFrame, *names: str) -> list[np.ndarray]:
    if df.empty or any(n not in df.columns for n in names):
        return [np.array([], dtype=float) for _ in names]
    return [pd.to_numeric(df[n], errors="coerce").to_numpy(float) for n in names]


def _mean(df: pd.DataFrame, column: str) -> float:
    (values,) = _columns(df, column)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def _capped(value: float, cap: float) -> str:
    return f"≥ {cap:.3g} (no decay)" if value >= cap * 0.999 else f"{value:.3g}"


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _half_life(rate: float) -> float:
    if not math.isfinite(rate) or rate <= 0:
        return math.nan
    return math.log(2) / -math.log(rate) if rate < 1 else math.inf


def _fmt_steps(value: float) -> str:
    return "∞ (no decay)" if math.isinf(value) else f"{value:.3g} steps"


def _or0(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _or_nan(*values: float) -> float:
    return next((v for v in values if math.isfinite(v)), math.nan)
