"""Reports of a run or a study: ``index.html`` (figures inline), ``README.md`` + PNGs, summary.

The report shows what :mod:`rnnprobe.analysis.diagnosis` (on :mod:`rnnprobe.analysis.runs`)
computed, once: the answer lines first, the statements, the summary table (``summary.csv`` is the
same table) and figures drawn by the pure functions of ``rnnprobe.report.plots_*`` from the same
loaded records. A panel is drawn only when it has something to show (two probe steps for a curve
over training, clipping on for a clipping panel); what is left out is named in the caption. Beyond
``MAX_RUN_FIGURES`` runs only representative runs get figures. A classifier's run also gets its
confusion matrix at the last evaluation beside per-class accuracy (``RunSummary.classes``).
Figures are built on ``matplotlib.figure.Figure`` objects (no pyplot state) and PNG-encoded
once; everything is written under the output directory only, staged there and moved in once
the whole report is rendered (:mod:`rnnprobe.report.staging`).
"""

from __future__ import annotations

import base64
import colorsys
import html
import io
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from rnnprobe.analysis.class_scores import ClassScores
from rnnprobe.analysis.diagnosis import StudyAnalysis, analyse_run, analyse_study
from rnnprobe.analysis.runs import RunSummary, training_only
from rnnprobe.errors import RnnprobeError
from rnnprobe.records.index import is_run_dir, run_or_study
from rnnprobe.records.store import Run, load_run
from rnnprobe.report import plots_classes, plots_gradients, plots_study, plots_training
from rnnprobe.report.plots import distinct_colours, sorted_levels
from rnnprobe.report.staging import staged_output

__all__ = ["MAX_RUN_FIGURES", "PLOT_TABLES", "Page", "build_report", "write_pages"]

MAX_RUN_FIGURES = 8
DPI = 80
PLOT_TABLES = ("spectra", "hidden", "weights", "floss")  # read beyond analysis.SUMMARY_TABLES
MIN_CURVE_STEPS = 3  # a curve over training needs 3 probe steps: 2 would be a bare line
# an axes' width, the room left of it for tick labels and right of it for its legend
PANEL_INCHES, LEFT_INCHES, LEGEND_INCHES = 4.2, 1.2, 2.3
SETTINGS = (
    "task.name",
    "task.seq_len",
    "model.hidden_size",
    "model.layers",
    "model.nonlinearity",
    "model.init",
    "model.init_gain",
    "train.optimizer",
    "train.lr",
    "train.clip",
    "train.clip_value",
    "train.bptt",
    "train.steps",
    "seed",
)
TASK_SETTINGS = {  # the data settings a task's reader uses, shown after SETTINGS' task keys
    "lm": ("task.corpus", "task.level", "task.lowercase", "task.charset"),
    "classify": ("task.data", "task.level", "task.lowercase", "task.charset"),
}


Panel = Callable[[Axes], object]  # draws one panel of a figure on the axes it is given


@dataclass
class Page:
    """A report as blocks, rendered alike to HTML (inline images) and Markdown (PNG links)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        """Add a heading of ``level`` (2: a section, 3: a subsection)."""
        self.blocks.append(("h", level, text))

    def text(self, text: str) -> None:
        """Add a paragraph."""
        self.blocks.append(("p", text))

    def bullets(self, lines: list[str]) -> None:
        """Add a bulleted list of ``lines``; nothing when there are none."""
        if lines:
            self.blocks.append(("ul", lines))

    def table(self, df: pd.DataFrame) -> None:
        """Add ``df`` as a table."""
        self.blocks.append(("table", df))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        """Add the image ``png`` (the file ``name`` in Markdown) with its caption."""
        self.blocks.append(("img", name, png, caption))

    def html(self) -> str:
        """Return a self-contained HTML page; every piece of text escaped."""
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for kind, *rest in self.blocks:
            if kind == "h":
                level = int(rest[0])
                out.append(f"<h{level}>{html.escape(rest[1])}</h{level}>")
            elif kind == "p":
                out.append(f"<p>{html.escape(rest[0])}</p>")
            elif kind == "ul":
                out.append(
                    "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in rest[0]) + "</ul>"
                )
            elif kind == "table":
                out.append(_html_table(rest[0]))
            else:
                _, png, caption = rest
                data = base64.b64encode(png).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
        return "\n".join([*out, "</body></html>", ""])

    def markdown(self) -> str:
        """Return Markdown with figures as relative links to the PNG files beside it."""
        out = [f"# {_md(self.title)}", ""]
        for kind, *rest in self.blocks:
            if kind == "h":
                out += ["#" * rest[0] + " " + _md(rest[1]), ""]
            elif kind == "p":
                out += [_md(rest[0]), ""]
            elif kind == "ul":
                out += [*(f"- {_md(x)}" for x in rest[0]), ""]
            elif kind == "table":
                out += [_md_table(rest[0]), ""]
            else:
                name, _, caption = rest
                out += [f"![{_md(caption)}]({name})", "", f"*{_md(caption)}*", ""]
        return "\n".join(out)


def build_report(
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    max_run_figures: int = MAX_RUN_FIGURES,
    analysis: StudyAnalysis | None = None,
) -> Path:
    """Return the output directory after writing the report of the run or study at ``path``.

    The default output is ``path/report`` (a study's is where ``rnnprobe study`` puts it).
    ``analysis`` is the study's analysis when the caller already has it (``rnnprobe study``),
    so the records are not read again. A study of more than ``max_run_figures`` runs gets
    figures for representative runs only.
    """
    path = Path(path)
    run_or_study(path)  # or a one-line error
    out = Path(output) if output is not None else path / "report"
    if out.exists() and not out.is_dir():
        raise RnnprobeError(f"output {out} exists and is not a directory")
    with staged_output(out) as staging:  # Ctrl-C or an error: out is left as it was
        if is_run_dir(path):
            analysis = analyse_run(load_for_report(path))
            page = _run_report(analysis, staging)
        else:
            analysis = analysis or _analyse(path)
            page = _study_report(analysis, staging, max_run_figures)
        write_pages(staging, page, analysis.table)
    return out


def write_pages(out: Path, page: Page, table: pd.DataFrame) -> None:
    """Write ``summary.csv`` (``table``), ``index.html`` and ``README.md`` of ``page`` under
    ``out``."""
    table.to_csv(out / "summary.csv", index=False)
    (out / "index.html").write_text(page.html(), encoding="utf-8")
    (out / "README.md").write_text(page.markdown(), encoding="utf-8")


def _analyse(path: Path) -> StudyAnalysis:
    try:
        return analyse_study(path, keep=PLOT_TABLES)
    except RnnprobeError:
        raise
    except Exception as err:  # corrupt JSON or Parquet: one line, not a traceback
        raise RnnprobeError(f"{path}: unreadable records ({type(err).__name__}: {err})") from None


def _run_report(analysis: StudyAnalysis, out: Path) -> Page:
    (summary,), (diagnosis,) = analysis.study.runs, analysis.diagnoses
    run = analysis.runs[summary.run_id]
    page = Page(f"rnnprobe run {run.path.resolve().name}")
    keys = (*SETTINGS[:2], *TASK_SETTINGS.get(summary.task or "", ()), *SETTINGS[2:])
    settings = {k: summary.settings[k] for k in keys if k in summary.settings}
    page.text(_status_line(run.status))
    page.table(pd.DataFrame([settings]))
    page.heading("Diagnosis")
    page.bullets(diagnosis.lines())
    page.heading("Summary")
    page.table(display_table(analysis.shown, analysis.table))
    if summary.last_step is None:
        page.text(f"No records yet (status {summary.status}): no figures.")
        return page
    page.heading("Figures")
    panels, missing = _run_panels(run, summary, full=True)
    caption = f"run {summary.run_id} at steps 1–{summary.steps}"
    caption += _run_notes(run, summary, missing)
    add_grid(page, out, "run.png", caption, panels, columns=3)
    _add_classes(page, out, summary, "confusion.png", full=True)
    return page


def _add_classes(page: Page, out: Path, s: RunSummary, name: str, *, full: bool) -> None:
    """Add a classifier's results at its last evaluation: a sentence, the confusion matrix
    (rows normalised) beside per-class accuracy, and (``full``) the per-class table."""
    c = s.classes
    if c is None:
        return
    if full:
        page.heading("Classes")
    majority = f" (always {c.majority!r})" if c.majority else ""
    cut = f"; {c.truncated} examples cut to T = {s.seq_len:.0f} tokens" if c.truncated else ""
    page.text(
        f"Validation accuracy at step {c.step}: {c.accuracy:.4f} against the baseline's "
        f"{s.baseline_metric:.4f}{majority}; balanced accuracy (mean over classes) "
        f"{c.balanced_accuracy:.4f}; {int(c.counts.to_numpy().sum())} validation examples in "
        f"{len(c.names)} classes{cut}."
    )
    png = _confusion_png(c, s.baseline_metric)
    (out / name).write_bytes(png)
    caption = (
        f"confusion matrix at step {c.step}: row i shows how the validation examples of true "
        "class i were classified (shares of the row, in percent); right: per-class accuracy "
        "(the diagonal) with each class's number of validation examples"
    )
    page.figure(name, png, caption)
    if full:
        table = c.per_class.drop(columns=["class"]).rename(columns={"name": "class"})
        page.table(display_table(table))


def _confusion_png(c: ClassScores, baseline: float) -> bytes:
    """Return the PNG of the confusion heatmap and the per-class accuracy bars, sized by K."""
    K = len(c.names)
    label = max(len(n) for n in c.names) * 0.075  # inches a tick label of the longest name needs
    cell = 0.42 if K <= 15 else max(0.16, 6.3 / K)
    side = max(2.6, cell * K)
    size = (label + side + 1.3 + 2.9, label + side + 1.2)
    fig = Figure(figsize=size, layout="constrained")
    heat, bars = fig.subplots(1, 2, width_ratios=[side + 1.3, 2.0])
    title = f"confusion at step {c.step} (accuracy {100 * c.accuracy:.1f}%)"
    plots_classes.plot_confusion(c.normalised, title=title, ax=heat)
    plots_classes.plot_class_accuracy(
        c.per_class, overall=c.accuracy, baseline=baseline, labels=False, ax=bars
    )
    return _png_bytes(fig)


def _study_report(analysis: StudyAnalysis, out: Path, max_run_figures: int) -> Page:
    study, table = analysis.study, analysis.table
    page = Page(f"rnnprobe study {study.name}")
    if not study.runs:
        page.text("The study has no runs yet: nothing to report.")
        return page
    if study.question:
        page.text(f"Question: {study.question}")
    page.heading("Answer")
    page.bullets(analysis.diagnosis.answer or ["Too few measurements to answer."])
    swept = _swept(analysis)
    seeds = f"; seeds: {', '.join(map(str, study.seeds))}" if len(study.seeds) > 1 else ""
    page.text(
        f"{len(table)} runs; sweep axes: {', '.join(swept) or 'none'}{seeds}. "
        "init is step 1 (before any update), end the last step of each run."
        + (
            " For runs with pre-flossing (--floss …,pre=P), step 1 comes after their P "
            "flossing-only updates; their mean-field prediction is not compared."
            if any(s.pre_floss_updates for s in study.runs)
            else ""
        )
    )
    fixed = study.fixed_settings()
    if fixed:
        page.text("Every run: " + ", ".join(f"{k} = {v}" for k, v in fixed.items()) + ".")
    page.heading("Diagnosis")
    page.bullets(analysis.diagnosis.lines)
    page.heading("Summary")
    page.table(display_table(analysis.shown, analysis.table))
    page.heading("Study figures")
    _study_figures(page, out, analysis, swept)
    page.heading("Runs")
    shown = None  # every run gets its figure
    if len(table) > max_run_figures:
        shown = _representatives(analysis, max_run_figures)
    rest = []
    for summary, diagnosis in zip(study.runs, analysis.diagnoses, strict=True):
        run = analysis.runs.get(summary.run_id)
        label = _label(summary, study.axes)
        if shown is not None and summary.run_id not in shown:
            rest.append({"run_id": summary.run_id, "run": label, "diagnosis": diagnosis.headline})
            continue
        page.heading(f"run {summary.run_id}: {label}", 3)
        if run is None or summary.last_step is None:
            note = summary.error or "no records yet"
            page.bullets([f"status {summary.status}: {note}"])
            continue
        page.bullets(diagnosis.lines())
        panels, missing = _run_panels(run, summary, full=False)
        caption = f"run {summary.run_id} ({label}), steps 1–{summary.steps}"
        add_grid(
            page,
            out,
            f"run-{slug(summary.run_id)}.png",
            caption + _run_notes(run, summary, missing),
            panels,
            columns=4,
        )
        _add_classes(page, out, summary, f"confusion-{slug(summary.run_id)}.png", full=False)
    if rest:
        page.text(f"Other runs ({len(rest)}; figures only for representative runs):")
        page.table(pd.DataFrame(rest))
    return page


def _swept(analysis: StudyAnalysis) -> list[str]:
    table = analysis.table
    return [a for a in analysis.study.axes if a in table and table[a].astype(str).nunique() > 1]


def _steps_of(table: pd.DataFrame, column: str) -> str:
    steps = sorted({int(v) for v in pd.to_numeric(table[column], errors="coerce").dropna()})
    if not steps:
        return "no step"
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}–{steps[-1]}"


def _has(table: pd.DataFrame, column: str, positive: bool = False) -> bool:
    if column not in table:
        return False
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
    good = np.isfinite(values) & (values > 0 if positive else True)
    return bool(good.any())


def _study_figures(page: Page, out: Path, analysis: StudyAnalysis, swept: list[str]) -> None:
    """Add the study's figures: measures against the sweep axes, phase diagram, reach.

    A line needs two axis levels with values; a series with fewer is named in the caption.
    """
    table = analysis.table
    numeric = [a for a in swept if pd.to_numeric(table[a], errors="coerce").notna().all()]
    x = max(swept, key=lambda a: (a in numeric, table[a].nunique())) if swept else None
    others = [a for a in swept if a != x]
    hue = others[0] if others else None
    if len(others) > 1:  # one line per combination of the other axes: nothing averaged away
        hue = ", ".join(a.rpartition(".")[2] for a in others)
        table = table.assign(**{hue: table[others].astype(str).agg(", ".join, axis=1)})
    hue_colours: dict[str, Any] = {}  # one colour per level of the hue, in every panel
    if hue is not None:
        hue_levels = sorted_levels(pd.Index(table[hue].astype(str).unique()))
        hue_colours = dict(zip(hue_levels, distinct_colours(len(hue_levels)), strict=True))
    lasted = table[table["outcome"] != "diverged"]  # a diverged run's end is left out below
    init_at = _steps_of(table, "init_step")
    end_at = _steps_of(lasted if len(lasted) else table, "end_step")
    configs = _configurations(analysis, x, others, hue_colours)
    panels: list[Panel] = []
    notes: list[str] = []
    if x is not None:
        judged = table[~table["outcome"].isin(["untrained", "diverged", "unknown"])]

        def measure(
            frame: pd.DataFrame,
            series: dict[str, str],
            title: str,
            ylabel: str,
            positive: bool = False,
            **kw: Any,
        ) -> bool:
            kept, frame, lone = lines_to_draw(frame, x, hue, series, positive)
            notes.extend(f"{title}, {note}" for note in lone)
            if kept:
                if len(kept) < len(series):  # say which of the series the panel shows
                    title = f"{title}, {', '.join(kept)}"
                panels.append(
                    lambda ax: plots_study.plot_measure_vs_axis(
                        frame,
                        x=x,
                        hue=hue,
                        series=kept,
                        title=title,
                        ylabel=ylabel,
                        ax=ax,
                        log=positive,
                        palette=hue_colours,
                        **kw,
                    )
                )
            return bool(kept)

        measure(
            judged,
            {"final": "loss_ratio"},
            f"loss / baseline at the end ({end_at})",
            "final loss / baseline",
            hline=(1.0, "baseline"),
        )
        if (table["outcome"] == "diverged").any() and _has(table, "steps", positive=True):
            measure(  # which settings keep training alive, and for how long the others last
                table,
                {"steps run": "steps"},
                "steps trained (a diverged run: until it stopped)",
                "optimizer steps (log)",
                positive=True,
            )
        phases = {
            f"init ({init_at})": "decay_per_step_init",
            f"end ({end_at})": "decay_per_step_end",
        }
        # a diverged run's end is its blow-up: its end-phase values say nothing of its setting
        ended = table.copy()
        end_columns = [c for c in table.columns if c.endswith("_end")]
        diverged = table["outcome"] == "diverged"
        ended.loc[diverged, end_columns] = np.nan
        if diverged.any():
            notes.append(
                f"end values leave out the {int(diverged.sum())} diverged runs: their last "
                "probe step, the summary table's end, is their blow-up"
            )
        applies = table["mean_field_applies"].astype(bool)
        ended.loc[~applies, "predicted_decay"] = np.nan  # no √χ where the theory does not apply
        reference = ("predicted_decay", "mean-field √χ (init)") if applies.any() else None
        measure(
            ended,
            phases,
            "gradient decay per step",
            "factor per time step back",
            reference=reference,
            hline=(1.0, "no decay"),
        )
        halves = {
            k: c.replace("decay_per_step", "half_life_over_seq_len") for k, c in phases.items()
        }
        drawn = measure(
            ended,
            halves,
            "gradient half-life / T",
            "half-life / T (log)",
            positive=True,
            hline=(0.25, "T/4"),
        )
        infinite = [
            np.isinf(pd.to_numeric(ended[c], errors="coerce")).any() for c in halves.values()
        ]
        if drawn and any(infinite):
            notes.append(
                "an infinite half-life (the gradient grows, or is flat: under 2× over the "
                "distances fitted) is left off the "
                "log axis"
            )
        lyap = {k: c.replace("decay_per_step", "lyapunov_max") for k, c in phases.items()}
        measure(
            ended, lyap, "largest Lyapunov exponent λ₁", "λ₁ (nats per step)", hline=(0.0, "λ₁ = 0")
        )
        cut = {  # the probe's own schedule: the training phase's median over its firings
            "training (median)": "truncation_dropped_training",
            f"end ({end_at})": "truncation_dropped_end",
        }
        measure(
            ended,
            cut,
            "gradient the cuts remove, relative to the full one",
            "‖full − truncated‖ / ‖full‖",
            hline=(0.0, "nothing cut"),
        )
        if hue is not None and _levels(judged, x, "loss_ratio") >= 2:
            panels.append(
                lambda ax: plots_study.plot_phase_diagram(
                    judged,
                    x=x,
                    y=hue,
                    value="loss_ratio",
                    label="loss / baseline (seed mean)",
                    title=f"loss / baseline at the end ({end_at}), seed mean",
                    center=1.0,
                    ax=ax,
                )
            )
        mf = table[table["mean_field_applies"].astype(bool)]
        predictions = pd.to_numeric(mf["predicted_decay"], errors="coerce").round(3).nunique()
        if _has(mf, "decay_per_step_init") and predictions >= 2:
            by = mean_field_colour(x, others, hue)  # in the colours other panels give it
            palette = hue_colours if by == hue else configs.x_colours if by == x else None
            panels.append(
                lambda ax: plots_gradients.plot_decay_vs_mean_field(
                    mf, hue=by, palette=palette, ax=ax
                )
            )
        if len(analysis.study.seeds) > 1:
            notes.append(
                f"mean ± sd over {len(analysis.study.seeds)} seeds (on a log axis geometric: "
                "mean ×/÷ sd), seeds as dots"
            )
    else:
        page.text("No sweep axis with two or more values: no plots against an axis.")
    curves = _lyapunov_curves(analysis, configs)
    spans = curves.groupby("configuration")["step"].nunique()
    short = spans[spans < MIN_CURVE_STEPS]  # a run that diverged at once: no curve to draw
    if len(short) and len(short) < len(spans):
        steps = curves[curves["configuration"].isin(short.index)]["step"]
        at = ", ".join(str(int(v)) for v in sorted(steps.unique()))
        left = " and ".join(short.index)
        notes.append(f"λ₁ over training leaves out {configs.title} = {left}: λ₁ at step {at} only")
        curves = curves[~curves["configuration"].isin(short.index)]
    if curves["step"].nunique() >= MIN_CURVE_STEPS:
        panels.append(
            lambda ax: plots_study.plot_lyapunov_over_training(
                curves, styles=configs.styles, legend_title=configs.title, ax=ax
            )
        )
        if curves.groupby("configuration")["run"].nunique().max() > 1:  # else bold is the run
            notes.append("λ₁ over training: bold, the mean over a configuration's seeds; faint, "
                         "each run")  # fmt: skip
    reach = _study_reach(analysis, configs)
    for phase, at in (("init", init_at), ("end", end_at)):
        if not reach.empty and (reach["phase"] == phase).any():
            rows = reach[reach["phase"] == phase]
            styles = configs.styles if phase == "end" else configs.init_styles
            order = {label: label for label in styles if label in set(rows["label"])}

            def reach_panel(
                ax: Axes,
                rows: pd.DataFrame = rows,
                phase: str = phase,
                at: str = at,
                order: dict[str, str] = order,
                styles: dict[str, dict[str, Any]] = styles,
            ) -> Axes:
                return plots_gradients.plot_gradient_reach(
                    rows,
                    hue="label",
                    labels=order,
                    styles=styles,
                    title=f"gradient reach at {phase} ({at})",
                    legend_title=rows["title"].iloc[0],
                    ax=ax,
                )

            panels.append(reach_panel)
    if not reach.empty:
        notes.append(
            "gradient reach: bold, from the source step s that reaches furthest back (geometric "
            "mean over seeds, and over the sources that tie on reach, as under truncation); "
            "faint, from the other source steps s, one line each"
        )
    if "task.seq_len" in swept and (note := seq_len_note(table)):
        notes.append(note)
    if "train.bptt" in swept:
        notes.append(
            "truncated runs measure decay and reach at init through their truncation window: "
            "the initial network is the same, its measured gradients are not"
        )
    if _has(table, "pre_floss_updates", positive=True):
        notes.append("init (step 1) of a flossed run: after its pre-flossing updates")
    if panels:
        caption = "measures against the sweep axes, gradient reach per configuration"
        caption += " (seeds averaged)" if len(analysis.study.seeds) > 1 else ""
        caption += ("; " + "; ".join(notes)) if notes else ""
        add_grid(page, out, "study.png", caption, panels, columns=2)


def _lyapunov_curves(analysis: StudyAnalysis, configs: Configurations) -> pd.DataFrame:
    """Return λ₁ of each run's top layer by step, labelled by its configuration (the swept
    axes but the seed); a flossed run starts with its floss-table λ₁ at step −P."""
    frames = []
    for summary in configs.runs:
        run = analysis.runs.get(summary.run_id)
        if run is None:
            continue
        parts = [run.table("lyapunov")]
        if summary.pre_floss_updates:
            floss = run.table("floss")
            if len(floss):
                parts.insert(0, floss[floss["step"] == -summary.pre_floss_updates])
        parts = [p for p in parts if len(p)]
        if not parts or "index" not in parts[-1]:
            continue
        rows = pd.concat(parts, ignore_index=True)
        rows = rows[(rows["index"] == 0) & (rows["layer"] == rows["layer"].max())]
        label = configs.label(summary)
        frames.append(rows[["step", "exponent"]].assign(run=summary.run_id, configuration=label))
    if not frames:
        return pd.DataFrame(columns=["step", "exponent", "run", "configuration"])
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class Configurations:
    """A study's configurations (its swept ``axes``, seeds aside) in one order, with one label
    and one line style (colour, dashes) each, shared by every panel drawn per configuration:
    a style means the same configuration across the study figure. At init, configurations that
    differ only in training settings start from one network; ``init_styles`` gives each such
    group the style of its first configuration."""

    axes: list[str]
    runs: list[RunSummary]  # numeric levels in numeric order
    styles: dict[str, dict[str, Any]]
    init_styles: dict[str, dict[str, Any]]
    x_colours: dict[str, Any] = field(default_factory=dict)  # the ordered palette over x

    @property
    def title(self) -> str:
        return ", ".join(a.rpartition(".")[2] for a in self.axes) or "configuration"

    def label(self, summary: RunSummary, init: bool = False) -> str:
        axes = [a for a in self.axes if not (init and training_only(a))]
        return ", ".join(str(summary.settings.get(a)) for a in axes) or "every setting"


def seq_len_note(table: pd.DataFrame) -> str | None:
    """Return a note where T, the steps a run's sequences run, differs from its task.seq_len
    (copy: the delay plus the pattern and the cue), pairing each value with its T; else None."""
    if not _has(table, "seq_len") or "task.seq_len" not in table:
        return None
    steps = pd.to_numeric(table["seq_len"], errors="coerce")
    given = pd.to_numeric(table["task.seq_len"], errors="coerce")
    pairs = sorted({(int(g), int(t)) for g, t in zip(given, steps, strict=True)
                    if np.isfinite(g) and np.isfinite(t)})  # fmt: skip
    if all(g == t for g, t in pairs):
        return None
    shown = ", ".join(f"{g} → {t}" for g, t in pairs)
    return f"T, the steps each sequence runs, is not task.seq_len: {shown}"


def mean_field_colour(x: str, others: list[str], hue: str | None) -> str | None:
    """Return the column that colours the measured-vs-mean-field scatter: the sweep axis ``x``
    if it changes the initial weights, else the ``hue`` (of the ``others`` axes) if one of them
    does and none is a training setting (runs that differ only in one start from one network,
    so their points coincide and one colour would hide another); else None."""
    if x.startswith("model."):
        return x
    if any(a.startswith("model.") for a in others) and not any(map(training_only, others)):
        return hue
    return None


DASHES = ("-", "--", ":", "-.")  # a level of the x axis each, where a hue gives the colour


def _configurations(
    analysis: StudyAnalysis, x: str | None, others: list[str], hue_colours: dict[str, Any]
) -> Configurations:
    """Return the study's configurations over ``x`` and the ``others`` axes, sorted level by
    level, styled as the panels against ``x`` draw them: the colour of the configuration's
    hue level (``hue_colours``) and one dash pattern per level of ``x`` (lighter to darker
    shades beyond four levels); with no hue, an ordered palette over the levels of ``x``."""

    def level(value: object) -> tuple:
        number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
        return (0, float(number), "") if np.isfinite(number) else (1, 0.0, str(value))

    axes = [a for a in (x, *others) if a and a != "seed"]
    runs = sorted(analysis.study.runs, key=lambda s: [level(s.settings.get(a)) for a in axes])
    configs = Configurations(axes, runs, {}, {})
    xs = list(dict.fromkeys(str(s.settings.get(x)) for s in runs)) if x else [""]
    ordered = sns.color_palette("viridis", len(xs))
    configs.x_colours.update(zip(xs, ordered, strict=True))
    for summary in runs:
        where = xs.index(str(summary.settings.get(x))) if x else 0
        base = hue_colours.get(", ".join(str(summary.settings.get(a)) for a in others))
        if base is None:
            style = {"color": ordered[where], "linestyle": "-"}
        elif len(xs) <= len(DASHES):
            style = {"color": base, "linestyle": DASHES[where]}
        else:
            style = {"color": _shade(base, where, len(xs)), "linestyle": "-"}
        configs.styles.setdefault(configs.label(summary), style)
        configs.init_styles.setdefault(configs.label(summary, init=True), style)
    return configs


def _shade(colour: Any, index: int, count: int) -> tuple[float, float, float]:
    """Return ``colour`` lighter for the first of ``count`` levels, darker for the last."""
    hue, lightness, saturation = colorsys.rgb_to_hls(*to_rgb(colour))
    shift = 0.0 if count < 2 else 0.36 * (0.5 - index / (count - 1))
    return colorsys.hls_to_rgb(hue, min(max(lightness + shift, 0.15), 0.85), saturation)


def _levels(frame: pd.DataFrame, x: str, column: str, positive: bool = False) -> int:
    """Return how many levels of ``x`` have a finite (positive) value of ``column``."""
    if column not in frame or frame.empty:
        return 0
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
    good = np.isfinite(values) & (values > 0 if positive else True)
    return int(frame.loc[good, x].astype(str).nunique())


def lines_to_draw(
    frame: pd.DataFrame, x: str, hue: str | None, series: dict[str, str], positive: bool
) -> tuple[dict[str, str], pd.DataFrame, list[str]]:
    """Return the ``series`` that have a line (two levels of ``x`` with values, for some level
    of ``hue``), ``frame`` less the values of lines of one point, and a note for each of those
    ('name, hue level: only x = level has a value (mean)'): a lone point is no line."""
    kept, frame, notes = {}, frame.copy(), []
    for name, column in series.items():
        lines = _line_levels(frame, x, hue, column, positive)
        lone = [level for level, count in lines.items() if count == 1]
        if any(count >= 2 for count in lines.values()):
            kept[name] = column
        elif lone and _levels(frame, x, column, positive) == 1:
            # every value at one level of x: a note per value, naming the hue levels that have
            # it unless all do (one mean over levels of different values describes none)
            shared: dict[str, list] = {}
            for level in lone:
                rows = frame if hue is None else frame[frame[hue].astype(str) == level]
                shared.setdefault(_lone(rows, x, column, positive), []).append(level)
            for text, levels in shared.items():
                which = f"{name}, {' and '.join(_hue_text(hue, level) for level in levels)}"
                notes.append(f"{name if len(levels) == len(lines) else which}: {text}")
            lone = []
        for level in lone:
            rows = frame[frame[hue].astype(str) == level]
            notes.append(f"{name}, {_hue_text(hue, level)}: {_lone(rows, x, column, positive)}")
            frame.loc[frame[hue].astype(str) == level, column] = np.nan
    return kept, frame, notes


def _hue_text(hue: str | None, level: object) -> str:
    """Return a hue level with its axes named: 'bptt = 16', 'init = default, clip = none'
    (a hue of several axes is named 'init, clip' and its levels 'default, none')."""
    names = [n.rpartition(".")[2] for n in (hue or "").split(", ")]
    values = str(level).split(", ")
    if hue is None or len(names) != len(values):
        return str(level)
    return ", ".join(f"{n} = {v}" for n, v in zip(names, values, strict=True))


def _line_levels(
    frame: pd.DataFrame, x: str, hue: str | None, column: str, positive: bool
) -> dict[str | None, int]:
    """Return {hue level (None: no hue): how many levels of ``x`` have a value of ``column``}."""
    if hue is None or hue not in frame:
        return {None: _levels(frame, x, column, positive)}
    groups = frame.groupby(frame[hue].astype(str), sort=False)
    return {str(level): _levels(rows, x, column, positive) for level, rows in groups}


def _lone(frame: pd.DataFrame, x: str, column: str, positive: bool) -> str:
    """Return 'x = level: mean' for the one level that has values (no panel for one point)."""
    values = pd.to_numeric(frame[column], errors="coerce")
    good = np.isfinite(values.to_numpy(float)) & (values.to_numpy(float) > 0 if positive else True)
    level, kept = frame.loc[good, x].iloc[0], values[good].to_numpy(float)
    mean = np.exp(np.log(kept).mean()) if positive else kept.mean()  # as the panel would
    runs = int((frame[x].astype(str) == str(level)).sum())
    count = f", {len(kept)} of {runs} runs" if len(kept) < runs else ""
    return f"only {x.rpartition('.')[2]} = {level} has a value ({mean:.3g}{count})"


def _study_reach(analysis: StudyAnalysis, configs: Configurations) -> pd.DataFrame:
    """Return the top layer's reach rows at each run's init and end step, labelled by config.

    At init, axes of training settings (``train.*``) are left out of the label: every such
    configuration starts from the same network, so their curves are one curve.
    """
    frames = []
    for summary in configs.runs:
        run = analysis.runs.get(summary.run_id)
        if run is None or run.table("reach").empty:
            continue
        reach = run.table("reach")
        top = reach[reach["layer"] == reach["layer"].max()]
        for phase in ("init", "end"):
            step = summary.phase(phase).decay.step
            if step is None or summary.phase(phase).decay.source != "reach":
                continue
            if phase == "end" and summary.divergence_step is not None:
                continue
            init = phase == "init"
            axes = [a for a in configs.axes if not (init and training_only(a))]
            rows = top[top["step"] == step]
            one = "one initial network" + (" per seed" if len(analysis.study.seeds) > 1 else "")
            title = ", ".join(a.rpartition(".")[2] for a in axes) or one
            label = configs.label(summary, init=init)
            frames.append(rows.assign(phase=phase, label=label, title=title, run_id=summary.run_id))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _run_panels(run: Run, s: RunSummary, *, full: bool) -> tuple[list[Panel], list[str]]:
    """Return the run's drawable panels and what was left out (and why)."""
    t = run.table
    task, steps = t("task"), t("steps")
    baseline = _first(task, "baseline_loss")
    unit = "MSE" if s.task_kind == "regression" else "nats per target"
    panels: list[Panel] = []
    missing: list[str] = []
    if distinct_steps(steps, "loss") >= 2:
        panels.append(
            lambda ax: plots_training.plot_loss(
                steps, evals=t("evals"), baseline=baseline, unit=unit, ax=ax
            )
        )
        if full:
            panels.append(
                lambda ax: plots_training.plot_metric(
                    steps,
                    evals=t("evals"),
                    metric=s.metric or "metric",
                    baseline=_first(task, "baseline_metric"),
                    ax=ax,
                )
            )
    else:
        finite = s.initial_loss if math.isfinite(s.initial_loss) else s.final_train_loss
        missing.append(f"loss curves (one finite step: loss {finite:.4g})")
    if distinct_steps(steps, "grad_norm_pre_clip") >= 2:
        clipping = s.clip != "none"
        panels.append(lambda ax: plots_training.plot_clipping(steps, clipping=clipping, ax=ax))
    elif len(steps):
        missing.append("gradient norms over training (fewer than two finite steps)")
    adjoints = t("adjoints")
    layers = sorted(int(v) for v in adjoints["layer"].unique()) if "layer" in adjoints else []
    if distinct_steps(adjoints, "adjoint_norm") >= 2:
        shown_layers = layers[:4] if full else layers[-1:]
        for layer in shown_layers:

            def heatmap(ax: Axes, layer: int = layer) -> Axes:
                return plots_gradients.plot_adjoint_heatmap(adjoints, layer=layer, ax=ax)

            panels.append(heatmap)
    elif len(adjoints):
        missing.append("adjoint heatmap (one finite step)")
    reach = _run_reach(run, s)
    if not reach.empty:
        labels = {p: _fit_label(s, p) for p in reach["label"].unique()}
        panels.append(
            lambda ax: plots_gradients.plot_gradient_reach(
                reach,
                hue="label",
                labels=labels,
                title="gradient reach (top layer)",
                legend_title="fit: decay per step, half-life",
                ax=ax,
            )
        )
    spectra, lyapunov, health = t("spectra"), t("lyapunov"), t("health")
    jac = spectra[spectra["quantity"] == "jacobian_singular"] if "quantity" in spectra else spectra
    if distinct_steps(jac) >= 2:
        panels.append(lambda ax: plots_training.plot_jacobian_spectra(spectra, ax=ax))
    elif len(jac):
        missing.append("Jacobian spectra over training (one probe step)")
    if distinct_steps(lyapunov) >= MIN_CURVE_STEPS:
        panels.append(lambda ax: plots_training.plot_lyapunov(lyapunov, ax=ax))
    elif len(lyapunov):
        values = ", ".join(
            f"{p.lyapunov_max:+.3g} at step {p.step}"
            for p in s.phases.values()
            if math.isfinite(p.lyapunov_max)
        )
        missing.append(f"λ₁ over training (too few probe steps; λ₁ {values or 'not finite'})")
    if len(lyapunov) and lyapunov["index"].nunique() >= 2:
        phase_steps = sorted(
            {
                p.step
                for p in s.phases.values()
                if p.step is not None and (lyapunov["step"] == p.step).any()
            }
        )
        spectrum_steps = [phase_steps[0], phase_steps[-1]] if phase_steps else None
        if full or spectrum_steps:
            panels.append(
                lambda ax: plots_training.plot_lyapunov_spectrum(
                    lyapunov, steps=sorted(set(spectrum_steps or [])) or None, ax=ax
                )
            )
    if "quantity" in spectra and (spectra["quantity"] == "w_hh_eigenvalue").any():
        panels.append(lambda ax: plots_training.plot_eigenvalues(spectra, ax=ax))
    if distinct_steps(health) >= MIN_CURVE_STEPS:
        panels.append(lambda ax: plots_training.plot_hidden_health(health, ax=ax))
        if full:
            panels.append(lambda ax: plots_training.plot_participation_ratio(health, ax=ax))
    elif len(health):
        missing.append(f"hidden-unit health over training (too few probe steps; {_health(s)})")
    return panels, missing


def _run_reach(run: Run, s: RunSummary) -> pd.DataFrame:
    reach = run.table("reach")
    if reach.empty:
        return reach
    top = reach[reach["layer"] == reach["layer"].max()]
    frames = []
    for phase in ("init", "end"):
        step = s.phase(phase).decay.step
        if step is not None and s.phase(phase).decay.source == "reach":
            rows = top[top["step"] == step]
            frames.append(rows.assign(label=f"{phase} (step {step})"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _fit_label(s: RunSummary, label: str) -> str:
    return f"{label}: {s.phase(label.partition(' ')[0]).decay.brief}"


def _health(s: RunSummary) -> str:
    parts = []
    for p in s.phases.values():
        for name, value in (("saturated", p.saturation), ("dead", p.dead_fraction)):
            if math.isfinite(value):
                parts.append(f"{name} {value:.1%} at step {p.step}")
    return ", ".join(parts) or "no finite values"


def distinct_steps(table: pd.DataFrame, column: str | None = None) -> int:
    """Return how many steps of ``table`` have a row (with a finite ``column``)."""
    if "step" not in table or table.empty:
        return 0
    if column is not None and column in table:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
        table = table[np.isfinite(values)]
    return int(table["step"].nunique())


def _run_notes(run: Run, s: RunSummary, missing: list[str]) -> str:
    """Return what a run figure's caption adds: how to read it, then what it leaves out."""
    notes = []
    if not run.table("reach").empty:
        notes.append(
            "gradient reach: bold, from the source step s that reaches furthest back (where "
            "several tie, as under truncation, their geometric mean); faint, from the other "
            "source steps s"
        )
    if s.pre_floss_updates:
        notes.append(
            f"step 0 is the network before its {s.pre_floss_updates} pre-flossing updates, "
            "step 1 after them"
        )
    return ("; " + "; ".join(notes) if notes else "") + _missing_text(missing)


def _missing_text(missing: list[str]) -> str:
    return f". Not drawn: {'; '.join(missing)}" if missing else ""


def add_grid(
    page: Page, out: Path, name: str, caption: str, panels: list[Panel], columns: int
) -> None:
    """Draw ``panels`` in a grid of ``columns``, save it as ``out/<name>.png`` and add it to
    ``page`` with ``caption``."""
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    size = ((PANEL_INCHES + LEFT_INCHES + LEGEND_INCHES) * columns, 4.2 * rows)
    _add_figure(page, out, name, caption, (rows, columns), panels, size)


def _render(
    shape: tuple[int, int], panels: list[Panel], size: tuple[float, float]
) -> tuple[bytes, list[str]]:
    """Return the PNG of a grid of panels and the errors of panels that failed to draw."""
    fig = Figure(figsize=size)
    width, height = size
    columns = shape[1]
    pad = LEFT_INCHES + LEGEND_INCHES
    axes_width = (width - pad * columns) / columns
    # Fixed margins in inches, with room right of each panel for its legend: a layout engine
    # would lay out every label twice (2× the time).
    fig.subplots_adjust(
        left=LEFT_INCHES / width,
        right=1 - LEGEND_INCHES / width,
        bottom=0.6 / height,
        top=1 - 0.45 / height,
        wspace=pad / axes_width,
        hspace=0.55,
    )
    grid = fig.subplots(*shape, squeeze=False).ravel()
    problems = []
    for ax, draw in zip(grid, panels, strict=False):
        try:
            draw(ax)
        except Exception as err:  # a report must still come out; the panel says what broke
            problems.append(f"{type(err).__name__}: {err}")
            ax.clear()
            ax.text(
                0.5,
                0.5,
                f"could not draw:\n{type(err).__name__}: {err}"[:200],
                ha="center",
                va="center",
                transform=ax.transAxes,
                wrap=True,
            )
    for ax in grid[len(panels) :]:
        ax.set_axis_off()
    return _png_bytes(fig), problems


PNG_TOLERANCE = 16  # the largest change of a pixel's channel (of 255) a palette may make


def _png_bytes(fig: Figure) -> bytes:
    """Return the figure as a 256-colour PNG (a third of the size) where its palette changes
    no pixel's channel by more than ``PNG_TOLERANCE``, else as a full-colour PNG.

    Max-coverage palettes keep the rare colours a median cut merges away: the top of a
    viridis colour bar came out orange, the colour other panels give the end phase.
    """
    from PIL import Image

    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=DPI, bbox_inches="tight")  # no legend cut at the edge
    raw.seek(0)
    image = Image.open(raw).convert("RGB")
    quantized = image.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE)
    error = np.abs(np.asarray(quantized.convert("RGB"), np.int16) - np.asarray(image, np.int16))
    out = io.BytesIO()
    (quantized if error.max() <= PNG_TOLERANCE else image).save(out, format="png", optimize=True)
    return out.getvalue()


def _add_figure(
    page: Page,
    out: Path,
    name: str,
    caption: str,
    shape: tuple[int, int],
    panels: list[Panel],
    size: tuple[float, float],
) -> None:
    """Render the panels, write ``name`` under ``out`` and add it (and any failures) to ``page``."""
    png, problems = _render(shape, panels, size)
    (out / name).write_bytes(png)
    page.figure(name, png, caption)
    page.bullets([f"could not draw a panel of {name}: {p}" for p in problems])


def _representatives(analysis: StudyAnalysis, limit: int) -> set[str]:
    """Return the ids of at most ``limit`` runs worth a figure: the best, the worst, the first
    diverged and the median run (by loss/baseline, else by decay at init), in that order."""
    table = analysis.table
    key = "loss_ratio"
    judged = ~table["outcome"].isin(["untrained", "diverged", "unknown"])
    if not _has(table[judged], key):
        key, judged = "decay_per_step_init", table["outcome"].notna()
    values = pd.to_numeric(table.loc[judged, key], errors="coerce").dropna()
    ranked = table.loc[values.sort_values(kind="stable").index, "run_id"].tolist()
    diverged = table.loc[table["outcome"] == "diverged", "run_id"].tolist()
    middle = ranked[len(ranked) // 2 : len(ranked) // 2 + 1]
    order = [*ranked[:1], *ranked[-1:], *diverged[:1], *middle] or table["run_id"].head(1).tolist()
    return set(list(dict.fromkeys(order))[:limit])


def _label(summary: RunSummary, axes: list[str]) -> str:
    parts = [f"{a.rpartition('.')[2]}={summary.settings.get(a)}" for a in axes]
    return ", ".join(parts)


def display_table(summary: pd.DataFrame, full: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return the summary with numbers as short text, and without all-empty columns; a
    half-life reads as the Answer words it: "flat" for a flat fit, "grows" where the gradient
    grows (decay per step > 1), not ∞. ``full``: the table ``summary`` shows columns of (same
    index), where the decay columns a half-life needs are read when ``summary`` lacks them."""
    full = summary if full is None else full
    keep = [c for c in summary.columns if summary[c].notna().any()]
    shown = summary[keep].map(_cell)
    for column in keep:
        phase = re.fullmatch(r"half_life(?:_over_seq_len)?_(\w+)", column)
        if phase is None:
            continue
        decay, shape = (f"{what}_{phase.group(1)}" for what in ("decay_per_step", "decay_shape"))
        if decay in full:
            grows = pd.to_numeric(full[decay], errors="coerce") > 1
            shown.loc[grows, column] = "grows"
        if shape in full:
            shown.loc[full[shape] == "flat", column] = "flat"
    return shown


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _status_line(status: dict) -> str:
    line = f"status {status.get('status', 'unknown')} at step {status.get('step', '?')}"
    return line + (f"; error: {status['error']}" if status.get("error") else "")


def _first(df: pd.DataFrame, column: str) -> float | None:
    if column not in df.columns or df.empty:
        return None
    value = pd.to_numeric(df[column], errors="coerce").iloc[0]
    return float(value) if np.isfinite(value) else None


def load_for_report(path: Path, tables: tuple[str, ...] | None = None) -> Run:
    """Return the run at ``path``; records that cannot be read are a one-line error."""
    try:
        return load_run(path, tables)
    except RnnprobeError:
        raise
    except Exception as err:  # corrupt JSON or Parquet: one line, not a traceback
        raise RnnprobeError(
            f"{path}: unreadable run records ({type(err).__name__}: {err})"
        ) from None


def slug(text: str) -> str:
    """Return ``text`` as a file-name-safe name of at most 80 characters."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80]


def _md(text: str) -> str:
    """Return text safe in Markdown: no raw HTML gets through (quotes stay readable)."""
    return html.escape(str(text), quote=False).replace("\n", " ")


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "*(empty table)*"
    cells = df.astype(str).map(lambda v: _md(v).replace("|", "\\|"))
    head = "| " + " | ".join(_md(c).replace("|", "\\|") for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in cells.to_numpy())])


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(empty table)</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in df.to_numpy()
    )
    return f'<div class="table"><table><tr>{head}</tr>{body}</table></div>'


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
    "padding:2px 6px;text-align:right}th{background:#f3f3f3}.table{overflow-x:auto}"
    "img{max-width:100%}figcaption{color:#555;font-size:14px}"
)
