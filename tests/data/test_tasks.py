"""Tasks: determinism, batch layout, baselines, LM streams, truncation, factory errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rnnprobe.data.corpus import Corpus, Vocab, corpus_from_text
from rnnprobe.data.tasks import (
    COPY_BLANK,
    COPY_DELIMITER,
    TASKS,
    AddingTask,
    Batch,
    CopyTask,
    LMTask,
    RecallTask,
    make_task,
    random_windows,
    sequential_batches,
)
from rnnprobe.data.truncation import Truncation
from rnnprobe.errors import RnnprobeError

SHAKESPEARE = Path(__file__).parents[3] / "shared/data/tinyshakespeare.txt"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def counting_corpus(n: int) -> Corpus:
    """A corpus whose training ids are 0, 1, ..., n-1, so a window shows where it came from."""
    vocab = Vocab(tuple(f"t{i}" for i in range(n)))
    return Corpus(torch.arange(n), torch.arange(n)[:40], vocab, "counting")


def small_tasks() -> list:
    return [
        CopyTask(seq_len=5),
        AddingTask(seq_len=12),
        RecallTask(seq_len=7),
        RecallTask(seq_len=7, variable_length=True),
        LMTask(corpus_from_text("the quick brown fox jumps over the lazy dog " * 20), seq_len=16),
    ]


def same(a: Batch, b: Batch) -> bool:
    lengths_equal = (a.lengths is None and b.lengths is None) or torch.equal(a.lengths, b.lengths)
    return torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) and lengths_equal


@pytest.mark.parametrize("task", small_tasks(), ids=lambda t: t.name)
def test_same_seed_same_batches_and_different_seed_different(task) -> None:
    first = list(itertools.islice(task.batches(8, gen(3)), 3))
    again = list(itertools.islice(task.batches(8, gen(3)), 3))
    other = list(itertools.islice(task.batches(8, gen(4)), 3))
    assert all(same(a, b) for a, b in zip(first, again, strict=True))
    assert not all(same(a, b) for a, b in zip(first, other, strict=True))
    assert not same(first[0], first[1])


@pytest.mark.parametrize("task", small_tasks(), ids=lambda t: t.name)
def test_batch_layout_matches_the_declared_sizes(task) -> None:
    batch = task.sample(4, gen(0))
    assert batch.inputs.device.type == "cpu" and batch.inputs.shape[0] == 4
    if task.input_kind == "tokens":
        assert batch.inputs.dtype == torch.int64 and batch.inputs.dim() == 2
        assert batch.inputs.min() >= 0 and batch.inputs.max() < task.vocab_size
    else:
        assert batch.inputs.dtype == torch.float32
        assert batch.inputs.shape[2] == task.input_size and task.vocab_size is None
    B, T = batch.inputs.shape[:2]
    if task.kind in ("lm", "per_step_classification"):
        assert batch.targets.shape == (B, T) and batch.targets.max() < task.output_size
    elif task.kind == "many_to_one_classification":
        assert batch.targets.shape == (B,) and batch.targets.max() < task.output_size
    else:
        assert batch.targets.shape == (B,) and batch.targets.dtype == torch.float32
    assert batch.mask.shape == (B, T)
    assert task.baseline_loss > 0 and task.baseline_description and task.metric
    assert "\n" not in task.baseline_description


def test_copy_layout_symbols_delimiter_and_recall() -> None:
    task = CopyTask(seq_len=6)
    batch = task.sample(16, gen(1))
    x, y = batch.inputs, batch.targets  # (B, 26)
    assert x.shape == (16, 26) and task.total_len == 26
    symbols = x[:, :10]
    assert ((symbols >= 3) & (symbols < 11)).all()
    assert (x[:, 10:15] == COPY_BLANK).all() and (x[:, 15] == COPY_DELIMITER).all()
    assert (x[:, 16:] == COPY_BLANK).all()
    assert (y[:, :16] == COPY_BLANK).all() and torch.equal(y[:, 16:], symbols)


def test_copy_baseline_is_the_best_memoryless_cross_entropy() -> None:
    task = CopyTask(seq_len=10)
    y = task.sample(4000, gen(2)).targets  # (N, T)
    # The best predictor without memory of the input uses each step's marginal over targets.
    counts = torch.nn.functional.one_hot(y, task.output_size).double().sum(0)  # (T, C)
    marginal = counts / counts.sum(1, keepdim=True)
    empirical = -marginal.gather(1, y.T).log().mean().item()
    assert empirical == pytest.approx(task.baseline_loss, abs=0.005)
    assert task.baseline_loss == pytest.approx(10 * math.log(8) / 30)


def test_adding_markers_targets_and_baseline() -> None:
    task = AddingTask(seq_len=20)
    batch = task.sample(100_000, gen(5))
    values, markers = batch.inputs[..., 0], batch.inputs[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert (markers.sum(1) == 2).all() and (markers[:, :10].sum(1) == 1).all()
    assert torch.allclose(batch.targets, (values * markers).sum(1))
    y = batch.targets.double()
    assert ((y - y.mean()) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.003)
    assert task.baseline_loss == pytest.approx(1 / 6)


def test_recall_answer_is_the_first_token_and_chance_is_ln_k() -> None:
    task = RecallTask(seq_len=30, num_classes=5, num_distractors=3)
    batch = task.sample(64, gen(0))
    assert batch.inputs.shape == (64, 31) and batch.lengths is None
    assert torch.equal(batch.targets, batch.inputs[:, 0] - 1)
    assert (batch.inputs[:, 1:] > 5).all()
    assert task.baseline_loss == pytest.approx(math.log(5)) and task.baseline_metric == 0.2


def test_recall_variable_length_pads_after_lengths() -> None:
    task = RecallTask(seq_len=9, variable_length=True)
    batch = task.sample(200, gen(0))
    assert batch.lengths is not None and batch.lengths.shape == (200,)
    assert batch.lengths.min() >= 2 and batch.lengths.max() <= 10
    assert len(set(batch.lengths.tolist())) > 3
    assert ((batch.inputs != 0) == batch.mask).all()
    assert torch.equal(batch.targets, batch.inputs[:, 0] - 1)


def test_random_lm_windows_are_corpus_slices_with_shifted_targets() -> None:
    task = LMTask(counting_corpus(500), seq_len=32)
    batch = task.sample(50, gen(0))
    x, y = batch.inputs, batch.targets  # (B, T)
    assert x.shape == y.shape == (50, 32) and not batch.continues
    assert torch.equal(x, x[:, :1] + torch.arange(32)) and torch.equal(y, x + 1)
    assert y.max() <= 499


@given(st.integers(2, 300), st.integers(1, 6), st.integers(1, 40))
def test_sequential_batches_continue_each_stream_exactly(n: int, B: int, T: int) -> None:
    ids = torch.arange(n) * 7 % 11
    if n // B < 2:
        with pytest.raises(RnnprobeError):
            next(sequential_batches(ids, B, T))
        return
    batches = list(sequential_batches(ids, B, T))
    assert [b.continues for b in batches] == [False] + [True] * (len(batches) - 1)
    assert all(b.inputs.shape[1] == T for b in batches[:-1])
    L = n // B
    for b in range(B):
        seen = torch.cat([batch.inputs[b] for batch in batches] + [batches[-1].targets[b, -1:]])
        assert torch.equal(seen, ids[b * L : (b + 1) * L])
    for batch in batches:
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])


def test_sequential_lm_task_cycles_epochs_and_restarts_streams() -> None:
    task = LMTask(counting_corpus(101), seq_len=10, sampling="sequential")
    batches = list(itertools.islice(task.batches(4, gen(0)), 6))  # L = 25: 3 batches an epoch
    assert [b.continues for b in batches] == [False, True, True] * 2
    assert [b.inputs.shape[1] for b in batches[:3]] == [10, 10, 4]
    assert torch.equal(batches[3].inputs, batches[0].inputs)


def test_lm_baselines_are_unigram_entropy_and_ln_v() -> None:
    task = LMTask(corpus_from_text("aabb" * 50, valid_fraction=0.0), seq_len=8)
    assert task.vocab_size == 4 and task.uniform_loss == pytest.approx(math.log(4))
    assert task.baseline_loss == pytest.approx(math.log(2))
    assert task.metric == "bpc" and task.baseline_metric == pytest.approx(1.0)


def test_lm_eval_batches_walk_the_validation_split() -> None:
    corpus = corpus_from_text("abcdefgh" * 100, valid_fraction=0.1)
    task = LMTask(corpus, seq_len=16)
    batches = task.eval_batches(2)
    assert all(not b.continues for b in batches[:1]) and all(b.continues for b in batches[1:])
    tokens = sum(b.inputs.numel() for b in batches)
    assert tokens == corpus.valid.numel() - 2  # each stream's last id is only a target


def test_seq_len_errors() -> None:
    corpus = corpus_from_text("abcdefghij" * 3)
    with pytest.raises(RnnprobeError, match="too long"):
        LMTask(corpus, seq_len=27)
    LMTask(corpus, seq_len=26)
    for name in TASKS:
        with pytest.raises(RnnprobeError, match="seq_len"):
            make_task(name, seq_len=0, **({"corpus": corpus} if name == "lm" else {}))
    with pytest.raises(RnnprobeError, match="seq_len"):
        AddingTask(seq_len=1)
    with pytest.raises(RnnprobeError, match="seq_len"):
        CopyTask(seq_len=True)  # type: ignore[arg-type]


def test_unknown_task_and_option_list_the_valid_ones() -> None:
    with pytest.raises(RnnprobeError) as excinfo:
        make_task("parity")
    message = str(excinfo.value)
    assert "\n" not in message and all(name in message for name in ("adding", "copy", "lm"))
    with pytest.raises(RnnprobeError, match="valid: seq_len, num_symbols, recall_length"):
        make_task("copy", sequence_length=5)


def test_make_task_builds_each_task(tmp_path: Path) -> None:
    assert isinstance(make_task("copy", seq_len=3), CopyTask)
    assert isinstance(make_task("adding"), AddingTask)
    assert make_task("recall", num_classes=3).output_size == 3
    path = tmp_path / "corpus.txt"
    path.write_text("to be or not to be " * 40)
    lm = make_task("lm", corpus=path, seq_len=20, level="word", valid_fraction=0.2)
    assert isinstance(lm, LMTask) and lm.metric == "perplexity"
    assert lm.corpus.vocab.level == "word"
    with pytest.raises(RnnprobeError, match="not found"):
        make_task("lm", corpus=tmp_path / "missing.txt")


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="shared tinyshakespeare not present")
def test_make_task_lm_on_tinyshakespeare_beats_uniform_baseline() -> None:
    task = make_task("lm", corpus=str(SHAKESPEARE), seq_len=64, sampling="sequential")
    assert task.baseline_loss < task.uniform_loss
    assert next(task.batches(8, gen(0))).inputs.shape == (8, 64)


@given(
    st.integers(1, 200),
    st.one_of(
        st.just("full"),
        st.integers(1, 50),
        st.integers(1, 50).map(lambda k: f"random:{k}"),
    ),
    st.integers(0, 2**31),
)
def test_truncation_segments_tile_the_sequence_in_order(T: int, bptt, seed: int) -> None:
    segments = list(Truncation.parse(bptt).segments(T, gen(seed)))
    assert segments[0][0] == 0 and segments[-1][1] == T
    assert all(s < e for s, e in segments)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(segments))
    assert segments == list(Truncation.parse(bptt).segments(T, gen(seed)))


def test_truncation_fixed_full_and_random_lengths() -> None:
    assert list(Truncation.parse(4).segments(10)) == [(0, 4), (4, 8), (8, 10)]
    assert list(Truncation.parse("3").segments(10)) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert list(Truncation.parse("full").segments(10)) == [(0, 10)]
    lengths = [e - s for s, e in Truncation.parse("random:20").segments(100_000, gen(0))][:-1]
    assert set(lengths) == {10, 20}
    assert lengths.count(10) / len(lengths) == pytest.approx(0.05, abs=0.01)
    assert Truncation.parse("random:8") == Truncation("random", 8)


@pytest.mark.parametrize("spec", ["", "none", "random:0", "random:", "0", -3, True, "full:4"])
def test_bad_truncation_specs_are_one_line_errors(spec) -> None:
    with pytest.raises(RnnprobeError) as excinfo:
        Truncation.parse(spec)
    assert "\n" not in str(excinfo.value)


def test_eval_batches_are_fixed_by_seed() -> None:
    task = AddingTask(seq_len=10)
    a, b = task.eval_batches(5, seed=1), task.eval_batches(5, seed=1)
    assert len(a) == 8 and all(same(x, y) for x, y in zip(a, b, strict=True))
    assert not same(a[0], task.eval_batches(5, seed=2)[0])


def test_random_windows_need_a_window_shorter_than_the_corpus() -> None:
    batch = random_windows(torch.arange(11), 3, 10, gen(0))
    assert torch.equal(batch.inputs[0], torch.arange(10))


def test_a_whole_split_validation_reads_the_same_text_at_every_window() -> None:
    from rnnprobe.training.config import build_config
    from rnnprobe.training.setup import build_run

    corpus = corpus_from_text(
        "the quick brown fox jumps over the lazy dog " * 40, valid_fraction=0.2
    )
    texts = []
    for seq_len in (4, 16, 64):
        batches = LMTask(corpus, seq_len=seq_len).eval_batches(4)  # num_batches None: all
        texts.append(torch.cat([b.targets for b in batches], dim=1))  # (B, every step)
    assert all(torch.equal(texts[0], t) for t in texts[1:])
    # train.eval_batches = 0 asks for the whole split; below 0 is a user mistake
    config = build_config({"task.name": "lm", "task.max_chars": 3000, "train.eval_batches": 0,
                           "model.hidden_size": 8, "train.batch_size": 4})  # fmt: skip
    parts = build_run(config)
    assert sum(b.targets.numel() for b in parts.eval_batches) == 4 * (
        parts.task.corpus.valid.numel() // 4 - 1
    )
    with pytest.raises(RnnprobeError, match="eval-batches must be at least 0"):
        build_config({"train.eval_batches": -1})


def test_a_validation_loss_is_the_mean_over_every_target_step() -> None:
    import torch.nn.functional as F

    from rnnprobe.records.pending import PendingRows
    from rnnprobe.training.config import build_config
    from rnnprobe.training.evaluation import evaluate
    from rnnprobe.training.setup import build_run

    config = build_config({"task.name": "lm", "task.max_chars": 3000, "task.seq_len": 64,
                           "train.eval_batches": 0, "model.hidden_size": 8,
                           "train.batch_size": 4})  # fmt: skip
    parts = build_run(config)
    lengths = [b.targets.shape[1] for b in parts.eval_batches]
    assert lengths[-1] < lengths[0]  # the split's end: a shorter last batch
    rows = PendingRows()
    evaluate(parts, 1, rows)
    loss = float(rows.drain()["evals"][0]["loss"][0])
    total, count, h = 0.0, 0, None
    with torch.no_grad():
        for batch in parts.eval_batches:
            logits, h = parts.model(batch.inputs, h if batch.continues else None)
            total += F.cross_entropy(logits.flatten(0, 1), batch.targets.t().flatten(),
                                     reduction="sum").item()  # fmt: skip
            count += batch.targets.numel()
    assert loss == pytest.approx(total / count, rel=1e-6)
