r"""The replay of one snapshotted training step: recomputed bit for bit, then explained.

**Replay** (:func:`replay_snapshot`): rebuild the model and optimizer from the config, load the
snapshot and run the training step itself (``Trainer.replay_step``) twice. On the same machine
and thread count the loss and every gradient tensor agree bit for bit between the two, and the
loss and gradient norm with the run's ``steps`` row. One more backward pass with every probe on
(δ kept, per-step shares of ∇W_hh, reach on the whole batch, hidden statistics, W_hh and
Jacobian spectra, Lyapunov exponents) feeds a report of where the gradient came from: which
time steps t (‖δ_t‖, ‖g_tᵀ h_{t−1}‖_F with g_t = φ'(a_t) ⊙ δ_t) and which hidden units (rows
of ∇W_hh, |δ_t,i|).

Snapshots are written by :mod:`rnnprobe.training.warning`, the report's figures drawn by
:mod:`rnnprobe.report.plots_replay`; torch, pandas and matplotlib are imported inside the
functions that use them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from rnnprobe.errors import RecordError, RnnprobeError
from rnnprobe.training.warning import load_snapshot

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from matplotlib.axes import Axes

    from rnnprobe.report.plots_replay import Panel
    from rnnprobe.training.config import RunConfig
    from rnnprobe.training.loop import Trainer

__all__ = ["Check", "ProbePass", "Replay", "replay_snapshot"]


@dataclass(frozen=True)
class Check:
    """One comparison of the replay: ``expected`` and ``got`` as shown, and whether equal."""

    what: str
    expected: str
    got: str
    equal: bool


@dataclass
class Replay:
    """What :func:`replay_snapshot` did: the checks, the report's place, the key numbers."""

    snapshot: Path
    step: int
    kind: str
    out: Path
    checks: list[Check]
    loss: float
    grad_norm: float
    figures: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        """Whether every check held: the step came out as the run computed it."""
        return all(check.equal for check in self.checks)


@dataclass
class ProbePass:
    """The replayed step with every probe on: tables as the run stores them, and more.

    ``tables``: the store's tables for this step (adjoints, reach, hidden, health, weights,
    spectra, lyapunov); ``deltas`` per layer (T, B, H) δ_t = ∂L/∂h_t of the task loss;
    ``w_hh_grads`` per layer (H, H) ∇W_hh of the task loss; ``grad_norm`` ‖∇θL‖ of the task
    loss (no clipping, no flossing); ``offsets``: the first step of each backward pass;
    ``overflow``: per layer whose states are not all finite, a line saying where that starts;
    ``states``: the batch mean ‖h_t‖ per layer and step.
    """

    tables: dict[str, pd.DataFrame]
    deltas: list[torch.Tensor]
    w_hh_grads: list[torch.Tensor]
    grad_norm: float
    offsets: list[int]
    overflow: list[str]
    states: pd.DataFrame  # layer, t, norm: batch mean ‖h_t‖ (NaN or inf where not finite)

    @property
    def states_finite(self) -> bool:
        """Whether every layer's states stayed finite through the step."""
        return not self.overflow


class _ReplayProbes(TypedDict):
    """The schedules a replay overrides in the run's ``ProbeConfig``."""

    adjoints: str
    weight_grads: str
    hidden: str
    spectra: str
    lyapunov: str
    reach: str
    truncation: str
    products: str


# every probe, reach on the whole batch; products (FTLE) stay off: costly
REPLAY_PROBES = _ReplayProbes(
    adjoints="always",
    weight_grads="always",
    hidden="always",
    spectra="always",
    lyapunov="always",
    reach="always",
    truncation="never",
    products="never",
)


def replay_snapshot(path: str | Path, out: str | Path | None = None) -> Replay:
    """Return the replay of the snapshot at ``path`` after writing its report to ``out``.

    ``out`` defaults to ``<snapshot without .pt>-replay`` beside the snapshot. The replay runs
    on the snapshot's device (the CPU when that is not available here) and thread count.
    """
    from rnnprobe.core.denormals import flush_denormals
    from rnnprobe.training.flossing import FlossSpec
    from rnnprobe.training.loop import Trainer

    path = Path(path)
    snapshot = load_snapshot(path)
    config = _replay_config(path, snapshot)
    out = Path(out) if out is not None else path.with_name(f"{path.stem}-replay")
    if out.exists() and not out.is_dir():
        raise RnnprobeError(f"output {out} exists and is not a directory")
    run_dir = _run_dir_of(path)
    recorded, source = _recorded(run_dir, snapshot)
    with _thread_count(snapshot, config):
        trainer = Trainer(config, None, resume=False, progress=False, records=False)
        _check_inputs(path, trainer, snapshot)
        with flush_denormals(config.train.flush_denormals, trainer.parts.device):
            first, first_grads = trainer.replay_step(snapshot)
            second, second_grads = trainer.replay_step(snapshot)
            probe = _probe_pass(trainer, snapshot)
    checks = [
        _same_float("loss: replay 1 vs replay 2", first["loss"], second["loss"]),
        _same_gradients("gradients: replay 1 vs replay 2", first_grads, second_grads),
        _same_float(f"loss vs {source}", recorded["loss"], first["loss"]),
        _same_float(
            f"pre-clip gradient norm vs {source}",
            recorded["grad_norm_pre_clip"],
            first["grad_norm_pre_clip"],
        ),
    ]
    floss = FlossSpec.parse(config.train.floss, config.model.hidden_size)
    if floss is None or not floss.fires(int(snapshot["step"])):  # else ∇ holds the penalty's
        checks.append(
            _same_float(
                "pre-clip gradient norm with every probe on",
                first["grad_norm_pre_clip"],
                probe.grad_norm,
            )
        )
    result = Replay(
        path,
        int(snapshot["step"]),
        str(snapshot["kind"]),
        out,
        checks,
        first["loss"],
        first["grad_norm_pre_clip"],
    )
    from rnnprobe.report.staging import staged_output

    with staged_output(out) as staging:  # cut short: out is left as it was
        result.figures = _write_report(result, snapshot, config, probe, run_dir, staging)
    return result


def _replay_config(path: Path, snapshot: dict[str, Any]) -> RunConfig:
    """Return the snapshot's config, watch off, on its device (the CPU if that is missing)."""
    import torch

    from rnnprobe.training.config import config_from_dict

    try:
        config = config_from_dict(snapshot["config"])
    except RnnprobeError as error:
        raise RecordError(f"{path}: its config is not valid here ({error})") from None
    device = str(snapshot.get("device", "cpu"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    return replace(config, device=device, train=replace(config.train, warn="none"))


def _run_dir_of(path: Path) -> Path | None:
    """Return the run directory of a snapshot in ``RUN/snapshots/``, or None."""
    from rnnprobe.records.index import is_run_dir

    run = path.resolve().parent.parent
    return run if path.resolve().parent.name == "snapshots" and is_run_dir(run) else None


def _recorded(run_dir: Path | None, snapshot: dict[str, Any]) -> tuple[dict[str, float], str]:
    """Return the step's recorded loss and gradient norm and where they come from: the run's
    ``steps`` table when it holds the step (flushed), else the snapshot's own copy."""
    from rnnprobe.records.store import read_table

    step = int(snapshot["step"])
    if run_dir is not None:
        steps = read_table(run_dir, "steps")
        row = steps[steps["step"] == step] if not steps.empty else steps
        if not row.empty:
            last = row.iloc[-1]
            numbers = {k: float(last[k]) for k in ("loss", "grad_norm_pre_clip")}
            return numbers, "the run's steps table"
    numbers = {k: float(snapshot["recorded"][k]) for k in ("loss", "grad_norm_pre_clip")}
    return numbers, "the value the snapshot recorded"


@contextmanager
def _thread_count(snapshot: dict[str, Any], config: RunConfig) -> Iterator[None]:
    """Run with the snapshot's torch thread count on the CPU: reductions split by thread, so
    the sums, and so the bits, depend on it."""
    import torch

    threads, before = snapshot.get("threads"), torch.get_num_threads()
    count = threads if isinstance(threads, int) else 0  # 0: none recorded, no change
    change = config.device == "cpu" and 0 < count != before
    if change:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


def _check_inputs(path: Path, trainer: Trainer, snapshot: dict[str, Any]) -> None:
    """Refuse a snapshot whose weights, vocabulary or segments do not fit its own config."""
    import torch

    expected = trainer.parts.model.state_dict()
    weights = snapshot["model"]
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    if shapes != {k: tuple(v.shape) for k, v in expected.items()}:
        raise RecordError(f"{path}: its weights do not fit the model its config builds")
    vocab = snapshot.get("vocab")
    corpus = getattr(trainer.parts.task, "corpus", None)
    if vocab is not None and corpus is not None and list(corpus.vocab.tokens) != list(vocab):
        raise RnnprobeError(
            f"{path}: the corpus its config names has changed since the run (another "
            "vocabulary); replay needs the same corpus"
        )
    inputs = snapshot["batch"]["inputs"]
    if inputs.ndim < 2 or inputs.shape[1] < 1:
        raise RecordError(f"{path}: its batch has shape {tuple(inputs.shape)}, not (B, T, …)")
    cut = torch.Generator()
    try:
        cut.set_state(snapshot["rng"]["cut"])
    except (RuntimeError, TypeError):
        raise RecordError(f"{path}: its RNG states are damaged") from None
    segments = [list(s) for s in trainer.parts.truncation.segments(inputs.shape[1], cut)]
    if segments != [list(s) for s in snapshot["segments"]]:
        raise RecordError(f"{path}: its segments disagree with its cut RNG state and config")


def _probe_pass(trainer: Trainer, snapshot: dict[str, Any]) -> ProbePass:
    """Return the step's records with every probe on: one more forward and backward pass of
    the task loss from the snapshot's state (δ kept), filed by the run's own Probing."""
    import numpy as np
    import pandas as pd
    import torch

    from rnnprobe.core.capture import capture
    from rnnprobe.training.batch import run_batch
    from rnnprobe.training.probing import Probing

    batch, segments, h0 = trainer.restore_snapshot(snapshot)
    step, model, rnn = int(snapshot["step"]), trainer.parts.model, trainer.parts.rnn
    B, T = batch.inputs.shape[:2]
    probes = replace(
        trainer.parts.config.probes,
        **REPLAY_PROBES,
        sub_batch=B,
        jacobian_samples=min(16, T * B),
        top_k=min(rnn.hidden_size, 64),
    )
    probing = Probing(probes, rnn, trainer.parts.config.seed)
    probing.generator.set_state(snapshot["rng"]["probe"])
    model.zero_grad(set_to_none=True)
    with capture(
        model, reach=True, reach_batch=B, keep_adjoints=True, keep_states=True, weight_grads=True
    ) as cap:
        result = run_batch(model, trainer.parts.task, batch, segments, h0)
    records = cap.records_on_device()
    probing.record_backward(step, records, result.backward_offsets, batch.lengths)
    states = [torch.cat(layer) for layer in zip(*(r.states for r in records), strict=True)]
    start = result.backward_offsets[0] if result.backward_offsets else 0  # the states' first t
    overflow = _overflow(states, start)
    if not overflow:  # spectra and QR of non-finite states would fail, not inform
        fired = {"hidden", "spectra", "lyapunov"}
        probing.record_states(step, states, fired, batch.lengths)
    tables = {}
    for table, blocks in probing.rows.drain().items():
        columns = {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}
        tables[table] = pd.DataFrame(columns)
    deltas = [
        torch.cat([_kept(r.layers[layer].delta) for r in records]).detach().cpu()
        for layer in range(rnn.num_layers)
    ]
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, math.inf, foreach=True)  # scales by 1: exact
    return ProbePass(
        tables=tables,
        deltas=deltas,
        w_hh_grads=[
            _kept(rnn.layer_weights(layer)[1].grad).detach().cpu()
            for layer in range(rnn.num_layers)
        ],
        grad_norm=float(norm),
        offsets=list(result.backward_offsets),
        overflow=overflow,
        states=pd.DataFrame(
            {
                "layer": np.repeat(np.arange(len(states)), [len(h) for h in states]),
                "t": np.concatenate([start + np.arange(len(h)) for h in states]),
                "norm": torch.cat([_mean_norm(h) for h in states]).cpu().numpy(),
            }
        ),
    )


def _kept(value: torch.Tensor | None) -> torch.Tensor:
    """Return a tensor the probe pass always has: adjoints are kept, every weight has a grad."""
    assert value is not None
    return value


def _mean_norm(h: torch.Tensor) -> torch.Tensor:
    """Return the batch mean of ‖h_t‖ (T,) for h (T, B, H), scaled so that it overflows only
    where h does (squares of |h| > 1e154 would overflow float64 first)."""
    import torch

    h = h.double()
    scale = h.abs().amax(dim=2, keepdim=True).clamp_min(torch.finfo(h.dtype).tiny)
    norms = scale.squeeze(2) * (h / scale).norm(dim=2)  # (T, B)
    return (norms / h.shape[1]).sum(1)


def _overflow(states: list[torch.Tensor], start: int) -> list[str]:
    """Return, per layer whose states h (T, B, H) are not all finite, where that begins."""
    import torch

    lines = []
    for layer, h in enumerate(states):
        bad = ~torch.isfinite(h).flatten(1).all(1)  # (T,)
        if bool(bad.any()):
            t = int(bad.nonzero()[0])
            before = f" (max |h| the step before: {float(h[t - 1].abs().max()):.3g})" if t else ""
            lines.append(f"layer {layer}: h_t is first not finite at t = {start + t}{before}")
    return lines


def _same_float(what: str, expected: float, got: float) -> Check:
    """Return the check that two float64 values are the same number (NaN matching NaN)."""
    equal = expected == got or (math.isnan(expected) and math.isnan(got))
    return Check(what, repr(expected), repr(got), equal)


def _same_gradients(
    what: str, expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]
) -> Check:
    """Return the check that two sets of gradients agree bit for bit, tensor by tensor."""
    import torch

    as_bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    differ = [
        name
        for name in expected
        if name not in got
        or expected[name].shape != got[name].shape
        or not torch.equal(
            expected[name].view(as_bits[expected[name].element_size()]),
            got[name].view(as_bits[got[name].element_size()]),
        )
    ]
    differ += [name for name in got if name not in expected]
    shown = f"{len(expected)} tensors"
    return Check(
        what, shown, "identical" if not differ else f"differ: {', '.join(differ)}", not differ
    )


# -- the report --------------------------------------------------------------------------------
TOP_UNITS = 16  # units shown in the per-unit figures


def _write_report(
    result: Replay,
    snapshot: dict[str, Any],
    config: RunConfig,
    probe: ProbePass,
    run_dir: Path | None,
    folder: Path,
) -> list[str]:
    """Write README.md, index.html and the PNG figures of the replay into ``folder``; return
    the PNG names."""
    import pandas as pd

    from rnnprobe.report import plots_replay as pr
    from rnnprobe.report.pages import SETTINGS, Page

    page = Page(f"Replay of step {result.step} ({result.kind}) — {result.snapshot.name}")
    page.text(_verdict(result))
    page.text(f"Why this step: {snapshot.get('reason') or result.kind}.")
    page.heading("Where the gradient came from")
    page.bullets(_findings(probe, snapshot))
    for name, caption, panels, columns in _figures(result, snapshot, probe, run_dir):
        png = pr.figure_png(pr.plot_panel_grid(panels, columns=columns))
        (folder / name).write_bytes(png)
        page.figure(name, png, caption)
    page.heading("Checks")
    page.table(
        pd.DataFrame(
            [(c.what, c.expected, c.got, "yes" if c.equal else "NO") for c in result.checks],
            columns=["check", "expected", "replayed", "equal"],
        )
    )
    page.heading("The step")
    batch = snapshot["batch"]["inputs"]
    flat = config.flat()
    rows = [(key, flat[key]) for key in (*SETTINGS, "dtype")]  # the report's, and the dtype
    rows += [
        ("batch (B, T)", f"{tuple(batch.shape[:2])}"),
        ("BPTT segments", ", ".join(f"[{a}, {b})" for a, b in snapshot["segments"])),
        ("device, threads", f"{config.device}, {snapshot.get('threads', '?')}"),
    ]
    page.table(pd.DataFrame(rows, columns=["setting", "value"]).astype(str))
    (folder / "README.md").write_text(page.markdown(), encoding="utf-8")
    (folder / "index.html").write_text(page.html(), encoding="utf-8")
    return [block[1] for block in page.blocks if block[0] == "img"]


def _verdict(result: Replay) -> str:
    """Return the report's first line: whether the step came out as the run computed it."""
    if result.reproduced:
        return (
            f"Reproduced bit for bit: loss {result.loss:.6g} and pre-clip gradient norm "
            f"{result.grad_norm:.6g} equal what the run recorded, and two recomputations agree "
            "on the loss and every gradient tensor."
        )
    failed = "; ".join(f"{c.what}: {c.expected} vs {c.got}" for c in result.checks if not c.equal)
    return (
        f"NOT reproduced ({failed}). Bit-for-bit replay needs the machine, torch version and "
        "thread count of the run."
    )


def _findings(probe: ProbePass, snapshot: dict[str, Any]) -> list[str]:
    """Return one line per finding: where along t, in which units, and how strong J_t is."""
    tables, lines = probe.tables, []
    adjoints = tables.get("adjoints")
    T = int(snapshot["batch"]["inputs"].shape[1])
    for layer, (delta, grad) in enumerate(zip(probe.deltas, probe.w_hh_grads, strict=True)):
        assert adjoints is not None  # filed for every layer of every backward pass
        one = adjoints[adjoints["layer"] == layer].sort_values("t")
        lines += _time_findings(layer, one)
        lines += _unit_findings(layer, delta, grad)
    for layer, row in _per_layer(tables.get("weights")):
        sv = tables["spectra"]
        jac = sv[(sv["layer"] == layer) & (sv["quantity"] == "jacobian_singular")]
        jac = jac[jac["index"] == 0]["value"]
        lines.append(
            f"layer {layer}: σ_max(W_hh) = {row['sigma_max']:.3g}, ρ(W_hh) = "
            f"{row['spectral_radius']:.3g}; ‖J_t‖₂ over {len(jac)} sampled (t, b): mean "
            f"{jac.mean():.3g}, max {jac.max():.3g}"
        )
    lyapunov = tables.get("lyapunov")
    if lyapunov is not None:
        for layer, row in _per_layer(lyapunov[lyapunov["index"] == 0]):
            lam = float(row["exponent"])
            if lam == -math.inf:
                lines.append(
                    f"layer {layer}: λ₁ = −inf: every direction is cut at some step (φ′ = 0: "
                    "saturated tanh or inactive ReLU units)"
                )
                continue
            lines.append(
                f"layer {layer}: λ₁ = {lam:.3g} nats per time step: a perturbation of h changes "
                f"×{math.exp(lam):.3g} per step, ×{math.exp(min(lam * T, 700)):.3g} over T = {T}"
            )
    if probe.overflow:
        lines += probe.overflow
        lines.append("the hidden states are not finite: no spectra, Lyapunov or hidden statistics")
    return lines


def _time_findings(layer: int, adjoints: pd.DataFrame) -> list[str]:
    """Return the lines on ‖δ_t‖ along t and on the steps that make up ∇W_hh."""
    import numpy as np

    norms, t = adjoints["adjoint_norm"].to_numpy(float), adjoints["t"].to_numpy(int)
    good, lines = np.isfinite(norms) & (norms > 0), []
    if good.sum() >= 2:
        hi = int(np.argmax(np.where(good, norms, -np.inf)))
        lo = int(np.argmin(np.where(good, norms, np.inf)))
        slope = np.polyfit(t[good], np.log(norms[good]), 1)[0]
        lines.append(
            f"layer {layer}: ‖δ_t‖ (batch mean) runs from {norms[lo]:.3g} at t = {t[lo]} to "
            f"{norms[hi]:.3g} at t = {t[hi]}; a fit of ln ‖δ_t‖ gives ×{math.exp(-slope):.3g} "
            "per step back in time (above 1: it grows on its way back)"
        )
    if (~np.isfinite(norms)).any():
        bad = int((~np.isfinite(norms)).sum())
        lines.append(f"layer {layer}: ‖δ_t‖ is not finite at {bad} of {len(norms)} steps")
    shares = adjoints["grad_w_hh_norm"].to_numpy(float)
    if np.isfinite(shares).all() and shares.sum() > 0:
        top = [i for i in np.argsort(-shares)[:3] if shares[i] >= 0.01 * shares.sum()]
        parts = ", ".join(f"t = {t[i]} ({shares[i] / shares.sum():.0%})" for i in top)
        lines.append(f"layer {layer}: ∇W_hh comes most from {parts} of Σ_t ‖g_tᵀ h_{{t−1}}‖_F")
    return lines


def _unit_findings(layer: int, delta: torch.Tensor, grad: torch.Tensor) -> list[str]:
    """Return the lines on the units that carry ∇W_hh and the largest adjoints."""
    import torch

    rows = grad.double().square().sum(1)  # (H,): ‖∇W_hh[i, :]‖², summing to ‖∇W_hh‖_F²
    lines = []
    total = float(rows.sum())
    if math.isfinite(total) and total > 0:
        order = torch.argsort(rows, descending=True)
        k = int((torch.cumsum(rows[order], 0) / total < 0.5).sum()) + 1
        first = f"unit {int(order[0])}: {float(rows[order[0]] / total):.0%}"
        if k == 1:
            lines.append(f"layer {layer}: one row of ∇W_hh carries most of ‖∇W_hh‖_F², {first}")
        else:
            named = ", ".join(str(int(i)) for i in order[: min(k, 8)]) + (" …" if k > 8 else "")
            lines.append(
                f"layer {layer}: {k} of {len(rows)} units carry half of ‖∇W_hh‖_F² (units "
                f"{named}; the largest row, {first})"
            )
    rms = delta.double().square().mean((0, 1)).sqrt()  # (H,) over t and the batch
    if torch.isfinite(rms).all():
        top = torch.argsort(rms, descending=True)[:3]
        lines.append(
            f"layer {layer}: largest |δ_t,i| (RMS over t and batch): "
            + ", ".join(f"unit {int(i)} ({float(rms[i]):.3g})" for i in top)
        )
    return lines


def _per_layer(table: pd.DataFrame | None) -> list[tuple[int, pd.Series]]:
    if table is None or table.empty:
        return []
    return [(int(row["layer"]), row) for _, row in table.sort_values("layer").iterrows()]


def _unit_frames(layer: int, probe: ProbePass) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (|δ| by t and unit, ∇W_hh row norms) of the TOP_UNITS largest ∇W_hh rows."""
    import pandas as pd
    import torch

    grad = probe.w_hh_grads[layer].double()
    rows = grad.square().sum(1)
    ranked = torch.nan_to_num(rows, nan=-1.0, posinf=float("inf"))
    units = torch.argsort(ranked, descending=True)[:TOP_UNITS]
    total = float(rows.sum())
    gradients = pd.DataFrame(
        {
            "unit": units.numpy(),
            "row_norm": rows[units].sqrt().numpy(),
            "share": (rows[units] / total).numpy() if total > 0 else float("nan"),
        }
    )
    heat = probe.deltas[layer].double().abs().mean(1)[:, units]  # (T, units)
    start = probe.offsets[0] if probe.offsets else 0
    T = heat.shape[0]
    adjoints = pd.DataFrame(
        {
            "t": [start + t for t in range(T) for _ in units],
            "unit": [int(u) for _ in range(T) for u in units],
            "value": heat.reshape(-1).numpy(),
        }
    )
    return adjoints, gradients


def _figures(
    result: Replay, snapshot: dict[str, Any], probe: ProbePass, run_dir: Path | None
) -> Iterator[tuple[str, str, list[Panel], int]]:
    """Yield (file name, caption, panels, columns) of each figure of the report."""
    from rnnprobe.records.store import read_table
    from rnnprobe.report import plots_replay as pr

    tables, step = probe.tables, result.step
    layers = range(min(len(probe.deltas), 3))
    adjoints = tables.get("adjoints")
    cuts = probe.offsets[1:]
    yield (
        "gradient.png",
        "Left: ‖h_t‖ along the sequence, the forward pass (dotted: where h_t stops being "
        "finite). Middle: ‖∂L/∂h_t‖, the backward pass (solid: all paths; dashed: the part the "
        "layer above or the head injects at t). Right: step t's contribution ‖g_tᵀ h_{t−1}‖_F "
        "to ∇W_hh, the three largest labelled.",
        [
            lambda ax: pr.plot_state_norms(probe.states, ax=ax),
            lambda ax: pr.plot_step_adjoints(adjoints, cuts=cuts, ax=ax),
            lambda ax: pr.plot_weight_grad_shares(adjoints, ax=ax),
        ],
        3,
    )
    reach = tables.get("reach")
    spectra, lyapunov = tables.get("spectra"), tables.get("lyapunov")
    panels: list[Panel] = []
    for layer in layers:
        one = reach[reach["layer"] == layer] if reach is not None else None

        def reach_panel(ax: Axes, one: pd.DataFrame | None = one, layer: int = layer) -> None:
            pr.plot_step_reach(one, layer=layer, ax=ax)

        def jacobian_panel(ax: Axes, layer: int = layer) -> None:
            pr.plot_step_jacobian_spectrum(spectra, layer=layer, ax=ax)

        def lyapunov_panel(ax: Axes, layer: int = layer) -> None:
            pr.plot_step_lyapunov(lyapunov, layer=layer, ax=ax)

        panels += [reach_panel, jacobian_panel, lyapunov_panel]
    yield (
        "dynamics.png",
        "Left: how far back each loss term ℓ_s reaches, ‖∂ℓ_s/∂h_t‖ / ‖∂ℓ_s/∂h_s‖ against s − t "
        "(a rising line: the gradient grows going back). Middle: singular values of sampled "
        "one-step Jacobians J_t and of W_hh (above 1: that direction grows per step). Right: "
        "Lyapunov exponents (above 0: perturbations grow along the trajectory).",
        panels,
        3,
    )
    panels = []
    for layer in layers:
        heat, rows = _unit_frames(layer, probe)

        def heat_panel(ax: Axes, heat: pd.DataFrame = heat, layer: int = layer) -> None:
            pr.plot_unit_adjoints(heat, layer=layer, ax=ax)

        def rows_panel(ax: Axes, rows: pd.DataFrame = rows, layer: int = layer) -> None:
            pr.plot_unit_gradients(rows, layer=layer, ax=ax)

        panels += [heat_panel, rows_panel]
    yield (
        "units.png",
        f"The {TOP_UNITS} units with the largest rows of ∇W_hh (their incoming recurrent weights' "
        "gradient), largest first. Left: |∂L/∂h_t,i| by time step. Right: the row norms, each "
        "labelled with its share of ‖∇W_hh‖_F².",
        panels,
        2,
    )
    if run_dir is not None:
        steps, events = read_table(run_dir, "steps"), read_table(run_dir, "events")
        if not steps.empty:
            yield (
                "run.png",
                "The run around the replayed step, as recorded: pre-clip gradient norm and loss; "
                "the first warning dashed, non-finite steps as crosses.",
                [
                    lambda ax: pr.plot_run_until(steps, events, step=step, ax=ax),
                    lambda ax: pr.plot_run_until(steps, events, step=step, value="loss", ax=ax),
                ],
                2,
            )
