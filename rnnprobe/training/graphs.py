r"""CUDA-graph replay of a training step's passes: ``RNNPROBE_GRAPHS=1``, on CUDA only.

On a GPU the eager step is launch-bound: the hand BPTT launches a few kernels per time step
and layer. A CUDA graph records the kernels of :func:`~rnnprobe.training.step.forward_backward`
(forward, loss, backward with its records, clipping, the finite flag) once and replays them
with one launch. The update stays outside: it waits for the finite check, the step's one host
sync.

A graph replays the same kernels on the same memory, so it serves only the steps whose work
is the one it captured, a *kind*: the batch's shapes and dtypes, no padding, one backward pass
over the whole sequence, the same capture (which records the fired probes read), an initial
state or none. Runs with dropout stay eager (a replay would draw other masks than an eager step),
and so do steps that add to the gradients (truncation bias, flossing). A kind runs eagerly the
first time (lazy initialisation), is captured the second and replayed after that; at most
``MAX_GRAPHS`` kinds are captured, the first to come twice; they share one memory pool (they
never replay at once, and each replay writes all it reads). The warm-up before a capture
refuses host syncs; a capture that fails all the same turns graphs off for the rest of the run
(a failed capture can leave CUDA's allocator unusable for another) and is reported once
through ``on_failure``.

A replay writes the graph's own outputs and gradient buffers (written, not accumulated): the
caller gets clones of the outputs, and the parameters get the graph's gradients back before
the update. ``simulate=True`` runs the same bookkeeping without CUDA — the capture refuses the
ops that read a value on the host, as CUDA's sync check does, and each replay reruns the
passes eagerly and copies their results into the captured tensors — so the CPU tests check it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rnnprobe.data.tasks import Batch
from rnnprobe.training.probing import STATE_PROBES
from rnnprobe.training.setup import RunParts
from rnnprobe.training.step import BACKWARD_PROBES, Pass, forward_backward

MAX_GRAPHS = 4
# the ops that read a tensor's values on the host: on a GPU each one waits for the device
HOST_READS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"})
Tree = TypeVar("Tree")


def wanted() -> bool:
    """Return whether CUDA graphs are asked for (``RNNPROBE_GRAPHS=1`` in the environment)."""
    return os.environ.get("RNNPROBE_GRAPHS") == "1"


def map_tensors(tree: Tree, fn: Callable[[torch.Tensor], torch.Tensor]) -> Tree:
    """Return ``tree`` (dataclasses, lists, tuples) with ``fn`` applied to every tensor in it."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)  # type: ignore[return-value]
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {f.name: map_tensors(getattr(tree, f.name), fn) for f in dataclasses.fields(tree)}
        return dataclasses.replace(tree, **changes)
    if isinstance(tree, list | tuple):
        return type(tree)(map_tensors(item, fn) for item in tree)
    return tree


def tensors_of(tree: Any) -> Iterator[torch.Tensor]:
    """Yield every tensor in ``tree``, in the order :func:`map_tensors` visits them."""
    found: list[torch.Tensor] = []
    map_tensors(tree, lambda t: found.append(t) or t)  # type: ignore[func-returns-value]
    yield from found


def clone_tree(tree: Tree) -> Tree:
    """Return ``tree`` with every tensor cloned: its 0-d tensors (loss, metric, norms, flags)
    in one copy per dtype and device, the others one by one, so a kept scalar never holds a
    record's memory."""
    tensors = list(tensors_of(tree))
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, tensor in enumerate(tensors):
        if tensor.dim() == 0:
            groups.setdefault((tensor.dtype, tensor.device), []).append(i)
    clones: list[torch.Tensor] = [t if t.dim() == 0 else t.clone() for t in tensors]
    for members in groups.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in members])
        parts = flat.split([tensors[i].numel() for i in members])
        for i, part in zip(members, parts, strict=True):
            clones[i] = part.view(tensors[i].shape)
    order = iter(clones)
    return map_tensors(tree, lambda _: next(order))


class HostReadError(RuntimeError):
    """An op read a device value on the host where a CUDA graph will be captured."""


class _RefuseHostReads(TorchDispatchMode):
    """Raise on every op that reads a tensor's values on the host (CUDA's sync check, on CPU)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.__name__.split(".")[0] in HOST_READS:
            raise HostReadError(f"{func.__name__} reads a device value on the host")
        return func(*args, **(kwargs or {}))


@contextmanager
def refusing_host_syncs(simulate: bool) -> Iterator[None]:
    """Make an op that waits on the device raise: CUDA's sync debug mode, or on CPU (``simulate``)
    a dispatch mode that refuses the ops reading a value on the host."""
    if simulate:
        with _RefuseHostReads():
            yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():  # "a prototype feature"
        warnings.simplefilter("ignore", UserWarning)
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class StepGraph:
    """A body of kernels captured at its first call and replayed at the next ones.

    ``body()`` reads only tensors whose memory stays put (the caller refills them before each
    call) and returns a tree of tensors; ``params`` get their gradients from it. ``pool``: the
    memory pool of another graph to share (graphs that never replay at once can).
    """

    def __init__(
        self,
        body: Callable[[], Tree],
        params: Sequence[torch.Tensor],
        simulate: bool = False,
        pool: Any = None,
    ) -> None:
        self.body, self.params, self.simulate, self.pool = body, list(params), simulate, pool
        self.calls = 0
        self.graph: Any = None  # torch.cuda.CUDAGraph once captured
        self.outputs: Any = None
        self.grads: list[torch.Tensor | None] = []

    def __call__(self) -> Any:
        """Run the body's kernels; return its outputs, cloned."""
        self.calls += 1
        if self.outputs is None:
            self._capture()
        else:
            self._replay()
        for param, grad in zip(self.params, self.grads, strict=True):
            param.grad = grad
        return clone_tree(self.outputs)

    def _capture(self) -> None:
        """Warm up with host syncs refused (a body that syncs fails here, before a capture
        starts and can leave CUDA's allocator mid-capture), then capture on the same stream."""
        for param in self.params:
            param.grad = None  # the captured backward allocates them in the graph's memory
        if self.simulate:
            with refusing_host_syncs(simulate=True):
                self.outputs = self.body()
            self.grads = [param.grad for param in self.params]
            return
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side), refusing_host_syncs(simulate=False):
                self.body()  # the warm-up torch asks for, on the capture's stream
            for param in self.params:
                param.grad = None
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=side):
                self.outputs = self.body()
        finally:
            torch.cuda.set_stream(current)  # a failed capture can leave its stream current
        current.wait_stream(side)
        graph.replay()  # the capture only recorded the kernels: run them for this step
        self.graph = graph
        self.grads = [param.grad for param in self.params]

    def _replay(self) -> None:
        if not self.simulate:
            self.graph.replay()
            return
        before = [param.grad for param in self.params]  # a replay leaves the attributes be
        fresh = self.body()
        for static, new in zip(tensors_of(self.outputs), tensors_of(fresh), strict=True):
            static.copy_(new)
        for param, static_grad, grad in zip(self.params, self.grads, before, strict=True):
            if static_grad is not None and param.grad is not None:
                static_grad.copy_(param.grad)
            param.grad = grad


Kind = tuple[Any, ...]


class StepGraphs:
    """A run's step graphs, one per kind of step (see the module docstring)."""

    def __init__(
        self,
        parts: RunParts,
        on_failure: Callable[[str], None] = lambda message: None,
        simulate: bool = False,
    ) -> None:
        self.parts, self.on_failure, self.simulate = parts, on_failure, simulate
        self.seen: set[Kind] = set()  # kinds run once, eagerly
        self.failed = False  # a capture failed: every step runs eagerly from then on
        self.graphs: dict[Kind, StepGraph | None] = {}  # None: this kind runs eagerly
        self.inputs: dict[Kind, tuple[Batch, torch.Tensor | None]] = {}

    @staticmethod
    def usable(parts: RunParts, simulate: bool = False) -> bool:
        """Return whether a run can replay graphs: on CUDA (or simulated), without dropout."""
        dropout = any(
            isinstance(m, torch.nn.Dropout) and m.p > 0 for m in parts.model.modules()
        ) or (parts.rnn.dropout > 0 and parts.rnn.num_layers > 1)
        return (simulate or parts.device.type == "cuda") and not dropout

    def run(
        self,
        batch: Batch,
        segments: list[tuple[int, int]],
        h0: torch.Tensor | None,
        fired: set[str],
    ) -> Pass | None:
        """Return the step's passes from its kind's graph, or None: run them eagerly."""
        T = batch.inputs.shape[1]
        if self.failed or batch.lengths is not None or list(segments) != [(0, T)]:
            return None
        capture = canonical_capture(fired)
        kind = (
            tuple(batch.inputs.shape),
            batch.inputs.dtype,
            tuple(batch.targets.shape),
            batch.targets.dtype,
            None if h0 is None else tuple(h0.shape),
            tuple(sorted(capture)),
        )
        if kind not in self.graphs:
            if kind not in self.seen or len(self.graphs) >= MAX_GRAPHS:
                self.seen.add(kind)  # the first step of a kind runs eagerly: lazy set-ups
                return None
            self.graphs[kind] = self._new_graph(kind, batch, h0, capture)
        graph = self.graphs[kind]
        if graph is None:
            return None
        static_batch, static_h0 = self.inputs[kind]
        static_batch.inputs.copy_(batch.inputs)
        static_batch.targets.copy_(batch.targets)
        if static_h0 is not None and h0 is not None:
            static_h0.copy_(h0)
        try:
            done: Pass = graph()
        except RuntimeError as error:  # a body that syncs, or a capture CUDA refuses
            self.failed = True
            self.graphs.clear()
            self.inputs.clear()
            cause = error.__context__ if isinstance(error.__context__, Exception) else error
            reason = (str(cause).strip() or type(cause).__name__).splitlines()[0]
            self.on_failure(f"CUDA graph capture failed, every step runs eagerly: {reason}")
            return None
        return done

    def _new_graph(
        self, kind: Kind, batch: Batch, h0: torch.Tensor | None, capture: set[str]
    ) -> StepGraph:
        static_batch = Batch(batch.inputs.clone(), batch.targets.clone(), None, batch.continues)
        static_h0 = None if h0 is None else h0.clone()
        self.inputs[kind] = (static_batch, static_h0)
        T = batch.inputs.shape[1]

        def body() -> Pass:
            return forward_backward(self.parts, static_batch, [(0, T)], static_h0, capture)

        pools = [g.graph.pool() for g in self.graphs.values() if g is not None and g.graph]
        return StepGraph(body, self.parts.params, self.simulate, pools[0] if pools else None)


def canonical_capture(fired: set[str]) -> set[str]:
    """Return the smallest set of probes whose capture records what ``fired``'s does: steps
    whose probes differ but read the same records share a graph."""
    capture: set[str] = {name for name in ("reach", "weight_grads") if name in fired}
    if fired & STATE_PROBES:
        capture.add("hidden")
    if fired & BACKWARD_PROBES:
        capture.add("adjoints")
    return capture
