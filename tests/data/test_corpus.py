"""Corpus loading, vocabulary, split and loss-unit helpers."""

from __future__ import annotations

import codecs
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rnnprobe.data.corpus import (
    PAD_ID,
    UNK_ID,
    Vocab,
    bits_per_char,
    build_corpus,
    corpus_from_text,
    read_corpus_text,
    read_stdlib_text,
    read_text_file,
    split_text,
    tokenize,
    unigram_entropy,
)
from rnnprobe.errors import RnnprobeError

SHAKESPEARE = Path(__file__).parents[3] / "shared/data/tinyshakespeare.txt"


def one_line_error(excinfo: pytest.ExceptionInfo[RnnprobeError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(RnnprobeError) as excinfo:
        read_text_file(tmp_path / "nope.txt")
    assert "not found" in one_line_error(excinfo)


def test_directory_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(RnnprobeError) as excinfo:
        read_corpus_text(tmp_path)
    assert "directory" in one_line_error(excinfo)


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_empty_file_is_a_one_line_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(RnnprobeError) as excinfo:
        build_corpus(path)
    assert "empty" in one_line_error(excinfo) or "whitespace" in str(excinfo.value)


def test_non_utf8_file_names_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("héllo".encode("latin-1"))
    with pytest.raises(RnnprobeError) as excinfo:
        read_text_file(path)
    message = one_line_error(excinfo)
    assert "not UTF-8" in message and "offset 1" in message and "0xe9" in message


def test_binary_file_names_the_nul_offset(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(RnnprobeError) as excinfo:
        read_text_file(path)
    message = one_line_error(excinfo)
    assert "binary" in message and "offset 3" in message


def test_utf8_bom_is_dropped_and_max_chars_caps(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffabcdef".encode())
    assert read_text_file(path) == "abcdef"
    assert read_text_file(path, max_chars=3) == "abc"


def test_max_chars_reads_and_judges_only_the_characters_it_keeps(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"abc" + "h\xe9llo".encode("latin-1") + b"x" * 100)
    assert read_text_file(path, max_chars=4) == "abch"  # HEAD: not UTF-8 at byte offset 4
    with pytest.raises(RnnprobeError) as excinfo:
        read_text_file(path, max_chars=5)
    assert "not UTF-8 (byte 0xe9 at byte offset 4)" in one_line_error(excinfo)
    path.write_bytes(b"   \n" + b"x" * 100)
    with pytest.raises(RnnprobeError) as excinfo:
        read_text_file(path, max_chars=4)
    assert "no text in its first 4 characters" in one_line_error(excinfo)


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_max_chars_counts_characters_not_bytes(tmp_path: Path, bom: bytes) -> None:
    path = tmp_path / "wide.txt"
    text = "é€𝄞" * 5  # 2, 3 and 4 bytes a character
    path.write_bytes(bom + text.encode())
    for n in range(1, len(text) + 2):
        assert read_text_file(path, max_chars=n) == text[:n]
    path.write_bytes(bom + text.encode()[:-1])  # the last character cut: judged when kept
    assert read_text_file(path, max_chars=len(text) - 1) == text[:-1]
    with pytest.raises(RnnprobeError, match="not UTF-8"):
        read_text_file(path)


def test_stdlib_corpus_loads_offline_deterministic_and_capped() -> None:
    text = read_stdlib_text(50_000)
    assert len(text) == 50_000 and text.strip()
    assert read_corpus_text("stdlib", max_chars=50_000) == text
    corpus = build_corpus("stdlib", max_chars=20_000)
    assert corpus.train.numel() == 18_000 and corpus.valid.numel() == 2_000
    assert corpus.vocab_size > 30


def test_char_vocab_reserves_pad_and_unk_and_round_trips() -> None:
    vocab = Vocab.build("hello world")
    assert vocab.tokens[:2] == ("<pad>", "<unk>") and (PAD_ID, UNK_ID) == (0, 1)
    assert list(vocab.tokens[2:]) == sorted(set("hello world"))
    ids = vocab.encode("hello world")
    assert ids.dtype == torch.int64 and ids.shape == (11,)
    assert vocab.decode(ids) == "hello world"
    assert vocab.encode("hz").tolist() == [vocab.tokens.index("h"), UNK_ID]


def test_validation_chars_unseen_in_training_become_unk() -> None:
    corpus = corpus_from_text("ab" * 45 + "abcdefghij", valid_fraction=0.1)
    assert corpus.vocab.tokens == ("<pad>", "<unk>", "a", "b")
    assert corpus.valid.tolist() == [2, 3] + [UNK_ID] * 8


def test_split_keeps_the_last_fraction_for_validation() -> None:
    assert split_text("0123456789", 0.2) == ("01234567", "89")
    assert split_text("0123456789", 0.0) == ("0123456789", "")
    with pytest.raises(RnnprobeError):
        split_text("abc", 1.0)


def test_word_tokenisation_splits_words_space_and_punctuation() -> None:
    assert tokenize("def f(x):\n    return x", "word") == [
        "def", " ", "f", "(", "x", ")", ":", "\n    ", "return", " ", "x",
    ]  # fmt: skip


@given(st.text(max_size=200), st.sampled_from(["char", "word"]))
def test_encoding_round_trips_at_both_levels(text: str, level: str) -> None:
    vocab = Vocab.build(text, level)  # type: ignore[arg-type]
    assert vocab.decode(vocab.encode(text)) == text


def test_max_vocab_keeps_the_most_frequent_words() -> None:
    vocab = Vocab.build("a a a b b c", "word", max_size=4)
    assert vocab.tokens == ("<pad>", "<unk>", " ", "a")
    assert vocab.decode(vocab.encode("a c")) == "a <unk>"


def test_unknown_level_is_a_one_line_error() -> None:
    with pytest.raises(RnnprobeError) as excinfo:
        Vocab.build("abc", "byte")  # type: ignore[arg-type]
    assert "char, word" in one_line_error(excinfo)


def test_unigram_entropy_and_loss_units() -> None:
    ids = torch.tensor([2, 3, 4, 5] * 10)
    assert unigram_entropy(ids, vocab_size=6) == pytest.approx(math.log(4))
    assert unigram_entropy(torch.full((9,), 2), vocab_size=3) == pytest.approx(0.0)
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="shared tinyshakespeare not present")
def test_tinyshakespeare_builds_a_char_corpus() -> None:
    corpus = build_corpus(SHAKESPEARE)
    total = corpus.train.numel() + corpus.valid.numel()
    assert corpus.valid.numel() == pytest.approx(0.1 * total, abs=1)
    assert 50 < corpus.vocab_size < 100
    assert corpus.vocab.decode(corpus.train[:5]) == SHAKESPEARE.read_text()[:5]


def test_windows_and_old_mac_line_endings_read_as_newlines(tmp_path: Path) -> None:
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"ab\r\ncd\re\n\r\n")
    assert read_text_file(path) == "ab\ncd\ne\n\n"  # as Python's text mode reads it
    assert read_text_file(path, max_chars=3) == "ab\n"  # a \r cut from its \n reads as \n too
    assert read_text_file(path, max_chars=4) == "ab\n"  # max_chars counts the file's \r and \n
    corpus = build_corpus(str(path))
    assert "\r" not in corpus.vocab.tokens


def test_a_fifo_is_refused_not_read(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)  # reading it would wait for a writer that never comes
    with pytest.raises(RnnprobeError) as excinfo:
        read_text_file(fifo)
    assert one_line_error(excinfo) == f"corpus file is not a regular file: {fifo}"
