"""Benchmark: one full training step of the instrumented model against ``torch.nn.RNN``.

Both models share the same sizes and weights; their steps (forward, loss, backward, clip,
optimizer step) run interleaved in one process, so machine noise hits both alike, and the
median of the per-pair time ratios is reported. Beside them runs the GEMM floor: only the
matrix products such a step cannot avoid, into preallocated buffers. Peak memory of one step
is measured per model: CUDA's allocator statistics on a GPU, the resident set of a fresh
process on a CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from rnnprobe.core.models import ElmanRNN, RNNLanguageModel
from rnnprobe.data.tasks import Batch
from rnnprobe.training.callbacks import Callback
from rnnprobe.training.config import ProbeConfig, RunConfig
from rnnprobe.training.graphs import StepGraph
from rnnprobe.training.graphs import wanted as graphs_wanted
from rnnprobe.training.loop import Trainer
from rnnprobe.training.probing import Probing
from rnnprobe.training.step import StepResult, clip_gradients, probed_capture

Step = Callable[[], None]


@dataclass(frozen=True)
class BenchConfig:
    """The issue's reference configuration: a character LM of two tanh layers."""

    vocab_size: int = 96
    embedding_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    batch_size: int = 32
    seq_len: int = 32
    nonlinearity: str = "tanh"
    repeats: int = 30
    warmup: int = 3
    record: bool = True  # capture the adjoint records on every instrumented step


@dataclass(frozen=True)
class BenchResult:
    """One sequence length's medians: step times (ms), peak memory (MB), their ratios to
    ``nn.RNN``'s (the floor's too)."""

    seq_len: int
    elman_ms: float
    torch_ms: float
    floor_ms: float
    time_ratio: float
    floor_ratio: float
    elman_peak_mb: float
    torch_peak_mb: float
    memory_ratio: float


def _make_models(
    config: BenchConfig, device: torch.device
) -> tuple[RNNLanguageModel, RNNLanguageModel]:
    elman = RNNLanguageModel(
        config.vocab_size,
        config.embedding_dim,
        config.hidden_size,
        config.num_layers,
        config.nonlinearity,
        rnn="elman",
    ).to(device)
    reference = RNNLanguageModel(
        config.vocab_size,
        config.embedding_dim,
        config.hidden_size,
        config.num_layers,
        config.nonlinearity,
        rnn="torch",
    ).to(device)
    reference.load_state_dict(elman.state_dict())
    return elman, reference


def _training_step(
    model: RNNLanguageModel, tokens: torch.Tensor, record: bool, graphed: bool = False
) -> Step:
    """A training step of a character LM; ``record``: capture the adjoints (probes off);
    ``graphed``: replay its passes as a CUDA graph (the first step runs them eagerly)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    params = list(model.parameters())

    def passes() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model.next_token_loss(tokens)
        with probed_capture(model, {"adjoints"}, 1) if record else nullcontext():
            loss.backward()
        return clip_gradients(params, "norm", 1.0)[0]

    graph = StepGraph(passes, params) if graphed else None
    steps = iter(range(10**9))

    def step() -> None:
        nonlocal graph
        if graph is not None and next(steps) > 0:
            try:
                graph()
            except RuntimeError as error:  # as training does: eager from then on
                message = f"CUDA graph capture failed, eager steps from here: {error}"
                warnings.warn(message, stacklevel=2)
                graph = None
                passes()
        else:
            passes()
        optimizer.step()

    return step


def _gemm_floor_step(config: BenchConfig, device: torch.device) -> Step:
    """The matrix products of an LM training step, and nothing else, into preallocated buffers.

    Forward: each layer's input projection (one GEMM over all T·B rows) and T recurrent
    products (B, H)·(H, H); the head. Backward: the head's two GEMMs; per layer T - 1
    recurrent products, ∇W_hh, ∇W_ih and the gradient of its input (the embedding's too).
    """
    T, B, H = config.seq_len, config.batch_size, config.hidden_size
    E, V, L = config.embedding_dim, config.vocab_size, config.num_layers
    new = lambda *shape: torch.randn(*shape, device=device)  # noqa: E731
    sizes = [E] + [H] * (L - 1)  # each layer's input size
    x, w_ih = [new(T * B, i) for i in sizes], [new(H, i) for i in sizes]
    w_hh, projected = new(H, H), new(T, B, H)
    states, grad_h = new(T * B, H), new(T, B, H)
    w_out, logits, grad_w_out = new(V, H), new(T * B, V), new(V, H)
    grad_w_hh, grad_w_ih, grad_x = (
        new(H, H),
        [new(H, i) for i in sizes],
        [new(T * B, i) for i in sizes],
    )

    def step() -> None:
        for layer in range(L):
            torch.mm(x[layer], w_ih[layer].t(), out=projected.view(T * B, H))
            for t in range(1, T):
                projected[t].addmm_(projected[t - 1], w_hh.t())
        torch.mm(states, w_out.t(), out=logits)
        torch.mm(logits, w_out, out=grad_h.view(T * B, H))
        torch.mm(logits.t(), states, out=grad_w_out)
        for layer in reversed(range(L)):
            for t in range(T - 1, 0, -1):
                grad_h[t - 1].addmm_(grad_h[t], w_hh)
            g = grad_h.view(T * B, H)
            torch.mm(g.t(), states, out=grad_w_hh)
            torch.mm(g.t(), x[layer], out=grad_w_ih[layer])
            torch.mm(g, w_ih[layer], out=grad_x[layer])

    return step


def _probing_step(model: RNNLanguageModel, tokens: torch.Tensor, probes: ProbeConfig) -> Step:
    """A training step that also fires the probes on their schedules, as training does
    (:func:`probed_capture`, :meth:`Probing.record_step`), step counter included."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    params = list(model.parameters())
    rnn = next(m for m in model.modules() if isinstance(m, ElmanRNN))
    probing = Probing(probes, rnn, seed=0)
    batch = Batch(tokens[:, :-1], tokens[:, 1:])
    counter = iter(range(1, 10**9))

    def step() -> None:
        number = next(counter)
        fired = probing.firing(number)
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model.next_token_loss(tokens)
        with probed_capture(model, fired, probes.sub_batch) as cap:
            loss.backward()
        clip_gradients(params, "norm", 1.0)
        probing.record_step(number, fired, cap.records_on_device(), [0], batch, True)
        optimizer.step()
        if number % 50 == 0:
            probing.rows.drain()

    return step


SCHEDULED_PROBES = ("weight_grads", "hidden", "spectra", "lyapunov", "reach", "products")


def run_probe_overhead(config: BenchConfig, device: torch.device, steps: int = 200) -> str:
    """Return lines: the default probe schedule's cost (and the adjoint records' own), then
    each probe's cost per firing.

    Scheduled probes fire on few steps, so the first line compares sums over a stretch of
    ``steps`` steps (interleaved with ``torch.nn.RNN`` steps), not medians that would hide
    them. Then each probe fires on every step of a shorter stretch, beside adjoint-only steps:
    its cost per firing is the difference of the medians, and its share is that cost times
    its firing rate under the default schedule, over the adjoint-only step.
    """
    from dataclasses import replace

    from rnnprobe.probes.schedule import Schedule

    torch.manual_seed(0)
    elman, reference = _make_models(config, device)
    tokens = torch.randint(
        1, config.vocab_size, (config.batch_size, config.seq_len + 1), device=device
    )

    def probed_step(probes: ProbeConfig) -> Callable[[], None]:
        model, _ = _make_models(config, device)
        model.load_state_dict(elman.state_dict())
        return _probing_step(model, tokens, probes)

    unrecorded, _ = _make_models(config, device)
    unrecorded.load_state_dict(elman.state_dict())
    variants = {
        "nn.RNN": _training_step(reference, tokens, record=False),
        "unrecorded": _training_step(unrecorded, tokens, record=False),
        "adjoints": _training_step(elman, tokens, record=True),
        "default probes": probed_step(ProbeConfig()),
    }
    totals = _interleaved_totals(variants, steps, config.warmup, device)
    core = totals["adjoints"] / totals["nn.RNN"]
    probes = totals["default probes"] / totals["nn.RNN"]
    recording = totals["adjoints"] / totals["unrecorded"] - 1
    lines = [
        f"T={config.seq_len:<5d} {steps} steps vs nn.RNN: adjoints only {core:.2f}, default "
        f"probes {probes:.2f}; probe overhead {probes / core:.3f}× the instrumented ratio; "
        f"recording every adjoint: {100 * recording:.1f} % of an unrecorded step"
    ]
    # schedules named at run time: mypy cannot match the keys to ProbeConfig's str fields
    alone: dict[str, Any] = dict.fromkeys(SCHEDULED_PROBES, "never")
    each = {"adjoints": variants["adjoints"]}
    for name in SCHEDULED_PROBES:
        only: dict[str, Any] = {name: "always"}
        each[name] = probed_step(replace(ProbeConfig(**alone), **only))
    short = max(5, steps // 20)
    medians = _interleaved_medians(each, short, config.warmup, device)
    base = medians["adjoints"]
    default = ProbeConfig()
    for name in SCHEDULED_PROBES:
        cost = max(medians[name] - base, 0.0)
        schedule = Schedule.parse(getattr(default, name))
        rate = sum(schedule.fires(i) for i in range(1000)) / 1000
        lines.append(
            f"  {name:<13s} {1e3 * cost:8.2f} ms per firing ({cost / base:6.2f} steps); "
            f"default {schedule}: {100 * rate * cost / base:5.2f} % of a step"
        )
    return "\n".join(lines)


def _interleaved_totals(
    variants: dict[str, Step], steps: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Return each variant's total time over ``steps`` rounds, run in turn after a warm-up."""
    for step in variants.values():
        for _ in range(warmup):
            step()
    totals = dict.fromkeys(variants, 0.0)
    for _ in range(steps):
        for name, step in variants.items():
            totals[name] += _timed(step, device)
    return totals


def _interleaved_medians(
    variants: dict[str, Step], steps: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Return each variant's median step time over ``steps`` rounds, run in turn."""
    for step in variants.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(steps):
        for name, step in variants.items():
            times[name].append(_timed(step, device))
    return {name: statistics.median(t) for name, t in times.items()}


def run_train_throughput(device_name: str, steps: int = 300, rounds: int = 3) -> str:
    """Return a line: tokens/s of ``rnnprobe train`` with the default probes vs probes off.

    In each round both runs (same config and seed, a character LM on the built-in corpus)
    train at once in this process, taking turns step by step (:class:`_Turns`), so the
    machine's drifts hit both alike; a run's tokens/s counts its own steps' time (its probes
    included, the flushes of records to disk not). The probes' cost sits in a few heavy steps
    that a burst of noise can hit alone, hence several rounds and their median.
    """
    from rnnprobe.training.config import PROBES, build_config

    base = {
        "task.name": "lm",
        "task.max_chars": 300_000,
        "task.seq_len": 64,
        "model.hidden_size": 256,
        "train.steps": steps,
        "train.eval_every": steps,
        "device": device_name,
    }
    off = {f"probes.{name}": "never" for name in PROBES}
    configs = {"probes": build_config(base), "off": build_config({**base, **off})}
    results = [_train_taking_turns(configs) for _ in range(rounds)]
    ratios = sorted(r["probes"] / r["off"] for r in results)
    median = statistics.median(ratios)
    return (
        f"train throughput ({steps} steps, the two runs taking turns; lm, hidden 256, T=64): "
        f"default probes {statistics.median(r['probes'] for r in results):,.0f} tokens/s, "
        f"probes off {statistics.median(r['off'] for r in results):,.0f} tokens/s; ratio "
        f"median {median:.3f} ({', '.join(f'{r:.3f}' for r in ratios)}: {rounds} rounds)"
    )


def _train_taking_turns(configs: dict[str, RunConfig]) -> dict[str, float]:
    """Train the two runs of ``configs`` at once, taking turns; return each one's tokens/s."""
    import tempfile

    from rnnprobe.training.loop import tokens_per_second, train_run

    first, second = configs
    turns = {name: _Turns() for name in configs}
    turns[first].partner, turns[second].partner = turns[second], turns[first]
    turns[first].turn.set()
    errors: list[BaseException] = []
    with tempfile.TemporaryDirectory() as tmp:

        def train(name: str) -> None:
            try:
                train_run(configs[name], f"{tmp}/{name}", progress=False, callbacks=[turns[name]])
            except BaseException as error:  # re-raised below, in the caller's thread
                errors.append(error)
                turns[name].on_end(None, "failed")  # type: ignore[arg-type]

        threads = [threading.Thread(target=train, args=(name,)) for name in configs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return {name: tokens_per_second(f"{tmp}/{name}") for name in configs}


class _Turns(Callback):
    """Two runs in two threads take turns: after each of its steps a run hands the turn to its
    partner and waits for it back, so exactly one of them works at a time (its flushes too),
    until one ends."""

    def __init__(self) -> None:
        self.turn, self.ended = threading.Event(), False
        self.partner: _Turns | None = None

    def _wait(self) -> None:
        self.turn.wait()
        self.turn.clear()

    def on_start(self, trainer: Trainer) -> None:
        """Wait for the first turn."""
        self._wait()

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """Hand the turn over and wait for it back, unless the partner has ended."""
        assert self.partner is not None
        if not self.partner.ended:
            self.partner.turn.set()
            self._wait()

    def on_end(self, trainer: Trainer, status: str) -> None:
        """Leave the partner the turn for good."""
        assert self.partner is not None
        self.ended = True
        self.partner.turn.set()


def _timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _read_status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _cpu_peak_bytes(config: BenchConfig, kind: str) -> int:
    """In a fresh process: the peak resident memory of one step above the memory before it.

    Linux lets a process reset its own high-water mark (``clear_refs`` 5), which isolates the
    step from the import of torch; big tensors are ``mmap``-ed, so RSS follows them closely.
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    elman, reference = _make_models(config, torch.device("cpu"))
    model = elman if kind == "elman" else reference
    tokens = torch.randint(1, config.vocab_size, (config.batch_size, config.seq_len + 1))
    step = _training_step(model, tokens, config.record and kind == "elman")
    step()  # the optimizer's state exists from here on, as in a running training
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = _read_status_kb("VmRSS")
    step()
    return 1024 * (_read_status_kb("VmHWM") - before)


def _peak_bytes(config: BenchConfig, kind: str, step: Step, device: torch.device) -> int:
    """Return the peak bytes one training step allocates above what lives before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    # A fixed mmap threshold stops glibc from keeping freed big blocks on its heap.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "4096")
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_cpu_peak_bytes, (config, kind))


def run_bench(config: BenchConfig, device: torch.device) -> BenchResult:
    """Return the median step-time ratio and the peak-memory ratio, instrumented / nn.RNN."""
    torch.manual_seed(0)
    elman, reference = _make_models(config, device)
    tokens = torch.randint(
        1, config.vocab_size, (config.batch_size, config.seq_len + 1), device=device
    )
    graphed = graphs_wanted() and device.type == "cuda"
    elman_step = _training_step(elman, tokens, config.record, graphed)
    torch_step = _training_step(reference, tokens, record=False)
    floor_step = _gemm_floor_step(config, device)
    steps = (elman_step, torch_step, floor_step)
    for _ in range(config.warmup):
        for step in steps:
            step()
    elman_times, torch_times, floor_times = [], [], []
    for i in range(config.repeats):  # the order rotates: drifts hit all three alike
        order = steps[i % 3 :] + steps[: i % 3]
        times = {id(step): _timed(step, device) for step in order}
        elman_times.append(times[id(elman_step)])
        torch_times.append(times[id(torch_step)])
        floor_times.append(times[id(floor_step)])
    ratio = statistics.median(e / t for e, t in zip(elman_times, torch_times, strict=True))
    floor = statistics.median(f / t for f, t in zip(floor_times, torch_times, strict=True))
    if graphed:  # the step that captures allocates the graph's memory, which replays reuse
        elman_step = _training_step(elman, tokens, config.record, graphed)
        elman_step()
    elman_peak = _peak_bytes(config, "elman", elman_step, device)
    torch_peak = _peak_bytes(config, "torch", torch_step, device)
    return BenchResult(
        seq_len=config.seq_len,
        elman_ms=1e3 * statistics.median(elman_times),
        torch_ms=1e3 * statistics.median(torch_times),
        floor_ms=1e3 * statistics.median(floor_times),
        time_ratio=ratio,
        floor_ratio=floor,
        elman_peak_mb=elman_peak / 2**20,
        torch_peak_mb=torch_peak / 2**20,
        memory_ratio=elman_peak / max(torch_peak, 1),
    )


def format_result(result: BenchResult) -> str:
    """Return one line: the step times, their median ratios to nn.RNN's, the peak-memory ratio."""
    return (
        f"T={result.seq_len:<5d} step: rnnprobe {result.elman_ms:8.2f} ms  nn.RNN "
        f"{result.torch_ms:8.2f} ms  GEMM floor {result.floor_ms:8.2f} ms  ratio to nn.RNN: "
        f"rnnprobe {result.time_ratio:.2f}, floor {result.floor_ratio:.2f}   peak memory: "
        f"rnnprobe {result.elman_peak_mb:7.1f} MB  nn.RNN {result.torch_peak_mb:7.1f} MB  "
        f"ratio {result.memory_ratio:.2f}"
    )
