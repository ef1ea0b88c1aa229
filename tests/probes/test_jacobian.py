"""Closed-form one-step Jacobians and spectra against autograd and dense linear algebra."""

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from rnnprobe.errors import RnnprobeError
from rnnprobe.nonlinearity import derivative_from_output
from rnnprobe.probes.jacobian import (
    jacobian_spectrum,
    recurrent_weight_spectrum,
    sample_time_batch_pairs,
    step_jacobians,
    top_singular_values,
)
from tests.support.schema import check_row_blocks

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@given(
    hidden=st.integers(1, 7),
    inputs=st.integers(1, 4),
    nonlinearity=st.sampled_from(["tanh", "relu"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_closed_form_jacobian_matches_jacrev_float64(hidden, inputs, nonlinearity, seed):
    g = _gen(seed)
    w_ih = torch.randn(hidden, inputs, generator=g, dtype=F64)
    w_hh = torch.randn(hidden, hidden, generator=g, dtype=F64) / hidden**0.5
    bias = torch.randn(hidden, generator=g, dtype=F64)
    x = torch.randn(inputs, generator=g, dtype=F64)
    h_prev = torch.randn(hidden, generator=g, dtype=F64)
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu

    def cell(h):
        return phi(x @ w_ih.T + bias + h @ w_hh.T)

    a = x @ w_ih.T + bias + h_prev @ w_hh.T
    if nonlinearity == "relu":
        assume(bool(a.abs().min() > 1e-3))  # away from the kink
    expected = torch.func.jacrev(cell)(h_prev)
    d = derivative_from_output(cell(h_prev), nonlinearity)
    torch.testing.assert_close(step_jacobians(d, w_hh), expected, rtol=1e-12, atol=1e-12)


@given(hidden=st.integers(1, 8), n=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_singular_values_match_dense_svdvals_float64(hidden, n, seed):
    g = _gen(seed)
    w = torch.randn(hidden, hidden, generator=g, dtype=F64)
    d = torch.rand(n, hidden, generator=g, dtype=F64) + 0.1
    dense = torch.linalg.svdvals(d.unsqueeze(-1) * w)
    torch.testing.assert_close(top_singular_values(d, w, hidden), dense)
    torch.testing.assert_close(top_singular_values(d, w, hidden, "gram")[:, :1], dense[:, :1])
    k = max(1, hidden // 2)
    for method in ("auto", "gram", "svd"):
        top = top_singular_values(d, w, k, method)
        torch.testing.assert_close(top, dense[:, :k], rtol=1e-9, atol=1e-9)


def test_jacobian_spectrum_record_matches_dense_float64():
    g = _gen(0)
    T, B, H = 5, 3, 6
    w = torch.randn(H, H, generator=g, dtype=F64)
    d = torch.rand(T, B, H, generator=g, dtype=F64) + 0.05
    t, b = sample_time_batch_pairs(T, B, 7, generator=g)
    spec = jacobian_spectrum(d, w, t, b, k=3)
    jac = step_jacobians(d[t, b], w)
    dense = torch.linalg.svdvals(jac)
    torch.testing.assert_close(spec.singular_values, dense[:, :3])
    torch.testing.assert_close(spec.spectral_norm, dense[:, 0])
    torch.testing.assert_close(spec.mean_log_singular_value, dense.log().mean(-1))
    blocks = spec.row_blocks(step=2, layer=1)
    assert check_row_blocks(blocks) == {"spectra": 7 * 3}
    assert blocks[0].columns["quantity"] == "jacobian_singular"
    assert torch.equal(blocks[0].columns["value"], spec.singular_values)


@given(hidden=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_weight_spectrum_matches_dense_eigvals_and_svdvals(hidden, seed):
    w = torch.randn(hidden, hidden, generator=_gen(seed), dtype=F64)
    spec = recurrent_weight_spectrum(w)
    dense_eig = torch.linalg.eigvals(w)
    torch.testing.assert_close(spec.eigenvalues.abs(), dense_eig.abs().sort(descending=True).values)
    # same multiset: every dense eigenvalue has a partner in the record
    gap = (spec.eigenvalues.unsqueeze(0) - dense_eig.unsqueeze(1)).abs().min(1).values
    assert float(gap.max()) < 1e-9
    torch.testing.assert_close(spec.spectral_radius, dense_eig.abs().max())
    torch.testing.assert_close(spec.singular_values, torch.linalg.svdvals(w))
    assert float(spec.sigma_max) == float(spec.singular_values[0])


def test_pascanu_condition_flags_vanishing_and_possible_exploding():
    q = torch.linalg.qr(torch.randn(6, 6, generator=_gen(1), dtype=F64)).Q
    small = recurrent_weight_spectrum(0.5 * q, gamma=1.0)
    assert small.vanishing_guaranteed and not small.exploding_possible
    torch.testing.assert_close(small.pascanu_bound, torch.tensor(0.5, dtype=F64))
    large = recurrent_weight_spectrum(2.0 * q, gamma=1.0)
    assert large.exploding_possible and not large.vanishing_guaranteed
    blocks = large.row_blocks(step=0, layer=0)
    assert check_row_blocks(blocks) == {"weights": 1, "spectra": 2 * 6}
    assert blocks[0].columns["pascanu_bound"] is large.pascanu_bound
    assert [b.columns["quantity"] for b in blocks[1:]] == ["w_hh_eigenvalue", "w_hh_singular"]
    assert math.isnan(blocks[0].columns["jacobian_norm"])


def test_bad_inputs_raise_one_line_errors():
    w = torch.eye(3, dtype=F64)
    d = torch.ones(2, 2, 3, dtype=F64)
    t, b = torch.tensor([0]), torch.tensor([0])
    cases = [
        lambda: jacobian_spectrum(d, w, t, b, k=4),  # k > H
        lambda: jacobian_spectrum(d, w, t, b, k=0),
        lambda: jacobian_spectrum(torch.ones(2, 2, 4, dtype=F64), w, t, b),  # H mismatch
        lambda: jacobian_spectrum(d, torch.ones(3, 2, dtype=F64), t, b),  # W not square
        lambda: jacobian_spectrum(d, w, torch.tensor([2]), b),  # t out of range
        lambda: top_singular_values(d[0], w, 2, "qr"),
        lambda: sample_time_batch_pairs(2, 2, 5),
        lambda: recurrent_weight_spectrum(w, gamma=0.0),
    ]
    for case in cases:
        with pytest.raises(RnnprobeError) as info:
            case()
        assert "\n" not in str(info.value)
