r"""Text corpora for language-model runs: loading, vocabulary, encoding, train/validation split.

A corpus is a text file (``--corpus PATH``, UTF-8) or the built-in offline corpus ``stdlib``:
the Python standard library's own ``.py`` sources, read in sorted path order and capped in
size, so every machine with the same Python sees the same text and no network is needed.

Token ids are ``int64``; the ids ``0`` and ``1`` are reserved for ``<pad>`` and ``<unk>``,
the rest follow in sorted token order. The vocabulary is built from the training split only,
so validation tokens never seen in training encode as ``<unk>``.

Preprocessing (``--lowercase``, ``--charset``) is applied to the text before it is split and
before the vocabulary is built; :func:`preprocess_text` states the filters. With
``--lowercase true --charset letters-space`` a text keeps 27 symbols (a–z and space; 29 ids
with ``<pad>`` and ``<unk>``): d2l's time-machine setup.

Loss units: a mean cross-entropy ``ℓ`` in nats per token gives ``bpc = ℓ / ln 2`` and
perplexity ``e^ℓ``.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import sysconfig
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rnnprobe.data.names import CHARSETS, LEVELS
from rnnprobe.errors import RnnprobeError, check_choice, check_count

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
STDLIB = "stdlib"
DEFAULT_STDLIB_CHARS = 2_000_000  # ~2 MB: large enough for char LMs, reads in well under 1 s
Level = Literal["char", "word"]  # names.LEVELS

# Words, runs of whitespace, or any other single character: every character falls in exactly
# one class, so joining the tokens gives back the text.
_WORD_PATTERN = re.compile(r"\w+|\s+|[^\w\s]")


def read_text_file(
    path: str | os.PathLike[str], *, max_chars: int | None = None, what: str = "corpus file"
) -> str:
    r"""Return the UTF-8 text of ``path`` (first ``max_chars`` characters if given), its line
    endings read as Python's text mode reads them: ``\r\n`` and a lone ``\r`` become ``\n``.

    With ``max_chars`` only the bytes that can hold them are read and checked (UTF-8 takes at
    most 4 bytes a character): a large corpus is not read whole, and what lies beyond is not
    judged. ``max_chars`` counts the file's characters, before ``\r\n`` becomes one.
    Errors are one line naming ``what`` (e.g. "class file") and the path.
    """
    p = Path(path)
    if not p.exists():
        raise RnnprobeError(f"{what} not found: {p}")
    if p.is_dir():
        raise RnnprobeError(f"{what} is a directory, not a text file: {p}")
    if not p.is_file():  # a FIFO or a device: reading it could wait forever
        raise RnnprobeError(f"{what} is not a regular file: {p}")
    limit = None if max_chars is None else 4 * check_count(max_chars, "max_chars") + len(_BOM)
    try:
        with p.open("rb") as file:
            data = file.read() if limit is None else file.read(limit + 1)
    except OSError as err:
        raise RnnprobeError(f"cannot read {what} {p}: {err.strerror or err}") from None
    whole = limit is None or len(data) <= limit
    data = data if whole else data[:limit]
    if not data:
        raise RnnprobeError(f"{what} is empty: {p}")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise RnnprobeError(f"{what} looks binary (NUL byte at byte offset {nul}): {p}")
    # Each byte that is not UTF-8 decodes to one lone surrogate U+DC80–U+DCFF (valid UTF-8
    # never yields one), so only the characters kept are judged, and a character cut at the
    # end of the prefix, after them, is not.
    full = data.decode("utf-8-sig", errors="surrogateescape")
    text = full[:max_chars]
    bad = _ESCAPED_BYTE.search(text)
    if bad is not None:
        offset = len(text[: bad.start()].encode("utf-8", "surrogateescape"))
        offset += len(_BOM) if data.startswith(_BOM) else 0
        raise RnnprobeError(
            f"{what} is not UTF-8 (byte 0x{data[offset]:02x} at byte offset {offset}): {p}"
        )
    if not text.strip():
        read = "" if whole and text == full else f" in its first {max_chars} characters"
        raise RnnprobeError(f"{what} has no text{read}, only whitespace: {p}")
    return _LINE_END.sub("\n", text)  # a Windows file's \r would be a token of its own


_BOM = codecs.BOM_UTF8
_LINE_END = re.compile("\r\n?")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


_NOT_LETTERS = re.compile(r"[^A-Za-z]+")
_NOT_ASCII = re.compile(r"[^\x00-\x7f]+")


def check_charset(charset: str) -> str:
    """Return ``charset`` if it names a character filter, else raise a one-line error."""
    return check_choice(charset, CHARSETS, "charset")


def fold_accents(text: str) -> str:
    """Return ``text`` with accents removed where a base letter exists (é → e, Ł stays)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def preprocess_text(text: str, *, lowercase: bool = False, charset: str = "all") -> str:
    """Return ``text`` lowercased (if asked) and then passed through the ``charset`` filter.

    ``all``: unchanged. ``ascii``: accents folded (é → e), then every run of remaining
    non-ASCII characters becomes one space; ASCII whitespace and punctuation stay.
    ``letters-space``: accents folded, then every run of characters other than A–Z / a–z
    (spaces, newlines, digits, punctuation, other scripts) becomes one space, and the ends are
    stripped. Lowercasing comes first, so ``--lowercase true --charset letters-space`` keeps
    a–z and space only.
    """
    check_charset(charset)
    if lowercase:
        text = text.lower()
    if charset == "ascii":
        return _NOT_ASCII.sub(" ", fold_accents(text))
    if charset == "letters-space":
        return _NOT_LETTERS.sub(" ", fold_accents(text)).strip()
    return text


def stdlib_source_files() -> list[Path]:
    """Return the standard library's ``.py`` files sorted by relative POSIX path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise RnnprobeError(f"the Python standard library directory is missing: {root}")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Installed packages differ between machines; caches are not source.
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "__pycache__")]
        # _sysconfigdata_* is a generated dict of build flags, not code worth modelling.
        found.extend(
            Path(dirpath, f)
            for f in filenames
            if f.endswith(".py") and not f.startswith("_sysconfigdata")
        )
    return sorted(found, key=lambda f: f.relative_to(root).as_posix())


def read_stdlib_text(max_chars: int = DEFAULT_STDLIB_CHARS) -> str:
    """Return the first ``max_chars`` characters of the stdlib sources, joined in path order.

    Files that are not valid UTF-8 (or contain NUL bytes) are skipped.
    """
    check_count(max_chars, "max_chars (stdlib characters)")
    parts: list[str] = []
    total = 0
    for path in stdlib_source_files():
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "\x00" in text or not text:
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        raise RnnprobeError("the stdlib corpus is empty: no readable .py files in the stdlib")
    return "".join(parts)[:max_chars]


def read_corpus_text(source: str | os.PathLike[str], *, max_chars: int | None = None) -> str:
    """Return the text of ``source``: ``"stdlib"`` for the built-in corpus, else a file path.

    A file actually named ``stdlib`` can be given as ``./stdlib``.
    """
    if isinstance(source, str) and source == STDLIB:
        return read_stdlib_text(DEFAULT_STDLIB_CHARS if max_chars is None else max_chars)
    return read_text_file(source, max_chars=max_chars)


def tokenize(text: str, level: Level = "char") -> list[str]:
    """Return the tokens of ``text``: characters, or words/whitespace runs/punctuation."""
    check_level(level)
    return list(text) if level == "char" else _WORD_PATTERN.findall(text)


def check_level(level: str) -> str:
    """Return ``level`` if it is a known tokenisation level, else raise a one-line error."""
    return check_choice(level, LEVELS, "tokenisation level")


@dataclass(frozen=True)
class Vocab:
    """A token ↔ id table: ``tokens[i]`` has id ``i``; ``<pad>`` and ``<unk>`` come first."""

    tokens: tuple[str, ...]
    level: Level = "char"

    @classmethod
    def build(cls, text: str, level: Level = "char", *, max_size: int | None = None) -> Vocab:
        """Return the vocabulary of ``text``; ``max_size`` keeps the most frequent tokens.

        ``max_size`` counts the two reserved symbols; ties in frequency break by token order.
        """
        counts = Counter(tokenize(text, level))
        counts.pop(PAD, None)
        counts.pop(UNK, None)
        kept = sorted(counts)
        if max_size is not None:
            check_count(max_size, "vocabulary max_size", 3)
            kept = sorted(sorted(kept, key=lambda t: -counts[t])[: max_size - 2])
        return cls((PAD, UNK, *kept), level)

    def __post_init__(self) -> None:
        check_level(self.level)
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> torch.Tensor:
        """Return the ids of ``text`` as an int64 tensor of shape (N,); unknown tokens → 1."""
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        ids = [index.get(t, UNK_ID) for t in tokenize(text, self.level)]
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Return the text of ids (N,); pads are dropped, unknown tokens show as ``<unk>``."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return "".join(self.tokens[i] for i in values if i != PAD_ID)


@dataclass(frozen=True, eq=False)
class Corpus:
    """An encoded corpus: ``train`` (N_train,) and ``valid`` (N_valid,) int64 ids, on CPU."""

    train: torch.Tensor
    valid: torch.Tensor
    vocab: Vocab
    source: str

    @property
    def vocab_size(self) -> int:
        """Return the number of token ids, reserved symbols included."""
        return len(self.vocab)


def split_text(text: str, valid_fraction: float = 0.1) -> tuple[str, str]:
    """Return ``(train, valid)``: the last ``valid_fraction`` of the characters is validation."""
    if not 0.0 <= valid_fraction < 1.0:
        raise RnnprobeError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    cut = len(text) - int(len(text) * valid_fraction)
    return text[:cut], text[cut:]


def build_corpus(
    source: str | os.PathLike[str],
    *,
    level: Level = "char",
    valid_fraction: float = 0.1,
    max_chars: int | None = None,
    max_vocab: int | None = None,
    lowercase: bool = False,
    charset: str = "all",
) -> Corpus:
    """Return the encoded corpus read from ``source`` (a path or ``"stdlib"``).

    The first ``max_chars`` characters are read, then preprocessed (:func:`preprocess_text`).
    """
    text = read_corpus_text(source, max_chars=max_chars)
    text = preprocess_text(text, lowercase=lowercase, charset=charset)
    return corpus_from_text(
        text, level=level, valid_fraction=valid_fraction, max_vocab=max_vocab, source=str(source)
    )


def corpus_from_text(
    text: str,
    *,
    level: Level = "char",
    valid_fraction: float = 0.1,
    max_vocab: int | None = None,
    source: str = "<text>",
) -> Corpus:
    """Return ``text`` split, with a vocabulary from the training part, and encoded."""
    if not text:
        raise RnnprobeError(f"corpus {source} is empty")
    train_text, valid_text = split_text(text, valid_fraction)
    vocab = Vocab.build(train_text, level, max_size=max_vocab)
    if len(vocab) < 4:  # <pad>, <unk> and one token: nothing to predict, a baseline of 0
        only = vocab.tokens[2:] or ("",)
        raise RnnprobeError(
            f"corpus {source} holds a single distinct {level} token ({only[0]!r}); a language "
            "model needs at least two"
        )
    train = vocab.encode(train_text)
    if train.numel() < 2:
        raise RnnprobeError(
            f"corpus {source} is too short: its training split has {train.numel()} token(s)"
        )
    return Corpus(train, vocab.encode(valid_text), vocab, source)


def unigram_entropy(ids: torch.Tensor, vocab_size: int) -> float:
    """Return the entropy in nats/token of the token frequencies in ``ids`` (N,)."""
    if ids.numel() == 0:
        raise RnnprobeError("cannot compute the unigram entropy of an empty corpus")
    p = torch.bincount(ids, minlength=vocab_size).double() / ids.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def bits_per_char(nats: float) -> float:
    """Return a loss in nats per token as bits per token (bpc for character models)."""
    return nats / math.log(2.0)
