"""Sample text from a language-model run's last checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

from rnnprobe.errors import RnnprobeError, check_choice, check_count
from rnnprobe.training.config import check_seed


def sample_text(
    run_dir: str | Path, prime: str, *, length: int = 400, temperature: float = 0.8, seed: int = 0
) -> str:
    """Return ``prime`` followed by ``length`` tokens drawn from the run's model."""
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
    ids = vocab.encode(prime or "\n")
    generator = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        logits, h = model(ids.unsqueeze(0))
        for _ in range(length):
            probs = torch.softmax(logits[-1, 0] / temperature, dim=-1)
            probs[:2] = 0.0  # never emit padding or <unk>
            token = torch.multinomial(probs, 1, generator=generator)
            out.append(int(token))
            logits, h = model(token.view(1, 1), h)
    return prime + vocab.decode(torch.tensor(out))
