"""TensorBoard export: a run's or a study's stored records as TensorBoard event files.

Reads only what the store wrote (:func:`rnnprobe.records.store.load_run`); never a live model. Each
rnnprobe run becomes one TensorBoard run, ``DIR/<name>/events.out.tfevents.*``: ``<name>`` is
the run directory's name for a run, and ``<id>_<axis>=<value>_…`` for each run of a study, so
many exports can share one ``--logdir`` and overlay. Exporting again replaces the event files
of that sub-run (and nothing else), so an export is repeatable.

Every value sits at the optimizer step its record carries (counted from 1; ``weights`` rows of
step 0 are the initial weights). Scalars are stored as float32 (TensorBoard's
``simple_value``). The training curves keep non-finite values (a NaN loss marks a non-finite
step); the probe series drop NaN rows, which mean "not applicable" (tanh's inactive fraction,
ReLU's saturation) or "off schedule", and keep ±inf (λ₁ = −∞: a ReLU state that was all off).

Tags (``L`` a layer index, 0 = closest to the input; a series with no value is left out):

- ``loss/train``, ``loss/validation``: ``steps.loss``, ``evals.loss``
- ``loss_ratio/train``, ``loss_ratio/validation``: that loss / ``task.baseline_loss``
- ``metric/<metric>/train``, ``metric/<metric>/validation``: ``steps.metric``,
  ``evals.metric``; ``<metric>`` is the task's (accuracy, bpc, perplexity, mse)
- ``gradient/norm_pre_clip``, ``gradient/norm_post_clip``: the global gradient 2-norm
- ``optimizer/lr``: ``steps.lr``
- ``weights/spectral_radius/layer_L``, ``weights/sigma_max/layer_L``: ρ(W_hh), σ_max(W_hh)
- ``lyapunov/lambda_1/layer_L``: λ₁, the ``lyapunov`` exponent of ``index`` 0
- ``hidden/saturation/layer_L``, ``hidden/inactive/layer_L``, ``hidden/dead_fraction/layer_L``,
  ``hidden/participation_ratio/layer_L``: the ``health`` columns of the same names
- ``adjoint_norm/layer_L/t_<t>``: ``adjoints.adjoint_norm`` (batch mean ‖∂L/∂h_t‖) at
  ``ADJOINT_TIMES`` time steps t evenly spread over the sequence, first and last included
- image ``adjoint_norm/layer_L``: heatmap of ‖∂L/∂h_t‖ over t and training step (log colour),
  written once, at the layer's last recorded step
- text ``config`` (step 0): the run's ``config.json``

Why the adjoints are images and a few scalar series, not histograms: the signal of vanishing
or exploding gradients is how ‖δ_t‖ = ‖∂L/∂h_t‖ changes with the distance from the loss, i.e.
its *order in t*, over decades. A TensorBoard histogram bins the values over t on a linear
scale and throws that order away. The heatmap
(:func:`rnnprobe.report.plots_gradients.plot_adjoint_heatmap`: t against training step, log
colour) shows the whole profile and how training reshapes it in one picture per layer; the
scalar series at evenly spread t (first and last included) are what TensorBoard can overlay
across runs and seeds (switch the chart to a log axis: a geometric decay is a constant gap
between the t lines).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rnnprobe.errors import RecordError, RnnprobeError
from rnnprobe.records.index import is_run_dir, run_or_study
from rnnprobe.records.store import Run, load_run

if TYPE_CHECKING:
    from rnnprobe.records.index import StudyEntry

__all__ = [
    "MISSING_TENSORBOARD",
    "ExportedRun",
    "ScalarSeries",
    "TensorBoardExport",
    "adjoint_heatmap_image",
    "adjoint_times",
    "export_tensorboard",
    "heatmap_layers",
    "scalar_series",
    "study_run_name",
    "summary_writer_class",
    "write_run_events",
]

MISSING_TENSORBOARD = (
    "rnnprobe export --tensorboard needs the tensorboard package: "
    "pip install 'rnnprobe[tensorboard]'"
)
TABLES = ("task", "steps", "evals", "weights", "lyapunov", "health", "adjoints")
ADJOINT_TIMES = 5  # t = 0, T/4, T/2, 3T/4, T − 1: first and last, evenly between
EVENT_FILES = "events.out.tfevents.*"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")

# (table, column, tag prefix): one series per layer, tag ``<prefix>/layer_<L>``
LAYER_SERIES = (
    ("weights", "spectral_radius", "weights/spectral_radius"),
    ("weights", "sigma_max", "weights/sigma_max"),
    ("health", "saturation", "hidden/saturation"),
    ("health", "inactive", "hidden/inactive"),
    ("health", "dead_fraction", "hidden/dead_fraction"),
    ("health", "participation_ratio", "hidden/participation_ratio"),
)
# (table, column, tag) of the training curves, one row per optimizer step or evaluation
CURVES = (
    ("steps", "loss", "loss/train"),
    ("evals", "loss", "loss/validation"),
    ("steps", "grad_norm_pre_clip", "gradient/norm_pre_clip"),
    ("steps", "grad_norm_post_clip", "gradient/norm_post_clip"),
    ("steps", "lr", "optimizer/lr"),
)


@dataclass(frozen=True)
class ScalarSeries:
    """One TensorBoard scalar tag: ``values[i]`` belongs to optimizer step ``steps[i]``."""

    tag: str
    steps: np.ndarray  # (N,) int64, ascending
    values: np.ndarray  # (N,) float64


@dataclass(frozen=True)
class ExportedRun:
    """What one rnnprobe run became: its TensorBoard directory and the tags written there."""

    name: str
    source: Path
    directory: Path
    scalar_tags: tuple[str, ...]
    image_tags: tuple[str, ...]
    points: int  # scalar values written, all tags together


@dataclass(frozen=True)
class TensorBoardExport:
    """An export: the log directory, the runs written, and ``(run id, reason)`` of runs left out.

    ``skipped``: study runs with no records yet (pending, or failed before writing any);
    ``damaged``: study runs whose records could not be read (:class:`RecordError`).
    """

    directory: Path
    runs: tuple[ExportedRun, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    damaged: tuple[tuple[str, str], ...] = ()


# -- records -> series (pure) -------------------------------------------------------------


def scalar_series(run: Run, *, times: int = ADJOINT_TIMES) -> list[ScalarSeries]:
    """Return every scalar series of ``run``, tagged as the module docstring lists them."""
    steps, evals, task = run.table("steps"), run.table("evals"), run.table("task")
    series = [
        _series(tag, run.table(table), column, keep_nan=True) for table, column, tag in CURVES
    ]
    baseline = _first_number(task, "baseline_loss")
    if math.isfinite(baseline) and baseline > 0:  # as analysis.loss_ratio: loss / baseline
        for table, split in ((steps, "train"), (evals, "validation")):
            ratio = _series(f"loss_ratio/{split}", table, "loss", keep_nan=True)
            series.append(ScalarSeries(ratio.tag, ratio.steps, ratio.values / baseline))
    metric = _safe(str(task["metric"].iloc[0])) if "metric" in task and len(task) else "metric"
    for table, split in ((steps, "train"), (evals, "validation")):
        series.append(_series(f"metric/{metric}/{split}", table, "metric", keep_nan=True))
    for table, column, prefix in LAYER_SERIES:
        series += _per_layer(run.table(table), column, prefix)
    lyapunov = run.table("lyapunov")
    if "index" in lyapunov:
        series += _per_layer(lyapunov[lyapunov["index"] == 0], "exponent", "lyapunov/lambda_1")
    series += _adjoint_series(run.table("adjoints"), times)
    return [s for s in series if s.values.size and not np.isnan(s.values).all()]


def adjoint_times(t: Iterable[int], count: int = ADJOINT_TIMES) -> list[int]:
    """Return at most ``count`` of the distinct time steps ``t``, evenly spread, ends kept."""
    unique = np.unique(np.asarray(list(t), dtype=np.int64))
    if unique.size == 0 or count < 1:
        return []
    picks = np.unique(np.round(np.linspace(0, unique.size - 1, count)).astype(int))
    return [int(unique[i]) for i in picks]


def adjoint_heatmap_image(adjoints: pd.DataFrame, layer: int) -> np.ndarray:
    """Return the layer's adjoint-norm heatmap (``plot_adjoint_heatmap``) as (H, W, 3) uint8.

    Drawn on a figure of its own with the Agg canvas, so pyplot's state and backend are untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rnnprobe.report.plots_gradients import plot_adjoint_heatmap

    figure = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    plot_adjoint_heatmap(adjoints, layer=layer, ax=figure.add_subplot())
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, RGB)


def heatmap_layers(adjoints: pd.DataFrame) -> list[tuple[int, int]]:
    """Return ``(layer, last step)`` of each layer with a positive finite ``adjoint_norm``.

    A layer's heatmap image is written at its last recorded step: its x axis spans them all.
    """
    if adjoints.empty or not {"step", "layer", "adjoint_norm"} <= set(adjoints.columns):
        return []
    norm = pd.to_numeric(adjoints["adjoint_norm"], errors="coerce").to_numpy(float)
    shown = adjoints[np.isfinite(norm) & (norm > 0)]
    last = shown.groupby("layer", sort=True)["step"].max()
    return [(int(layer), int(step)) for layer, step in last.items()]


def study_run_name(run_id: str, axes: Mapping[str, Any]) -> str:
    """Return ``<id>_<axis>=<value>_…``: a study run's TensorBoard name, safe as a directory.

    An axis is named by the last part of its dotted key (``seq_len`` for ``task.seq_len``) unless
    two axes share it; characters other than letters, digits and ``._=+-`` become ``-``.
    """
    leaves = [key.rsplit(".", 1)[-1] for key in axes]
    parts = [_safe(run_id)]
    for (key, value), leaf in zip(axes.items(), leaves, strict=True):
        name = leaf if leaves.count(leaf) == 1 else key
        parts.append(f"{_safe(name)}={_safe(str(value))}")
    return "_".join(parts)[:200]


def _series(tag: str, table: pd.DataFrame, column: str, *, keep_nan: bool) -> ScalarSeries:
    """Return ``table[column]`` by step (mean over repeated steps); NaN rows dropped unless kept."""
    if table.empty or not {"step", column} <= set(table.columns):
        return ScalarSeries(tag, np.zeros(0, np.int64), np.zeros(0))
    data = pd.DataFrame(
        {
            "step": pd.to_numeric(table["step"], errors="coerce"),
            "value": pd.to_numeric(table[column], errors="coerce").astype(float),
        }
    ).dropna(subset=["step"] if keep_nan else ["step", "value"])
    by_step = data.groupby("step", sort=True)["value"].mean()
    return ScalarSeries(tag, by_step.index.to_numpy(np.int64), by_step.to_numpy(np.float64))


def _per_layer(table: pd.DataFrame, column: str, prefix: str) -> list[ScalarSeries]:
    """Return one series per layer, tag ``<prefix>/layer_<L>``, NaN rows dropped."""
    if table.empty or not {"step", "layer", column} <= set(table.columns):
        return []
    return [
        _series(f"{prefix}/layer_{int(layer)}", rows, column, keep_nan=False)
        for layer, rows in table.groupby("layer", sort=True)
    ]


def _adjoint_series(adjoints: pd.DataFrame, times: int) -> list[ScalarSeries]:
    """Return ``adjoint_norm/layer_<L>/t_<t>`` for ``adjoint_times`` of each layer's t."""
    if adjoints.empty or not {"step", "layer", "t", "adjoint_norm"} <= set(adjoints.columns):
        return []
    series = []
    for layer, rows in adjoints.groupby("layer", sort=True):
        for t in adjoint_times(rows["t"], times):
            at_t = rows[rows["t"] == t]
            series.append(
                _series(
                    f"adjoint_norm/layer_{int(layer)}/t_{t}", at_t, "adjoint_norm", keep_nan=False
                )
            )
    return series


def _first_number(table: pd.DataFrame, column: str) -> float:
    if column not in table:
        return math.nan
    values = pd.to_numeric(table[column], errors="coerce").dropna()
    return float(values.iloc[0]) if len(values) else math.nan


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "-"


# -- series -> event files ------------------------------------------------------------------


def summary_writer_class() -> type:
    """Return torch's ``SummaryWriter`` class; RnnprobeError when tensorboard is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RnnprobeError(MISSING_TENSORBOARD) from None
    return SummaryWriter


def write_run_events(
    run: Run, directory: Path, writer_class: Callable[..., Any], *, times: int = ADJOINT_TIMES
) -> ExportedRun:
    """Write ``run``'s scalars, adjoint heatmaps and config into ``directory``; return the tags.

    Event files already in ``directory`` (an earlier export) are removed first.
    """
    _prepare(directory)
    for old in directory.glob(EVENT_FILES):
        old.unlink()
    series = scalar_series(run, times=times)
    adjoints = run.table("adjoints")
    writer = writer_class(log_dir=str(directory))
    try:
        for s in series:
            for step, value in zip(s.steps.tolist(), s.values.tolist(), strict=True):
                writer.add_scalar(s.tag, value, step)
        images = []
        for layer, step in heatmap_layers(adjoints):
            tag = f"adjoint_norm/layer_{layer}"
            image = adjoint_heatmap_image(adjoints, layer)
            writer.add_image(tag, image, step, dataformats="HWC")
            images.append(tag)
        writer.add_text("config", _config_markdown(run.config), 0)
    finally:
        writer.close()
    return ExportedRun(
        directory.name,
        run.path,
        directory,
        tuple(s.tag for s in series),
        tuple(images),
        sum(s.values.size for s in series),
    )


def _config_markdown(config: Mapping[str, Any]) -> str:
    """Return the config as a Markdown code block (TensorBoard's text plugin renders Markdown)."""
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    return "\n".join("    " + line for line in text.splitlines())


def _prepare(directory: Path) -> None:
    """Create ``directory``; RnnprobeError naming it when that cannot be done."""
    if directory.exists() and not directory.is_dir():
        raise RnnprobeError(f"{directory} is not a directory; choose a directory for the events")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(directory))
    except OSError as error:
        raise RnnprobeError(
            f"cannot write TensorBoard events to {directory}: {error.strerror or error}"
        ) from None


# -- run or study -------------------------------------------------------------------------


def export_tensorboard(
    path: str | os.PathLike, directory: str | os.PathLike, *, times: int = ADJOINT_TIMES
) -> TensorBoardExport:
    """Export the run or study at ``path`` as TensorBoard runs under ``directory``.

    A run goes to ``directory/<run directory name>``; each run of a study to
    ``directory/<study_run_name>``. Study runs without records yet (``skipped``) or with
    damaged ones (``damaged``) are left out, the others exported. Raises RnnprobeError for a
    path that is neither a run nor a study, an unwritable ``directory`` or a missing
    tensorboard package.
    """
    path, directory = Path(path), Path(directory)
    kind = run_or_study(path)  # or a one-line error
    writer_class = summary_writer_class()
    if kind == "run":
        _prepare(directory)
        run = load_run(path, TABLES)
        target = directory / _safe(path.resolve().name)
        return TensorBoardExport(
            directory, (write_run_events(run, target, writer_class, times=times),)
        )
    entries = _study_entries(path)
    _prepare(directory)
    runs, skipped, damaged = [], [], []
    for entry in entries:
        if not is_run_dir(entry.path):
            skipped.append((entry.id, f"no records yet ({entry.status or 'pending'})"))
            continue
        try:
            run = load_run(entry.path, TABLES)
        except RecordError as error:
            damaged.append((entry.id, str(error)))
            continue
        target = directory / study_run_name(entry.id, entry.axes)
        runs.append(write_run_events(run, target, writer_class, times=times))
    if not runs:
        raise RnnprobeError(f"{path} holds no run with records to export")
    return TensorBoardExport(directory, tuple(runs), tuple(skipped), tuple(damaged))


def _study_entries(path: Path) -> list[StudyEntry]:
    """Return the runs of the study at ``path``."""
    from rnnprobe.records.index import read_study

    return read_study(path).runs
