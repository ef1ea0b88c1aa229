"""CUDA-graph replay of the step's passes: the bookkeeping (simulated on CPU), no host sync in
what a graph captures, and on a GPU the real capture against eager steps."""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rnnprobe.core.capture import BackwardRecord, LayerRecord
from rnnprobe.data.tasks import Batch
from rnnprobe.records.store import load_run
from rnnprobe.training.callbacks import Callback
from rnnprobe.training.graphs import (
    HOST_READS,
    MAX_GRAPHS,
    StepGraphs,
    canonical_capture,
    clone_tree,
    tensors_of,
)
from rnnprobe.training.loop import Trainer, train_run
from rnnprobe.training.probing import Probing
from rnnprobe.training.setup import build_run
from rnnprobe.training.step import forward_backward, train_step
from tests.support.runs import tiny
from tests.training.test_train import assert_same_records


class HostReads(TorchDispatchMode):
    """Count the ops that read a tensor's values on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in HOST_READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


class SimulatedGraphs(Callback):
    """Give a run simulated step graphs (the same bookkeeping, eager kernels)."""

    def __init__(self) -> None:
        self.graphs: StepGraphs | None = None

    def on_start(self, trainer: Trainer) -> None:
        self.graphs = StepGraphs(trainer.parts, trainer._graph_failed, simulate=True)
        trainer.graphs = self.graphs


GRAPHED_RUNS = {
    "lm carried state": dict(task__name="lm", task__sampling="sequential", task__max_chars=4000),
    "copy, relu, 2 layers": dict(task__name="copy", model__nonlinearity="relu", model__layers=2),
    "weight grads, every probe": dict(task__name="copy", probes__weight_grads="every:2"),
}


@pytest.mark.parametrize("settings", GRAPHED_RUNS.values(), ids=GRAPHED_RUNS.keys())
def test_replayed_steps_give_the_eager_records(tmp_path, settings):
    config = tiny(train__steps=16, **settings)
    train_run(config, tmp_path / "eager", progress=False)
    simulated = SimulatedGraphs()
    train_run(config, tmp_path / "graphs", progress=False, callbacks=[simulated])
    assert simulated.graphs is not None
    kinds = simulated.graphs.graphs
    assert kinds and all(graph is not None for graph in kinds.values())
    replays = sum(graph.calls - 1 for graph in kinds.values() if graph is not None)
    assert replays >= 3  # a kind runs eagerly, is captured, then replays
    # batches, records and gradients go through the graph's static tensors: a batch not
    # copied in, an output not cloned out or a gradient not put back would change a record
    assert_same_records(tmp_path / "eager", tmp_path / "graphs")


def test_steps_that_add_to_the_gradients_or_pad_stay_eager(tmp_path):
    config = tiny(train__steps=8, train__bptt="4", probes__truncation="always")
    simulated = SimulatedGraphs()
    train_run(config, tmp_path / "run", progress=False, callbacks=[simulated])
    assert simulated.graphs is not None and not simulated.graphs.graphs  # never a single segment
    parts = build_run(tiny(task__name="copy"))
    graphs = StepGraphs(parts, simulate=True)
    batch = parts.on_device(next(parts.task.batches(4, parts.data_generator)))
    T = batch.inputs.shape[1]
    padded = Batch(batch.inputs, batch.targets, torch.full((4,), T), batch.continues)
    assert graphs.run(padded, [(0, T)], None, {"adjoints"}) is None
    assert graphs.run(batch, [(0, 2), (2, T)], None, {"adjoints"}) is None
    assert not graphs.graphs and not graphs.seen
    assert graphs.run(batch, [(0, T)], None, {"adjoints"}) is None  # the first: eager
    assert graphs.run(batch, [(0, T)], None, {"adjoints"}) is not None  # captured


def test_a_cloned_tree_holds_equal_tensors_in_new_memory():
    record = BackwardRecord(
        [LayerRecord(torch.rand(3, 2), torch.rand(3, 2), torch.rand(3, 2), None, torch.rand(3))],
        reach=torch.rand(1, 2, 3, 2).transpose(0, 2),  # not contiguous
        reach_sources=[2],
        states=[torch.rand(3, 2, 4)],
    )
    tree = ([record], torch.tensor(True), torch.tensor(2.5, dtype=torch.float64), 7)
    cloned = clone_tree(tree)
    originals, copies = list(tensors_of(tree)), list(tensors_of(cloned))
    assert len(originals) == len(copies) == 8 and cloned[3] == 7
    for original, copy in zip(originals, copies, strict=True):
        assert copy.dtype == original.dtype and torch.equal(copy, original)
        original.zero_() if original.dtype != torch.bool else original.logical_not_()
        assert not torch.equal(copy, original)  # its own memory
    assert cloned[0][0].reach_sources == [2] and cloned[0][0].layers[0].grad_w_hh_norm is None


def test_kinds_share_a_graph_by_what_their_capture_records_and_are_bounded():
    assert canonical_capture({"adjoints", "truncation"}) == {"adjoints"}
    assert canonical_capture({"spectra"}) == canonical_capture({"hidden", "lyapunov"})
    assert canonical_capture(set()) == set()
    parts = build_run(tiny(task__name="copy"))
    graphs = StepGraphs(parts, simulate=True)
    batch = parts.on_device(next(parts.task.batches(8, parts.data_generator)))
    whole = [(0, batch.inputs.shape[1])]
    probe_sets = [set(), {"adjoints"}, {"reach"}, {"hidden"}, {"weight_grads"}, {"spectra"}]
    once = [graphs.run(batch, whole, None, fired) for fired in probe_sets]
    twice = [graphs.run(batch, whole, None, fired) for fired in probe_sets]
    assert [done is None for done in once] == [True] * 5 + [False]  # spectra: hidden's kind
    assert len(graphs.seen) == 5 and len(graphs.graphs) == MAX_GRAPHS
    assert [done is None for done in twice] == [False] * 4 + [True, False]  # the fifth: eager


@pytest.mark.parametrize(
    "settings",
    [
        dict(task__name="copy"),
        dict(task__name="lm", task__sampling="sequential", task__max_chars=4000),
        dict(task__name="adding", model__layers=2, model__nonlinearity="relu"),
    ],
)
def test_the_captured_passes_never_read_the_device_on_the_host(settings):
    parts = build_run(tiny(**settings))
    batch = parts.on_device(next(parts.task.batches(8, parts.data_generator)))
    whole = [(0, batch.inputs.shape[1])]
    h0 = torch.zeros(parts.rnn.num_layers, 8, parts.rnn.hidden_size)
    every_record = {"adjoints", "reach", "weight_grads", "hidden"}
    for fired in (set(), {"adjoints"}, every_record):
        for start in (None, h0 if parts.carries_state else None):
            with HostReads() as mode:
                done = forward_backward(parts, batch, whole, start, fired)
            assert mode.reads == [], (fired, mode.reads)
            assert bool(done.finite)  # outside the mode: the step's one host read


def test_an_eager_step_reads_the_device_once_the_finite_guard(monkeypatch):
    parts = build_run(tiny(task__name="copy", probes__weight_grads="always"))
    # Adam reads its step counters, which torch keeps on the host on every device
    monkeypatch.setattr(parts.optimizer, "step", lambda: None)
    probing = Probing(parts.config.probes, parts.rnn, seed=0)
    batch = parts.on_device(next(parts.task.batches(8, parts.data_generator)))
    whole = [(0, batch.inputs.shape[1])]
    for fired in (set(), {"adjoints", "weight_grads", "reach"}):
        with HostReads() as mode:
            train_step(parts, batch, whole, None, step=2, fired=fired, probing=probing)
        assert mode.reads == ["_local_scalar_dense.default"], fired


def test_the_counter_sees_a_host_read_inside_the_hand_backward(monkeypatch):
    """The check above could pass by not seeing into the custom backward: make it read."""
    plant_host_read(monkeypatch)
    parts = build_run(tiny(task__name="copy"))
    batch = parts.on_device(next(parts.task.batches(8, parts.data_generator)))
    with HostReads() as mode:
        forward_backward(parts, batch, [(0, batch.inputs.shape[1])], None, {"adjoints"})
    assert mode.reads


def plant_host_read(monkeypatch):
    """Make the hand backward read a value on the host (it changes no result)."""
    import rnnprobe.core.bptt as bptt

    original = bptt.backward_layer

    def reading(*args, **kwargs):
        args[0].sum().item()
        return original(*args, **kwargs)

    monkeypatch.setattr(bptt, "backward_layer", reading)


def test_a_body_that_syncs_turns_graphs_off_once_and_the_run_stays_exact(tmp_path, monkeypatch):
    plant_host_read(monkeypatch)
    config = tiny(task__name="copy", train__steps=12)
    train_run(config, tmp_path / "eager", progress=False)
    simulated = SimulatedGraphs()
    train_run(config, tmp_path / "graphs", progress=False, callbacks=[simulated])
    assert simulated.graphs is not None and simulated.graphs.failed
    assert not simulated.graphs.graphs
    events = load_run(tmp_path / "graphs").table("events")
    failed = events[events["kind"] == "graph_failed"]
    assert len(failed) == 1 and "_local_scalar_dense" in failed["message"].iloc[0]
    eager = load_run(tmp_path / "eager").tables
    for name, table in load_run(tmp_path / "graphs").tables.items():
        if name not in ("events", "steps"):
            pd.testing.assert_frame_equal(table, eager[name], check_exact=True, obj=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_failed_cuda_capture_leaves_the_run_eager_on_its_stream(tmp_path, monkeypatch):
    plant_host_read(monkeypatch)
    monkeypatch.setenv("RNNPROBE_GRAPHS", "1")
    config = tiny(device="cuda", task__name="copy", train__steps=12)
    train_run(config, tmp_path / "run", progress=False)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    events = load_run(tmp_path / "run").table("events")
    assert (events["kind"] == "graph_failed").sum() == 1
    assert load_run(tmp_path / "run").status["status"] == "done"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_replay_the_eager_records(tmp_path, monkeypatch):
    settings = dict(device="cuda", train__steps=16, probes__weight_grads="every:2")
    config = tiny(task__name="lm", task__sampling="sequential", task__max_chars=4000, **settings)
    train_run(config, tmp_path / "eager", progress=False)
    monkeypatch.setenv("RNNPROBE_GRAPHS", "1")
    seen: list[StepGraphs | None] = []

    class Spy(Callback):
        def on_end(self, trainer: Trainer, status: str) -> None:
            seen.append(trainer.graphs)

    train_run(config, tmp_path / "graphs", progress=False, callbacks=[Spy()])
    graphs = seen[0]
    assert graphs is not None and any(g is not None and g.graph for g in graphs.graphs.values())
    assert_same_records(tmp_path / "eager", tmp_path / "graphs")


class FakeCuda:
    """Stand-ins for the torch.cuda calls a capture makes: they log, keep a current stream,
    and run the captured body eagerly, so the CUDA path's own logic runs on CPU."""

    def __init__(self, monkeypatch, fail_in_capture: bool = False) -> None:
        self.log: list[str] = []
        self.current, self.sync_mode, self.fail = "default", 0, fail_in_capture
        fake = self

        class Stream:
            def __init__(self, name: str = "side") -> None:
                self.name = name

            def wait_stream(self, other) -> None:
                fake.log.append(f"{self.name} waits {other.name}")

        class Graph:
            def pool(self):
                return "pool"

            def replay(self) -> None:
                fake.log.append("replay")

        @contextlib.contextmanager
        def stream(s):
            before, fake.current = fake.current, s.name
            try:
                yield
            finally:
                fake.current = before

        @contextlib.contextmanager
        def graph(g, pool=None, stream=None):
            fake.log.append(f"capture on {stream.name}, pool {pool}, mode {fake.sync_mode}")
            fake.current = stream.name
            yield  # a failing body leaves the capture's stream current, as CUDA may
            if fake.fail:
                raise RuntimeError("operation failed due to a previous error during capture")
            fake.current = "default"

        def set_sync_debug_mode(mode) -> None:
            fake.sync_mode = mode
            fake.log.append(f"sync mode {mode}")

        def set_stream(s) -> None:
            fake.current = s.name

        for name, value in {
            "Stream": Stream,
            "CUDAGraph": Graph,
            "stream": stream,
            "graph": graph,
            "current_stream": lambda: Stream(fake.current),
            "set_stream": set_stream,
            "get_sync_debug_mode": lambda: fake.sync_mode,
            "set_sync_debug_mode": set_sync_debug_mode,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)


def test_the_cuda_capture_path_warms_up_strictly_then_captures_on_its_stream(monkeypatch):
    fake = FakeCuda(monkeypatch)
    parts = build_run(tiny(task__name="copy"))
    graphs = StepGraphs(parts)  # the CUDA path, not simulate
    batch = parts.on_device(next(parts.task.batches(8, parts.data_generator)))
    whole = [(0, batch.inputs.shape[1])]
    eager = forward_backward(parts, batch, whole, None, {"adjoints"})
    assert graphs.run(batch, whole, None, {"adjoints"}) is None  # first of its kind: eager
    captured = graphs.run(batch, whole, None, {"adjoints"})
    assert fake.log == [
        "side waits default",
        "sync mode error",  # the warm-up refuses host syncs
        "sync mode 0",
        "capture on side, pool None, mode 0",
        "default waits side",
        "replay",
    ]
    assert fake.current == "default"
    assert captured is not None and torch.equal(captured.batch.loss, eager.batch.loss)
    grads = [p.grad for p in parts.params]
    assert all(g is not None for g in grads)
    graphs.run(batch, whole, None, {"adjoints"})
    assert fake.log[-1] == "replay" and [p.grad for p in parts.params] == grads
    graphs.run(batch, whole, None, {"reach"})  # another kind: first eager, then captured
    graphs.run(batch, whole, None, {"reach"})
    assert "capture on side, pool pool, mode 0" in fake.log  # into the first graph's pool


def test_a_failed_cuda_capture_restores_the_stream_and_turns_graphs_off(monkeypatch):
    fake = FakeCuda(monkeypatch, fail_in_capture=True)
    parts = build_run(tiny(task__name="copy"))
    failures: list[str] = []
    graphs = StepGraphs(parts, on_failure=failures.append)
    batch = parts.on_device(next(parts.task.batches(8, parts.data_generator)))
    whole = [(0, batch.inputs.shape[1])]
    for _ in range(3):
        assert graphs.run(batch, whole, None, {"adjoints"}) is None
    assert fake.current == "default" and graphs.failed and not graphs.graphs
    assert len(failures) == 1 and "previous error during capture" in failures[0]
