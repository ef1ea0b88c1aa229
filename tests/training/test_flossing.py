"""Gradient flossing: exponents equal the Lyapunov probe's, the penalty's gradient equals finite
differences, flossing tames a chaotic network, and ``--floss`` trains, records and refuses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rnnprobe.cli.main import main
from rnnprobe.errors import RnnprobeError
from rnnprobe.nonlinearity import derivative
from rnnprobe.probes.lyapunov import lyapunov_exponents
from rnnprobe.records.schema import STANDARD_TABLES
from rnnprobe.records.store import load_run
from rnnprobe.training.config import build_config
from rnnprobe.training.flossing import (
    FlossSpec,
    floss_layers,
    floss_penalty,
    layer_exponents,
    run_layer,
)
from rnnprobe.training.loop import train_run

F64 = torch.float64


def random_layer(H: int, I: int, gain: float, seed: int):
    """Return (W_ih, W_hh, b_ih, b_hh), W_hh ~ N(0, gain²/H), in float64."""
    gen = torch.Generator().manual_seed(seed)
    w_ih = torch.randn(H, I, generator=gen, dtype=F64) / I**0.5
    w_hh = gain * torch.randn(H, H, generator=gen, dtype=F64) / H**0.5
    b_ih, b_hh = 0.1 * torch.randn(2, H, generator=gen, dtype=F64)
    return w_ih, w_hh, b_ih, b_hh


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize(("warmup", "qr_every"), [(0, 1), (5, 1), (5, 3), (0, 7)])
def test_flossed_exponents_equal_the_lyapunov_probe_float64(nonlinearity, warmup, qr_every):
    T, B, H, I, k = 40, 3, 16, 4, 4
    w_ih, w_hh, b_ih, b_hh = random_layer(H, I, 1.5, seed=1)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(2), dtype=F64)
    h, flossed = layer_exponents(
        x, None, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity, k=k, warmup=warmup,
        qr_every=qr_every, seed=3,
    )  # fmt: skip
    phi_prime = derivative(h, nonlinearity)
    # Assumed: every J_t has rank ≥ k (ReLU: ≥ k active units), else the k-th exponent is
    # ln 0 up to rounding and the two QR sequences need not agree on it.
    assert (phi_prime > 0).sum(-1).min() >= k
    probe = lyapunov_exponents(phi_prime, w_hh, k=k, warmup=warmup, seed=3)
    assert flossed.shape == (B, k)
    torch.testing.assert_close(flossed, probe.exponents, rtol=0, atol=1e-10)


def test_layer_rerun_reproduces_torch_rnn_states_float64():
    T, B, H, I = 12, 3, 6, 5
    rnn = torch.nn.RNN(I, H, num_layers=2, dtype=F64)
    x = torch.randn(T, B, I, dtype=F64)
    h0 = torch.randn(2, B, H, dtype=F64)
    top, _ = rnn(x, h0)
    states = x
    for layer in range(2):
        weights = [getattr(rnn, f"{n}_l{layer}") for n in ("weight_ih", "bias_ih", "bias_hh")]
        drive = states @ weights[0].t() + weights[1] + weights[2]
        states = run_layer(drive, getattr(rnn, f"weight_hh_l{layer}"), h0[layer], "tanh")
    torch.testing.assert_close(states, top, rtol=0, atol=1e-12)


def test_penalty_gradient_matches_finite_differences_float64():
    T, B, H, I, k = 10, 2, 6, 3, 3
    w_ih, w_hh, b_ih, b_hh = random_layer(H, I, 1.5, seed=4)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(5), dtype=F64)
    h0 = 0.5 * torch.randn(B, H, generator=torch.Generator().manual_seed(6), dtype=F64)

    def penalty(w_hh, w_ih, b_hh, h0):
        _, exponents = layer_exponents(
            x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh", k=k, warmup=2, qr_every=2
        )
        return floss_penalty(exponents)

    inputs = tuple(t.clone().requires_grad_() for t in (w_hh, w_ih, b_hh, h0))
    assert torch.autograd.gradcheck(penalty, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_penalty_is_the_sum_of_squared_batch_mean_exponents():
    exponents = torch.tensor([[0.3, -0.1], [0.1, -0.3]], dtype=F64)  # (B, K)
    assert float(floss_penalty(exponents)) == pytest.approx(0.2**2 + 0.2**2)
    assert float(floss_penalty(exponents.mean(0))) == pytest.approx(0.08)


def test_flossing_drives_a_chaotic_networks_top_exponent_toward_zero():
    H, gain, T, B = 32, 2.0, 40, 4
    gen = torch.Generator().manual_seed(2)
    w_hh = (gain * torch.randn(H, H, generator=gen, dtype=F64) / H**0.5).requires_grad_()
    x, w_ih = torch.zeros(T, B, H, dtype=F64), torch.eye(H, dtype=F64)  # autonomous: no input

    def top_exponent(w: torch.Tensor) -> tuple[float, float]:
        """Return λ₁ by the probe on held-out trajectories (8 sequences, 300 steps, 100 of
        warm-up) and its standard error over the sequences."""
        h0 = torch.randn(8, H, generator=torch.Generator().manual_seed(99), dtype=F64)
        with torch.no_grad():
            h = run_layer(torch.zeros(300, 8, H, dtype=F64), w, h0, "tanh")
            top = lyapunov_exponents(derivative(h, "tanh"), w, k=1, warmup=100).exponents[:, 0]
        return float(top.mean()), float(top.std() / 8**0.5)

    before, error = top_exponent(w_hh.detach())
    # A network this small is not chaotic for every draw of W_hh; this one clearly is.
    assert before > 10 * error > 0
    optimizer = torch.optim.Adam([w_hh], lr=1e-2)
    h0 = torch.randn(B, H, generator=gen, dtype=F64)
    for _ in range(200):  # each trajectory starts where the last ended: on the attractor
        h, exponents = layer_exponents(x, h0, w_ih, w_hh, nonlinearity="tanh", k=1, warmup=5)
        optimizer.zero_grad()
        floss_penalty(exponents).backward()
        optimizer.step()
        h0 = h[-1].detach()
    after, _ = top_exponent(w_hh.detach())
    assert abs(after) < before / 10, (before, after)


def test_floss_layers_keep_each_penalty_on_its_own_layer():
    T, B, H = 15, 2, 5
    layers = [random_layer(H, I, 1.2, seed=s) for I, s in ((3, 7), (H, 8))]
    layers = [tuple(t.requires_grad_() for t in layer) for layer in layers]
    x = torch.randn(T, B, 3, dtype=F64)
    measures = floss_layers(x, None, layers, nonlinearity="tanh", k=2, warmup=100)  # cut to T-1
    assert [m.exponents.shape for m in measures] == [(2,), (2,)]
    measures[1].penalty.backward()
    assert all(t.grad is None for t in layers[0])
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in layers[1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", None),
        ("4", FlossSpec(k=4)),
        (" 2, weight=0.1 ,pre=30", FlossSpec(k=2, weight=0.1, pre=30)),
        ("k=3,every=5,qr=2,warmup=4,batch=8,weight=0", FlossSpec(3, 0.0, 5, 0, 2, 4, 8)),
    ],
)
def test_floss_spec_parses(text, expected):
    assert FlossSpec.parse(text, hidden_size=8) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "k must be an integer"),
        ("0", "k must be at least 1, got 0"),
        ("9", "exceeds the hidden size 8"),
        ("2,3", "only the first item"),
        ("2,lr=1", "unknown key 'lr'"),
        ("2,k=3", "k given twice"),
        ("2,weight=-1", "weight must be a finite number ≥ 0"),
        ("2,weight=nan", "weight must be a finite number ≥ 0"),
        ("2,every=0", "every must be at least 1, got 0"),
        ("2,pre=1.5", "pre must be an integer"),
    ],
)
def test_floss_spec_refuses_bad_values(text, needle):
    with pytest.raises(RnnprobeError, match=needle):
        FlossSpec.parse(text, hidden_size=8)


def test_floss_fires_on_steps_one_and_every_plus_one():
    spec = FlossSpec(every=3)
    assert [s for s in range(1, 11) if spec.fires(s)] == [1, 4, 7, 10]


TINY = {
    "device": "cpu",
    "model.hidden_size": 8,
    "model.layers": 2,
    "task.seq_len": 5,
    "train.steps": 6,
    "train.batch_size": 4,
    "train.eval_every": 3,
    "train.eval_batches": 1,
    "flush_every": 2,
    "checkpoint_every": 4,
    "probes.products": "never",
}


def test_train_with_floss_writes_the_floss_table_and_finite_weights(tmp_path):
    floss = "2,weight=0.5,every=2,pre=3,qr=2,warmup=1,batch=3"
    config = build_config({**TINY, "train.floss": floss})
    result = train_run(config, tmp_path / "run", progress=False)
    assert result.status == "done"
    table = load_run(tmp_path / "run").table("floss")
    assert list(table.columns) == list(STANDARD_TABLES["floss"])
    fired = [-3, -2, -1, 1, 3, 5]  # three pre-flossing updates, then steps 1, 3, 5
    assert table["step"].tolist() == [s for s in fired for _ in range(2 * 2)]
    assert table["layer"].tolist() == [0, 0, 1, 1] * len(fired)
    assert table["index"].tolist() == [0, 1] * 2 * len(fired)
    assert np.isfinite(table["exponent"]).all()
    sums = table.assign(square=table["exponent"] ** 2).groupby(["step", "layer"])
    np.testing.assert_allclose(sums["square"].sum(), sums["penalty"].first(), rtol=1e-6)
    checkpoint = torch.load(
        sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=True
    )
    assert all(torch.isfinite(t).all() for t in checkpoint["state"]["model"].values())


def test_floss_weight_zero_records_without_changing_the_run(tmp_path):
    plain = train_run(build_config(TINY), tmp_path / "plain", progress=False)
    measured = train_run(
        build_config({**TINY, "train.floss": "1,weight=0"}), tmp_path / "measured", progress=False
    )
    assert plain.status == measured.status == "done"
    steps = [load_run(r.run_dir).table("steps").drop(columns="seconds") for r in (plain, measured)]
    assert steps[0].equals(steps[1])
    assert len(load_run(measured.run_dir).table("floss")) == 6 * 2  # every step, both layers


def test_floss_left_at_none_keeps_the_run_ids_published_before_it():
    config = build_config(TINY)
    assert config.run_id() == config.run_id(exclude=("device", "train.floss"))
    assert config.run_id() != build_config({**TINY, "train.floss": "1"}).run_id()


@pytest.mark.parametrize("value", ["bogus", "0", "65", "2,weight=-1", "2,every=x"])
def test_bad_floss_values_give_one_line_and_exit_2(value):
    result = CliRunner().invoke(main, ["train", "--floss", value], prog_name="rnnprobe")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "floss" in lines[0] and "Traceback" not in result.stderr


def test_bad_floss_value_is_refused_without_loading_torch():
    probe = (
        "import sys\nfrom rnnprobe.cli.main import main\n"
        "try:\n    main(['train', '--floss', '2,lr=1'])\n"
        "except SystemExit as done:\n    print(done.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr
