"""Tiny run settings and study specs that train in moments on a CPU."""

from __future__ import annotations

from rnnprobe.study.spec import StudySpec
from rnnprobe.training.config import build_config

TINY = {
    "device": "cpu",
    "model.hidden_size": 16,
    "task.seq_len": 6,
    "train.batch_size": 8,
    "train.eval_every": 10,
    "train.eval_batches": 2,
    "flush_every": 5,
    "checkpoint_every": 10,
    "probes.hidden": "every:3",
    "probes.spectra": "every:4",
    "probes.lyapunov": "every:4",
    "probes.reach": "every:5",
    "probes.products": "never",  # most of a tiny run's cost: tested once, on its own, in test_train
}


# A 12-step run of 8 units whose only records are the steps, adjoints and one checkpoint at
# the end: for commands that read a trained model (fixed-points, sample), not its probes.
CHECKPOINTED = {
    "device": "cpu",
    "model.hidden_size": 8,
    "train.steps": 12,
    "train.batch_size": 8,
    "train.eval_every": 12,
    "train.eval_batches": 1,
    "checkpoint_every": 12,
    "flush_every": 12,
    **{f"probes.{p}": "never" for p in ("hidden", "spectra", "lyapunov", "reach")},
}


def tiny(**settings):
    return build_config({**TINY, **{k.replace("__", "."): v for k, v in settings.items()}})


TINY_SETTINGS = {
    "device": "cpu",
    "model.hidden_size": 8,
    "model.embedding_dim": 4,
    "train.batch_size": 4,
    "train.steps": 10,
    "train.eval_every": 5,
    "train.eval_batches": 1,
    "flush_every": 5,
    "checkpoint_every": 5,
    "probes.spectra": "never",
    "probes.reach": "every:5",
}


def tiny_spec(**axes) -> StudySpec:
    axes = axes or {"task.seq_len": (3, 5)}
    return StudySpec("tiny", dict(TINY_SETTINGS), {k: tuple(v) for k, v in axes.items()})
