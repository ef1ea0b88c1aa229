"""Lyapunov exponents by QR against ln ρ(W), exact identities and a whole-trajectory jacrev."""

import math

import pytest
import torch

from rnnprobe.errors import RnnprobeError
from rnnprobe.nonlinearity import derivative_from_output
from rnnprobe.probes import lyapunov
from rnnprobe.probes.lyapunov import initial_frame, lyapunov_exponents
from tests.support.schema import check_row_blocks

F64 = torch.float64


def _run(w_hh, h0, inputs, nonlinearity="tanh"):
    """Return h (T, B, H) of h_t = φ(u_t + h_{t-1} W_hhᵀ); ``inputs`` (T, B, H) are u_t."""
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    h, out = h0, []
    for u_t in inputs.unbind(0):
        h = phi(u_t + h @ w_hh.T)
        out.append(h)
    return torch.stack(out)


def _non_normal(hidden, seed, scale=1.2):
    g = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(hidden, hidden, generator=g, dtype=F64) / hidden**0.5
    return w + torch.triu(torch.randn(hidden, hidden, generator=g, dtype=F64), 1)


def test_contracting_tanh_network_top_exponent_equals_log_spectral_radius():
    N, g, T = 200, 0.5, 2000
    gen = torch.Generator().manual_seed(0)
    w = g * torch.randn(N, N, generator=gen, dtype=F64) / N**0.5
    h0 = 1e-2 * torch.randn(1, N, generator=gen, dtype=F64)
    h = _run(w, h0, torch.zeros(T, 1, N, dtype=F64))  # no input: h -> 0, J_t -> W
    spec = lyapunov_exponents(derivative_from_output(h, "tanh"), w, k=2, warmup=200)
    rho = torch.linalg.eigvals(w).abs().max()
    assert abs(float(spec.exponents[0, 0]) - math.log(float(rho))) < 1e-3


def test_scaled_orthogonal_identity_nonlinearity_gives_log_rho_everywhere():
    H, rho = 5, 0.8
    q = torch.linalg.qr(torch.randn(H, H, generator=torch.Generator().manual_seed(3), dtype=F64)).Q
    spec = lyapunov_exponents(torch.ones(7, 2, H, dtype=F64), rho * q)  # φ' ≡ 1 test double
    torch.testing.assert_close(spec.exponents, torch.full((2, H), math.log(rho), dtype=F64))


def test_relu_identity_recurrence_with_positive_preactivations_has_zero_exponents():
    H, T = 4, 12
    gen = torch.Generator().manual_seed(4)
    inputs = torch.rand(T, 3, H, generator=gen, dtype=F64) + 0.1  # keeps every a_t > 0
    h = _run(torch.eye(H, dtype=F64), torch.rand(3, H, generator=gen, dtype=F64), inputs, "relu")
    spec = lyapunov_exponents(derivative_from_output(h, "relu"), torch.eye(H, dtype=F64))
    torch.testing.assert_close(spec.exponents, torch.zeros(3, H, dtype=F64))


def test_full_spectrum_sum_equals_mean_log_abs_det_jacobian():
    H, T, B, warmup = 6, 40, 3, 5
    w = _non_normal(H, 5)
    gen = torch.Generator().manual_seed(6)
    h = _run(w, torch.zeros(B, H, dtype=F64), torch.randn(T, B, H, generator=gen, dtype=F64))
    d = derivative_from_output(h, "tanh")
    spec = lyapunov_exponents(d, w, warmup=warmup)
    log_det = d[warmup:].abs().log().sum(-1) + torch.linalg.slogdet(w).logabsdet  # (T-w, B)
    torch.testing.assert_close(spec.exponents.sum(-1), log_det.mean(0))


def _volume_identity_holds(k):
    """Σ_t Σ_{i≤j} ln|R_t[i,i]| = ½ ln det(Fᵀ PᵀP F) for F = Q_0[:, :j], P = ∂h_T/∂h_0 by jacrev."""
    H, T = 5, 8
    w = _non_normal(H, 7)
    inputs = torch.randn(T, H, generator=torch.Generator().manual_seed(8), dtype=F64)
    h0 = torch.zeros(H, dtype=F64)

    def final_state(h):
        for u_t in inputs:
            h = torch.tanh(u_t + h @ w.T)
        return h

    product = torch.func.jacrev(final_state)(h0)  # J_T ⋯ J_1, (H, H)
    h = _run(w, h0.unsqueeze(0), inputs.unsqueeze(1))
    frame = initial_frame(H, k, seed=1)
    spec = lyapunov_exponents(derivative_from_output(h, "tanh"), w, k=k, frame=frame)
    for j in range(1, k + 1):
        image = product @ frame[:, :j]
        expected = 0.5 * torch.logdet(image.T @ image)
        if not torch.isclose(spec.log_growth[0, :j].sum(), expected, rtol=1e-9, atol=1e-9):
            return False
    return True


@pytest.mark.parametrize("k", [1, 2, 3])
def test_log_growth_equals_volume_growth_of_jacrev_trajectory_product(k):
    assert _volume_identity_holds(k)


def test_transposed_update_fails_the_volume_identity(monkeypatch):
    def transposed(phi_prime_t, w_hh, q):  # the bug: Q ← J_tᵀ Q
        return w_hh.mT @ (phi_prime_t.unsqueeze(-1) * q)

    monkeypatch.setattr(lyapunov, "_apply_jacobian", transposed)
    # J_T ⋯ J_1 q and J_Tᵀ ⋯ J_1ᵀ q have different lengths for a non-normal, time-varying J_t;
    # full-volume (k = H, log|det|) and ln ρ(W) checks cannot tell them apart.
    assert not _volume_identity_holds(1)
    assert not _volume_identity_holds(2)


def test_lyapunov_bad_inputs_raise_one_line_errors():
    d, w = torch.ones(4, 2, 3, dtype=F64), torch.eye(3, dtype=F64)
    cases = [
        lambda: lyapunov_exponents(d, w, k=4),
        lambda: lyapunov_exponents(d, w, warmup=4),
        lambda: lyapunov_exponents(d, torch.eye(2, dtype=F64)),
        lambda: lyapunov_exponents(d[0], w),
        lambda: lyapunov_exponents(d, w, k=2, frame=torch.eye(3, dtype=F64)),
    ]
    for case in cases:
        with pytest.raises(RnnprobeError) as info:
            case()
        assert "\n" not in str(info.value)


def test_lyapunov_rows_are_tidy():
    spec = lyapunov_exponents(torch.ones(3, 2, 3, dtype=F64), 0.5 * torch.eye(3, dtype=F64), k=2)
    blocks = spec.row_blocks(step=3, layer=0)
    assert check_row_blocks(blocks) == {"lyapunov": 2}
    assert torch.equal(blocks[0].columns["exponent"], spec.mean_exponents)
    torch.testing.assert_close(spec.mean_exponents, torch.full((2,), math.log(0.5), dtype=F64))
