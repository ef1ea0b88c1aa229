"""Singular values of k-step Jacobian products against explicit products and exact cases."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rnnprobe.errors import RnnprobeError
from rnnprobe.probes.products import default_windows, product_spectrum
from tests.support.schema import check_row_blocks

F64 = torch.float64


def _explicit_log_svs(d, w, start, window):
    """Brute-force twin: form J_{s+k} ⋯ J_{s+1} per sequence (safe for short windows)."""
    B, H = d.shape[1], d.shape[2]
    product = torch.eye(H, dtype=F64).expand(B, H, H)
    for d_t in d[start : start + window]:
        product = (d_t.unsqueeze(-1) * w) @ product
    return torch.linalg.svdvals(product).log()


@given(
    hidden=st.integers(1, 6),
    steps=st.integers(1, 9),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_product_singular_values_match_explicit_product_float64(hidden, steps, k, seed):
    k = min(k, hidden)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(hidden, hidden, generator=g, dtype=F64) / hidden**0.5
    w = w + torch.triu(torch.randn(hidden, hidden, generator=g, dtype=F64), 1)  # non-normal
    d = torch.rand(steps, 2, hidden, generator=g, dtype=F64) + 0.2
    spec = product_spectrum(d, w, k=k, frame_size=hidden)
    assert all(spec.converged)
    for i, window in enumerate(spec.windows):
        got = spec.log_singular_values[i]
        expected = _explicit_log_svs(d, w, 0, window)[:, :k]
        # the explicit product only resolves σ_i ≳ ε·σ_1; compare where it is trustworthy ...
        resolved = expected[:, :1] - expected < 16
        torch.testing.assert_close(got[resolved], expected[resolved], rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(spec.exponents[i], got / window)
        if k == hidden:  # ... and check the small ones through Σ ln σ_i = Σ_t ln|det J_t|
            log_det = d[:window].log().sum((0, 2)) + window * torch.linalg.slogdet(w).logabsdet
            torch.testing.assert_close(got.sum(-1), log_det, rtol=1e-9, atol=1e-9)


def test_top_k_with_default_frame_matches_dense_top_k():
    g = torch.Generator().manual_seed(11)
    H, T = 12, 10
    w = 1.5 * torch.randn(H, H, generator=g, dtype=F64) / H**0.5
    d = torch.rand(T, 2, H, generator=g, dtype=F64) + 0.1
    spec = product_spectrum(d, w, k=3, start=2, windows=[3, 8])
    assert all(spec.converged)
    for i, window in enumerate([3, 8]):
        expected = _explicit_log_svs(d, w, 2, window)[:, :3]
        torch.testing.assert_close(spec.log_singular_values[i], expected, rtol=1e-7, atol=1e-7)


def test_scaled_orthogonal_products_have_every_singular_value_rho_to_the_k():
    H, T, rho = 5, 16, 0.7
    q = torch.linalg.qr(torch.randn(H, H, generator=torch.Generator().manual_seed(2), dtype=F64)).Q
    spec = product_spectrum(torch.ones(T, 2, H, dtype=F64), rho * q)  # identity nonlinearity
    assert spec.windows == [1, 2, 4, 8, 16]
    for i, window in enumerate(spec.windows):
        expected = torch.full((2, H), window * math.log(rho), dtype=F64)
        torch.testing.assert_close(spec.log_singular_values[i], expected)
    torch.testing.assert_close(spec.exponents, torch.full_like(spec.exponents, math.log(rho)))


def test_relu_identity_recurrence_with_positive_preactivations_keeps_unit_singular_values():
    H, T = 4, 8
    g = torch.Generator().manual_seed(3)
    h, hs = torch.rand(2, H, generator=g, dtype=F64), []
    for u in (torch.rand(T, 2, H, generator=g, dtype=F64) + 0.1).unbind(0):
        h = torch.relu(h + u)  # W_hh = I and a_t > 0
        hs.append(h)
    phi_prime = (torch.stack(hs) > 0).to(F64)
    spec = product_spectrum(phi_prime, torch.eye(H, dtype=F64))
    torch.testing.assert_close(spec.exponents, torch.zeros_like(spec.exponents))


def test_long_windows_neither_overflow_nor_underflow():
    # symmetric W = O diag(s) Oᵀ: σ(W^k) = |s|^k, far outside float64 for k = 512
    H, T = 5, 512
    o = torch.linalg.qr(torch.randn(H, H, generator=torch.Generator().manual_seed(4), dtype=F64)).Q
    s = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.01], dtype=F64)
    spec = product_spectrum(torch.ones(T, 1, H, dtype=F64), o @ torch.diag(s) @ o.T)
    assert spec.windows[-1] == 512 and all(spec.converged)
    torch.testing.assert_close(spec.exponents[:, 0], s.log().expand(len(spec.windows), H))
    assert torch.isfinite(spec.log_singular_values).all()


def test_default_windows_are_powers_of_two_then_the_full_length():
    assert default_windows(1) == [1]
    assert default_windows(8) == [1, 2, 4, 8]
    assert default_windows(10) == [1, 2, 4, 8, 10]


def test_products_bad_inputs_raise_one_line_errors():
    d, w = torch.ones(4, 2, 3, dtype=F64), torch.eye(3, dtype=F64)
    cases = [
        lambda: product_spectrum(d, w, windows=[5]),  # window longer than the sequence
        lambda: product_spectrum(d, w, start=2, windows=[3]),
        lambda: product_spectrum(d, w, windows=[0]),
        lambda: product_spectrum(d, w, k=4),
        lambda: product_spectrum(d, w, k=2, frame_size=1),
        lambda: product_spectrum(d, w, start=4),
        lambda: product_spectrum(torch.ones(4, 2, 2, dtype=F64), w),
        lambda: product_spectrum(d, w, max_sweeps=0),
    ]
    for case in cases:
        with pytest.raises(RnnprobeError) as info:
            case()
        assert "\n" not in str(info.value)


def test_product_rows_are_tidy():
    spec = product_spectrum(torch.ones(4, 1, 2, dtype=F64), 0.5 * torch.eye(2, dtype=F64), k=1)
    blocks = spec.row_blocks(step=1, layer=0)
    assert check_row_blocks(blocks) == {"ftle": 3}
    assert blocks[0].columns["window"].tolist() == spec.windows
