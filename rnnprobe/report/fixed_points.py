"""Fixed and slow points of a trained run's layer, and the files ``rnnprobe fixed-points`` writes.

Loads the run's last checkpoint (``weights_only``, through the store), rebuilds its model in
float64 on the CPU (weights that are not finite are refused), runs it on a few of the run's own
evaluation batches to collect the states a layer visits, holds the layer's input constant (zero,
the mean of the inputs it saw, or one token) and finds the fixed and slow points of the layer's
map with :func:`rnnprobe.probes.fixed_points.find_fixed_points` (the math is in that module's
docstring).
Torch, pandas and matplotlib load inside the functions that use them.

Files, under ``RUN/fixed_points/layer<L>-<input>`` (or ``--out``); every table carries
``layer`` so that analyses concatenate:

- ``points`` (.parquet and .csv), one row per distinct point: ``layer``, ``input``, ``point``
  (id, by increasing q), ``kind`` (fixed | slow), ``stability`` (stable | saddle | source),
  ``category`` (a fixed point's stability, else slow), ``q`` = ½‖F(h*) − h*‖², ``speed`` =
  ‖F(h*) − h*‖, ``unstable_dims`` (eigenvalues with |λ| > 1), ``spectral_radius``,
  ``slowest_modulus`` / ``slowest_real`` / ``slowest_imag`` (the eigenvalue with |λ| closest
  to 1), ``time_constant`` (1/|ln|λ|| of it, in steps), ``starts_merged``, ``norm`` (‖h*‖),
  ``pc1``, ``pc2`` (coordinates on the visited states' top two principal components).
- ``eigenvalues``: ``layer``, ``point``, ``category``, ``index`` (by descending |λ|),
  ``real``, ``imag``, ``modulus``.
- ``coordinates``: ``layer``, ``point``, ``unit``, ``value`` (the point h* itself).
- ``trajectories``: ``layer``, ``trajectory``, ``t``, ``pc1``, ``pc2`` (visited sequences).
- ``visited``: ``layer``, ``pc1``, ``pc2`` (a sample of the visited states).
- ``summary.json`` (settings, counts, variance explained), ``fixed_points.png``, ``README.md``.

A run that diverged keeps its last finite checkpoint, from before or at the step it stopped:
``summary.json`` records ``diverged_at`` and ``first_nonfinite_step`` (null for a run that did
not diverge; both as :mod:`rnnprobe.analysis.runs` reads them), and :func:`divergence_note`
says which checkpoint the points are of (README.md, the figure's title, the command's warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnnprobe.errors import RnnprobeError

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    import torch

    from rnnprobe.probes.fixed_points import FixedPoints, Projection

__all__ = ["RunFixedPoints", "analyse_run", "divergence_note", "tables", "write_results"]

TRAJECTORIES = 3  # visited sequences drawn through the points
VISITED_SAMPLE = 3000  # visited states kept for the figure's background cloud


@dataclass(frozen=True)
class RunFixedPoints:
    """What one search on a run found, and what its figure needs."""

    result: FixedPoints
    projection: Projection  # the visited states' top two principal components
    trajectories: tuple[torch.Tensor, ...]  # each (T_b, 2): a visited sequence on the PCs
    visited: torch.Tensor  # (M', 2): a sample of the visited states on the PCs
    settings: dict[str, Any]  # where it came from: run, step, layer, input, … (summary.json)


def analyse_run(
    run: Path, held: str | int, *, layer: int, starts: int, batches: int, noise: float,
    slow_tol: float, seed: int, progress: Callable[[str], None] | None = None,
) -> RunFixedPoints:  # fmt: skip
    """Return the fixed and slow points of ``layer`` of the run's last checkpoint;
    ``progress(stage)`` at each step of the search (``find_fixed_points``)."""
    import torch

    from rnnprobe.core.models import ElmanRNN
    from rnnprobe.data.tasks import task_from_config
    from rnnprobe.probes import fixed_points as fpm
    from rnnprobe.records.store import RunStore
    from rnnprobe.seeds import derived_seed
    from rnnprobe.training.loop import resume_config
    from rnnprobe.training.setup import build_model

    config = resume_config(run)  # a one-line error when RUN is not a run directory
    if layer >= config.model.layers:
        raise RnnprobeError(
            f"--layer must lie in [0, {config.model.layers}) for this run, got {layer}"
        )
    checkpoint = RunStore(Path(run)).load_latest_checkpoint()
    if checkpoint is None:
        raise RnnprobeError(f"{run} has no checkpoint yet; fixed points need its trained weights")
    task = task_from_config(config)
    if isinstance(held, int):
        if task.input_kind != "tokens" or task.vocab_size is None:
            raise RnnprobeError(f"--input {held}: task {task.name} takes features, not token ids")
        if held >= task.vocab_size:
            raise RnnprobeError(
                f"--input {held}: task {task.name}'s ids lie in [0, {task.vocab_size})"
            )
        if layer != 0:
            raise RnnprobeError(
                "--input TOKEN holds the network's input, which is constant at layer 0 only; "
                f"for --layer {layer} use zero or mean"
            )
    model = build_model(task, config.model).double()
    try:
        model.load_state_dict(checkpoint.state["model"])
    except (KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:160]
        raise RnnprobeError(f"{checkpoint.path} does not fit its run's model ({reason})") from None
    diverged_at, first_nonfinite = _divergence(run)
    broken = [
        name
        for name, tensor in checkpoint.state["model"].items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if broken:
        when = f"; the run diverged at step {diverged_at}" if diverged_at is not None else ""
        raise RnnprobeError(
            f"{checkpoint.path}: the weights at step {checkpoint.step} are not finite "
            f"({', '.join(broken[:3])}{', …' if len(broken) > 3 else ''}){when}: "
            "they have no fixed points to find"
        )
    model.eval()
    embedding = getattr(model, "embedding", None)  # None: the task's inputs are features
    rnn = next(m for m in model.modules() if isinstance(m, ElmanRNN))
    states: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    paths: list[torch.Tensor] = []
    eval_seed = derived_seed(config.seed, "evals")  # the seed of the run's own validation batches
    with torch.no_grad():
        for batch in task.eval_batches(
            config.train.batch_size, num_batches=batches, seed=eval_seed
        ):
            x = batch.inputs.transpose(0, 1) if embedding is None else embedding(batch.inputs.t())
            x_l, h_l = fpm.layer_trajectories(rnn, x, layer)  # (T, B, I_l), (T, B, H)
            real = batch.mask.t()  # (T, B): steps that are not padding
            states.append(h_l[real])
            inputs.append(x_l[real])
            for b in range(min(TRAJECTORIES - len(paths), real.shape[1])):
                paths.append(h_l[real[:, b], b])
        visited = torch.cat(states)  # (M, H)
        w_ih, w_hh = rnn.layer_weights(layer)
        biases = (getattr(rnn, f"bias_{n}_l{layer}", None) for n in ("ih", "hh"))
        held_x = None  # zero
        if held == "mean":
            held_x = torch.cat(inputs).mean(0)
        elif isinstance(held, int):
            assert embedding is not None  # checked above: a token task
            held_x = embedding.weight[held]
        u = fpm.constant_drive(held_x, w_ih, *biases)  # (H,)
    generator = torch.Generator().manual_seed(seed)
    result = fpm.find_fixed_points(
        w_hh,
        u,
        fpm.sample_starts(visited, starts, noise=noise, generator=generator),
        nonlinearity=config.model.nonlinearity,
        slow_tol=slow_tol,
        progress=progress,
    )
    projection = fpm.principal_components(visited, 2)
    sample = torch.randperm(len(visited), generator=generator)[:VISITED_SAMPLE]
    settings = {
        "run": str(run),
        "checkpoint_step": checkpoint.step,
        "diverged_at": diverged_at,
        "first_nonfinite_step": first_nonfinite,
        "task": task.name,
        "layer": layer,
        "input": str(held),
        "hidden_size": config.model.hidden_size,
        "nonlinearity": config.model.nonlinearity,
        "batches": batches,
        "visited_states": len(visited),
        "starts": starts,
        "noise": noise,
        "seed": seed,
        "u_norm": float(u.norm()),
    }
    return RunFixedPoints(
        result,
        projection,
        tuple(projection.project(p) for p in paths),
        projection.project(visited[sample]),
        settings,
    )


def _divergence(run: Path) -> tuple[int | None, int | None]:
    """Return the step the run diverged at and its first non-finite step (None: none)."""
    from rnnprobe.analysis.runs import summarise_run
    from rnnprobe.errors import RecordError
    from rnnprobe.records.store import load_run

    try:
        records = load_run(run, tables=("steps", "events"))
    except RecordError:  # damaged tables: the status alone says whether it diverged
        records = load_run(run, tables=())
    summary = summarise_run(records)
    return summary.divergence_step, summary.first_nonfinite_step


def divergence_note(settings: dict[str, Any]) -> str | None:
    """Return the sentence saying that the run diverged and which checkpoint the points are
    of, or None when it did not diverge."""
    diverged_at, first = settings.get("diverged_at"), settings.get("first_nonfinite_step")
    if diverged_at is None:
        return None
    step = settings["checkpoint_step"]
    onset = f" (first non-finite loss or gradient at step {first})" if first is not None else ""
    before = ", taken before it diverged" if step < diverged_at else ""
    return (
        f"the run diverged at step {diverged_at}{onset}; these fixed points are of its "
        f"checkpoint at step {step}{before}"
    )


def tables(found: RunFixedPoints) -> dict[str, pd.DataFrame]:
    """Return the tidy tables written for ``found`` (columns in the module docstring)."""
    import pandas as pd

    fp, layer = found.result, found.settings["layer"]
    pcs = found.projection.project(fp.points).numpy()  # (N, 2)
    points = pd.DataFrame(fp.rows(), columns=POINT_COLUMNS).assign(pc1=pcs[:, 0], pc2=pcs[:, 1])
    points.insert(0, "input", found.settings["input"])
    N, H = fp.points.shape
    coordinates = pd.DataFrame(
        {
            "point": [i for i in range(N) for _ in range(H)],
            "unit": [j for _ in range(N) for j in range(H)],
            "value": fp.points.reshape(-1).numpy(),
        }
    )
    paths = [
        pd.DataFrame({"trajectory": n, "t": range(len(p)), "pc1": p[:, 0], "pc2": p[:, 1]})
        for n, p in enumerate(t.numpy() for t in found.trajectories)
    ]
    frames = {
        "points": points,
        "eigenvalues": pd.DataFrame(fp.eigenvalue_rows(), columns=EIGENVALUE_COLUMNS),
        "coordinates": coordinates,
        "trajectories": pd.concat(paths, ignore_index=True),
        "visited": pd.DataFrame(found.visited.numpy(), columns=["pc1", "pc2"]),
    }
    for frame in frames.values():
        frame.insert(0, "layer", layer)
    return frames


POINT_COLUMNS = [
    "point", "kind", "stability", "category", "q", "speed", "unstable_dims", "spectral_radius",
    "slowest_modulus", "slowest_real", "slowest_imag", "time_constant", "starts_merged", "norm",
]  # fmt: skip
EIGENVALUE_COLUMNS = ["point", "category", "index", "real", "imag", "modulus"]


def write_results(found: RunFixedPoints, out: Path) -> None:
    """Write the tables, ``summary.json``, ``fixed_points.png`` and ``README.md`` under ``out``:
    all of them or, cut short (Ctrl-C, an error), none (``report/staging.py``)."""
    import io
    import json

    from rnnprobe.report.staging import staged_output

    frames = tables(found)
    fp = found.result
    summary = {
        **found.settings,
        "discarded": fp.discarded,
        "fixed_tol": fp.fixed_tol,
        "slow_tol": fp.slow_tol,
        "merge_tol": fp.merge_tol,
        "points": fp.counts(),
        "explained_variance": found.projection.explained.tolist(),
    }
    with staged_output(out) as staging:
        for name, frame in frames.items():
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            (staging / f"{name}.parquet").write_bytes(buffer.getvalue())
        (staging / "points.csv").write_bytes(frames["points"].to_csv(index=False).encode())
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        png = figure_png(frames, summary)  # drawn from the tables as written
        (staging / "fixed_points.png").write_bytes(png)
        readme_text = readme(frames["points"], summary, png)
        (staging / "README.md").write_text(readme_text, encoding="utf-8")


def count_text(n: int, category: str) -> str:
    """Return a category's count in words: "1 saddle", "0 sources", "2 stable", "3 slow
    points" (the result line and README.md say them alike)."""
    noun = {"slow": "slow point"}.get(category, category)
    return f"{n} {noun}" if n == 1 or category == "stable" else f"{n} {noun}s"


def figure_png(frames: dict[str, pd.DataFrame], summary: dict) -> bytes:
    """Return the two-panel PNG: points on the top PCs, and their Jacobians' eigenvalues."""
    import io

    from matplotlib.figure import Figure

    from rnnprobe.report.plots_dynamics import plot_fixed_point_eigenvalues, plot_fixed_points_pca

    fig = Figure(figsize=(14, 5.6))
    # fixed margins: room left of each panel for its ticks, right of it for its legend
    fig.subplots_adjust(left=0.06, right=0.85, bottom=0.11, top=0.87, wspace=0.75)
    left, right = fig.subplots(1, 2)
    plot_fixed_points_pca(
        frames["points"],
        trajectories=frames["trajectories"],
        visited=frames["visited"],
        explained=tuple(summary["explained_variance"]),
        ax=left,
    )
    plot_fixed_point_eigenvalues(frames["eigenvalues"], ax=right)
    s = summary
    fig.suptitle(
        f"{Path(s['run']).name}: layer {s['layer']} (H = {s['hidden_size']}, "
        f"{s['nonlinearity']}), input held at {_input_text(s['input'])}, "
        f"checkpoint step {s['checkpoint_step']}"
        + (f" (the run diverged at step {s['diverged_at']})" if s.get("diverged_at") else ""),
        fontsize="medium",
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")  # no legend cut off
    return buffer.getvalue()


def readme(points: pd.DataFrame, summary: dict, png: bytes) -> str:
    """Return the Markdown page: what was done, the counts, the figure and the points."""
    from rnnprobe.report.pages import Page

    s, counts = summary, summary["points"]
    page = Page(f"Fixed and slow points: layer {s['layer']}, input {s['input']}")
    page.text(
        f"Run {s['run']} (task {s['task']}, checkpoint at step {s['checkpoint_step']}, "
        f"H = {s['hidden_size']}, {s['nonlinearity']}). The layer's input is held at "
        f"{_input_text(s['input'])}: ‖u‖ = {s['u_norm']:.3g}. {s['starts']} starts drawn from "
        f"{s['visited_states']} states visited on {s['batches']} evaluation batches (noise "
        f"σ = {s['noise']:g}) were moved to minima of q(h) = ½‖F(h) − h‖²."
    )
    note = divergence_note(s)
    if note is not None:
        page.text(f"Note: {note[0].upper()}{note[1:]}.")
    page.bullets(
        [
            f"fixed points (q < {s['fixed_tol']:g}): "
            + ", ".join(count_text(counts[c], c) for c in ("stable", "saddle", "source")),
            f"slow points (q < {s['slow_tol']:g}): {counts['slow']}",
            f"starts ending above q = {s['slow_tol']:g} (discarded): {s['discarded']}",
            f"points closer than {s['merge_tol']:g} are merged into one",
        ]
    )
    page.figure(
        "fixed_points.png",
        png,
        "Left: the points on the first two principal components of the visited states, with "
        "visited trajectories. Right: eigenvalues of J = diag(φ′(a*)) W_hh at each point; "
        "outside the unit circle a direction grows.",
    )
    if not points.empty:
        columns = ["point", "category", "q", "unstable_dims", "spectral_radius"]
        columns += ["slowest_modulus", "time_constant", "starts_merged"]
        shown = points.head(30)[columns]
        page.heading("Points (lowest q first)")
        page.table(shown.map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)))
        if len(points) > len(shown):
            page.text(f"{len(points) - len(shown)} more in points.csv.")
    return page.markdown()


def _input_text(held: str) -> str:
    if held == "zero":
        return "zero (u = b_ih + b_hh)"
    if held == "mean":
        return "the mean input it saw (u = mean(x) W_ihᵀ + b_ih + b_hh)"
    return f"token {held} at every step"
