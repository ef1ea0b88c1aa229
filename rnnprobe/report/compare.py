"""A comparison report of several runs: their records overlaid, one colour per run everywhere.

``rnnprobe report RUN RUN …`` writes what a study's report writes (``index.html`` with figures
inline, ``README.md`` + PNGs, ``summary.csv``) and shows what the analysis computed, once: each
run is summarised by :func:`rnnprobe.analysis.runs.summarise_run` and diagnosed by
:func:`rnnprobe.analysis.diagnosis.diagnose_run`; ``summary.csv`` is
:func:`rnnprobe.analysis.diagnosis.study_table` of those summaries, with the settings that differ
between the runs as its axes. A run is named by its id and those settings (``3f2a9c01de:
nonlinearity=relu, seq_len=32``), and keeps its colour in every panel
(:func:`rnnprobe.report.plots_study.run_colours`).

The figure overlays loss / baseline over training, gradient reach and the adjoint norms over t
at init (step 1, before any update) and at the end (each run's last probe step), and λ₁ over
training: the phases of :mod:`rnnprobe.analysis.runs`, whose fits the legends quote. A run without
records of a kind is named in the caption, not drawn; a panel no run can fill is left out.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rnnprobe.analysis.diagnosis import StudyAnalysis, diagnose_run, diagnose_study, study_table
from rnnprobe.analysis.runs import (
    SUMMARY_TABLES,
    RunSummary,
    StudySummary,
    phase_steps,
    summarise_run,
)
from rnnprobe.errors import RnnprobeError
from rnnprobe.records.index import is_run_dir
from rnnprobe.records.store import Run
from rnnprobe.report import plots_study
from rnnprobe.report.pages import (
    MIN_CURVE_STEPS,
    SETTINGS,
    TASK_SETTINGS,
    Page,
    Panel,
    add_grid,
    display_table,
    distinct_steps,
    load_for_report,
    slug,
    write_pages,
)
from rnnprobe.report.staging import staged_output

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["build_comparison", "default_output", "differing_settings", "run_ids", "run_label"]

# settings that do not change what a run measures: never what tells two runs apart
UNCOMPARED = ("device", "flush_every", "checkpoint_every")
LABEL_SETTINGS = 4  # settings a label names; the settings table lists every one
LEGEND_CHARS = 28  # a panel's legend entry longer than this breaks after the run id
KEY_CHARS = 60  # … and a key entry after this many characters


def build_comparison(
    paths: Sequence[str | os.PathLike], output: str | os.PathLike | None = None
) -> Path:
    """Return the output directory after writing the comparison report of the runs at ``paths``.

    The default output is :func:`default_output` under the current directory.
    """
    paths = _checked(paths)
    runs = [load_for_report(p, SUMMARY_TABLES) for p in paths]
    ids = run_ids(paths)
    analysis = _analyse(runs, ids)
    out = Path(output) if output is not None else default_output(ids)
    if out.exists() and not out.is_dir():
        raise RnnprobeError(f"output {out} exists and is not a directory")
    with staged_output(out) as staging:  # Ctrl-C or an error: out is left as it was
        write_pages(staging, _page(analysis, paths, staging), analysis.table)
    return out


def default_output(ids: Sequence[str]) -> Path:
    """Return ``compare-<first id>-<n>runs``, relative to the current directory."""
    return Path(f"compare-{slug(ids[0])}-{len(ids)}runs")


def run_ids(paths: Sequence[Path]) -> list[str]:
    """Return a distinct id per run: its directory's name, with its parent's where names clash."""
    names = [p.resolve().name for p in paths]
    ids = [
        f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n
        for p, n in zip(paths, names, strict=True)
    ]
    return [f"{i}#{k + 1}" if ids.count(i) > 1 else i for k, i in enumerate(ids)]


def differing_settings(summaries: Sequence[RunSummary]) -> list[str]:
    """Return the settings whose values differ between the runs: the report's first, seed last."""
    keys = dict.fromkeys(k for s in summaries for k in s.settings if k not in UNCOMPARED)
    differ = [k for k in keys if len({repr(s.settings.get(k)) for s in summaries}) > 1]
    order = [*SETTINGS[:-1], *(k for task in TASK_SETTINGS.values() for k in task)]
    first = [k for k in dict.fromkeys(order) if k in differ]
    return [*first, *(k for k in differ if k not in first and k != "seed")] + (
        ["seed"] if "seed" in differ else []
    )


def run_label(summary: RunSummary, keys: Sequence[str]) -> str:
    """Return ``id: key=value, …`` for the first ``LABEL_SETTINGS`` of ``keys`` (short names)."""
    names = _short_names(keys)
    parts = [f"{names[k]}={summary.settings.get(k)}" for k in keys[:LABEL_SETTINGS]]
    if len(keys) > LABEL_SETTINGS:
        parts.append(f"+{len(keys) - LABEL_SETTINGS} more")
    return f"{summary.run_id}: {', '.join(parts)}" if parts else summary.run_id


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """Return each key's last part, or the whole key where two keys share their last part."""
    last = [k.rpartition(".")[2] for k in keys]
    return {k: (n if last.count(n) == 1 else k) for k, n in zip(keys, last, strict=True)}


def _checked(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Return the paths as run directories; raise on a study, a non-run or a repeated run."""
    dirs = [Path(p) for p in paths]
    if len(dirs) < 2:
        raise RnnprobeError("a comparison needs two or more run directories")
    seen: dict[Path, Path] = {}
    for path in dirs:
        if not path.exists():
            raise RnnprobeError(f"{path} does not exist")
        if (path / "study.json").is_file() or (path / "runs").is_dir():
            raise RnnprobeError(
                f"{path} is a study, not a run: compare its runs ({path / 'runs'}/ID …) "
                "or report the study on its own"
            )
        if not is_run_dir(path):
            raise RnnprobeError(f"{path} is not an rnnprobe run (no config.json)")
        if path.resolve() in seen:
            raise RnnprobeError(f"{path} is given twice (as {seen[path.resolve()]})")
        seen[path.resolve()] = path
    return dirs


def _analyse(runs: Sequence[Run], ids: Sequence[str]) -> StudyAnalysis:
    """Return the runs' analysis as a study's: the differing settings (seed apart) are its axes."""
    summaries = [summarise_run(run, run_id) for run, run_id in zip(runs, ids, strict=True)]
    axes = [k for k in differing_settings(summaries) if k != "seed"]
    seeds = sorted({s.settings.get("seed") for s in summaries}, key=str)
    study = StudySummary(f"comparison of {len(runs)} runs", "", "", axes, seeds, summaries)
    diagnoses = [diagnose_run(s) for s in summaries]
    table = study_table(study, diagnoses)
    loaded = dict(zip(ids, runs, strict=True))
    return StudyAnalysis(study, loaded, diagnoses, table, diagnose_study(study, table))


def _page(analysis: StudyAnalysis, paths: Sequence[Path], out: Path) -> Page:
    summaries = analysis.study.runs
    keys = differing_settings(summaries)
    labels = {s.run_id: run_label(s, keys) for s in summaries}
    page = Page(f"rnnprobe comparison of {len(summaries)} runs")
    names = _short_names(keys)
    differ = ", ".join(names[k] for k in keys) or "no setting (the same configuration)"
    page.text(
        f"{len(summaries)} runs; they differ in: {differ}. init is step 1 (before any update), "
        "end the last probe step of each run."
    )
    rows = [
        {"run_id": s.run_id, "path": str(p), "status": s.status}
        | {names[k]: s.settings.get(k) for k in keys}
        for s, p in zip(summaries, paths, strict=True)
    ]
    page.table(display_table(pd.DataFrame(rows)))
    shared = _shared_settings(summaries, keys)
    if shared:
        page.text(f"Same in all runs: {shared}.")
    page.heading("Diagnosis")
    headlines = zip(summaries, analysis.diagnoses, strict=True)
    page.bullets(
        [*analysis.diagnosis.answer, *analysis.diagnosis.lines]
        + [f"{labels[s.run_id]} — {d.headline}" for s, d in headlines]
    )
    page.heading("Summary")
    page.table(display_table(analysis.shown, analysis.table))
    page.heading("Figures")
    palette = plots_study.run_colours([s.run_id for s in summaries])
    panels, missing = _panels(analysis, palette, labels, shared)
    caption = (
        f"{len(summaries)} runs overlaid, one colour per run in every panel (key at the top "
        "left); loss / baseline over training, gradient reach and ‖∂L/∂h_t‖ over t of the top "
        "layer at init (step 1) and at each run's last probe step, λ₁ over training"
    )
    caption += f". Not drawn: {'; '.join(missing)}" if missing else ""
    if len(panels) > 1:  # the key alone is no figure
        add_grid(page, out, "compare.png", caption, panels, columns=2)
    else:
        page.text(f"No records to overlay. Not drawn: {'; '.join(missing)}.")
    page.heading("Runs")
    for s, d in zip(summaries, analysis.diagnoses, strict=True):
        page.heading(labels[s.run_id], 3)
        page.bullets(d.lines())
    return page


def _shared_settings(summaries: Sequence[RunSummary], keys: Sequence[str]) -> str:
    """Return ``name=value, …`` of the report's main settings that every run shares."""
    first = summaries[0]
    task = TASK_SETTINGS.get(first.task or "", ())
    main = [*SETTINGS[:2], *task, *SETTINGS[2:]]
    shared = [k for k in main if k in first.settings and k not in keys]
    names = _short_names(shared)
    return ", ".join(f"{names[k]}={first.settings[k]}" for k in shared)


def _panels(
    analysis: StudyAnalysis, palette: dict, labels: dict[str, str], shared: str
) -> tuple[list[Panel], list[str]]:
    """Return the figure's panels (the key first) and what was left out, naming the runs."""
    summaries = analysis.study.runs
    empty = [s.run_id for s in summaries if not _recorded(analysis.runs[s.run_id])]
    wrapped = [
        textwrap.fill(label + (" (no records yet)" if run in empty else ""), KEY_CHARS,
                      subsequent_indent="  ")
        for run, label in labels.items()
    ]  # fmt: skip
    key = pd.DataFrame({"run": list(labels), "label": wrapped})
    note = textwrap.fill(f"same in all runs: {shared}", 58) if shared else None
    panels: list[Panel] = [
        lambda ax: plots_study.plot_run_key(key, palette=palette, note=note, ax=ax)
    ]
    missing = [f"{', '.join(empty)} (no records yet)"] if empty else []

    def add(
        what: str,
        frame: pd.DataFrame,
        lacking: list[tuple],
        plot: Callable[..., Axes],
        **options: Any,
    ) -> None:
        lacking = [(run, why) for run, why in lacking if run not in empty]
        if lacking:
            missing.append(f"{what} of {_named(lacking)}")
        if not frame.empty:
            panels.append(lambda ax: plot(frame, palette=palette, ax=ax, **options))

    loss, lacking = _loss_frame(analysis)
    legend = {s.run_id: _entry(s.run_id, _ratio_text(s)) for s in summaries}
    add("loss / baseline", loss, lacking, plots_study.plot_runs_loss, labels=legend,
        legend_title="final loss / baseline")  # fmt: skip
    layer = "top layer" if any(_layers(s) > 1 for s in summaries) else ""
    for what, frame_of, plot, legend_title in (
        (
            "gradient reach",
            _reach_frame,
            plots_study.plot_runs_reach,
            "fit: decay per step, half-life",
        ),
        ("‖∂L/∂h_t‖", _adjoint_frame, plots_study.plot_runs_adjoints, None),
    ):
        init, end = (frame_of(analysis, phase, layer) for phase in ("init", "end"))
        if init[1] and init[1] == end[1]:  # the same runs lack both: name them once
            add(what, pd.DataFrame(), init[1], plot)
            init, end = ((frame, [], *rest) for frame, _, *rest in (init, end))
        for phase, (frame, lacking, legend, title) in zip(
            ("init", "end"), (init, end), strict=True
        ):
            add(f"{what} at {phase}", frame, lacking, plot, labels=legend, title=title,
                legend_title=legend_title)  # fmt: skip
    lyapunov, lacking = _lyapunov_frame(analysis)
    legend = {s.run_id: _entry(s.run_id, _lyapunov_values(s)) for s in summaries}
    add("λ₁ over training", lyapunov, lacking, plots_study.plot_runs_lyapunov, labels=legend,
        legend_title="λ₁ at init, end")  # fmt: skip
    return panels, missing


def _loss_frame(analysis: StudyAnalysis) -> tuple[pd.DataFrame, list[tuple]]:
    """Return loss / baseline rows (batch, validation, the analysis' divergence step) and the
    runs left out, with why."""
    frames, lacking = [], []
    for s in analysis.study.runs:
        run = analysis.runs[s.run_id]
        steps, evals = run.table("steps"), run.table("evals")
        if distinct_steps(steps, "loss") < 2:
            lacking.append((s.run_id, "fewer than two steps with a finite loss"))
            continue
        if not s.baseline_loss > 0:
            lacking.append((s.run_id, "no baseline loss"))
            continue
        for kind, table in (("batch", steps), ("validation", evals)):
            if {"step", "loss"} <= set(table.columns) and len(table):
                ratio = pd.to_numeric(table["loss"], errors="coerce") / s.baseline_loss
                frames.append(
                    pd.DataFrame(
                        {"run": s.run_id, "step": table["step"], "loss_ratio": ratio, "kind": kind}
                    )
                )
        if s.divergence_step is not None:
            frames.append(
                pd.DataFrame(
                    {"run": [s.run_id], "step": [s.divergence_step], "loss_ratio": [np.nan],
                     "kind": ["diverged"]}
                )
            )  # fmt: skip
    return _concat(frames), lacking


def _reach_frame(
    analysis: StudyAnalysis, phase: str, layer: str
) -> tuple[pd.DataFrame, list[tuple], dict[str, str], str]:
    """Return the top layer's reach rows at each run's ``phase`` step, the runs without, the
    legend (the analysis' fit) and the title."""
    frames, lacking, legend, steps = [], [], {}, set()
    for s in analysis.study.runs:
        d = s.phase(phase).decay
        reach = analysis.runs[s.run_id].table("reach")
        if reach.empty:
            lacking.append((s.run_id, "no reach records"))
            continue
        if d.source != "reach" or d.step is None:
            lacking.append((s.run_id, f"no reach records at {phase}"))
            continue
        top = reach[reach["layer"] == reach["layer"].max()]
        frames.append(top[top["step"] == d.step].assign(run=s.run_id))
        legend[s.run_id] = (s.run_id, d.step, _fit_text(s, phase))
        steps.add(d.step)
    title = _phase_title("gradient reach", phase, steps, layer)
    return _concat(frames), lacking, _step_legend(legend, steps), title


def _adjoint_frame(
    analysis: StudyAnalysis, phase: str, layer: str
) -> tuple[pd.DataFrame, list[tuple], dict[str, str], str]:
    """Return the top layer's adjoint norms at each run's ``phase`` step (the analysis' phase
    steps of its adjoints table), the runs without, the legend and the title."""
    frames, lacking, legend, steps = [], [], {}, set()
    for s in analysis.study.runs:
        adjoints = analysis.runs[s.run_id].table("adjoints")
        top = adjoints[adjoints["layer"] == adjoints["layer"].max()] if len(adjoints) else adjoints
        at = phase_steps(top).get(phase)
        rows = top[top["step"] == at[0]] if at else top.iloc[0:0]
        if not at or _distinct_t(rows) < 2:  # (no step: no rows)
            where = f" at {phase}" if len(top) else ""
            lacking.append((s.run_id, f"no adjoint records{where}"))
            continue
        frames.append(rows.assign(run=s.run_id))
        legend[s.run_id] = (s.run_id, at[0], "")
        steps.add(at[0])
    title = _phase_title("‖∂L/∂h_t‖", phase, steps, layer)
    return _concat(frames), lacking, _step_legend(legend, steps), title


def _lyapunov_frame(analysis: StudyAnalysis) -> tuple[pd.DataFrame, list[tuple]]:
    """Return the top layer's λ₁ rows of the runs with a curve, and the runs left out."""
    frames, lacking = [], []
    for s in analysis.study.runs:
        lyapunov = analysis.runs[s.run_id].table("lyapunov")
        if lyapunov.empty:
            lacking.append((s.run_id, "no Lyapunov records"))
            continue
        top = lyapunov[(lyapunov["layer"] == lyapunov["layer"].max()) & (lyapunov["index"] == 0)]
        if distinct_steps(top, "exponent") < MIN_CURVE_STEPS:
            lacking.append(
                (s.run_id, f"too few probe steps; λ₁ at init, end {_lyapunov_values(s)}")
            )
            continue
        frames.append(top.assign(run=s.run_id))
    return _concat(frames), lacking


def _recorded(run: Run) -> bool:
    return any(len(table) for table in run.tables.values())


def _named(lacking: list[tuple[str, str]]) -> str:
    """Return ``a, b (why); c (why)``: the runs grouped by the reason they are left out."""
    reasons = dict.fromkeys(why for _, why in lacking)
    return "; ".join(
        f"{', '.join(run for run, w in lacking if w == why)} ({why})" for why in reasons
    )


def _distinct_t(rows: pd.DataFrame) -> int:
    if rows.empty:
        return 0
    values = pd.to_numeric(rows["adjoint_norm"], errors="coerce").to_numpy(float)
    return int(rows.loc[np.isfinite(values) & (values > 0), "t"].nunique())


def _phase_title(what: str, phase: str, steps: set[int], layer: str) -> str:
    when = f"step {next(iter(steps))}" if len(steps) == 1 else "each run's own step"
    return f"{what} at {phase} ({when})" + (f", {layer}" if layer else "")


def _step_legend(entries: dict[str, tuple], steps: set[int]) -> dict[str, str]:
    """Return ``id: text`` per run, ``id (step k): text`` when the runs' steps differ."""
    out = {}
    for run, (name, step, text) in entries.items():
        out[run] = _entry(name if len(steps) == 1 else f"{name} (step {step})", text)
    return out


def _entry(name: str, text: str) -> str:
    """Return ``name: text`` for a panel's legend, on two lines when it would be too wide."""
    if not text:
        return name
    return f"{name}: {text}" if len(name) + len(text) + 2 <= LEGEND_CHARS else f"{name}:\n{text}"


def _layers(s: RunSummary) -> int:
    layers = s.settings.get("model.layers", 1)
    return layers if isinstance(layers, int) else 1


def _fit_text(s: RunSummary, phase: str) -> str:
    return s.phase(phase).decay.brief


def _ratio_text(s: RunSummary) -> str:
    return f"{s.loss_ratio:.3g}" if np.isfinite(s.loss_ratio) else ""


def _lyapunov_values(s: RunSummary) -> str:
    """Return the analysis' λ₁ at init and at the end, ``n/a`` where not finite."""
    values = [s.phase(name).lyapunov_max for name in ("init", "end")]
    return ", ".join(f"{v:+.3g}" if np.isfinite(v) else "n/a" for v in values)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
