"""Reports of a run or a study: ``index.html`` (figures inline), ``README.md`` + PNGs, summary.

Reads only what the store wrote (``config.json``, ``status.json``, ``tables/``; for a study
``study.json`` and ``runs/<id>/``) and writes only under the output directory. A study's
report holds the summary table, study-level figures, the study diagnosis and one section per
run; beyond ``MAX_RUN_FIGURES`` runs only representative runs (best, median and worst by
loss/baseline, the first diverged) get figures, the rest are table rows. Figures are built on
``matplotlib.figure.Figure`` objects (no pyplot state, nothing to close) and PNG-encoded once.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rnnprobe import plots
from rnnprobe.config import flatten
from rnnprobe.diagnosis import diagnose_run, diagnose_study
from rnnprobe.errors import RnnprobeError
from rnnprobe.store import Run, is_run_dir, load_run

__all__ = ["MAX_RUN_FIGURES", "Page", "StudyRun", "build_report", "read_study_index"]

MAX_RUN_FIGURES = 8
SHOWN = (  # summary columns on the page; summary.csv has them all
    "status",
    "regime",
    "final_loss",
    "loss_ratio",
    "decay_per_step",
    "half_life",
    "half_life_over_seq_len",
    "lyapunov_max",
    "saturation",
    "dead_fraction",
    "grad_growth",
    "divergence_step",
    "predicted_decay",
)
DPI = 80
SUMMARY_TABLES = ("task", "steps", "evals", "reach", "lyapunov", "health", "events", "mean_field")
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
SUMMARY_COLUMNS = (  # analysis.run_summary's keys, then the diagnosis' own
    "run_id",
    "status",
    "regime",
    "steps",
    "final_loss",
    "final_valid_loss",
    "baseline_loss",
    "loss_ratio",
    "beat_baseline",
    "metric",
    "final_metric",
    "seq_len",
    "decay_per_step",
    "decay_source",
    "decay_r2",
    "half_life",
    "half_life_over_seq_len",
    "lyapunov_max",
    "saturation",
    "dead_fraction",
    "grad_growth",
    "nonfinite_steps",
    "clip_rate",
    "divergence_step",
    "predicted_decay",
    "predicted_half_life",
    "seconds",
    "last_step",
    "error",
)


@dataclass
class Page:
    """A report as blocks, rendered alike to HTML (inline images) and Markdown (PNG links)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, lines: list[str]) -> None:
        if lines:
            self.blocks.append(("ul", lines))

    def table(self, df: pd.DataFrame) -> None:
        self.blocks.append(("table", df))

    def figure(self, name: str, png: bytes, caption: str) -> None:
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


@dataclass
class StudyRun:
    """One entry of a study's index: id, sweep-axis values, run directory, indexed status."""

    id: str
    path: Path
    axes: dict
    status: str | None = None
    error: str | None = None


def build_report(
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    max_run_figures: int = MAX_RUN_FIGURES,
) -> Path:
    """Return the output directory after writing the report of the run or study at ``path``.

    A study of more than ``max_run_figures`` runs gets figures for representative runs only.
    """
    path = Path(path)
    if not path.exists():
        raise RnnprobeError(f"{path} does not exist")
    is_study = (path / "study.json").is_file() or (path / "runs").is_dir()
    if not is_run_dir(path) and not is_study:
        raise RnnprobeError(f"{path} is neither an rnnprobe run (config.json) nor a study")
    out = Path(output) if output is not None else Path("reports") / path.resolve().name
    if out.exists() and not out.is_dir():
        raise RnnprobeError(f"output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if is_run_dir(path):
        page, summary = _run_report(_load(path), out)
    else:
        page, summary = _study_report(path, out, max_run_figures)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "index.html").write_text(page.html(), encoding="utf-8")
    (out / "README.md").write_text(page.markdown(), encoding="utf-8")
    return out


def read_study_index(path: Path) -> tuple[str, list[str], list[StudyRun]]:
    """Return (name, sweep axes, runs) from ``study.json`` and the run directories on disk."""
    spec: object = {}
    if (path / "study.json").is_file():
        try:
            spec = json.loads((path / "study.json").read_text())
        except (OSError, ValueError) as err:
            raise RnnprobeError(f"{path / 'study.json'} is not readable JSON: {err}") from None
    entries = spec.get("runs", []) if isinstance(spec, dict) else spec
    runs = []
    for entry in entries if isinstance(entries, list) else []:
        entry = {"id": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict):
            continue
        rid = str(entry.get("id", entry.get("run_id", "")))
        values = next(
            (
                entry[k]
                for k in ("axes", "values", "settings", "overrides")
                if isinstance(entry.get(k), dict)
            ),
            {},
        )
        where = path / str(entry.get("path", Path("runs") / rid))
        runs.append(StudyRun(rid, where, dict(values), entry.get("status"), entry.get("error")))
    known = {r.path.resolve() for r in runs}
    if (path / "runs").is_dir():
        for d in sorted((path / "runs").iterdir()):
            if d.resolve() not in known and is_run_dir(d):
                runs.append(StudyRun(d.name, d, {}))
    declared = spec.get("axes") if isinstance(spec, dict) else None
    axes = list(declared) if isinstance(declared, dict | list) else []
    axes = [a if isinstance(a, str) else str(a.get("key", a.get("name"))) for a in axes]
    for r in runs:
        axes += [k for k in r.axes if k not in axes]
    name = spec.get("name") if isinstance(spec, dict) and spec.get("name") else path.resolve().name
    return str(name), axes, runs


def _run_report(run: Run, out: Path) -> tuple[Page, pd.DataFrame]:
    name = run.path.resolve().name
    page = Page(f"rnnprobe run {name}")
    diagnosis = diagnose_run(run)
    flat = flatten(run.config)
    settings = {k: flat[k] for k in SETTINGS if k in flat}
    page.text(_status_line(run.status))
    page.table(pd.DataFrame([settings]))
    page.heading("Diagnosis")
    page.bullets(diagnosis.lines())
    row = {**diagnosis.measures.row(), "regime": diagnosis.regime}
    row["error"] = run.status.get("error")
    summary = _ordered(pd.DataFrame([row]), [])
    page.heading("Summary")
    page.table(_display(summary[[c for c in ("run_id", *SHOWN) if c in summary]]))
    if not diagnosis.measures.has_records:
        page.text("No figures: the run has written no records yet.")
        return page, summary
    page.heading("Figures")
    for slug, caption, shape, panels in _run_figure_groups(run):
        size = (5.2 * shape[1], 4.0 * shape[0])
        _add_figure(page, out, f"{slug}.png", caption, shape, panels, size)
    return page, summary


def _study_report(path: Path, out: Path, max_run_figures: int) -> tuple[Page, pd.DataFrame]:
    name, axes, entries = read_study_index(path)
    page = Page(f"rnnprobe study {name}")
    if not entries:
        page.text("The study has no runs yet: nothing to report.")
        return page, pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    rows, verdicts, reach = [], {}, []
    for entry in entries:
        row, run, lines = _study_row(entry)
        rows.append(row)
        verdicts[entry.id] = lines
        reach.append(_last_reach(run, entry.id))
    summary = pd.DataFrame(rows)
    axes = axes or _varying_settings(summary)
    axes = [a for a in axes if a in summary.columns]
    summary = _ordered(summary, axes)
    labels = {e.id: _label(e, r, axes) for e, r in zip(entries, rows, strict=True)}
    reach = pd.concat(reach, ignore_index=True)
    reach["label"] = reach["label"].map(labels)
    swept = [a for a in axes if summary[a].astype(str).nunique() > 1]
    study = diagnose_study(summary, swept)
    page.text(f"{len(summary)} runs; sweep axes: {', '.join(axes) or 'none found'}.")
    page.heading("Diagnosis")
    page.bullets(study.lines)
    page.heading("Summary")
    page.table(_display(summary[[c for c in ("run_id", *axes, *SHOWN) if c in summary]]))
    page.heading("Study figures")
    _study_figures(page, out, summary, swept, study.importance, reach)
    page.heading("Runs")
    shown = _representatives(summary) if len(entries) > max_run_figures else None
    recorded = dict(zip(summary["run_id"], pd.notna(summary["last_step"]), strict=True))
    rest = []
    for entry in entries:
        if shown is not None and entry.id not in shown:
            rest.append({"run_id": entry.id, "diagnosis": " ".join(verdicts[entry.id][:1])})
            continue
        page.heading(f"run {entry.id}: {labels[entry.id]}", 3)
        page.bullets(verdicts[entry.id])
        run = _try_load(entry.path) if recorded.get(entry.id) else None
        if run is not None:
            name, caption = f"run-{_slug(entry.id)}.png", f"run {entry.id}"
            _add_figure(page, out, name, caption, (2, 4), _compact_panels(run), (19, 7.5))
    if rest:
        page.text(f"Other runs ({len(rest)}; figures only for representative runs):")
        page.table(pd.DataFrame(rest))
    return page, summary


def _study_row(entry: StudyRun) -> tuple[dict, Run | None, list[str]]:
    """Return (summary row, the loaded run or None, diagnosis lines) of one study entry."""
    row: dict = {"run_id": entry.id, **entry.axes}
    run = _try_load(entry.path, SUMMARY_TABLES)
    if run is None:
        status = entry.status or "missing"
        note = entry.error or f"no readable run directory at {entry.path.name}"
        row.update(status=status, regime="unknown", error=note)
        return row, None, [f"status {status}: {note}"]
    if run.table("reach").empty:  # adjoint ratios stand in for the reach fit
        run.tables["adjoints"] = _try_table(run, "adjoints")
    flat = flatten(run.config)
    row.update({k: flat[k] for k in flat if k not in row})
    diagnosis = diagnose_run(run)
    row.update(diagnosis.measures.row(), regime=diagnosis.regime, run_id=entry.id)
    row["error"] = run.status.get("error") or entry.error
    return row, run, diagnosis.lines()


def _study_figures(
    page: Page,
    out: Path,
    summary: pd.DataFrame,
    axes: list[str],
    importance: pd.DataFrame,
    reach: pd.DataFrame,
) -> None:
    ranked = axes
    if not importance.empty:
        loss = importance[importance["quantity"] == "loss/baseline"].fillna(-1)
        ranked = list(loss.sort_values("variance_explained", ascending=False)["axis"])
    x, y = [*ranked, None, None][:2]
    if x is None:
        page.text("No sweep axis with two or more values: no phase diagram.")
    else:
        # A diverged run's last loss says nothing about its cell: leave it out of the means.
        diverged = summary.get("regime", pd.Series("", index=summary.index)) == "diverged"
        phased = summary.assign(
            loss_ratio=pd.to_numeric(summary.get("loss_ratio"), errors="coerce").mask(diverged)
        )

        def phase(value: str, label: str, log: bool) -> Callable[[Axes], Axes]:
            return lambda ax: plots.plot_phase_diagram(
                phased, x=x, y=y, value=value, label=label, log=log, ax=ax
            )

        panels = [
            phase("loss_ratio", "loss / baseline", False),
            phase("half_life", "gradient half-life (steps)", True),
        ]
        note = f"{x} × {y}" if y else x
        if len(axes) > 2:
            note += " (mean over the other axes)"
        caption = f"phase diagrams over {note}"
        if diverged.any():
            caption += "; diverged runs are left out of loss / baseline"
        _add_figure(page, out, "study-phase.png", caption, (1, 2), panels, (13, 5))
    panels = [
        lambda ax: plots.plot_gradient_reach(reach, hue="label", ax=ax),
        lambda ax: plots.plot_decay_vs_mean_field(summary, hue=x, ax=ax),
    ]
    caption = "gradient reach per configuration; measured decay vs mean-field prediction"
    _add_figure(page, out, "study-decay.png", caption, (1, 2), panels, (13, 5))


def _run_figure_groups(run: Run) -> list[tuple[str, str, tuple[int, int], list]]:
    """Return (file slug, caption, grid shape, panels) for a single run's figures."""
    p = _panels(run)
    layers = _layers(run)
    heatmaps = [
        (
            lambda ax, layer=layer: plots.plot_adjoint_heatmap(
                run.table("adjoints"), layer=layer, ax=ax
            )
        )
        for layer in layers
    ]
    return [
        (
            "training",
            "loss, metric and gradient clipping",
            (1, 3),
            [p["loss"], p["metric"], p["clipping"]],
        ),
        (
            "gradients",
            "adjoint norms per layer and gradient reach",
            (1, len(heatmaps) + 1),
            [*heatmaps, p["reach"]],
        ),
        (
            "dynamics",
            "Jacobian spectra, Lyapunov exponents and W_hh eigenvalues",
            (2, 2),
            [p["jacobian"], p["lyapunov"], p["spectrum"], p["eigenvalues"]],
        ),
        ("hidden", "hidden-state health", (1, 2), [p["health"], p["participation"]]),
    ]


def _compact_panels(run: Run) -> list[Callable[[Axes], Axes]]:
    p = _panels(run)
    order = ["loss", "clipping", "adjoints", "reach", "jacobian", "lyapunov", "eigenvalues"]
    return [p[k] for k in [*order, "health"]]


def _panels(run: Run) -> dict[str, Callable[[Axes], Axes]]:
    """Return the run's figure panels by name, each a call of a pure plot function."""
    t = run.table
    task = t("task")
    baseline = _first(task, "baseline_loss")
    metric_name = str(task["metric"].iloc[0]) if "metric" in task and len(task) else "metric"
    unit = (
        "MSE"
        if "kind" in task and len(task) and task["kind"].iloc[0] == "regression"
        else ("nats per target")
    )
    evals = t("evals")
    reach = _last_reach(run, None)
    return {
        "loss": lambda ax: plots.plot_loss(
            t("steps"), evals=evals, baseline=baseline, unit=unit, ax=ax
        ),
        "metric": lambda ax: plots.plot_metric(
            t("steps"),
            evals=evals,
            metric=metric_name,
            baseline=_first(task, "baseline_metric"),
            ax=ax,
        ),
        "clipping": lambda ax: plots.plot_clipping(t("steps"), ax=ax),
        "adjoints": lambda ax: plots.plot_adjoint_heatmap(t("adjoints"), ax=ax),
        "reach": lambda ax: plots.plot_gradient_reach(reach, hue="source", ax=ax),
        "jacobian": lambda ax: plots.plot_jacobian_spectra(t("spectra"), ax=ax),
        "lyapunov": lambda ax: plots.plot_lyapunov(t("lyapunov"), ax=ax),
        "spectrum": lambda ax: plots.plot_lyapunov_spectrum(t("lyapunov"), ax=ax),
        "eigenvalues": lambda ax: plots.plot_eigenvalues(t("spectra"), ax=ax),
        "health": lambda ax: plots.plot_hidden_health(t("health"), ax=ax),
        "participation": lambda ax: plots.plot_participation_ratio(t("health"), ax=ax),
    }


def _render(
    shape: tuple[int, int], panels: list, size: tuple[float, float]
) -> tuple[bytes, list[str]]:
    """Return the PNG of a grid of panels and the errors of panels that failed to draw."""
    fig = Figure(figsize=size)
    width, height = size
    # Fixed margins in inches: a layout engine would lay out every label twice (2× the time).
    fig.subplots_adjust(
        left=0.9 / width,
        right=1 - 0.7 / width,
        bottom=0.6 / height,
        top=1 - 0.45 / height,
        wspace=0.5,
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


def _png_bytes(fig) -> bytes:
    """Return the figure as a 256-colour PNG: a third of the size, the same to the eye."""
    from PIL import Image

    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=DPI)
    raw.seek(0)
    image = Image.open(raw).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def _add_figure(
    page: Page,
    out: Path,
    name: str,
    caption: str,
    shape: tuple[int, int],
    panels: list,
    size: tuple[float, float],
) -> None:
    """Render the panels, write ``name`` under ``out`` and add it (and any failures) to ``page``."""
    png, problems = _render(shape, panels, size)
    (out / name).write_bytes(png)
    page.figure(name, png, caption)
    page.bullets([f"could not draw a panel of {name}: {p}" for p in problems])


def _last_reach(run: Run | None, label: str | None) -> pd.DataFrame:
    """Return the top layer's reach rows at the last reach step, tagged with ``label``."""
    reach = run.table("reach") if isinstance(run, Run) else pd.DataFrame()
    if reach.empty or not {"step", "layer"} <= set(reach.columns):
        return pd.DataFrame(columns=["distance", "norm", "source", "label"])
    finite = reach[np.isfinite(pd.to_numeric(reach["norm"], errors="coerce"))]
    if finite.empty:
        return pd.DataFrame(columns=["distance", "norm", "source", "label"])
    last = finite[finite["step"] == finite["step"].max()]
    last = last[last["layer"] == last["layer"].max()]
    return last.assign(label=label) if label is not None else last


def _representatives(summary: pd.DataFrame) -> set[str]:
    """Return ids of the best, median and worst runs by loss/baseline and the first diverged."""
    ratio = pd.to_numeric(summary["loss_ratio"], errors="coerce")
    ranked = summary.loc[ratio.dropna().sort_values(kind="stable").index, "run_id"].tolist()
    chosen = set(ranked[:1] + ranked[len(ranked) // 2 : len(ranked) // 2 + 1] + ranked[-1:])
    diverged = summary.loc[summary["regime"] == "diverged", "run_id"].tolist()
    return chosen | set(diverged[:1]) or set(summary["run_id"].head(1))


def _varying_settings(summary: pd.DataFrame) -> list[str]:
    """Return the config keys whose values differ between runs (when the index names none)."""
    keys = [c for c in summary.columns if "." in c or c == "seed"]
    return [k for k in keys if k != "device" and summary[k].astype(str).nunique() > 1]


def _ordered(summary: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    for c in SUMMARY_COLUMNS:
        if c not in summary.columns:
            summary[c] = np.nan
    front = ["run_id", *axes, *SUMMARY_COLUMNS]
    return summary[[*dict.fromkeys(front)]]


def _display(summary: pd.DataFrame) -> pd.DataFrame:
    """Return the summary with numbers as short text, and without all-empty columns."""
    keep = [c for c in summary.columns if summary[c].notna().any()]
    return summary[keep].map(_cell)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _label(entry: StudyRun, row: dict, axes: list[str]) -> str:
    values = {**row, **entry.axes}
    parts = [f"{a.rpartition('.')[2]}={values[a]}" for a in axes if a in values]
    return ", ".join(parts) or entry.id


def _status_line(status: dict) -> str:
    line = f"status {status.get('status', 'unknown')} at step {status.get('step', '?')}"
    return line + (f"; error: {status['error']}" if status.get("error") else "")


def _layers(run: Run) -> list[int]:
    adjoints = run.table("adjoints")
    if adjoints.empty or "layer" not in adjoints:
        return [0]
    return sorted(int(v) for v in pd.to_numeric(adjoints["layer"]).dropna().unique())[:4] or [0]


def _first(df: pd.DataFrame, column: str) -> float | None:
    if column not in df.columns or df.empty:
        return None
    value = pd.to_numeric(df[column], errors="coerce").iloc[0]
    return float(value) if np.isfinite(value) else None


def _load(path: Path, tables: tuple[str, ...] | None = None) -> Run:
    try:
        return load_run(path, tables)
    except RnnprobeError:
        raise
    except Exception as err:  # corrupt JSON or Parquet: one line, not a traceback
        raise RnnprobeError(
            f"{path}: unreadable run records ({type(err).__name__}: {err})"
        ) from None


def _try_load(path: Path, tables: tuple[str, ...] | None = None) -> Run | None:
    try:
        return _load(path, tables) if is_run_dir(path) else None
    except RnnprobeError:
        return None


def _try_table(run: Run, name: str) -> pd.DataFrame:
    loaded = _try_load(run.path, (name,))
    return loaded.table(name) if loaded is not None else run.table(name)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80]


def _md(text: str) -> str:
    return html.escape(str(text)).replace("\n", " ")


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
