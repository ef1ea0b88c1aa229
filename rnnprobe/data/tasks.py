r"""Training tasks with a stated baseline loss, their batches, and truncated-BPTT segments.

Every batch is generated on the fly from a ``torch.Generator``, so the same seed gives the
same batches. Batches are batch-first and stay on the CPU; the training loop moves them with
``batch.to(device)``.
Letters: ``B`` batch, ``T`` time steps of one batch, ``F`` input features.

    task    inputs              targets             lengths     kind
    lm      (B, T) int64 ids    (B, T) int64 ids    None        lm (targets = inputs shifted by 1)
    copy    (B, T) int64 ids    (B, T) int64 ids    None        per_step_classification
    adding  (B, T, 2) float32   (B,) float32        None        regression
    recall  (B, T) int64 ids    (B,) int64 class    (B,) | None many_to_one_classification
    classify (B, T) int64 ids   (B,) int64 class    (B,)        many_to_one_classification

``classify`` (your own labelled text) lives in :mod:`rnnprobe.data.classify`. A run builds its task
from its config through the registry: :func:`register_task` adds a task of your own, which
``train_run``, studies and reports then take like the built-in ones.

Token id 0 is padding in every token task (``<pad>``), so an embedding may use
``padding_idx=0``. Where ``lengths`` is set, row ``b`` is real for ``t < lengths[b]`` and
padded after; a many-to-one model reads its output at step ``lengths[b] - 1``.

``baseline_loss`` is the loss (nats per target, or MSE) of the best predictor that does not
use the long-range information; a run "beat the baseline" when its loss is clearly below it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from typing_extensions import override

from rnnprobe.data.corpus import (
    PAD_ID,
    STDLIB,
    Corpus,
    bits_per_char,
    build_corpus,
    unigram_entropy,
)
from rnnprobe.data.names import BUILT_IN_TASKS, SAMPLINGS, add_task_name
from rnnprobe.errors import RnnprobeError, check_choice, check_count

if TYPE_CHECKING:
    from rnnprobe.training.config import RunConfig


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch: ``inputs`` (B, T) or (B, T, F), ``targets`` (B, T) or (B,), ``lengths`` (B,).

    ``continues`` is True when row ``b`` carries on the text of row ``b`` of the previous
    batch (sequential LM batches), so the hidden state may be carried over, detached.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor | None = None
    continues: bool = False

    @property
    def mask(self) -> torch.Tensor:
        """Return (B, T) bool, True at the real (unpadded) steps."""
        B, T = self.inputs.shape[:2]  # batch, time steps
        if self.lengths is None:
            return torch.ones(B, T, dtype=torch.bool, device=self.inputs.device)
        steps = torch.arange(T, device=self.inputs.device)
        return steps[None, :] < self.lengths[:, None]

    def _map(self, fn: Any) -> Batch:
        lengths = None if self.lengths is None else fn(self.lengths)
        return Batch(fn(self.inputs), fn(self.targets), lengths, self.continues)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """Return the batch on ``device`` (asynchronous copy when the batch is pinned)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


class Task:
    """What a training run needs to know about its data; subclasses are frozen dataclasses."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "lm" | "per_step_classification" | "many_to_one_classification" | ...
    metric: ClassVar[str]  # "bpc" | "perplexity" | "accuracy" | "mse"
    input_kind: ClassVar[str] = "tokens"  # "tokens": inputs are ids < input_size; "features"
    seq_len: int

    @property
    def steps(self) -> int:
        """Return T, the time steps of every sequence the network runs."""
        return self.seq_len

    @property
    def input_size(self) -> int:
        """Return the vocabulary size (token inputs) or the feature count F."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int | None:
        """Return the number of input token ids, or None for float features."""
        return self.input_size if self.input_kind == "tokens" else None

    @property
    def output_size(self) -> int:
        """Return the number of classes (or 1 for regression) the model must output."""
        raise NotImplementedError

    @property
    def baseline_loss(self) -> float:
        """Return the loss (nats per target, or MSE) a model without memory reaches."""
        raise NotImplementedError

    @property
    def baseline_metric(self) -> float:
        """Return ``metric``'s value for the baseline predictor."""
        raise NotImplementedError

    @property
    def baseline_description(self) -> str:
        """Return one line naming the baseline predictor and its loss."""
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Return one fresh batch of ``batch_size`` sequences drawn with ``generator``."""
        raise NotImplementedError

    def class_rows(self) -> dict[str, list] | None:
        """Return the ``classes`` table's columns (one row per class), or None: no table."""
        return None

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Yield training batches forever (take as many as needed with ``itertools.islice``)."""
        check_count(batch_size, "batch_size")
        while True:
            yield self.sample(batch_size, generator)

    def eval_batches(
        self, batch_size: int, *, num_batches: int | None = None, seed: int = 0
    ) -> list[Batch]:
        """Return a fixed evaluation set: ``num_batches`` (default 8) batches from ``seed``."""
        check_count(batch_size, "batch_size")
        g = torch.Generator().manual_seed(seed)
        count = 8 if num_batches is None else check_count(num_batches, "num_batches")
        return [self.sample(batch_size, g) for _ in range(count)]


# Copy task ids: 0 is padding (never used here), then blank, delimiter, data symbols.
COPY_BLANK, COPY_DELIMITER, COPY_FIRST_SYMBOL = 1, 2, 3


@dataclass(frozen=True)
class CopyTask(Task):
    """Copying memory (Arjovsky et al. 2016): recall ``recall_length`` symbols after a delay.

    Input: ``recall_length`` symbols drawn from ``num_symbols``, ``seq_len - 1`` blanks, a
    delimiter, ``recall_length`` blanks, so T = seq_len + 2·recall_length (seq_len + 20) and
    the delimiter is the last of the ``seq_len`` steps between the symbols and their recall.
    Target: blank everywhere except the last ``recall_length`` steps, which hold the symbols.
    """

    name: ClassVar[str] = "copy"
    kind: ClassVar[str] = "per_step_classification"
    metric: ClassVar[str] = "accuracy"  # on the last recall_length steps
    seq_len: int = 100
    num_symbols: int = 8
    recall_length: int = 10

    def __post_init__(self) -> None:
        check_count(self.seq_len, "seq_len")
        check_count(self.num_symbols, "num_symbols", 2)
        check_count(self.recall_length, "recall_length")

    @property
    def total_len(self) -> int:
        """Return T, the length of every sequence."""
        return self.seq_len + 2 * self.recall_length

    @property
    @override
    def steps(self) -> int:
        return self.total_len

    @property
    @override
    def input_size(self) -> int:
        return COPY_FIRST_SYMBOL + self.num_symbols

    @property
    @override
    def output_size(self) -> int:
        return self.input_size  # targets use the input ids

    @property
    @override
    def baseline_loss(self) -> float:
        return self.recall_length * math.log(self.num_symbols) / self.total_len

    @property
    @override
    def baseline_metric(self) -> float:
        return 1.0 / self.num_symbols

    @property
    @override
    def baseline_description(self) -> str:
        R, n, T = self.recall_length, self.num_symbols, self.total_len
        return (
            f"memoryless: blank with certainty, then uniform over {n} symbols on the last {R} "
            f"steps: {R}·ln {n}/{T} = {self.baseline_loss:.4f} nats/step"
        )

    @override
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        B, T, R = check_count(batch_size, "batch_size"), self.total_len, self.recall_length
        first, last = COPY_FIRST_SYMBOL, COPY_FIRST_SYMBOL + self.num_symbols
        symbols = torch.randint(first, last, (B, R), generator=generator)  # (B, R)
        inputs = torch.full((B, T), COPY_BLANK, dtype=torch.int64)  # (B, T)
        inputs[:, :R] = symbols
        inputs[:, R + self.seq_len - 1] = COPY_DELIMITER
        targets = torch.full((B, T), COPY_BLANK, dtype=torch.int64)  # (B, T)
        targets[:, T - R :] = symbols
        return Batch(inputs, targets)


@dataclass(frozen=True)
class AddingTask(Task):
    """Adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): sum two marked values.

    Inputs (B, T, 2), T = seq_len: channel 0 holds U[0, 1) values, channel 1 is 1 at exactly
    two steps, one in ``[0, T//2)`` and one in ``[T//2, T)``. Target (B,): the sum of the two
    marked values. Predicting the mean, 1, gives MSE = Var(U₁ + U₂) = 1/6.
    """

    name: ClassVar[str] = "adding"
    kind: ClassVar[str] = "regression"
    metric: ClassVar[str] = "mse"
    input_kind: ClassVar[str] = "features"
    seq_len: int = 100

    def __post_init__(self) -> None:
        check_count(self.seq_len, "seq_len", 2)

    @property
    @override
    def input_size(self) -> int:
        return 2

    @property
    @override
    def output_size(self) -> int:
        return 1

    @property
    @override
    def baseline_loss(self) -> float:
        return 1.0 / 6.0

    @property
    @override
    def baseline_metric(self) -> float:
        return self.baseline_loss

    @property
    @override
    def baseline_description(self) -> str:
        return "always predict the mean sum 1: MSE = Var(U1 + U2) = 1/6 = 0.1667"

    @override
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        B, T = check_count(batch_size, "batch_size"), self.seq_len
        values = torch.rand(B, T, generator=generator, dtype=torch.float32)  # (B, T)
        first = torch.randint(0, T // 2, (B,), generator=generator)  # (B,)
        second = torch.randint(T // 2, T, (B,), generator=generator)  # (B,)
        marked = torch.stack([first, second], dim=1)  # (B, 2)
        markers = torch.zeros(B, T, dtype=torch.float32).scatter_(1, marked, 1.0)  # (B, T)
        inputs = torch.stack([values, markers], dim=2)  # (B, T, 2)
        return Batch(inputs, values.gather(1, marked).sum(dim=1))


@dataclass(frozen=True)
class RecallTask(Task):
    """Recall the key seen ``seq_len`` steps ago: many-to-one classification over K keys.

    Inputs (B, T), T = seq_len + 1: a key id in ``1..K`` at step 0, then ``seq_len``
    distractor ids in ``K+1..K+D``. Target (B,): the key's class ``key_id - 1`` in ``[0, K)``.
    With ``variable_length``, row ``b`` has ``lengths[b]`` in ``[2, T]`` real steps and is
    padded with 0 after; the answer is due at the last real step.
    """

    name: ClassVar[str] = "recall"
    kind: ClassVar[str] = "many_to_one_classification"
    metric: ClassVar[str] = "accuracy"
    seq_len: int = 100
    num_classes: int = 8
    num_distractors: int = 8
    variable_length: bool = False

    def __post_init__(self) -> None:
        check_count(self.seq_len, "seq_len")
        check_count(self.num_classes, "num_classes", 2)
        check_count(self.num_distractors, "num_distractors")

    @property
    @override
    def steps(self) -> int:
        return self.seq_len + 1

    @property
    @override
    def input_size(self) -> int:
        return 1 + self.num_classes + self.num_distractors

    @property
    @override
    def output_size(self) -> int:
        return self.num_classes

    @property
    @override
    def baseline_loss(self) -> float:
        return math.log(self.num_classes)

    @property
    @override
    def baseline_metric(self) -> float:
        return 1.0 / self.num_classes

    @property
    @override
    def baseline_description(self) -> str:
        K = self.num_classes
        return f"chance: uniform over {K} keys: ln {K} = {self.baseline_loss:.4f} nats, acc 1/{K}"

    @override
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        B, T, K = check_count(batch_size, "batch_size"), self.seq_len + 1, self.num_classes
        keys = torch.randint(0, K, (B,), generator=generator)  # (B,)
        low, high = K + 1, K + 1 + self.num_distractors
        distractors = torch.randint(low, high, (B, T - 1), generator=generator)  # (B, T-1)
        inputs = torch.cat([keys[:, None] + 1, distractors], dim=1)  # (B, T)
        if not self.variable_length:
            return Batch(inputs, keys)
        lengths = torch.randint(2, T + 1, (B,), generator=generator)  # (B,)
        inputs[torch.arange(T)[None, :] >= lengths[:, None]] = PAD_ID
        return Batch(inputs, keys, lengths)


def random_windows(
    ids: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> Batch:
    """Return ``batch_size`` windows of ``seq_len + 1`` ids from ``ids`` (N,), split in/target.

    ``inputs`` (B, T) is a window's first T ids and ``targets`` (B, T) its last T.
    """
    starts = torch.randint(0, ids.numel() - seq_len, (batch_size,), generator=generator)
    window = ids[starts[:, None] + torch.arange(seq_len + 1)]  # (B, T+1)
    return Batch(window[:, :-1], window[:, 1:])


def sequential_batches(
    ids: torch.Tensor, batch_size: int, seq_len: int, *, drop_last: bool = False
) -> Iterator[Batch]:
    """Yield one pass over ``ids`` (N,) as ``batch_size`` contiguous streams.

    Stream ``b`` is ``ids[b·L : (b+1)·L]`` with L = N // B (the last N mod B ids are unused).
    Batch ``i`` holds steps ``[i·T, (i+1)·T)`` of every stream as inputs and the same steps
    shifted by one as targets, so row ``b`` of batch ``i+1`` continues row ``b`` of batch
    ``i``. The final batch is shorter unless ``drop_last``.
    """
    stream_len = ids.numel() // batch_size
    if stream_len < 2:
        raise RnnprobeError(
            f"{ids.numel()} tokens are too few for batch_size {batch_size}: "
            "each stream needs at least 2 tokens"
        )
    streams = ids[: batch_size * stream_len].view(batch_size, stream_len)  # (B, L)
    for i, start in enumerate(range(0, stream_len - 1, seq_len)):
        end = min(start + seq_len, stream_len - 1)
        if drop_last and end - start < seq_len:
            return
        inputs = streams[:, start:end].contiguous()  # (B, T)
        targets = streams[:, start + 1 : end + 1].contiguous()  # (B, T)
        yield Batch(inputs, targets, continues=i > 0)


@dataclass(frozen=True, eq=False)
class LMTask(Task):
    """Next-token prediction on ``corpus`` with windows of ``seq_len`` inputs.

    ``sampling="random"`` draws independent windows; ``"sequential"`` cycles through the
    training split as contiguous streams (see ``sequential_batches``) so the loop can carry
    the hidden state across batches while ``batch.continues`` is True.
    """

    name: ClassVar[str] = "lm"
    kind: ClassVar[str] = "lm"
    corpus: Corpus
    seq_len: int = 128
    sampling: Literal["random", "sequential"] = "random"
    _unigram: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_count(self.seq_len, "seq_len")
        check_choice(self.sampling, SAMPLINGS, "lm sampling")
        n = self.corpus.train.numel()
        if self.seq_len + 1 > n:
            raise RnnprobeError(
                f"seq_len {self.seq_len} is too long for corpus {self.corpus.source}: its "
                f"training split has {n} tokens and a window needs seq_len + 1"
            )
        entropy = unigram_entropy(self.corpus.train, self.corpus.vocab_size)
        object.__setattr__(self, "_unigram", entropy)

    @property
    def metric(self) -> str:  # type: ignore[override]
        """``bpc`` (bits per character) for a character corpus, else ``perplexity``."""
        return "bpc" if self.corpus.vocab.level == "char" else "perplexity"

    @property
    @override
    def input_size(self) -> int:
        return self.corpus.vocab_size

    @property
    @override
    def output_size(self) -> int:
        return self.corpus.vocab_size

    @property
    @override
    def baseline_loss(self) -> float:
        return self._unigram

    @property
    def uniform_loss(self) -> float:
        """Return ln V, the loss of predicting every token id with equal probability."""
        return math.log(self.corpus.vocab_size)

    @property
    @override
    def baseline_metric(self) -> float:
        return bits_per_char(self._unigram) if self.metric == "bpc" else math.exp(self._unigram)

    @property
    @override
    def baseline_description(self) -> str:
        return (
            f"unigram frequencies of the training split: {self._unigram:.4f} nats/token "
            f"({bits_per_char(self._unigram):.3f} bits); uniform over "
            f"{self.corpus.vocab_size} ids: ln V = {self.uniform_loss:.4f} nats"
        )

    @override
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        check_count(batch_size, "batch_size")
        return random_windows(self.corpus.train, batch_size, self.seq_len, generator)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Yield training batches forever; sequential passes restart with continues=False."""
        if self.sampling == "random":
            yield from super().batches(batch_size, generator)
            return
        check_count(batch_size, "batch_size")
        while True:
            yield from sequential_batches(self.corpus.train, batch_size, self.seq_len)

    def eval_batches(
        self, batch_size: int, *, num_batches: int | None = None, seed: int = 0
    ) -> list[Batch]:
        """Return the validation split as sequential batches (``seed`` is unused)."""
        check_count(batch_size, "batch_size")
        if self.corpus.valid.numel() == 0:
            raise RnnprobeError(f"corpus {self.corpus.source} has an empty validation split")
        out = list(sequential_batches(self.corpus.valid, batch_size, self.seq_len))
        return out if num_batches is None else out[: check_count(num_batches, "num_batches")]


# -- building a run's task: the registry ------------------------------------------------

TaskFactory = Callable[["RunConfig"], Task]
KINDS = ("lm", "per_step_classification", "many_to_one_classification", "regression")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def _lm(config: RunConfig) -> Task:
    c = config.task
    return make_task(
        "lm",
        seq_len=c.seq_len,
        corpus=c.corpus,
        level=c.level,
        sampling=c.sampling,
        max_chars=c.max_chars,
        valid_fraction=c.valid_fraction,
        lowercase=c.lowercase,
        charset=c.charset,
    )


def _recall(config: RunConfig) -> Task:
    c = config.task
    return make_task(
        "recall", seq_len=c.seq_len, num_classes=c.num_classes, variable_length=c.variable_length
    )


def _classify(config: RunConfig) -> Task:
    from rnnprobe.data.classify import ClassifyTask  # it builds on this module
    from rnnprobe.seeds import derived_seed

    c = config.task
    return ClassifyTask.from_path(
        c.data,
        seq_len=c.seq_len,
        seed=derived_seed(config.seed, "split"),
        level=c.level,
        valid_fraction=c.valid_fraction,
        lowercase=c.lowercase,
        charset=c.charset,
        text_column=c.text_column,
        label_column=c.label_column,
    )


_FACTORIES: dict[str, TaskFactory] = {
    "adding": lambda config: make_task("adding", seq_len=config.task.seq_len),
    "copy": lambda config: make_task("copy", seq_len=config.task.seq_len),
    "lm": _lm,
    "recall": _recall,
    "classify": _classify,
}


def register_task(name: str, factory: TaskFactory, *, replace: bool = False) -> None:
    """Make runs with ``task.name = name`` train on ``factory(config)``, a :class:`Task`.

    ``factory`` gets the run's whole :class:`~rnnprobe.training.config.RunConfig` (``config.task.
    seq_len``, ``config.seed``, …) and returns a task whose ``name`` is ``name`` and whose
    ``kind`` is one of ``KINDS``; its model and loss follow from the kind. After this,
    ``build_config``, ``train_run``, :func:`task_from_config` and studies accept the name;
    reports read only the records, so they need nothing. Register at import time of your
    module (the top level of your script): study workers (``--jobs N``) are spawned processes
    that import it again. CLI flags take their choices when the CLI is imported, so
    ``rnnprobe train --task NAME`` knows only the tasks registered before that. A built-in
    task cannot be replaced; a name of your own only with ``replace=True``.

    Example, a parity task (is the number of ones odd?)::

        from dataclasses import dataclass
        from typing import ClassVar

        import math, torch
        from rnnprobe import build_config, train_run
        from rnnprobe.data.tasks import Batch, Task, register_task

        @dataclass(frozen=True)
        class ParityTask(Task):
            name: ClassVar[str] = "parity"
            kind: ClassVar[str] = "many_to_one_classification"
            metric: ClassVar[str] = "accuracy"
            seq_len: int = 10
            input_size = 3  # ids: 0 padding, 1 a zero, 2 a one
            output_size = 2
            baseline_loss = math.log(2)
            baseline_metric = 0.5
            baseline_description = "chance: ln 2 nats, accuracy 1/2"

            def sample(self, batch_size, generator):
                bits = torch.randint(0, 2, (batch_size, self.seq_len), generator=generator)
                return Batch(bits + 1, bits.sum(1) % 2)

        register_task("parity", lambda config: ParityTask(seq_len=config.task.seq_len))
        train_run(build_config({"task.name": "parity", "task.seq_len": 4}), "runs/parity")
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise RnnprobeError(
            f"task name {name!r} must be lowercase letters, digits, '_' or '-', "
            "starting with a letter"
        )
    if not callable(factory):
        raise RnnprobeError(f"the factory of task {name!r} is not callable: {factory!r}")
    if name in BUILT_IN_TASKS:
        raise RnnprobeError(f"{name!r} is a built-in task; register yours under another name")
    if name in _FACTORIES and not replace:
        raise RnnprobeError(f"task {name!r} is already registered; pass replace=True")
    _FACTORIES[name] = factory
    add_task_name(name)


def task_from_config(config: RunConfig) -> Task:
    """Return the task ``config.task.name`` names, built by its factory and checked."""
    name = config.task.name
    task = _FACTORIES[check_choice(name, _FACTORIES, "task")](config)
    if not isinstance(task, Task):
        raise RnnprobeError(
            f"the factory of task {name!r} returned {type(task).__name__}, not a rnnprobe Task"
        )
    if getattr(task, "name", None) != name:
        raise RnnprobeError(
            f"the factory of task {name!r} returned a task named {getattr(task, 'name', None)!r}"
        )
    check_choice(task.kind, KINDS, f"the kind of task {name!r}")
    return task


TASKS: dict[str, type[Task]] = {
    "adding": AddingTask,
    "copy": CopyTask,
    "lm": LMTask,
    "recall": RecallTask,
}
_CORPUS_OPTIONS = (
    "level",
    "valid_fraction",
    "max_chars",
    "max_vocab",
    "lowercase",
    "charset",
)


def make_task(name: str, **options: Any) -> Task:
    """Return the task called ``name`` built from ``options`` (its dataclass fields).

    For ``lm``, ``corpus`` may be a ``Corpus``, a path or ``"stdlib"`` (the default), with
    ``level``, ``valid_fraction``, ``max_chars``, ``max_vocab``, ``lowercase`` and
    ``charset`` passed to ``build_corpus``. (``classify`` needs its data:
    ``rnnprobe.data.classify.ClassifyTask.from_path``; a run config: :func:`task_from_config`.)
    """
    cls = TASKS[check_choice(name, TASKS, "task")]
    valid = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    if name == "lm":
        valid += _CORPUS_OPTIONS
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise RnnprobeError(
            f"unknown option(s) {', '.join(unknown)} for task {name}; valid: {', '.join(valid)}"
        )
    if name == "lm":
        corpus_options = {k: options.pop(k) for k in _CORPUS_OPTIONS if k in options}
        corpus = options.pop("corpus", STDLIB)
        if isinstance(corpus, str | os.PathLike):
            corpus = build_corpus(corpus, **corpus_options)
        elif corpus_options:
            raise RnnprobeError(f"{', '.join(corpus_options)} apply only to a corpus path")
        options["corpus"] = corpus
    return cls(**options)
