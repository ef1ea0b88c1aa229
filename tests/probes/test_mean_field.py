"""Mean-field fixed point, slope and half-life: closed forms, quadrature and a wide network."""

import math

import pytest
import torch
from scipy import integrate

from rnnprobe.errors import RnnprobeError
from rnnprobe.probes.mean_field import mean_field, mean_field_from_weights, mean_field_variances
from tests.support.schema import check_row_blocks


def test_relu_matches_closed_form():
    mf = mean_field(1.5, 0.2, "relu")
    assert mf.q_star == pytest.approx(0.2 / (1 - 0.75))
    assert mf.chi == pytest.approx(0.75)
    assert mf.gradient_decay == pytest.approx(math.sqrt(0.75))
    assert mf.half_life == pytest.approx(math.log(2) / -math.log(math.sqrt(0.75)))
    assert mean_field(2.5, 0.2, "relu").q_star == math.inf
    assert mean_field(2.5, 0.2, "relu").half_life == math.inf


def test_tanh_without_input_below_criticality_has_zero_fixed_point_and_chi_sigma_w2():
    mf = mean_field(0.8, 0.0, "tanh")
    assert mf.q_star == pytest.approx(0.0, abs=1e-9)
    assert mf.chi == pytest.approx(0.8, rel=1e-6)


def test_tanh_fixed_point_solves_the_variance_map_by_adaptive_quadrature():
    sw2, sin2 = 1.7, 0.3
    mf = mean_field(sw2, sin2, "tanh")

    def gauss(f):
        return integrate.quad(lambda z: f(z) * math.exp(-z * z / 2), -40, 40)[0] / math.sqrt(
            2 * math.pi
        )

    rhs = sw2 * gauss(lambda z: math.tanh(math.sqrt(mf.q_star) * z) ** 2) + sin2
    assert mf.q_star == pytest.approx(rhs, rel=1e-9)
    chi = sw2 * gauss(lambda z: (1 - math.tanh(math.sqrt(mf.q_star) * z) ** 2) ** 2)
    assert mf.chi == pytest.approx(chi, rel=1e-9)


def test_predicted_variance_matches_a_wide_tanh_network_at_init():
    H, I, B, T = 800, 64, 32, 25
    sw2, su2, sb2 = 1.5, 1.0, 0.1
    g = torch.Generator().manual_seed(0)
    w_hh = torch.randn(H, H, generator=g, dtype=torch.float64) * math.sqrt(sw2 / H)
    w_ih = torch.randn(H, I, generator=g, dtype=torch.float64) * math.sqrt(su2 / I)
    bias = torch.randn(H, generator=g, dtype=torch.float64) * math.sqrt(sb2)
    h = torch.zeros(B, H, dtype=torch.float64)
    for _ in range(T):
        a = torch.randn(B, I, generator=g, dtype=torch.float64) @ w_ih.T + bias + h @ w_hh.T
        h = torch.tanh(a)
    mf = mean_field_from_weights(w_hh, "tanh", w_ih, bias)
    assert float(a.square().mean()) == pytest.approx(mf.q_star, rel=0.05)
    assert mf.sigma_w2 == pytest.approx(sw2, rel=0.02)
    assert mf.sigma_in2 == pytest.approx(su2 + sb2, rel=0.1)


def test_variances_from_torch_default_init():
    rnn = torch.nn.RNN(10, 400)
    sw2, sin2 = mean_field_variances(rnn.weight_hh_l0, rnn.weight_ih_l0, input_second_moment=2.0)
    assert sw2 == pytest.approx(1 / 3, rel=0.02)  # U(−1/√H, 1/√H): H·(1/(3H))
    assert sin2 == pytest.approx(10 / 400 / 3 * 2.0, rel=0.05)
    field = mean_field(sw2, sin2, "tanh")
    blocks = field.row_blocks(layer=0)
    assert check_row_blocks(blocks) == {"mean_field": 1}
    assert blocks[0].columns["predicted_half_life"] == field.half_life


def test_mean_field_bad_inputs():
    with pytest.raises(RnnprobeError):
        mean_field(-1.0, 0.0, "tanh")
    with pytest.raises(RnnprobeError):
        mean_field(1.0, 0.0, "sigmoid")
