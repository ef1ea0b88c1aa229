"""Padding-aware records: per-step summaries of a padded batch use only its real steps."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rnnprobe.core.capture import BackwardRecord, LayerRecord
from rnnprobe.core.models import ElmanRNN
from rnnprobe.probes.hidden_stats import hidden_state_stats, participation_ratio
from rnnprobe.records.store import load_run
from rnnprobe.training.config import build_config
from rnnprobe.training.loop import train_run
from rnnprobe.training.probing import Probing

F64 = torch.float64


def padded(seed: int, T: int, B: int, H: int):
    """Return states h (T, B, H) and lengths (B,) in [1, T], at least one sequence full."""
    g = torch.Generator().manual_seed(seed)
    h = torch.tanh(2 * torch.randn(T, B, H, generator=g, dtype=F64))
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    return h, lengths


@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(2, 5)),
    seed=st.integers(0, 2**31 - 1),
)
def test_padded_hidden_stats_equal_the_stats_of_the_real_steps_alone(shape, seed):
    T, B, H = shape
    h, lengths = padded(seed, T, B, H)
    h[torch.arange(T)[:, None] >= lengths[None, :]] = 0.97  # padding that would bias them
    real = torch.arange(T)[:, None] < lengths[None, :]
    stats = hidden_state_stats(h, "tanh", real=real)
    for t in range(T):
        rows = h[t, real[t]]  # (n_t, H): the sequences real at step t
        assert stats.sequences[t] == len(rows)
        assert stats.mean[t] == pytest.approx(float(rows.mean()))
        assert stats.std[t] == pytest.approx(float(rows.std(correction=0)), abs=1e-12)
        assert stats.mean_norm[t] == pytest.approx(float(rows.norm(dim=1).mean()))
    pooled = h[real]  # (N, H)
    assert float(stats.participation_ratio) == pytest.approx(
        float(participation_ratio(pooled)), rel=1e-9, nan_ok=True
    )
    blocked = (1 - pooled.square()) < 0.05
    assert float(stats.dead_fraction) == pytest.approx(float(blocked.all(0).double().mean()))


def test_unpadded_mask_changes_nothing():
    h, _ = padded(0, 5, 3, 4)
    full = hidden_state_stats(h, "relu")
    masked = hidden_state_stats(h, "relu", real=torch.ones(5, 3, dtype=torch.bool))
    for name in ("mean", "std", "mean_norm", "mean_phi_prime", "inactive_fraction"):
        torch.testing.assert_close(getattr(full, name), getattr(masked, name))
    torch.testing.assert_close(full.participation_ratio, masked.participation_ratio)


def test_adjoint_rows_average_only_the_sequences_real_at_each_step():
    T, B = 6, 4
    lengths = torch.tensor([6, 2, 4, 1])
    norms = torch.arange(1.0, 1.0 + T * B, dtype=F64).reshape(T, B)
    real = torch.arange(T)[:, None] < lengths[None, :]
    norms = norms * real  # the backward pass gives exact zeros at padded steps
    layer = LayerRecord(norms, norms / 2, norms / 3, None, None)
    probes = Probing(build_config({}).probes, ElmanRNN(3, 5), seed=0)
    probes.record_backward(7, [BackwardRecord([layer])], [0], lengths)
    (block,) = probes.rows.drain()["adjoints"]
    rows = pd.DataFrame(block)
    assert list(rows["sequences"]) == [4, 3, 2, 2, 1, 1]
    for t in range(T):
        expected = float(norms[t, real[t]].mean())
        assert rows["adjoint_norm"][t] == pytest.approx(expected)


def test_a_step_no_sequence_reaches_is_nan_not_zero():
    layer = LayerRecord(*(torch.ones(3, 2, dtype=F64),) * 3, None, None)
    probes = Probing(build_config({}).probes, ElmanRNN(3, 5), seed=0)
    probes.record_backward(1, [BackwardRecord([layer])], [0], torch.tensor([1, 2]))
    (block,) = probes.rows.drain()["adjoints"]
    assert list(block["sequences"]) == [2, 1, 0]
    assert math.isnan(block["adjoint_norm"][2])


def test_variable_length_run_records_how_many_sequences_each_step_has(tmp_path):
    config = build_config(
        {
            "device": "cpu",
            "task.name": "recall",
            "task.seq_len": 8,
            "task.variable_length": True,
            "model.hidden_size": 8,
            "train.steps": 3,
            "train.batch_size": 16,
            "probes.hidden": "always",
            "probes.spectra": "never",
            "probes.lyapunov": "never",
        }
    )
    assert train_run(config, tmp_path / "run", progress=False).status == "done"
    run = load_run(tmp_path / "run")
    for name in ("adjoints", "hidden"):
        table = run.table(name)
        per_step = table[table["layer"] == 0].groupby("step")["sequences"].apply(np.asarray)
        for counts in per_step:
            assert counts[0] == 16 and (np.diff(counts) <= 0).all() and counts[-1] < 16, name
    # the recall answer is read at each sequence's last real step: a step with fewer real
    # sequences is no longer averaged with the exact zeros of the padded ones
    adjoints = run.table("adjoints")
    assert np.isfinite(adjoints["adjoint_norm"]).all()
    assert (adjoints["adjoint_norm"] > 0).all()
