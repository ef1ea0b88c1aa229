r"""Explosion early warning while training, and replayable snapshots of the steps it flags.

**Watch.** Every training step already moves one value to the host: whether its loss and
gradients are finite (the guard before the update). With ``--warn`` on (the default) the same
transfer carries the step's loss and pre-clip gradient norm as well — three numbers, still one
sync — and :class:`ExplosionWatch` keeps its running statistics over them on the host; nothing
more runs on the device. The signs (:class:`WarnSpec`, ``config.TrainConfig.warn``), with s the
step, W the window and only finite steps counted:

    grad       median ‖∇θL‖ over the last W steps  >  grad × median over the W before
    loss       L_s  >  loss × m_{s−1},   m = EMA of the loss, α = 2/(W + 1), from W steps on;
               before, from step 2, L_s  >  loss² × m_{s−1} (a blow-up, not early noise)
    lyapunov   λ₁ of a layer (``lyapunov`` rows, index 0)  >  lyapunov    (nats per time step)
    jacobian   mean ‖J_t‖₂ of a layer (``weights.jacobian_norm``)  >  jacobian

The probe signs are read off the rows a flush moves to the host. A value measured at step s is
acted on at step n(s) + 1, n(s) the first step ≥ s that is a multiple of ``flush_every`` or
``checkpoint_every`` (a scheduled flush), whichever flush revealed it: an interrupted and
resumed run warns at the same step as an uninterrupted one. The watch's state is checkpointed.

The run's first warning files an event of kind ``warning`` naming each sign with its numbers;
the first warning and the first non-finite step each write a snapshot.

**Snapshot** ``RUN/snapshots/<step>-<warning|nonfinite>.pt``, written atomically and holding
only tensors and plain data (``torch.load(weights_only=True)`` reads it), keys
:data:`SNAPSHOT_KEYS`: the weights and optimizer state before the step's update, its batch as
the task made it (``inputs``, ``targets``, ``lengths`` or None, ``continues``), the RNG states
it started from (``torch``, ``data``, ``cut``, ``probe``; ``cuda`` on a GPU), the carried state
``h0`` (L, B, H) or None, the BPTT ``segments`` [[start, end], …], the run's ``config``, the
``recorded`` loss and ``grad_norm_pre_clip``, its ``device`` and torch thread count.

Parsing ``--warn`` and the watch need no torch (the CLI refuses a bad value before loading it);
torch is imported inside the functions that use it. The replay of a snapshot is
:mod:`rnnprobe.report.replay`.
"""

from __future__ import annotations

import io
import math
import pickle
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

from rnnprobe.errors import RecordError, RnnprobeError, shorten

if TYPE_CHECKING:
    pass

__all__ = [
    "SNAPSHOT_KEYS",
    "ExplosionWatch",
    "WarnSpec",
    "load_snapshot",
    "save_snapshot",
]

SNAPSHOT_FORMAT, SNAPSHOT_VERSION = "rnnprobe-snapshot", 1
SNAPSHOT_KINDS = ("warning", "nonfinite")
SNAPSHOT_KEYS = (
    "kind",
    "step",
    "config",
    "model",
    "optimizer",
    "batch",
    "h0",
    "segments",
    "rng",
    "recorded",
)
_SPEC_HELP = (
    "use on, none, or key=value[,…] with keys window, grad, loss, lyapunov, jacobian "
    "(e.g. grad=5,window=10,lyapunov=off)"
)


# -- the watch ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WarnSpec:
    """What ``--warn`` asks for; see ``config.TrainConfig.warn`` for the syntax. None: off."""

    window: int = 20  # W: optimizer steps per median, and the loss EMA's span
    grad: float | None = 10.0  # factor between the medians of the last W and the W before
    loss: float | None = 4.0  # factor over the running mean of the loss
    lyapunov: float | None = 0.1  # λ₁ threshold, nats per time step
    jacobian: float | None = 3.0  # threshold on the mean ‖J_t‖₂ of a spectra firing

    @classmethod
    def parse(cls, spec: str) -> WarnSpec | None:
        """Return the spec written as ``none`` (None), ``on`` or ``key=value[,…]``."""
        text = str(spec).strip()
        if text in ("none", "off"):
            return None
        values: dict[str, Any] = {}
        names = [f.name for f in fields(cls)]
        for item in (part.strip() for part in text.split(",")):
            if item == "on":
                continue
            key, sep, raw = (s.strip() for s in item.partition("="))
            if not sep or key not in names:
                raise RnnprobeError(f"invalid warn item {item!r}; {_SPEC_HELP}")
            values[key] = _warn_value(key, raw)
        return cls(**values)


def _warn_value(key: str, raw: str) -> int | float | None:
    """Return one ``--warn`` value, checked: a one-line error names the rule it breaks."""
    if raw == "off" and key != "window":
        return None
    try:
        value = int(raw) if key == "window" else float(raw)
    except ValueError:
        kind = "a whole number" if key == "window" else "a number or off"
        raise RnnprobeError(f"warn {key} must be {kind}, got {raw!r}") from None
    if key == "window" and not 2 <= value <= 10_000:
        raise RnnprobeError(f"warn window must lie in [2, 10000] steps, got {value}")
    if not math.isfinite(value) or abs(value) >= 1e30:
        raise RnnprobeError(f"warn {key} must be a finite number below 1e30, got {raw}")
    if key in ("grad", "loss") and not value > 1:
        raise RnnprobeError(f"warn {key} is a factor and must exceed 1, got {value}")
    if key == "jacobian" and not value > 0:
        raise RnnprobeError(f"warn jacobian must be positive, got {value}")
    return value


class ExplosionWatch:
    """Running statistics of a run's loss and gradient norm, and the signs of a blow-up.

    Fed the numbers each step moves to the host anyway (:meth:`observe`) and the probe rows of
    each flush (:meth:`observe_probes`); holds plain data only (:meth:`state`).
    """

    def __init__(self, spec: WarnSpec, flush_every: tuple[int, ...]) -> None:
        self.spec, self.flush_every = spec, flush_every
        self.norms: deque[tuple[int, float]] = deque(maxlen=2 * spec.window)  # (step, ‖∇‖)
        self.loss_mean, self.losses = math.nan, 0  # EMA of the finite losses, and their count
        self.pending: list[tuple[int, str]] = []  # (step to raise it at, sign) from probes
        self.warned = self.nonfinite_seen = False

    @property
    def done(self) -> bool:
        """Whether both snapshots are behind: the loop no longer needs the watch."""
        return self.warned and self.nonfinite_seen

    def observe(self, step: int, finite: bool, loss: float, grad_norm: float) -> str | None:
        """Return the run's first warning if ``step`` raises it; fold the step in."""
        signs = [sign for due, sign in self.pending if due <= step]
        self.pending = [(due, sign) for due, sign in self.pending if due > step]
        if finite and not self.warned:
            signs += self._step_signs(step, loss, grad_norm)
        if not signs or self.warned:
            return None
        self.warned = True
        return "; ".join(signs)

    def _step_signs(self, step: int, loss: float, grad_norm: float) -> list[str]:
        spec, signs = self.spec, []
        W = spec.window
        self.norms.append((step, grad_norm))
        if spec.grad is not None and len(self.norms) == 2 * W:
            older, recent = list(self.norms)[:W], list(self.norms)[W:]
            before, now = median(n for _, n in older), median(n for _, n in recent)
            if now > spec.grad * before:
                signs.append(
                    f"gradient norm rising: median {now:.4g} over steps {recent[0][0]}–"
                    f"{recent[-1][0]} is {now / before:.3g}× the median {before:.4g} over steps "
                    f"{older[0][0]}–{older[-1][0]} (threshold {spec.grad:g}×)"
                )
        mean = self.loss_mean
        # the EMA settles over W steps; before that only a gross jump counts
        factor = None if spec.loss is None else spec.loss if self.losses >= W else spec.loss**2
        if factor is not None and self.losses >= 1 and mean > 0 and loss > factor * mean:
            signs.append(
                f"loss spike: {loss:.4g} is {loss / mean:.3g}× its running mean {mean:.4g} "
                f"(threshold {factor:g}×{'' if self.losses >= W else f' in its first {W} steps'})"
            )
        alpha = 2 / (W + 1)
        self.loss_mean = loss if self.losses == 0 else mean + alpha * (loss - mean)
        self.losses += 1
        return signs

    def observe_probes(self, table: str, columns: Mapping[str, Any]) -> None:
        """Note λ₁ (``lyapunov``) or mean ‖J_t‖₂ (``weights``) rows above their thresholds."""
        spec = self.spec
        if self.warned:
            return
        if table == "lyapunov" and spec.lyapunov is not None:
            column, threshold = "exponent", spec.lyapunov
            text = "λ₁ {value:.3g} nats per time step > {threshold:g} (layer {layer}, Lyapunov"
        elif table == "weights" and spec.jacobian is not None:
            column, threshold = "jacobian_norm", spec.jacobian
            text = "mean ‖J_t‖₂ {value:.3g} > {threshold:g} (layer {layer}, spectra"
        else:
            return
        rows = zip(columns["step"], columns["layer"], columns[column], strict=True)
        first = columns.get("index")
        for i, (step, layer, value) in enumerate(rows):
            if (first is not None and first[i] != 0) or not value > threshold:  # NaN: no sign
                continue
            due = min(-(-int(step) // every) * every for every in self.flush_every) + 1
            line = text.format(value=float(value), threshold=threshold, layer=int(layer))
            self.pending.append((due, f"{line} probe at step {int(step)})"))

    def first_nonfinite(self) -> bool:
        """Return True the first time it is called: the run's first non-finite step."""
        first, self.nonfinite_seen = not self.nonfinite_seen, True
        return first

    def state(self) -> dict[str, Any]:
        """Return the watch's state as plain data (a checkpoint's ``warn`` entry)."""
        return {
            "norms": [[step, norm] for step, norm in self.norms],
            "loss_mean": self.loss_mean,
            "losses": self.losses,
            "pending": [[due, sign] for due, sign in self.pending],
            "warned": self.warned,
            "nonfinite_seen": self.nonfinite_seen,
        }

    def load_state(self, state: Mapping[str, Any] | None) -> None:
        """Continue from :meth:`state`; None (a checkpoint from before the watch) starts afresh."""
        if state is None:
            return
        self.norms.extend((int(step), float(norm)) for step, norm in state["norms"])
        self.loss_mean, self.losses = float(state["loss_mean"]), int(state["losses"])
        self.pending = [(int(due), str(sign)) for due, sign in state["pending"]]
        self.warned, self.nonfinite_seen = bool(state["warned"]), bool(state["nonfinite_seen"])


# -- snapshot files ----------------------------------------------------------------------------
def save_snapshot(run_dir: Path, record: dict[str, Any]) -> Path:
    """Return the path of ``record`` (:data:`SNAPSHOT_KEYS`) written atomically under
    ``run_dir/snapshots``, as ``<step>-<kind>.pt``."""
    import torch

    from rnnprobe.records.index import write_atomic

    directory = Path(run_dir) / "snapshots"
    directory.mkdir(exist_ok=True)
    target = directory / f"{int(record['step'])}-{record['kind']}.pt"
    buffer = io.BytesIO()
    torch.save({"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, **record}, buffer)
    write_atomic(target, buffer.getvalue())
    return target


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Return the snapshot at ``path``, loaded with ``weights_only=True`` onto the CPU.

    Raises a one-line :class:`RnnprobeError` for a path that is not a snapshot (a checkpoint,
    a file torch.save did not write) and :class:`RecordError` for a damaged or incomplete one
    (a torch.save archive that does not load as a whole snapshot), naming the file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise RnnprobeError(f"{path} is not a file; snapshots are RUN/snapshots/<step>-<kind>.pt")
    with path.open("rb") as file:
        if file.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive; this is none
            raise RnnprobeError(f"{path} is not an rnnprobe snapshot (not a torch.save file)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RecordError(
            f"{path}: holds objects other than tensors and plain data, which rnnprobe never "
            "unpickles"
        ) from None
    except Exception as error:  # torch.load fails in many ways on a damaged file
        reason = shorten(str(error).split(". ")[0]) or type(error).__name__
        raise RecordError(f"{path}: is damaged or not a snapshot ({reason})") from None
    if not isinstance(record, dict) or record.get("format") != SNAPSHOT_FORMAT:
        if isinstance(record, dict) and {"step", "state", "table_parts"} <= record.keys():
            raise RnnprobeError(
                f"{path} is a checkpoint, not a snapshot; snapshots are "
                "RUN/snapshots/<step>-<kind>.pt"
            )
        raise RnnprobeError(f"{path} is not an rnnprobe snapshot")
    if record.get("version") != SNAPSHOT_VERSION:
        raise RecordError(
            f"{path}: snapshot format version {record.get('version')!r}; this rnnprobe reads "
            f"version {SNAPSHOT_VERSION}"
        )
    problem = _snapshot_problem(record)
    if problem:
        raise RecordError(f"{path}: is not a complete rnnprobe snapshot ({problem})")
    return record


def _snapshot_problem(record: dict[str, Any]) -> str | None:
    """Return what is missing or malformed in a loaded snapshot, or None."""
    import torch

    missing = [key for key in SNAPSHOT_KEYS if key not in record]
    if missing:
        return f"no {', '.join(missing)}"
    step, kind, batch, rng = record["step"], record["kind"], record["batch"], record["rng"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        return f"step {step!r}"
    if kind not in SNAPSHOT_KINDS:
        return f"kind {kind!r}"
    if not isinstance(record["config"], dict) or not isinstance(record["model"], dict):
        return "config or weights are not dicts"
    if not all(isinstance(t, torch.Tensor) for t in record["model"].values()):
        return "weights that are not tensors"
    if not isinstance(batch, dict) or not all(
        isinstance(batch.get(k), torch.Tensor) for k in ("inputs", "targets")
    ):
        return "no batch inputs and targets"
    if not isinstance(rng, dict) or not all(
        isinstance(rng.get(k), torch.Tensor) for k in ("torch", "data", "cut", "probe")
    ):
        return "no RNG states"
    segments = record["segments"]
    if not isinstance(segments, list) or not all(
        isinstance(s, list | tuple) and len(s) == 2 for s in segments
    ):
        return "segments are not [start, end] pairs"
    recorded = record["recorded"]
    if not isinstance(recorded, dict) or not {"loss", "grad_norm_pre_clip"} <= recorded.keys():
        return "no recorded loss and gradient norm"
    return None
