"""Sample text from a language-model run's last checkpoint, piece by piece or as one string.

:func:`sample_pieces` checks its arguments and loads the model when called, then returns an
iterator: the prime first, then each drawn token's text as soon as it is drawn (``rnnprobe
sample`` prints them as they come). :func:`sample_text` joins the same pieces, so the text for a
seed is the same either way. Gradients are off only around each step, never across a
``yield``: a caller's own torch code between two pieces runs in its usual grad mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rnnprobe.errors import RnnprobeError, check_choice, check_count
from rnnprobe.training.config import check_seed

if TYPE_CHECKING:
    import torch

    from rnnprobe.core.models import RNNLanguageModel
    from rnnprobe.data.corpus import Vocab

__all__ = ["sample_pieces", "sample_text"]


def sample_text(
    run_dir: str | Path, prime: str, *, length: int = 400, temperature: float = 0.8, seed: int = 0
) -> str:
    """Return ``prime`` followed by ``length`` tokens drawn from the run's model."""
    pieces = sample_pieces(run_dir, prime, length=length, temperature=temperature, seed=seed)
    return "".join(pieces)


def sample_pieces(
    run_dir: str | Path, prime: str, *, length: int = 400, temperature: float = 0.8, seed: int = 0
) -> Iterator[str]:
    """Return an iterator over ``prime`` and then the text of each of ``length`` drawn tokens.

    Bad arguments and an unusable run raise here, before anything is drawn.
    """
    check_count(length, "--length")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise RnnprobeError(f"--temperature must be a finite number > 0, got {temperature}")
    check_seed(seed)
    import torch  # after the checks: a usage error returns without loading torch

    from rnnprobe.core.models import RNNLanguageModel
    from rnnprobe.data.corpus import Level, Vocab
    from rnnprobe.data.names import LEVELS
    from rnnprobe.records.store import RunStore
    from rnnprobe.training.loop import resume_config

    config = resume_config(run_dir)
    if config.task.name != "lm":
        raise RnnprobeError(f"{run_dir} trained task {config.task.name!r}; sampling needs lm")
    checkpoint = RunStore(Path(run_dir)).load_latest_checkpoint()
    if checkpoint is None:
        raise RnnprobeError(f"{run_dir} has no checkpoint yet")
    level = cast("Level", check_choice(config.task.level, LEVELS, "task.level"))
    vocab = Vocab(tuple(checkpoint.state["vocab"]), level=level)
    cfg = config.model  # the vocabulary travels in the checkpoint: no corpus needed here
    model = RNNLanguageModel(
        len(vocab), cfg.embedding_dim, cfg.hidden_size, cfg.layers, cfg.nonlinearity
    ).double()
    model.load_state_dict(checkpoint.state["model"])
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    return _draw(model, vocab, prime, length, temperature, generator)


def _draw(
    model: RNNLanguageModel,
    vocab: Vocab,
    prime: str,
    length: int,
    temperature: float,
    generator: torch.Generator,
) -> Iterator[str]:
    """Yield ``prime``, then each token's text as soon as it is drawn."""
    import torch

    yield prime
    with torch.no_grad():
        logits, h = model(vocab.encode(prime or "\n").unsqueeze(0))  # (T, 1, V)
    for _ in range(length):
        with torch.no_grad():
            probs = torch.softmax(logits[-1, 0] / temperature, dim=-1)
            probs[:2] = 0.0  # never emit padding or <unk>
            token = torch.multinomial(probs, 1, generator=generator)
        yield vocab.decode([int(token)])  # before the step that feeds it back: shown at once
        with torch.no_grad():
            logits, h = model(token.view(1, 1), h)  # (1, 1, V)
