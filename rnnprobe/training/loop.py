"""One training run, end to end: a plain loop, its callback points, its records.

:class:`Trainer` builds the run (:func:`setup.build_run`), then for each step draws a batch,
runs :func:`step.train_step` with the probes that fire (:class:`probing.Probing`) and
calls its callbacks at named points: ``on_start`` once, ``on_step_end`` after every step,
``on_eval`` after a validation, ``on_flush`` when records move to the host, ``on_checkpoint``
after a checkpoint and ``on_end`` once. The progress bar is such a callback; a user's own go to
``train_run(..., callbacks=[...])``.

Records go to the run directory through ``records.store.RunStore``: values stay on the device
and move to the host once per flush interval (``flush_every`` steps); a checkpoint follows
every ``checkpoint_every`` steps, so a killed run loses at most that much and resumes with the
same RNG state. The only per-step host sync is the guard that keeps non-finite gradients out
of the weights.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import FrameType
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from rnnprobe.core.denormals import flush_denormals
from rnnprobe.data.tasks import Batch
from rnnprobe.errors import RnnprobeError
from rnnprobe.records.index import is_run_dir, read_status
from rnnprobe.records.lock import DirectoryLock
from rnnprobe.records.store import RunStore, check_run_dir, load_run
from rnnprobe.training.batch import BatchResult
from rnnprobe.training.callbacks import Callback, ProgressBar
from rnnprobe.training.config import RunConfig, config_from_dict
from rnnprobe.training.evaluation import evaluate
from rnnprobe.training.flosser import Flosser
from rnnprobe.training.flossing import FlossSpec
from rnnprobe.training.graphs import StepGraphs
from rnnprobe.training.graphs import wanted as graphs_wanted
from rnnprobe.training.probing import Probing
from rnnprobe.training.setup import build_run
from rnnprobe.training.step import RnnCall, StepResult, train_step
from rnnprobe.training.warning import ExplosionWatch, WarnSpec, save_snapshot

__all__ = [
    "RunResult",
    "Trainer",
    "resume_config",
    "tokens_per_second",
    "train_run",
]


@dataclass(frozen=True)
class RunResult:
    """How a run ended: ``status`` done or diverged (Ctrl-C and failures raise), and where."""

    status: str
    run_dir: Path
    steps_done: int
    message: str


class Trainer:
    """One run's state and its loop; ``run()`` trains to ``train.steps`` or gives up."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path | None,
        resume: bool,
        progress: bool,
        *,
        records: bool = True,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        """``records=False`` builds the run without a directory: ``replay_step`` only."""
        self.config, self.progress, self.callbacks = config, progress, list(callbacks)
        self.parts = parts = build_run(config)
        self.probing = Probing(config.probes, parts.rnn, config.seed)
        spec = FlossSpec.parse(config.train.floss, config.model.hidden_size)
        self.flosser = Flosser(spec, parts) if spec is not None else None
        self.graphs: StepGraphs | None = None
        if graphs_wanted() and StepGraphs.usable(parts):
            self.graphs = StepGraphs(parts, on_failure=self._graph_failed)
        self.step, self.seconds, self.tokens, self.nonfinite_run = 0, 0.0, 0, 0
        self.h: torch.Tensor | None = None
        self.diverged = self.mid_step = False
        # the explosion early warning (warning.py): statistics over the one sync's numbers
        warn = WarnSpec.parse(config.train.warn) if records else None
        every = (config.flush_every, config.checkpoint_every)
        self.watch = ExplosionWatch(warn, every) if warn is not None else None
        self.store: RunStore | None = None  # None: a replay of one step, without records
        if records and resume and run_dir is not None and is_run_dir(run_dir):
            self.store = RunStore.open_for_resume(run_dir)
            self._restore()
        elif records:
            assert run_dir is not None, "a run with records needs a directory"
            self.store = RunStore.create(run_dir, config.to_dict())
            self._record_start()
        # pre-flossing runs once, before step 1: not again after resuming from a checkpoint
        fresh = self.store is not None and self.store.checkpoint is None
        self.pre_floss_due = bool(self.flosser and self.flosser.spec.pre) and fresh
        self.batches: Iterator[Batch] = parts.task.batches(
            config.train.batch_size, parts.data_generator
        )
        if parts.carries_state:
            self.batches = islice(self.batches, self.step, None)  # the streams' position

    @property
    def run_store(self) -> RunStore:
        """The run's store (a replay has none)."""
        assert self.store is not None, "a replay writes no records"
        return self.store

    def _graph_failed(self, message: str) -> None:
        self.probing.rows.add("events", step=self.step, kind="graph_failed", message=message)

    # -- records -------------------------------------------------------------------------
    def _record_start(self) -> None:
        task, first = self.parts.task, self.parts.eval_batches[0]
        self.run_store.append(
            "task",
            {
                "name": task.name,
                "kind": task.kind,
                "metric": task.metric,
                "seq_len": int(task.steps),  # T of training (a short validation split's is less)
                "baseline_loss": float(task.baseline_loss),
                "baseline_metric": float(task.baseline_metric),
                "baseline_description": task.baseline_description,
                "parameters": sum(p.numel() for p in self.parts.params),
            },
        )
        classes = task.class_rows()
        if classes is not None:
            self.run_store.append("classes", classes)
        first = first.to(self.parts.device)
        with torch.no_grad():
            x = (
                first.inputs.to(self.parts.dtype)
                if task.input_kind == "features"
                # token tasks' models have an nn.Embedding; nn.Module's stubs cannot know it
                else cast(nn.Embedding, self.parts.model.embedding)(first.inputs)
            )
        self.probing.record_init(float(x.square().mean()))

    def _flush(self) -> None:
        tables = {}
        for table, blocks in self.probing.rows.drain().items():
            columns = {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}
            if self.watch is not None:  # λ₁ and ‖J_t‖ against their thresholds, no sync either
                self.watch.observe_probes(table, columns)
            self.run_store.append(table, columns)
            tables[table] = columns
        self.run_store.flush()
        for callback in self.callbacks:
            callback.on_flush(self, tables)

    def _checkpoint(self) -> bool:
        """Flush and save a checkpoint; refuse (return False) if any state is not finite."""
        self._flush()
        self.run_store.set_status("running", self.step)
        parts = self.parts
        state = {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "data_rng": parts.data_generator.get_state(),
            "cut_rng": parts.cut_generator.get_state(),
            "probe_rng": self.probing.generator.get_state(),
            "seconds": self.seconds,
            "tokens": self.tokens,
            "nonfinite_run": self.nonfinite_run,
            "h": self.h if self.h is not None else torch.empty(0),
        }
        if self.watch is not None:  # plain data: the watch's statistics and what it has done
            state["warn"] = self.watch.state()
        if hasattr(parts.task, "corpus"):
            state["vocab"] = list(parts.task.corpus.vocab.tokens)
        saved = _all_finite(state)
        if saved:
            self.run_store.save_checkpoint(state, self.step)
        else:  # an update overflowed: keep the last good checkpoint
            message = "weights or optimizer state not finite"
            self.run_store.append(
                "events", {"step": self.step, "kind": "nonfinite", "message": message}
            )
        for callback in self.callbacks:
            callback.on_checkpoint(self)
        return saved

    def _restore(self) -> None:
        checkpoint, parts = self.run_store.checkpoint, self.parts
        if checkpoint is None:  # killed before its first checkpoint: start over
            self.run_store.append("events", {"step": 0, "kind": "resumed", "message": "from start"})
            self._record_start()
            return
        state = checkpoint.state
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        parts.data_generator.set_state(state["data_rng"])
        parts.cut_generator.set_state(state["cut_rng"])
        self.probing.generator.set_state(state["probe_rng"])
        self.step, self.seconds = checkpoint.step, float(state["seconds"])
        self.tokens, self.nonfinite_run = int(state["tokens"]), int(state["nonfinite_run"])
        h = state["h"]
        self.h = h.to(parts.device, parts.dtype) if h.numel() else None
        if self.watch is not None:  # absent from checkpoints of runs without the watch
            self.watch.load_state(state.get("warn"))
        for reason in self.run_store.recovered:
            self.run_store.append(
                "events", {"step": self.step, "kind": "recovered", "message": f"skipped {reason}"}
            )
        self.run_store.append(
            "events",
            {"step": self.step, "kind": "resumed", "message": f"from checkpoint {self.step}"},
        )

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train to ``train.steps``; return how the run ended (Ctrl-C: checkpoint, re-raise).

        The CPU threads' subnormal mode is the run's from before it starts (a refusal leaves
        the run's status as it was) until after its last records are written."""
        with flush_denormals(self.config.train.flush_denormals, self.parts.device):
            return self._run()

    def _run(self) -> RunResult:
        cfg, store = self.config.train, self.run_store
        store.set_status("running", self.step)
        for callback in self.callbacks:
            callback.on_start(self)
        if self.progress:  # after the others' start: a line they print comes before the bar
            self.callbacks.append(ProgressBar(cfg.steps, self.step, clipping=cfg.clip != "none"))
        status, message = "done", ""
        try:
            with _interrupts_between_steps() as interrupted:
                self._loop(interrupted)
        except KeyboardInterrupt:
            if not self.mid_step:  # a second Ctrl-C that cut a step keeps the last checkpoint
                # the event goes in before the checkpoint, whose records a resume keeps
                message = "stopped between steps by Ctrl-C or a termination signal"
                store.append(
                    "events", {"step": self.step, "kind": "interrupted", "message": message}
                )
                self._checkpoint()
            store.set_status("interrupted", self.step)
            self._end("interrupted")
            raise
        except Exception:  # train_run records the failure; the callbacks still hear the end
            self._end("failed")
            raise
        if not self._checkpoint():
            self.diverged = True
        if self.diverged:
            status = "diverged"
            message = f"non-finite loss, gradients or weights at step {self.step}"
            store.append("events", {"step": self.step, "kind": "diverged", "message": message})
            store.flush()
        store.set_status(status, self.step, message or None)
        store.close()
        self._end(status)
        return RunResult(status, store.path, self.step, message)

    def _end(self, status: str) -> None:
        for callback in self.callbacks:
            callback.on_end(self, status)

    def _loop(self, interrupted: threading.Event) -> None:
        cfg = self.config.train
        if self.pre_floss_due:  # a Ctrl-C that cuts it leaves no checkpoint: it reruns
            assert self.flosser is not None
            self.mid_step = True
            self.flosser.pre_floss(self.probing.rows)
            self.mid_step = self.pre_floss_due = False
        while self.step < cfg.steps:
            if interrupted.is_set():  # Ctrl-C arrived during the last step: stop between steps
                raise KeyboardInterrupt
            self.mid_step = True
            result = self._train_step()
            self.mid_step = False
            self.run_store.heartbeat()
            for callback in self.callbacks:
                callback.on_step_end(self, result)
            if self.diverged:
                return
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                evaluate(self.parts, self.step, self.probing.rows)
                for callback in self.callbacks:
                    callback.on_eval(self)
            if self.step % self.config.checkpoint_every == 0:
                if not self._checkpoint():
                    self.diverged = True
                    return
            elif self.step % self.config.flush_every == 0:
                self._flush()
                self.run_store.set_status("running", self.step)

    def _train_step(self) -> StepResult:
        """Run one optimizer step and file its rows; set ``diverged`` when the run must stop.
        Its time (probes included) counts in ``seconds`` and in its own ``steps`` row."""
        start = time.perf_counter()
        cfg, parts, probes = self.config.train, self.parts, self.probing
        self.step += 1
        step = self.step
        fired = probes.firing(step, cfg.steps)
        watching = self.watch is not None and not self.watch.done
        rng = self._rng_states() if watching else None  # as the step finds them: a snapshot's
        raw = next(self.batches)
        batch = parts.on_device(raw)
        segments = list(parts.truncation.segments(batch.inputs.shape[1], parts.cut_generator))
        h0 = self.h if batch.continues else None
        flossing = self.flosser is not None and self.flosser.fires(step)

        def add_gradients(result: BatchResult, calls: list[RnnCall]) -> None:
            if "truncation" in fired and parts.truncation.mode != "full":  # the task loss's
                probes.record_truncation_bias(step, parts, batch, h0)
            if flossing:  # before clipping: the clip and the finite guard see ∇(L + weight·P)
                assert self.flosser is not None
                self.flosser.add_gradients(calls, step, self.flosser.spec.weight, probes.rows)

        def is_finite(finite: torch.Tensor, result: BatchResult, pre: torch.Tensor) -> bool:
            if not watching:
                return bool(finite)  # the one sync
            # the watch's loss and gradient norm ride the same transfer
            assert rng is not None  # taken whenever the watch is on
            return self._watch_step(finite, result.loss, pre, (raw, segments, h0, rng))

        extra_pass = flossing or ("truncation" in fired and parts.truncation.mode != "full")
        result = train_step(
            parts,
            batch,
            segments,
            h0,
            step=step,
            fired=fired,
            probing=probes,
            record_calls=flossing,
            add_gradients=add_gradients if extra_pass else None,
            is_finite=is_finite,
            graphs=self.graphs,
        )
        self.tokens += result.tokens
        # A state that went non-finite is never carried on (nor checkpointed): start afresh.
        self.h = result.batch.h_n if result.finite else None
        if result.finite:
            self.nonfinite_run = 0
        else:
            self.nonfinite_run += 1
            message = "update skipped" + (", carried state reset" if parts.carries_state else "")
            probes.rows.add("events", step=step, kind="nonfinite", message=message)
        self.seconds += time.perf_counter() - start
        probes.rows.add(
            "steps",
            step=step,
            loss=result.batch.loss,
            metric=result.batch.metric,
            grad_norm_pre_clip=result.grad_norm_pre_clip,
            grad_norm_post_clip=result.grad_norm_post_clip,
            clipped=result.grad_norm_post_clip < result.grad_norm_pre_clip,
            skipped=not result.finite,
            lr=parts.optimizer.param_groups[0]["lr"],
            tokens=self.tokens,
            seconds=self.seconds,
        )
        if not result.finite:
            self.diverged = cfg.on_nonfinite == "stop" or self.nonfinite_run >= cfg.max_nonfinite
        return result

    # -- explosion early warning and replay (warning.py, report/replay.py) ---------------
    def _rng_states(self) -> dict[str, torch.Tensor]:
        """Return the RNG states a step starts from (probe: taken when a snapshot is written,
        since no probe draws before the step's sync)."""
        parts = self.parts
        states = {
            "torch": torch.get_rng_state(),
            "data": parts.data_generator.get_state(),
            "cut": parts.cut_generator.get_state(),
        }
        if parts.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(parts.device)
        return states

    def _watch_step(
        self,
        finite: torch.Tensor,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        snapshot: tuple[
            Batch, list[tuple[int, int]], torch.Tensor | None, dict[str, torch.Tensor]
        ],  # _snapshot's raw, segments, h0 and rng
    ) -> bool:
        """Return whether the step is finite, read in the step's one sync together with its
        loss and pre-clip gradient norm; file the first warning, and write the snapshots of
        the first warning and the first non-finite step (the weights are not yet updated)."""
        assert self.watch is not None
        numbers = torch.stack([finite.double(), loss.double(), grad_norm.double()])
        finite_flag, loss_value, norm_value = numbers.tolist()  # the one sync
        is_finite = finite_flag == 1.0
        step, watch = self.step, self.watch
        recorded = {"loss": loss_value, "grad_norm_pre_clip": norm_value}
        message = watch.observe(step, is_finite, loss_value, norm_value)
        if message is not None:
            path = self._snapshot("warning", *snapshot, recorded, message)
            where = path.relative_to(self.run_store.path)
            message = f"{message}; snapshot {where} (rnnprobe replay)"
            self.probing.rows.add("events", step=step, kind="warning", message=message)
        if not is_finite and watch.first_nonfinite():
            numbers_text = f"loss {loss_value:.4g}, pre-clip gradient norm {norm_value:.4g}"
            reason = f"the first non-finite step ({numbers_text})"
            self._snapshot("nonfinite", *snapshot, recorded, reason)
        return is_finite

    def _snapshot(
        self,
        kind: str,
        raw: Batch,
        segments: list[tuple[int, int]],
        h0: torch.Tensor | None,
        rng: dict[str, torch.Tensor],
        recorded: dict[str, float],
        reason: str,
    ) -> Path:
        """Write the state this step started from (warning.py, SNAPSHOT_KEYS); return its path."""
        parts = self.parts
        record: dict[str, Any] = {
            "kind": kind,
            "step": self.step,
            "reason": reason,
            "config": self.config.to_dict(),
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "batch": {
                "inputs": raw.inputs,
                "targets": raw.targets,
                "lengths": raw.lengths,
                "continues": bool(raw.continues),
            },
            "h0": None if h0 is None else h0.detach(),
            "segments": [[int(start), int(end)] for start, end in segments],
            "rng": {**rng, "probe": self.probing.generator.get_state()},
            "recorded": recorded,
            "device": str(parts.device),
            "threads": torch.get_num_threads(),
        }
        if hasattr(parts.task, "corpus"):
            record["vocab"] = list(parts.task.corpus.vocab.tokens)
        return save_snapshot(self.run_store.path, record)

    def restore_snapshot(
        self, snapshot: dict[str, Any]
    ) -> tuple[Batch, list[tuple[int, int]], torch.Tensor | None]:
        """Put a snapshot's weights, optimizer state, RNG states, step and carried state in
        place; return its batch on the device, its segments and the state h0 it starts from."""
        parts = self.parts
        parts.model.load_state_dict(snapshot["model"])
        parts.optimizer.load_state_dict(snapshot["optimizer"])
        rng = snapshot["rng"]
        torch.set_rng_state(rng["torch"])
        parts.data_generator.set_state(rng["data"])
        parts.cut_generator.set_state(rng["cut"])
        self.probing.generator.set_state(rng["probe"])
        if "cuda" in rng and parts.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], parts.device)
        self.step = int(snapshot["step"]) - 1
        h0 = snapshot["h0"]
        self.h = None if h0 is None else h0.to(parts.device, parts.dtype)
        given = snapshot["batch"]
        raw = Batch(given["inputs"], given["targets"], given["lengths"], given["continues"])
        self.batches = iter([raw])
        segments = [(int(start), int(end)) for start, end in snapshot["segments"]]
        return parts.on_device(raw), segments, self.h if raw.continues else None

    def replay_step(
        self, snapshot: dict[str, Any]
    ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Run the step a snapshot holds again, as training ran it; return its ``steps`` row
        (loss, grad_norm_pre_clip, …) and the gradients its update used (after clipping)."""
        self.restore_snapshot(snapshot)
        self.probing.rows.drain()  # rows of an earlier replay
        self._train_step()
        gradients = {
            name: p.grad.detach().clone()
            for name, p in self.parts.model.named_parameters()
            if p.grad is not None
        }
        steps = self.probing.rows.drain()["steps"][0]
        return {name: values[0].item() for name, values in steps.items()}, gradients


def _all_finite(state: object) -> bool:
    """Return whether every floating-point tensor in a nested state is finite (one sync)."""
    tensors = []

    def visit(item: object) -> None:
        if isinstance(item, torch.Tensor):
            if item.is_floating_point() and item.numel():
                tensors.append(torch.isfinite(item).all())
        elif isinstance(item, dict):
            for value in item.values():
                visit(value)
        elif isinstance(item, list | tuple):
            for value in item:
                visit(value)

    visit(state)
    return bool(torch.stack(tensors).all()) if tensors else True


@contextmanager
def _interrupts_between_steps() -> Iterator[threading.Event]:
    """Yield an event set by the first SIGINT or SIGTERM, so a step is never cut in half.

    A second signal interrupts at once. Outside the main thread signals cannot be caught;
    there the event simply never fires.
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()

    previous_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def train_run(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train one run into ``run_dir``; with ``resume``, continue the run that is there.

    ``callbacks`` are called at the loop's named points (:class:`Callback`).
    """
    run_dir = Path(run_dir)
    if resume:
        check_run_dir(run_dir)
    created = not run_dir.exists()
    lock = DirectoryLock(run_dir, "--out").acquire()  # one writer per run, until we return
    trainer = None
    try:
        if resume:
            status = read_status(run_dir)
            if status.get("status") in ("done", "diverged"):
                return RunResult(status["status"], run_dir, int(status["step"]), "already finished")
        trainer = Trainer(config, run_dir, resume, progress, callbacks=callbacks)
        return trainer.run()
    except (RnnprobeError, KeyboardInterrupt):
        raise
    except Exception as error:  # a bug or a numerical failure: record it, then re-raise
        if trainer is not None and trainer.store is not None:
            with suppress(OSError):
                trainer.store.set_status("failed", trainer.step, f"{type(error).__name__}: {error}")
        raise
    finally:
        lock.release()
        if created and trainer is None:  # refused before writing anything: leave no trace
            with suppress(OSError):
                lock.path.unlink()
                run_dir.rmdir()


def resume_config(run_dir: str | Path) -> RunConfig:
    """Return the config stored in ``run_dir``, or a one-line error if it is not a run."""
    return config_from_dict(load_run(run_dir, tables=()).config)


def tokens_per_second(run_dir: str | Path) -> float:
    """Return the run's training throughput from its step records."""
    steps = load_run(run_dir, tables=("steps",)).table("steps")
    if steps.empty:
        return float("nan")
    return float(steps["tokens"].iloc[-1] / max(steps["seconds"].iloc[-1], 1e-9))
