r"""Text classification ("bring your own data"): many-to-one over padded token sequences.

    classify  inputs (B, T) int64 ids, 0-padded   targets (B,) int64 class   lengths (B,)

The data (:mod:`rnnprobe.data.textdata`) is a folder of ``<class>.txt`` files or a CSV/TSV file,
split per class into training and validation examples. Training batches draw ``B`` training
examples uniformly, with replacement, with the run's data generator; the evaluation set is the
validation split in a fixed order, in batches of ``B`` (the last one shorter). T is the
longest kept example (at most ``seq_len``); a model reads its output at its last real step.

Baseline: the class prior of the training split, p. Predicting p for every example costs its
entropy H(p) = −Σ_c p_c ln p_c nats (the loss baseline); always answering the majority class
scores max_c p_c (the accuracy baseline).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rnnprobe.data.tasks import Batch, Task
from rnnprobe.data.textdata import LabelledData, build_labelled_data
from rnnprobe.errors import RnnprobeError, check_count

__all__ = ["ClassifyTask"]


@dataclass(frozen=True, eq=False)
class ClassifyTask(Task):
    """Classify each example of ``data`` into one of its K classes (see module docstring)."""

    name: ClassVar[str] = "classify"
    kind: ClassVar[str] = "many_to_one_classification"
    metric: ClassVar[str] = "accuracy"
    data: LabelledData
    seq_len: int = 20  # the cap on an example's length; ``steps`` is the padded length T

    def __post_init__(self) -> None:
        check_count(self.seq_len, "seq_len")
        if self.data.train_labels.numel() == 0:
            raise RnnprobeError(f"{self.data.source} has no training examples")

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], *, seq_len: int = 20, seed: int = 0, **options: Any
    ) -> ClassifyTask:
        """Return the task on the data at ``path``, split with ``seed``.

        ``options`` go to :func:`rnnprobe.data.textdata.build_labelled_data` (``level``,
        ``valid_fraction``, ``lowercase``, ``charset``, ``text_column``, ``label_column``).
        """
        check_count(seq_len, "seq_len")
        generator = torch.Generator().manual_seed(seed)
        data = build_labelled_data(path, max_len=seq_len, generator=generator, **options)
        return cls(data, seq_len)

    @property
    def steps(self) -> int:
        """Return T, the padded length: the longest kept example (at most ``seq_len``)."""
        return self.data.seq_len

    @property
    def input_size(self) -> int:
        """Return the vocabulary size, the padding and unknown tokens (ids 0, 1) included."""
        return len(self.data.vocab)

    @property
    def output_size(self) -> int:
        """Return K, the number of classes."""
        return self.data.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """Return the K class names, in class-id order."""
        return self.data.classes

    @property
    def prior(self) -> torch.Tensor:
        """Return (K,) float64: the class frequencies of the training split."""
        counts = self.data.class_counts("train").double()
        return counts / counts.sum()

    @property
    def baseline_loss(self) -> float:
        """Return H(p), the entropy in nats of the training split's class prior p."""
        p = self.prior
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    @property
    def baseline_metric(self) -> float:
        """Return max_c p_c: the accuracy of always answering the majority class."""
        return float(self.prior.max())

    @property
    def baseline_description(self) -> str:
        """Return one line naming the baseline predictors and their accuracy and loss."""
        K, majority = self.output_size, self.class_names[int(self.prior.argmax())]
        return (
            f"majority class of the training split: always {majority!r} scores accuracy "
            f"{self.baseline_metric:.4f}; predicting the class prior costs its entropy "
            f"{self.baseline_loss:.4f} nats (uniform over {K} classes: ln {K} = "
            f"{math.log(K):.4f})"
        )

    def class_rows(self) -> dict[str, list]:
        """Return the ``classes`` table's columns: one row per class, recorded at step 0."""
        d = self.data
        return {
            "step": [0] * d.num_classes,
            "class": list(range(d.num_classes)),
            "name": list(d.classes),
            "train_examples": d.class_counts("train").tolist(),
            "valid_examples": d.class_counts("valid").tolist(),
            "truncated": list(d.truncated),
            "dropped": list(d.dropped),
            "mean_length": list(d.mean_length),
        }

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Return ``batch_size`` training examples drawn uniformly, with replacement."""
        B, d = check_count(batch_size, "batch_size"), self.data
        rows = torch.randint(0, len(d.train_labels), (B,), generator=generator)  # (B,)
        return Batch(d.train_ids[rows], d.train_labels[rows], d.train_lengths[rows])

    def eval_batches(
        self, batch_size: int, *, num_batches: int | None = None, seed: int = 0
    ) -> list[Batch]:
        """Return the validation split in order as batches of ``batch_size`` (``seed`` unused).

        ``num_batches`` keeps the first that many (the split is shuffled, so they are a fair
        sample); None keeps the whole split.
        """
        check_count(batch_size, "batch_size")
        d = self.data
        if d.valid_labels.numel() == 0:
            raise RnnprobeError(f"{d.source} has no validation examples: raise --valid-fraction")
        count = math.ceil(d.valid_labels.numel() / batch_size)
        if num_batches is not None:
            count = min(count, check_count(num_batches, "num_batches"))
        return [
            Batch(d.valid_ids[s:e], d.valid_labels[s:e], d.valid_lengths[s:e])
            for s, e in ((i * batch_size, (i + 1) * batch_size) for i in range(count))
        ]
