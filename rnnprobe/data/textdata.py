r"""Labelled text for classification: reading, preprocessing, a stratified split, padded ids.

Two layouts, each UTF-8:

    DIR/<class>.txt   one file per class, one example per line (blank lines skipped); the
                      class name is the file stem: the PyTorch names tutorial's data/names/
    FILE.csv | .tsv   a header row naming the columns, then one example per row; the text and
                      label columns are chosen by name (``text`` and ``label`` by default)

Classes are numbered in sorted name order (numeric labels in numeric order). Every example
is preprocessed (:func:`rnnprobe.data.corpus.preprocess_text`) and stripped; one left empty is
dropped and counted.
The split is stratified: each class's examples are shuffled with the split's generator and
``round(n·valid_fraction)`` of them (at most n − 1) are held out. The vocabulary comes from the
training examples only (validation tokens never seen in training encode as ``<unk>``).
Examples become rows of token ids padded with ``<pad>`` (id 0) after their length; one longer
than ``max_len`` keeps its first ``max_len`` tokens and is counted as truncated.

Letters: ``N`` examples of a split, ``T`` padded length (the longest kept example), ``K``
classes.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnprobe.data.corpus import (
    PAD,
    PAD_ID,
    UNK,
    UNK_ID,
    Level,
    Vocab,
    check_level,
    preprocess_text,
    read_text_file,
    tokenize,
)
from rnnprobe.errors import RnnprobeError

__all__ = [
    "Examples",
    "LabelledData",
    "build_labelled_data",
    "read_class_folder",
    "read_labelled",
    "read_table_file",
    "stratified_split",
]

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}


@dataclass(frozen=True)
class Examples:
    """Raw labelled examples: ``texts[i]`` belongs to class ``labels[i]`` of ``classes``."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    source: str


def read_labelled(
    path: str | os.PathLike[str], *, text_column: str = "text", label_column: str = "label"
) -> Examples:
    """Return the examples of a class folder or a .csv/.tsv file, checked (see module doc)."""
    p = Path(path)
    if not p.exists():
        raise RnnprobeError(f"classification data not found: {p}")
    if p.is_dir():
        examples = read_class_folder(p)
    elif p.suffix.lower() in TABLE_SUFFIXES:
        examples = read_table_file(p, text_column=text_column, label_column=label_column)
    else:
        raise RnnprobeError(
            f"classification data must be a folder of <class>.txt files or a .csv/.tsv file: {p}"
        )
    if len(examples.classes) < 2:
        only = examples.classes[0] if examples.classes else "none"
        raise RnnprobeError(f"{p} holds one class only ({only!r}); a classifier needs two or more")
    return examples


def read_class_folder(folder: Path) -> Examples:
    """Return one class per ``*.txt`` file of ``folder`` (sorted), one example per line."""
    files = sorted(
        f for f in folder.iterdir() if f.suffix.lower() == ".txt" and not f.name.startswith(".")
    )  # A.TXT too: a folder written on Windows
    if not files:
        raise RnnprobeError(f"no <class>.txt files in the classification folder {folder}")
    texts, labels = [], []
    for label, file in enumerate(files):
        text = read_text_file(file, what="class file")  # empty or blank: a class without examples
        lines = [line.strip() for line in text.split("\n")]  # "\r\n" too; nothing else splits
        kept = [line for line in lines if line]
        texts += kept
        labels += [label] * len(kept)
    return Examples(tuple(texts), tuple(labels), tuple(f.stem for f in files), str(folder))


def read_table_file(
    path: Path, *, text_column: str = "text", label_column: str = "label"
) -> Examples:
    """Return the examples of a CSV (comma) or TSV (tab) file with a header row.

    Rows whose text is empty are skipped; a row without a label, or too short to hold both
    columns, is an error naming the file and line.
    """
    text = read_text_file(path, what="data file")
    delimiter = TABLE_SUFFIXES[path.suffix.lower()]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        missing = [c for c in (text_column, label_column) if c not in header]
        if missing:
            flag = "--text-column" if text_column in missing else "--label-column"
            columns = ", ".join(header) or "none"
            raise RnnprobeError(
                f"{path} has no column {missing[0]!r} (its columns: {columns}); "
                f"name the column with {flag}"
            )
        at_text, at_label = header.index(text_column), header.index(label_column)
        pairs = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) <= max(at_text, at_label):
                raise RnnprobeError(
                    f"{path}, line {line}: {len(row)} fields, but the header names {len(header)}"
                )
            label = row[at_label].strip()
            if not label:
                raise RnnprobeError(f"{path}, line {line}: the {label_column!r} cell is empty")
            if row[at_text].strip():
                pairs.append((row[at_text].strip(), label))
    except csv.Error as err:
        raise RnnprobeError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from None
    if not pairs:
        raise RnnprobeError(f"{path} holds no examples: every row's {text_column!r} is empty")
    classes = tuple(sorted({label for _, label in pairs}, key=_label_order))
    index = {name: i for i, name in enumerate(classes)}
    texts = tuple(t for t, _ in pairs)
    return Examples(texts, tuple(index[label] for _, label in pairs), classes, str(path))


def _label_order(label: str) -> tuple:
    """Sort key: numbers in numeric order (2 before 10), then other labels as text."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def stratified_split(
    labels: Sequence[int], valid_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (train, valid) int64 indices: per class a shuffled ``round(n·f)`` (≤ n − 1) held out.

    Each split comes out shuffled (classes interleaved), so any prefix of it is a fair sample.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise RnnprobeError(f"valid_fraction must lie in (0, 1), got {valid_fraction}")
    y = torch.as_tensor(list(labels), dtype=torch.int64)
    train, valid = [], []
    for c in range(int(y.max()) + 1 if len(y) else 0):
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held = min(round(len(members) * valid_fraction), max(len(members) - 1, 0))
        valid.append(members[:held])
        train.append(members[held:])
    train_idx, valid_idx = torch.cat(train), torch.cat(valid)
    train_idx = train_idx[torch.randperm(len(train_idx), generator=generator)]
    valid_idx = valid_idx[torch.randperm(len(valid_idx), generator=generator)]
    return train_idx, valid_idx


@dataclass(frozen=True, eq=False)
class LabelledData:
    """Encoded splits: ``*_ids`` (N, T) int64 padded with 0, ``*_lengths`` (N,), ``*_labels`` (N,).

    Per class ``c``: ``dropped[c]`` examples left empty by preprocessing, ``truncated[c]`` cut
    to T tokens (both splits), ``mean_length[c]`` tokens before truncation.
    """

    train_ids: torch.Tensor
    train_lengths: torch.Tensor
    train_labels: torch.Tensor
    valid_ids: torch.Tensor
    valid_lengths: torch.Tensor
    valid_labels: torch.Tensor
    vocab: Vocab
    classes: tuple[str, ...]
    source: str
    dropped: tuple[int, ...]
    truncated: tuple[int, ...]
    mean_length: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        """Return K."""
        return len(self.classes)

    @property
    def seq_len(self) -> int:
        """Return T, the padded length of every row."""
        return int(self.train_ids.shape[1])

    def class_counts(self, split: str) -> torch.Tensor:
        """Return (K,) int64: examples per class in ``split`` ("train" or "valid")."""
        labels = self.train_labels if split == "train" else self.valid_labels
        return torch.bincount(labels, minlength=self.num_classes)


def build_labelled_data(
    path: str | os.PathLike[str],
    *,
    max_len: int,
    generator: torch.Generator,
    level: Level = "char",
    valid_fraction: float = 0.1,
    lowercase: bool = False,
    charset: str = "all",
    text_column: str = "text",
    label_column: str = "label",
) -> LabelledData:
    """Return the data at ``path`` preprocessed, split with ``generator`` and encoded.

    T is the longest kept example's length, capped at ``max_len``.
    """
    check_level(level)
    raw = read_labelled(path, text_column=text_column, label_column=label_column)
    K = len(raw.classes)
    texts, labels, dropped = [], [], [0] * K
    for text, label in zip(raw.texts, raw.labels, strict=True):
        clean = preprocess_text(text, lowercase=lowercase, charset=charset).strip()
        if clean:
            texts.append(clean)
            labels.append(label)
        else:
            dropped[label] += 1
    present = Counter(labels)
    empty = [raw.classes[c] for c in range(K) if present[c] == 0]
    if empty:
        raise RnnprobeError(
            f"{raw.source}: class {empty[0]!r} has no examples left after preprocessing "
            f"(--charset {charset}); choose another --charset"
        )
    train_idx, valid_idx = stratified_split(labels, valid_fraction, generator)
    tokens = [tokenize(t, level) for t in texts]
    counts = Counter(tok for i in train_idx.tolist() for tok in tokens[i])
    counts.pop(PAD, None)
    counts.pop(UNK, None)
    vocab = Vocab((PAD, UNK, *sorted(counts)), level)
    lengths = torch.tensor([len(t) for t in tokens], dtype=torch.int64)  # (N_all,)
    T = min(int(lengths.max()), max_len)
    ids = torch.full((len(texts), T), PAD_ID, dtype=torch.int64)  # (N_all, T)
    index = {t: i for i, t in enumerate(vocab.tokens)}
    for i, example in enumerate(tokens):
        row = [index.get(tok, UNK_ID) for tok in example[:T]]
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
    y = torch.tensor(labels, dtype=torch.int64)  # (N_all,)
    cut = lengths > T
    mean = torch.zeros(K, dtype=torch.float64).index_add_(0, y, lengths.double())
    mean = mean / torch.bincount(y, minlength=K).double()
    kept = lengths.clamp(max=T)
    return LabelledData(
        ids[train_idx],
        kept[train_idx],
        y[train_idx],
        ids[valid_idx],
        kept[valid_idx],
        y[valid_idx],
        vocab,
        raw.classes,
        raw.source,
        tuple(dropped),
        tuple(int(v) for v in torch.bincount(y[cut], minlength=K)),
        tuple(float(v) for v in mean),
    )
