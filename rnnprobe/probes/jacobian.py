r"""Closed-form one-step Jacobians and their spectra, and the spectrum of W_hh itself.

Convention (row vectors, time-major, one layer): ``h`` (T, B, H) holds h_1 … h_T, ``h0``
(B, H) the initial state, and

    a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh,      h_t = φ(a_t),
    J_t = ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh        (acting on column vectors).

``phi_prime`` (T, B, H) is φ'(a_t) read off the outputs with
:func:`rnnprobe.nonlinearity.derivative_from_output`; index ``t`` of it (0-based) belongs to
the Jacobian that maps ``h[t-1]`` (``h0`` for t = 0) to ``h[t]``.

Singular values of a sampled J = diag(d) W come from one of two routes:

* ``"svd"``: ``torch.linalg.svdvals(J)``, accurate for every singular value; O(H³) per sample.
* ``"gram"``: ``eigvalsh(J Jᵀ)`` with J Jᵀ = (W Wᵀ) ⊙ (d dᵀ), so W Wᵀ is formed once and each
  sample costs one elementwise product plus a symmetric eigensolve (about 2× faster than
  svdvals). σ_i = √λ_i is accurate to ~ε·σ_max² / σ_i, i.e. exact for the top values but not
  for σ_i ≲ √ε·σ_max; that is why ``"auto"`` uses it only for top-k (k < H).

Pascanu, Mikolov & Bengio (2013): with γ ≥ sup|φ'| (γ = 1 for tanh and ReLU), ‖J_t‖ ≤ γ σ_max(W_hh),
so γ σ_max < 1 is *sufficient* for gradients to vanish and γ σ_max > 1 is *necessary* for them
to explode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from rnnprobe.errors import RnnprobeError
from rnnprobe.probes._rows import Column, RowBlock
from rnnprobe.probes._shapes import check_directions, check_recurrent_weight, check_trajectory

SpectrumMethod = Literal["auto", "svd", "gram"]


def step_jacobians(phi_prime: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """Return J = diag(φ') W_hh for every leading index: ``phi_prime`` (..., H) -> (..., H, H)."""
    return phi_prime.unsqueeze(-1) * w_hh


def sample_time_batch_pairs(
    seq_len: int,
    batch_size: int,
    count: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``count`` distinct (t, b) pairs drawn uniformly, as two (count,) long tensors."""
    total = seq_len * batch_size
    if not 1 <= count <= total:
        raise RnnprobeError(f"count must lie in [1, T·B={total}], got {count}")
    flat = torch.randperm(total, generator=generator)[:count].sort().values
    return (flat // batch_size).to(device), (flat % batch_size).to(device)


@dataclass(frozen=True)
class JacobianSpectrum:
    """Spectra of N sampled one-step Jacobians J_t for sequence b.

    ``t``, ``b`` (N,) long; ``singular_values`` (N, k) descending; ``spectral_norm`` (N,) = σ_1;
    ``mean_log_singular_value`` (N,) = (1/H) Σ_i ln σ_i over *all* H values, computed exactly as
    (Σ_i ln|d_i| + ln|det W_hh|) / H, so it is right even for top-k (−inf if J is singular).
    """

    t: torch.Tensor
    b: torch.Tensor
    singular_values: torch.Tensor
    spectral_norm: torch.Tensor
    mean_log_singular_value: torch.Tensor

    def row_blocks(self, step: int, layer: int) -> list[RowBlock]:
        """Return the ``spectra`` rows of the sampled Jacobians: quantity
        ``jacobian_singular``, one row per (sample, index), ``imag`` 0."""
        count, k = self.singular_values.shape
        columns: dict[str, Column] = dict(
            step=step,
            layer=layer,
            quantity="jacobian_singular",
            sample=np.repeat(np.arange(count), k),
            index=np.tile(np.arange(k), count),
            value=self.singular_values,
            imag=0.0,
        )
        return [RowBlock("spectra", columns)]


def top_singular_values(
    phi_prime: torch.Tensor, w_hh: torch.Tensor, k: int, method: SpectrumMethod = "auto"
) -> torch.Tensor:
    """Return the k largest singular values of diag(d) W_hh for each row d of ``phi_prime`` (N, H).

    Shape (N, k), descending. See the module docstring for ``method``.
    """
    H = check_recurrent_weight(w_hh)
    if phi_prime.ndim != 2 or phi_prime.shape[1] != H:
        raise RnnprobeError(f"phi_prime samples must be (N, H={H}), got {tuple(phi_prime.shape)}")
    k = check_directions(k, H)
    if method == "auto":
        method = "svd" if k == H else "gram"
    if method == "svd":
        return torch.linalg.svdvals(step_jacobians(phi_prime, w_hh))[:, :k]
    if method == "gram":
        gram = (w_hh @ w_hh.mT).unsqueeze(0) * (phi_prime.unsqueeze(2) * phi_prime.unsqueeze(1))
        try:
            eig = torch.linalg.eigvalsh(gram)[:, H - k :].flip(-1)  # ascending -> top k
        except torch.linalg.LinAlgError:  # an ill-conditioned Gram matrix: take the SVD
            return torch.linalg.svdvals(step_jacobians(phi_prime, w_hh))[:, :k]
        return eig.clamp_min(0).sqrt()
    raise RnnprobeError(f"method must be one of auto, svd, gram, got {method!r}")


def jacobian_spectrum(
    phi_prime: torch.Tensor,
    w_hh: torch.Tensor,
    t: torch.Tensor,
    b: torch.Tensor,
    *,
    k: int | None = None,
    method: SpectrumMethod = "auto",
) -> JacobianSpectrum:
    """Return singular values (all, or top ``k``) of J_t = diag(φ'(a_t)) W_hh at pairs (t, b).

    ``phi_prime`` (T, B, H); ``t``, ``b`` (N,) indices, e.g. from :func:`sample_time_batch_pairs`.
    """
    T, B, H = check_trajectory(phi_prime, w_hh)
    k = check_directions(k, H)
    t = torch.as_tensor(t, device=phi_prime.device).long()
    b = torch.as_tensor(b, device=phi_prime.device).long()
    if t.shape != b.shape or t.ndim != 1:
        raise RnnprobeError(
            f"t and b must be 1-D of equal length, got {tuple(t.shape)}, {tuple(b.shape)}"
        )
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= T or int(b.min()) < 0 or int(b.max()) >= B):
        raise RnnprobeError(f"sampled (t, b) pairs must lie in [0, {T}) × [0, {B})")
    d = phi_prime[t, b]  # (N, H)
    sv = top_singular_values(d, w_hh, k, method)
    log_det_w = torch.linalg.slogdet(w_hh).logabsdet
    mean_log = (d.abs().log().sum(-1) + log_det_w) / H
    return JacobianSpectrum(t.cpu(), b.cpu(), sv, sv[:, 0], mean_log)


@dataclass(frozen=True)
class WeightSpectrum:
    """Spectrum of W_hh (H, H) and the Pascanu et al. (2013) condition.

    ``eigenvalues`` (H,) complex, by descending modulus; ``spectral_radius`` () = max|λ|;
    ``singular_values`` (H,) descending; ``sigma_max`` () = σ_1; ``gamma`` = sup|φ'|;
    ``pascanu_bound`` () = γ σ_max; ``vanishing_guaranteed`` = γ σ_max < 1 (sufficient for
    vanishing); ``exploding_possible`` = γ σ_max > 1 (necessary for exploding).
    """

    eigenvalues: torch.Tensor
    spectral_radius: torch.Tensor
    singular_values: torch.Tensor
    sigma_max: torch.Tensor
    gamma: float
    pascanu_bound: torch.Tensor
    vanishing_guaranteed: bool
    exploding_possible: bool

    def row_blocks(
        self,
        step: int,
        layer: int,
        jacobian_norm: torch.Tensor | None = None,
        jacobian_mean_log: torch.Tensor | None = None,
    ) -> list[RowBlock]:
        """Return the ``weights`` row of W_hh (with the mean ‖J_t‖₂ and mean ln σ of the
        sampled Jacobians when given, else NaN) and its ``spectra`` rows: eigenvalues
        (``w_hh_eigenvalue``, real in ``value``, imaginary in ``imag``) and singular values
        (``w_hh_singular``), ``sample`` 0. Step 0 is the initialisation."""
        H, nan = self.singular_values.shape[0], float("nan")
        weights: dict[str, Column] = dict(
            step=step,
            layer=layer,
            spectral_radius=self.spectral_radius,
            sigma_max=self.sigma_max,
            pascanu_bound=self.pascanu_bound,
            jacobian_norm=nan if jacobian_norm is None else jacobian_norm,
            jacobian_mean_log_sv=nan if jacobian_mean_log is None else jacobian_mean_log,
        )
        blocks = [RowBlock("weights", weights)]
        singular = self.singular_values
        for quantity, values, imag in (
            ("w_hh_eigenvalue", self.eigenvalues.real, self.eigenvalues.imag),
            ("w_hh_singular", singular, torch.zeros_like(singular)),
        ):
            columns: dict[str, Column] = dict(
                step=step,
                layer=layer,
                quantity=quantity,
                sample=0,
                index=np.arange(H),
                value=values,
                imag=imag,
            )
            blocks.append(RowBlock("spectra", columns))
        return blocks


def recurrent_weight_spectrum(w_hh: torch.Tensor, *, gamma: float = 1.0) -> WeightSpectrum:
    """Return eigenvalues, spectral radius, singular values of W_hh and the Pascanu condition.

    ``gamma`` bounds |φ'| (1 for tanh and ReLU).
    """
    check_recurrent_weight(w_hh)
    if not gamma > 0:
        raise RnnprobeError(f"gamma must be positive, got {gamma}")
    eig = torch.linalg.eigvals(w_hh)
    eig = eig[eig.abs().argsort(descending=True)]
    sv = torch.linalg.svdvals(w_hh)
    bound = gamma * sv[0]
    return WeightSpectrum(
        eigenvalues=eig,
        spectral_radius=eig.abs()[0],
        singular_values=sv,
        sigma_max=sv[0],
        gamma=gamma,
        pascanu_bound=bound,
        vanishing_guaranteed=bool(bound < 1),
        exploding_possible=bool(bound > 1),
    )
