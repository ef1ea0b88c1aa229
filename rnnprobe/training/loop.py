"""One training run, end to end: a plain loop whose probes fire on their schedules.

Records go to the run directory through ``store.RunStore``: values stay on the device and
move to the host once per flush interval (``flush_every`` steps); a checkpoint follows every
``checkpoint_every`` steps, so a killed run loses at most that much and resumes with the same
RNG state. The only per-step host sync is the guard that keeps non-finite gradients out of
the weights.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rnnprobe.core.capture import capture
from rnnprobe.core.device import resolve_device
from rnnprobe.core.initialisation import init_recurrent_weights
from rnnprobe.core.models import ElmanRNN
from rnnprobe.data.tasks import Batch, Task, task_from_config
from rnnprobe.data.truncation import Truncation
from rnnprobe.errors import RnnprobeError
from rnnprobe.probes.lyapunov import initial_frame
from rnnprobe.probes.truncation_bias import truncation_bias
from rnnprobe.records.lock import DirectoryLock
from rnnprobe.records.store import RunStore, is_run_dir, load_run, read_status
from rnnprobe.training.batch import build_model, run_batch
from rnnprobe.training.config import RunConfig, config_from_dict, derived_seed
from rnnprobe.training.flossing import FlossSpec, floss_layers
from rnnprobe.training.memory import check_fits, estimate_run
from rnnprobe.training.probing import Instruments
from rnnprobe.training.warning import ExplosionWatch, WarnSpec, save_snapshot

DTYPES = {"float32": torch.float32, "float64": torch.float64}
PROGRESS_STEPS = 50  # the bar's loss and clip rate are over this many recent recorded steps


@dataclass(frozen=True)
class RunResult:
    status: str  # done | diverged | failed | interrupted
    run_dir: Path
    steps_done: int
    message: str


def make_task_from_config(config: RunConfig) -> Task:
    """Return the task a run's config names, built by its registered factory (tasks.py)."""
    return task_from_config(config)


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    cfg, params = config.train, model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    kinds = {
        "adam": torch.optim.Adam,
        "rmsprop": torch.optim.RMSprop,
        "adagrad": torch.optim.Adagrad,
    }
    return kinds[cfg.optimizer](params, lr=cfg.lr)


def _clip(params: list[torch.Tensor], mode: str, value: float):
    """Clip gradients in place; return (pre-clip norm, post-clip norm) as 0-d device tensors."""
    if mode == "norm":
        pre = torch.nn.utils.clip_grad_norm_(params, value, foreach=True)
        return pre, pre * torch.clamp(value / (pre + 1e-6), max=1.0)
    pre = torch.nn.utils.clip_grad_norm_(params, math.inf, foreach=True)
    if mode == "none":
        return pre, pre
    torch.nn.utils.clip_grad_value_(params, value, foreach=True)
    return pre, torch.nn.utils.clip_grad_norm_(params, math.inf, foreach=True)


class Trainer:
    """Holds one run's state; ``run()`` trains to ``train.steps`` or gives up."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path | None,
        resume: bool,
        progress: bool,
        *,
        records: bool = True,
    ):
        """``records=False`` builds the run without a directory: ``replay_step`` only."""
        self.config, self.progress = config, progress
        self.device = resolve_device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.task = make_task_from_config(config)
        check_fits(estimate_run(config, self.task), self.device)  # before allocating
        self.truncation = Truncation.parse(config.train.bptt)
        torch.manual_seed(config.seed)
        self.model = build_model(self.task, config.model)
        self.rnn = next(m for m in self.model.modules() if isinstance(m, ElmanRNN))
        init_recurrent_weights(
            self.rnn,
            config.model.init,
            gain=config.model.init_gain,
            radius=config.model.init_radius,
        )
        self.model.to(self.device, self.dtype)
        self.optimizer = make_optimizer(self.model, config)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.cut_generator = torch.Generator().manual_seed(derived_seed(config.seed, 2))
        self.instruments = Instruments(config.probes, self.rnn, config.seed)
        # -- gradient flossing (flossing.py): the spec and its fixed frame Q_0, on the device
        self.floss = FlossSpec.parse(config.train.floss, config.model.hidden_size)
        if self.floss is not None:
            H, seed = config.model.hidden_size, derived_seed(config.seed, 6)
            self.floss_frame = initial_frame(H, self.floss.k, seed=seed, device=self.device)
        # -- end gradient flossing
        self.eval_batches = self.task.eval_batches(
            config.train.batch_size,
            num_batches=config.train.eval_batches,
            seed=derived_seed(config.seed, 3),
        )
        self.step, self.seconds, self.tokens, self.nonfinite_run = 0, 0.0, 0, 0
        self.recent = RecentSteps()
        self.h: torch.Tensor | None = None
        self.diverged = self.mid_step = False
        # -- explosion early warning (replay.py): host statistics over the one sync's numbers
        warn = WarnSpec.parse(config.train.warn) if records else None
        every = (config.flush_every, config.checkpoint_every)
        self.watch = ExplosionWatch(warn, every) if warn is not None else None
        if not records:  # a replay of one step (replay.py): no run directory, no records
            self.store = None
        # -- end explosion early warning
        elif resume and is_run_dir(run_dir):
            self.store = RunStore.open_for_resume(run_dir)
            self._restore()
        else:
            self.store = RunStore.create(run_dir, config.to_dict())
            self._record_start()
        # pre-flossing runs once, before step 1: not again after resuming from a checkpoint
        fresh = self.store is not None and self.store.checkpoint is None
        self.pre_floss_due = bool(self.floss and self.floss.pre) and fresh
        self.batches = self.task.batches(config.train.batch_size, self.data_generator)
        self.carries_state = getattr(self.task, "sampling", "random") == "sequential"
        if self.carries_state:
            self.batches = islice(self.batches, self.step, None)  # the streams' position

    # -- records -------------------------------------------------------------------------
    def _record_start(self) -> None:
        task = self.task
        self.store.append(
            "task",
            {
                "name": task.name,
                "kind": task.kind,
                "metric": task.metric,
                "seq_len": int(self.eval_batches[0].inputs.shape[1]),
                "baseline_loss": float(task.baseline_loss),
                "baseline_metric": float(task.baseline_metric),
                "baseline_description": task.baseline_description,
                "parameters": sum(p.numel() for p in self.params),
            },
        )
        classes = task.class_rows()
        if classes is not None:
            self.store.append("classes", classes)
        first = self.eval_batches[0].to(self.device)
        with torch.no_grad():
            x = (
                first.inputs.to(self.dtype)
                if task.input_kind == "features"
                else (self.model.embedding(first.inputs))
            )
        self.instruments.record_init(float(x.square().mean()))

    def _flush(self) -> None:
        for table, blocks in self.instruments.rows.drain().items():
            columns = {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}
            self.recent.observe(table, columns)  # on the host already: the bar adds no sync
            if self.watch is not None:  # λ₁ and ‖J_t‖ against their thresholds, no sync either
                self.watch.observe_probes(table, columns)
            self.store.append(table, columns)
        self.store.flush()

    def _checkpoint(self) -> bool:
        """Flush and save a checkpoint; refuse (return False) if any state is not finite."""
        self._flush()
        self.store.set_status("running", self.step)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "data_rng": self.data_generator.get_state(),
            "cut_rng": self.cut_generator.get_state(),
            "probe_rng": self.instruments.generator.get_state(),
            "seconds": self.seconds,
            "tokens": self.tokens,
            "nonfinite_run": self.nonfinite_run,
            "h": self.h if self.h is not None else torch.empty(0),
        }
        if self.watch is not None:  # plain data: the watch's statistics and what it has done
            state["warn"] = self.watch.state()
        if hasattr(self.task, "corpus"):
            state["vocab"] = list(self.task.corpus.vocab.tokens)
        if not _all_finite(state):  # an update overflowed: keep the last good checkpoint
            self.store.append(
                "events",
                {
                    "step": self.step,
                    "kind": "nonfinite",
                    "message": "weights or optimizer state not finite",
                },
            )
            return False
        self.store.save_checkpoint(state, self.step)
        return True

    def _restore(self) -> None:
        checkpoint = self.store.checkpoint
        if checkpoint is None:  # killed before its first checkpoint: start over
            self.store.append("events", {"step": 0, "kind": "resumed", "message": "from start"})
            self._record_start()
            return
        state = checkpoint.state
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.data_generator.set_state(state["data_rng"])
        self.cut_generator.set_state(state["cut_rng"])
        self.instruments.generator.set_state(state["probe_rng"])
        self.step, self.seconds = checkpoint.step, float(state["seconds"])
        self.tokens, self.nonfinite_run = int(state["tokens"]), int(state["nonfinite_run"])
        h = state["h"]
        self.h = h.to(self.device, self.dtype) if h.numel() else None
        if self.watch is not None:  # absent from checkpoints of runs without the watch
            self.watch.load_state(state.get("warn"))
        for reason in self.store.recovered:
            self.store.append(
                "events", {"step": self.step, "kind": "recovered", "message": f"skipped {reason}"}
            )
        self.store.append(
            "events",
            {"step": self.step, "kind": "resumed", "message": f"from checkpoint {self.step}"},
        )

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg = self.config.train
        self.store.set_status("running", self.step)
        if self.progress:  # name the directory now, not only when the run ends
            where = self.store.path
            print(f"run {where}; after Ctrl-C: rnnprobe train --resume {where}", file=sys.stderr)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )
        status, message = "done", ""
        try:
            with _interrupts_between_steps() as interrupted:
                self._loop(bar, interrupted)
        except KeyboardInterrupt:
            if self.mid_step:  # a second Ctrl-C cut a step: keep the last checkpoint only
                self.store.set_status("interrupted", self.step)
                bar.close()
                raise
            self._checkpoint()
            self.store.append("events", {"step": self.step, "kind": "interrupted", "message": ""})
            self._flush()
            self.store.set_status("interrupted", self.step)
            bar.close()
            raise
        bar.close()
        if not self._checkpoint():
            self.diverged = True
        if self.diverged:
            status, message = (
                "diverged",
                f"non-finite loss, gradients or weights at step {self.step}",
            )
            self.store.append("events", {"step": self.step, "kind": "diverged", "message": message})
            self.store.flush()
        self.store.set_status(status, self.step, message or None)
        self.store.close()
        return RunResult(status, self.store.path, self.step, message)

    def _loop(self, bar: tqdm, interrupted: threading.Event) -> None:
        cfg = self.config.train
        if self.pre_floss_due:  # a Ctrl-C that cuts it leaves no checkpoint: it reruns
            self.mid_step = True
            self._pre_floss()
            self.mid_step = self.pre_floss_due = False
        while self.step < cfg.steps:
            if interrupted.is_set():  # Ctrl-C arrived during the last step: stop between steps
                raise KeyboardInterrupt
            start = time.perf_counter()
            self.mid_step = True
            self.diverged = self._train_step()
            self.mid_step = False
            self.seconds += time.perf_counter() - start
            bar.update(1)
            self.store.heartbeat()
            if self.diverged:
                return
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                self._evaluate()
            if self.step % self.config.checkpoint_every == 0:
                if not self._checkpoint():
                    self.diverged = True
                    return
                self._show_progress(bar)
            elif self.step % self.config.flush_every == 0:
                self._flush()
                self.store.set_status("running", self.step)
                self._show_progress(bar)

    def _show_progress(self, bar: tqdm) -> None:
        """Show the records the last flush moved to the host, and the throughput."""
        if bar.disable or self.seconds == 0:
            return
        shown = self.recent.postfix(clipping=self.config.train.clip != "none")
        bar.set_postfix(shown | {"tokens_per_s": f"{self.tokens / self.seconds:,.0f}"})

    def _on_device(self, batch: Batch) -> Batch:
        """Return the batch on the run's device, float features in the run's dtype."""
        batch = batch.to(self.device)
        if not batch.inputs.is_floating_point():
            return batch
        inputs, targets = batch.inputs.to(self.dtype), batch.targets.to(self.dtype)
        return Batch(inputs, targets, batch.lengths, batch.continues)

    def _train_step(self) -> bool:
        """Run one optimizer step; return True when the run must stop as diverged."""
        cfg, probes = self.config.train, self.instruments
        self.step += 1
        fired = probes.firing(self.step, cfg.steps)
        watching = self.watch is not None and not self.watch.done
        rng = self._rng_states() if watching else None  # as the step finds them: a snapshot's
        raw = next(self.batches)
        batch = self._on_device(raw)
        T = batch.inputs.shape[1]
        segments = list(self.truncation.segments(T, self.cut_generator))
        h0 = self.h if batch.continues else None
        self.optimizer.zero_grad(set_to_none=True)
        needs_states = bool(fired & {"hidden", "spectra", "lyapunov", "products"})
        flossing = self.floss is not None and self.floss.fires(self.step)
        with (
            capture(
                self.model,
                reach="reach" in fired,
                reach_batch=self.config.probes.sub_batch,
                keep_states=needs_states,
                weight_grads="weight_grads" in fired,
            ) as cap,
            _rnn_calls(self.rnn, flossing) as calls,
        ):
            result = run_batch(self.model, self.task, batch, segments, h0)
        if "truncation" in fired and self.truncation.mode != "full":  # the task loss's only
            self._truncation_bias(batch, h0)
        if flossing:  # before clipping: the clip and the finite guard see ∇(L + weight·P)
            self._floss(calls, self.step, self.floss.weight)
        self.tokens += batch.inputs.shape[0] * T
        pre, post = _clip(self.params, cfg.clip, cfg.clip_value)
        finite = torch.isfinite(result.loss) & torch.isfinite(pre)
        if result.h_n is not None and self.carries_state:
            finite = finite & torch.isfinite(result.h_n).all()
        if watching:  # the watch's loss and gradient norm ride the same transfer
            finite = self._watch_step(finite, result.loss, pre, raw, segments, h0, rng)
        else:
            finite = bool(finite)  # the one sync
        # A state that went non-finite is never carried on (nor checkpointed): start afresh.
        self.h = result.h_n if finite else None
        records = cap.records_on_device()
        if "adjoints" in fired or "reach" in fired:
            probes.record_backward(self.step, records, result.backward_offsets, batch.lengths)
        if finite and needs_states and records and records[0].states is not None:
            # Before the update: J_t = diag(φ'(a_t)) W_hh with the W_hh that made a_t.
            states = [torch.cat(layer) for layer in zip(*(r.states for r in records), strict=True)]
            probes.record_states(self.step, states, fired, batch.lengths)
        if finite:
            self.optimizer.step()
            self.nonfinite_run = 0
        else:
            self.nonfinite_run += 1
            message = "update skipped" + (", carried state reset" if self.carries_state else "")
            probes.rows.add("events", step=self.step, kind="nonfinite", message=message)
        probes.rows.add(
            "steps",
            step=self.step,
            loss=result.loss,
            metric=result.metric,
            grad_norm_pre_clip=pre,
            grad_norm_post_clip=post,
            clipped=post < pre,
            skipped=not finite,
            lr=self.optimizer.param_groups[0]["lr"],
            tokens=self.tokens,
            seconds=self.seconds,
        )
        if not finite:
            return cfg.on_nonfinite == "stop" or self.nonfinite_run >= cfg.max_nonfinite
        return False

    # -- explosion early warning and replay (rnnprobe/training/warning.py) ---------------
    def _rng_states(self) -> dict[str, torch.Tensor]:
        """Return the RNG states a step starts from (probe: taken when a snapshot is written,
        since no probe draws before the step's sync)."""
        states = {
            "torch": torch.get_rng_state(),
            "data": self.data_generator.get_state(),
            "cut": self.cut_generator.get_state(),
        }
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def _watch_step(self, finite, loss, grad_norm, raw, segments, h0, rng) -> bool:
        """Return whether the step is finite, read in the step's one sync together with its
        loss and pre-clip gradient norm; file the first warning, and write the snapshots of
        the first warning and the first non-finite step (the weights are not yet updated)."""
        numbers = torch.stack([finite.double(), loss.double(), grad_norm.double()])
        finite_flag, loss_value, norm_value = numbers.tolist()  # the one sync
        finite = finite_flag == 1.0
        step, watch = self.step, self.watch
        recorded = {"loss": loss_value, "grad_norm_pre_clip": norm_value}
        snapshot = (raw, segments, h0, rng, recorded)
        message = watch.observe(step, finite, loss_value, norm_value)
        if message is not None:
            path = self._snapshot("warning", *snapshot, message)
            where = path.relative_to(self.store.path)
            message = f"{message}; snapshot {where} (rnnprobe replay)"
            self.instruments.rows.add("events", step=step, kind="warning", message=message)
        if not finite and watch.first_nonfinite():
            numbers = f"loss {loss_value:.4g}, pre-clip gradient norm {norm_value:.4g}"
            self._snapshot("nonfinite", *snapshot, f"the first non-finite step ({numbers})")
        return finite

    def _snapshot(self, kind, raw, segments, h0, rng, recorded, reason) -> Path:
        """Write the state this step started from (replay.py, SNAPSHOT_KEYS); return its path."""
        record = {
            "kind": kind,
            "step": self.step,
            "reason": reason,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batch": {
                "inputs": raw.inputs,
                "targets": raw.targets,
                "lengths": raw.lengths,
                "continues": bool(raw.continues),
            },
            "h0": None if h0 is None else h0.detach(),
            "segments": [[int(start), int(end)] for start, end in segments],
            "rng": {**rng, "probe": self.instruments.generator.get_state()},
            "recorded": recorded,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }
        if hasattr(self.task, "corpus"):
            record["vocab"] = list(self.task.corpus.vocab.tokens)
        return save_snapshot(self.store.path, record)

    def restore_snapshot(self, snapshot: dict) -> tuple[Batch, list, torch.Tensor | None]:
        """Put a snapshot's weights, optimizer state, RNG states, step and carried state in
        place; return its batch on the device, its segments and the state h0 it starts from."""
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        rng = snapshot["rng"]
        torch.set_rng_state(rng["torch"])
        self.data_generator.set_state(rng["data"])
        self.cut_generator.set_state(rng["cut"])
        self.instruments.generator.set_state(rng["probe"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(snapshot["step"]) - 1
        h0 = snapshot["h0"]
        self.h = None if h0 is None else h0.to(self.device, self.dtype)
        given = snapshot["batch"]
        raw = Batch(given["inputs"], given["targets"], given["lengths"], given["continues"])
        self.batches = iter([raw])
        segments = [tuple(pair) for pair in snapshot["segments"]]
        return self._on_device(raw), segments, self.h if raw.continues else None

    def replay_step(self, snapshot: dict) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Run the step a snapshot holds again, as training ran it; return its ``steps`` row
        (loss, grad_norm_pre_clip, …) and the gradients its update used (after clipping)."""
        self.restore_snapshot(snapshot)
        self.instruments.rows.drain()  # rows of an earlier replay
        self._train_step()
        gradients = {
            name: p.grad.detach().clone()
            for name, p in self.model.named_parameters()
            if p.grad is not None
        }
        steps = self.instruments.rows.drain()["steps"][0]
        return {name: values[0].item() for name, values in steps.items()}, gradients

    # -- end explosion early warning and replay

    # -- gradient flossing (rnnprobe/training/flossing.py) ----------------------------------
    def _truncation_bias(self, batch: Batch, h0: torch.Tensor | None) -> None:
        """Record the truncated gradients (now in ``.grad``) against full BPTT of the batch.

        One more forward and backward over the whole sequence, outside the capture (it
        records nothing else), then the truncated gradients go back for the update.
        """
        named = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
        truncated = {n: p.grad for n, p in named}
        for _, p in named:
            p.grad = None
        run_batch(self.model, self.task, batch, [(0, batch.inputs.shape[1])], h0)
        full = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in named}
        self.instruments.record_truncation(self.step, truncation_bias(truncated, full))
        for name, p in named:
            p.grad = truncated[name]

    def _floss(self, calls: list, step: int, weight: float) -> None:
        """Add weight·∇P to the gradients and file the ``floss`` rows of ``step`` (no sync).

        P gets a backward pass of its own rather than being added to run_batch's loss: those
        passes follow the BPTT cuts, while P re-runs every layer over the whole (sub-)batch
        from the stack's recorded inputs, so the two graphs share nothing. Gradients add, so
        the optimizer sees ∇(L + weight·P) all the same, clipped as one.
        """
        spec = self.floss
        x = torch.cat([c[0] for c in calls])  # (T, B, I): the stack's input, segments joined
        h0 = calls[0][1]  # (L, B, H) or None: the state the batch started from
        if spec.batch:
            x, h0 = x[:, : spec.batch], None if h0 is None else h0[:, : spec.batch]
        layers = []
        for layer in range(self.rnn.num_layers):
            biases = (getattr(self.rnn, f"bias_{n}_l{layer}", None) for n in ("ih", "hh"))
            layers.append((*self.rnn.layer_weights(layer), *biases))
        with torch.set_grad_enabled(weight > 0):
            measures = floss_layers(
                x,
                h0,
                layers,
                nonlinearity=self.rnn.nonlinearity,
                k=spec.k,
                warmup=spec.warmup,
                qr_every=spec.qr,
                frame=self.floss_frame,
            )
            if weight > 0:
                (weight * sum(m.penalty for m in measures)).backward()
        for layer, measure in enumerate(measures):
            self.instruments.rows.add(
                "floss",
                step=step,
                layer=layer,
                index=np.arange(spec.k),
                exponent=measure.exponents,
                penalty=measure.penalty,
            )

    def _pre_floss(self) -> None:
        """Run the ``pre`` flossing-only updates, filed as steps −pre … −1 of ``floss``.

        They minimise P alone (``weight`` scales P in training steps only) with a fresh
        optimizer of the run's kind and lr, on batches of their own generator: training then
        starts from the optimizer state and data stream of a run without pre-flossing.
        """
        cfg = self.config.train
        optimizer = make_optimizer(self.model, self.config)
        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, 5))
        batches = self.task.batches(cfg.batch_size, generator)
        for step in range(-self.floss.pre, 0):
            batch = self._on_device(next(batches))
            with _rnn_calls(self.rnn, True) as calls:  # a forward pass records the inputs
                run_batch(self.model, self.task, batch, [(0, batch.inputs.shape[1])], train=False)
            optimizer.zero_grad(set_to_none=True)
            self._floss(calls, step, 1.0)
            pre, _ = _clip(self.params, cfg.clip, cfg.clip_value)
            if bool(torch.isfinite(pre)):  # a training step's guard, and its one sync
                optimizer.step()
            else:
                message = "pre-flossing update skipped"
                self.instruments.rows.add("events", step=step, kind="nonfinite", message=message)
        optimizer.zero_grad(set_to_none=True)

    # -- end gradient flossing

    @torch.no_grad()
    def _evaluate(self) -> None:
        """Record the validation loss and metric (means over sequences) and, for a many-to-one
        classifier, the confusion counts of every (true, predicted) class pair."""
        losses, metrics, rows, h = [], [], [], None
        K = self.task.output_size if self.task.kind == "many_to_one_classification" else 0
        confusion = torch.zeros(K * K, dtype=torch.int64, device=self.device)  # (K·K,)
        for batch in self.eval_batches:
            batch = self._on_device(batch)
            result = run_batch(
                self.model,
                self.task,
                batch,
                [(0, batch.inputs.shape[1])],
                h if batch.continues else None,
                train=False,
            )
            h = result.h_n
            losses.append(result.loss)
            metrics.append(result.metric)
            rows.append(batch.targets.shape[0])
            if K and result.predictions is not None:
                cells = batch.targets * K + result.predictions  # (B,) in [0, K²)
                confusion.scatter_add_(0, cells, torch.ones_like(cells))  # no sync, unlike bincount
        # means over sequences: a shorter last batch (classify's validation split) counts less
        share = [n / sum(rows) for n in rows]
        self.instruments.rows.add(
            "evals",
            step=self.step,
            loss=sum(v.double() * w for v, w in zip(losses, share, strict=True)),
            metric=sum(v.double() * w for v, w in zip(metrics, share, strict=True)),
        )
        if K:
            cells = torch.arange(K * K)
            self.instruments.rows.add(
                "confusion",
                step=self.step,
                true=(cells // K).numpy(),
                predicted=(cells % K).numpy(),
                count=confusion,
            )


class RecentSteps:
    """The progress bar's numbers, from rows already moved to the host at a flush.

    ``loss`` and ``clip`` are the mean training loss and the share of clipped steps over the
    last ``PROGRESS_STEPS`` recorded steps whose update went through (finite losses only);
    ``val_loss`` is the last validation loss flushed so far.
    """

    def __init__(self) -> None:
        self.losses: deque[float] = deque(maxlen=PROGRESS_STEPS)
        self.clipped: deque[bool] = deque(maxlen=PROGRESS_STEPS)
        self.valid_loss = math.nan

    def observe(self, table: str, columns: dict[str, np.ndarray]) -> None:
        """Take the values of one flushed block of ``steps`` or ``evals`` rows."""
        if table == "steps":
            went_through = ~columns["skipped"].astype(bool)
            self.losses.extend(columns["loss"][went_through].tolist())
            self.clipped.extend(columns["clipped"][went_through].astype(bool).tolist())
        elif table == "evals" and len(columns["loss"]):
            self.valid_loss = float(columns["loss"][-1])

    def postfix(self, *, clipping: bool) -> dict[str, str]:
        """Return the bar's ``{name: text}``: loss, val_loss once evaluated, clip when on."""
        shown = {}
        losses = np.asarray(self.losses, dtype=float)
        losses = losses[np.isfinite(losses)]
        if len(losses):
            shown["loss"] = f"{losses.mean():.4g}"
        if math.isfinite(self.valid_loss):
            shown["val_loss"] = f"{self.valid_loss:.4g}"
        if clipping and self.clipped:
            shown["clip"] = f"{np.mean(self.clipped):.0%}"
        return shown


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
def _rnn_calls(rnn: ElmanRNN, active: bool) -> Iterator[list]:
    """Yield a list of (input (T, B, I), hx (L, B, H) or None), detached, of every call of
    ``rnn`` in the block (flossing re-runs the layers on them); left empty unless ``active``."""
    calls: list = []
    if not active:
        yield calls
        return

    def hook(module, args, kwargs):
        x, hx = (*args, kwargs.get("hx"))[:2]
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or module.batch_first:
            raise RnnprobeError("--floss needs the RNN's input time-major (T, B, I), not packed")
        calls.append((x.detach(), None if hx is None else hx.detach()))

    handle = rnn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


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

    def handler(signum, frame):
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
    config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> RunResult:
    """Train one run into ``run_dir``; with ``resume``, continue the run that is there."""
    run_dir = Path(run_dir)
    if resume and not is_run_dir(run_dir):
        raise RnnprobeError(f"{run_dir} is not an rnnprobe run directory (no config.json)")
    created = not run_dir.exists()
    lock = DirectoryLock(run_dir, "--out").acquire()  # one writer per run, until we return
    trainer = None
    try:
        if resume:
            status = read_status(run_dir)
            if status.get("status") in ("done", "diverged"):
                return RunResult(status["status"], run_dir, int(status["step"]), "already finished")
        trainer = Trainer(config, run_dir, resume, progress)
        return trainer.run()
    except (RnnprobeError, KeyboardInterrupt):
        raise
    except Exception as error:  # a bug or a numerical failure: record it, then re-raise
        if trainer is not None:
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
