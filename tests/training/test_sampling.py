"""Sampling streams its pieces and gives, for a seed, the text of the plain loop it replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rnnprobe import build_config, train_run
from rnnprobe.cli.main import main
from rnnprobe.core.models import RNNLanguageModel
from rnnprobe.data.corpus import Vocab
from rnnprobe.records.store import RunStore
from rnnprobe.training.loop import resume_config
from rnnprobe.training.sampling import sample_pieces, sample_text
from tests.support.runs import CHECKPOINTED


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    lm = {"task.name": "lm", "task.max_chars": 20000, "task.seq_len": 16}
    settings = {**CHECKPOINTED, **lm, "model.hidden_size": 16, "train.steps": 3}
    path = tmp_path_factory.mktemp("sampling") / "lm"
    assert train_run(build_config(settings), path, progress=False).status == "done"
    return path


def reference_sample(run_dir: Path, prime: str, length: int, temperature: float, seed: int) -> str:
    """The sampling loop as it was before it streamed: draw every token, then decode them."""
    config = resume_config(run_dir)
    checkpoint = RunStore(run_dir).load_latest_checkpoint()
    assert checkpoint is not None
    vocab = Vocab(tuple(checkpoint.state["vocab"]), level=config.task.level)
    cfg = config.model
    model = RNNLanguageModel(
        len(vocab), cfg.embedding_dim, cfg.hidden_size, cfg.layers, cfg.nonlinearity
    ).double()
    model.load_state_dict(checkpoint.state["model"])
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        logits, h = model(vocab.encode(prime or "\n").unsqueeze(0))
        for _ in range(length):
            probs = torch.softmax(logits[-1, 0] / temperature, dim=-1)
            probs[:2] = 0.0
            token = torch.multinomial(probs, 1, generator=generator)
            out.append(int(token))
            logits, h = model(token.view(1, 1), h)
    return prime + vocab.decode(torch.tensor(out))


def sample_command(run: Path, *args: str):
    return CliRunner().invoke(main, ["sample", str(run), *args])


@pytest.mark.parametrize(
    ("prime", "temperature", "seed"), [("def ", 0.8, 0), ("", 1.5, 7), ("import os", 0.3, 2)]
)
def test_the_text_for_a_seed_is_the_plain_loops_in_python_and_on_the_command_line(
    lm_run, prime, temperature, seed
):
    expected = reference_sample(lm_run, prime, 60, temperature, seed)
    assert sample_text(lm_run, prime, length=60, temperature=temperature, seed=seed) == expected
    args = ["--prime", prime, "--length", "60", "--temperature", str(temperature)]
    printed = sample_command(lm_run, *args, "--seed", str(seed))
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == expected + "\n"


def test_pieces_come_one_token_at_a_time_with_gradients_left_on(lm_run, monkeypatch):
    draws = []
    multinomial = torch.multinomial
    monkeypatch.setattr(
        torch, "multinomial", lambda *a, **k: draws.append(1) or multinomial(*a, **k)
    )
    pieces = sample_pieces(lm_run, "def ", length=5, seed=3)
    assert next(pieces) == "def " and not draws  # the prime before any token is drawn
    for n in range(1, 6):
        assert len(next(pieces)) >= 1 and len(draws) == n
        assert torch.is_grad_enabled()  # no_grad does not leak to the caller between pieces
    assert next(pieces, None) is None


def test_bad_arguments_are_refused_when_called_not_when_iterated(lm_run):
    with pytest.raises(ValueError, match="--length must be at least 1"):
        sample_pieces(lm_run, "x", length=0)


def test_ctrl_c_keeps_what_was_printed_and_exits_130_in_one_line(lm_run, monkeypatch):
    draws = []
    multinomial = torch.multinomial

    def interrupt_the_sixth(*args, **kwargs):
        draws.append(1)
        if len(draws) == 6:
            raise KeyboardInterrupt
        return multinomial(*args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", interrupt_the_sixth)
    printed = sample_command(lm_run, "--prime", "def ", "--length", "400", "--seed", "4")
    monkeypatch.undo()
    assert printed.exit_code == 130
    assert printed.stdout == sample_text(lm_run, "def ", length=5, seed=4)  # prime + 5 tokens
    assert printed.stderr.split() == ["rnnprobe:", "interrupted"]
