"""Truncation bias: cosine, norm ratio and dropped share of truncated against full gradients."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import rnnprobe.training.probing
from rnnprobe.core.models import RNNLanguageModel
from rnnprobe.probes.truncation_bias import TOTAL, truncation_bias
from rnnprobe.records.store import load_run
from rnnprobe.training.batch import run_batch
from rnnprobe.training.config import build_config
from rnnprobe.training.loop import train_run

finite = st.floats(-10, 10, allow_nan=False, width=64)


@given(arrays(np.float64, (2, 5), elements=finite), arrays(np.float64, (2, 5), elements=finite))
def test_bias_matches_numpy_per_tensor_and_in_total(g, f):
    truncated = {"a": torch.tensor(g[0]), "b": torch.tensor(g[1]).reshape(5, 1)}
    full = {"a": torch.tensor(f[0]), "b": torch.tensor(f[1]).reshape(5, 1)}
    bias = truncation_bias(truncated, full)
    for name, (gv, fv) in {"a": (g[0], f[0]), "b": (g[1], f[1]), TOTAL: (g, f)}.items():
        gv, fv = gv.ravel(), fv.ravel()
        nf, ng = np.linalg.norm(fv), np.linalg.norm(gv)
        if nf == 0 or ng == 0:
            continue
        assert math.isclose(bias.cosine[name], gv @ fv / (ng * nf), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(bias.norm_ratio[name], ng / nf, rel_tol=1e-9)
        assert math.isclose(bias.dropped[name], np.linalg.norm(fv - gv) / nf, rel_tol=1e-9)


def test_an_uncut_gradient_has_cosine_one_and_drops_nothing():
    full = {"w": torch.randn(4, 4, dtype=torch.float64), "b": torch.randn(4)}
    bias = truncation_bias({k: v.clone() for k, v in full.items()}, full)
    for name in ("w", "b", TOTAL):
        assert math.isclose(bias.cosine[name], 1.0, abs_tol=1e-6)
        assert math.isclose(bias.norm_ratio[name], 1.0, abs_tol=1e-12)
        assert bias.dropped[name] == 0


def test_a_zero_full_gradient_has_no_direction():
    bias = truncation_bias({"w": torch.ones(3)}, {"w": torch.zeros(3)})
    assert math.isnan(bias.cosine["w"]) and math.isnan(bias.dropped["w"])


# -- in a training run ----------------------------------------------------------------------


def tiny(tmp_path, bptt: str, steps: int = 2, **extra):
    """Train a float64 copy run (T = 24) with the truncation probe on every step."""
    config = build_config(
        {
            "task.name": "copy",
            "task.seq_len": 4,  # T = 24: 10 symbols, the delay, 10 recalls
            "model.hidden_size": 8,
            "model.embedding_dim": 4,
            "train.batch_size": 4,
            "train.steps": steps,
            "train.bptt": bptt,
            "probes.truncation": "always",
            "probes.lyapunov": "never",
            "probes.spectra": "never",
            "dtype": "float64",
            "device": "cpu",
            **extra,
        }
    )
    return train_run(config, tmp_path / bptt.replace(":", "-"), progress=False).run_dir


def test_the_full_gradient_is_autograds_through_torch_nn_rnn(tmp_path, monkeypatch):
    """At a firing step, the probe's full gradient equals autograd's full BPTT of the same
    batch and weights, computed through ``torch.nn.RNN``; the truncated one differs."""
    seen = []

    def spy(model, task, batch, segments, h0=None, train=True):
        result = run_batch(model, task, batch, segments, h0, train)
        if train and len(segments) == 1:  # the probe's full pass: redo it through nn.RNN
            reference = RNNLanguageModel(task.vocab_size, 4, 8, rnn="torch", padding_idx=0).double()
            reference.load_state_dict(model.state_dict())
            run_batch(reference, task, batch, segments, h0, train)
            seen.append({n: p.grad.clone() for n, p in reference.named_parameters()})
        return result

    def keep(truncated, full):
        seen.append(({k: v.clone() for k, v in truncated.items()}, dict(full)))
        return truncation_bias(truncated, full)

    monkeypatch.setattr(rnnprobe.training.probing, "run_batch", spy)
    monkeypatch.setattr(rnnprobe.training.probing, "truncation_bias", keep)
    run = tiny(tmp_path, "3", steps=1)
    reference, (truncated, full) = seen
    for name, grad in reference.items():
        torch.testing.assert_close(full[name], grad, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(truncated["rnn.weight_hh_l0"], full["rnn.weight_hh_l0"])
    rows = load_run(run).table("truncation")
    total = rows[rows["tensor"] == TOTAL].iloc[0]
    assert total["cosine"] < 1 - 1e-6 and total["dropped"] > 1e-6  # K = 3 < T cuts paths
    assert set(rows["tensor"]) == {*full, TOTAL}


def test_a_window_as_long_as_the_sequence_cuts_nothing(tmp_path):
    rows = load_run(tiny(tmp_path, "1000")).table("truncation")
    assert len(rows) and rows["step"].tolist() == sorted(rows["step"].tolist())
    assert np.allclose(rows["cosine"], 1, atol=1e-12)
    assert np.allclose(rows["norm_ratio"], 1, atol=1e-12)
    assert np.allclose(rows["dropped"], 0, atol=1e-12)


def test_full_bptt_runs_record_no_truncation_and_the_update_is_the_truncated_one(tmp_path):
    assert load_run(tiny(tmp_path, "full")).table("truncation").empty
    probed, unprobed = (
        tiny(tmp_path / "a", "random:3"),
        tiny(tmp_path / "b", "random:3", **{"probes.truncation": "never"}),
    )
    for name in ("steps", "adjoints"):  # the extra backward changes nothing the run records
        a, b = load_run(probed).table(name), load_run(unprobed).table(name)
        a, b = (
            a.drop(columns="seconds", errors="ignore"),
            b.drop(columns="seconds", errors="ignore"),
        )
        pd.testing.assert_frame_equal(a, b)
