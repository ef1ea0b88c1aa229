r"""Gradient flossing (Engelken, NeurIPS 2023): a differentiable penalty on a layer's top-K
Lyapunov exponents that drives them toward 0, so that gradients neither vanish nor explode.

Index letters: ``t`` time (T steps), ``b`` batch (B), ``h`` hidden (H), ``k`` direction (K).
Row vectors, time-major. One layer with inputs x_t (B, I) and initial state h_0 (B, H) runs

    a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh,    h_t = φ(a_t),    t = 1 … T,
    J_t = ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh          (φ'(a_t) read off h_t: nonlinearity.py).

From a fixed orthonormal frame Q_0 (H, K) the frame is pushed through the Jacobians and
re-orthonormalised by a thin QR every ``qr_every`` steps (and at the last step):

    Z_t = J_t Q_{t-1};   Z_t = Q_t R_t at a QR step,   Q_t = Z_t otherwise,
    λ_i = (1 / (T − w)) Σ_{QR steps t > w} ln R_t[i, i]      (natural log per time step).

The first w = ``warmup`` steps re-orthonormalise every step and are not counted. Over the
counted steps Σ_t Σ_{i ≤ j} ln R_t[i, i] = ln vol_j(J_T ⋯ J_{w+1} Q_w[:, :j]) whatever
``qr_every`` is, so the exponents equal ``probes.lyapunov.lyapunov_exponents`` on the same
trajectory (in exact arithmetic); fewer QRs are cheaper but let Z_t over- or underflow when
‖J‖ is far from 1 over many steps. Exponents stay in QR order (descending once converged).

The penalty is P = Σ_{i<K} λ̄_i², λ̄ = the batch mean of the per-sequence exponents.

Every step is differentiable: the recurrence (h_t depends on W_hh, W_ih, the biases and h_0),
J_t through φ'(a_t) (tanh: 1 − h_t², a function of the weights; ReLU: locally constant) and
W_hh, and the QR (``torch.linalg.qr``, reduced, full column rank: K ≤ H and R_ii ≠ 0). QR is
sign-stable: torch's Householder QR leaves diag(R) of either sign, so columns of Q and rows
of R are flipped to make R_ii > 0 — the unique, smooth QR of a full-rank Z. The exponents
(|R_ii|) do not depend on the convention; the frame handed to the next step does.

Cost per step and sequence: H² (recurrence) + H²K (J Q) + HK² (QR) multiply-adds, about three
times that with the backward pass. The QR runs in ``qr_dtype`` (float64 by default, like the
Lyapunov probe: float32 QR loses digits of the small R_ii); the recurrence in the inputs' own.

Parsing a ``--floss`` spec (:class:`FlossSpec`) needs no torch: the CLI refuses a bad value
before loading it, so torch is imported inside the functions that compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from rnnprobe.errors import RnnprobeError, check_count

if TYPE_CHECKING:
    import torch

__all__ = [
    "FlossMeasure",
    "FlossSpec",
    "floss_layers",
    "floss_penalty",
    "layer_exponents",
    "qr_exponents",
    "run_layer",
]

_SPEC_HELP = (
    "use none, or K[,key=value…] with keys k, weight, every, pre, qr, warmup, batch "
    "(e.g. 4,weight=0.1,pre=100)"
)


@dataclass(frozen=True)
class FlossSpec:
    """What ``--floss`` asks for; see ``config.TrainConfig.floss`` for the syntax."""

    k: int = 1  # exponents driven toward 0 (count)
    weight: float = 1.0  # multiplies P in the training loss; 0 records the exponents only
    every: int = 1  # optimizer steps between flossing steps (1: every step)
    pre: int = 0  # flossing-only updates before training step 1 (count)
    qr: int = 1  # time steps between re-orthonormalisations
    warmup: int = 0  # time steps excluded from the exponents (at most T − 1 are)
    batch: int = 0  # sequences of the batch flossed (0: all)

    @classmethod
    def parse(cls, spec: str, hidden_size: int | None = None) -> FlossSpec | None:
        """Return the spec written as ``none`` (None) or ``K[,key=value…]``; K ≤ hidden_size."""
        text = str(spec).strip()
        if text == "none":
            return None
        names = {f.name: f for f in fields(cls)}
        # keys checked against the fields, each value an int or float as its field's type says
        values: dict[str, Any] = {}
        for n, item in enumerate(text.split(",")):
            key, sep, raw = item.strip().partition("=")
            key, raw = (key.strip(), raw.strip()) if sep else ("k", key.strip())
            if not sep and n > 0:
                raise RnnprobeError(f"only the first item may be a bare K; {_SPEC_HELP}")
            if key not in names:
                raise RnnprobeError(f"unknown key {key!r}; {_SPEC_HELP}")
            if key in values:
                raise RnnprobeError(f"{key} given twice; {_SPEC_HELP}")
            values[key] = _number(key, raw, names[key].type == "float")
        flossing = cls(**values)
        if hidden_size is not None and flossing.k > hidden_size:
            raise RnnprobeError(f"k = {flossing.k} exceeds the hidden size {hidden_size}")
        return flossing

    def fires(self, step: int) -> bool:
        """Return whether training step ``step`` (1-based) flosses: steps 1, every + 1, …"""
        return (step - 1) % self.every == 0


def _number(key: str, raw: str, real: bool) -> int | float:
    """Return ``raw`` as the value of ``key``, or raise a one-line error naming its range."""
    least = {"weight": 0, "pre": 0, "warmup": 0, "batch": 0}.get(key, 1)
    try:
        value = float(raw) if real else int(raw)
    except ValueError:
        kind = "a number" if real else "an integer"
        raise RnnprobeError(f"{key} must be {kind}, got {raw!r}; {_SPEC_HELP}") from None
    if not real:
        if value >= 2**63:
            raise RnnprobeError(f"{key} must be below 2**63, got {raw!r}")
        return check_count(value, key, least)
    if not (value >= least and math.isfinite(value) and abs(value) < 1e30):
        raise RnnprobeError(f"{key} must be a finite number ≥ 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class FlossMeasure:
    """One layer's flossing result: ``exponents`` (K,) the batch-mean λ̄, ``per_sequence``
    (B, K), and ``penalty`` (0-d) = Σ λ̄_i²; all differentiable, in QR order."""

    exponents: torch.Tensor
    per_sequence: torch.Tensor
    penalty: torch.Tensor


def run_layer(
    drive: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor | None, nonlinearity: str
) -> torch.Tensor:
    """Return h (T, B, H): h_t = φ(drive_t + h_{t-1} W_hhᵀ), differentiable in every input.

    ``drive`` (T, B, H) = x_t W_ihᵀ + b_ih + b_hh, the part of a_t that does not depend on
    the state; ``h0`` (B, H), zeros when None.
    """
    import torch

    from rnnprobe.nonlinearity import activation, check_nonlinearity

    phi = activation(check_nonlinearity(nonlinearity))
    h = drive.new_zeros(drive.shape[1:]) if h0 is None else h0
    states = []
    for d_t in drive.unbind(0):  # unbind, not drive[t]: see STYLE.md (O(T²) backward)
        h = phi(torch.addmm(d_t, h, w_hh.t()))
        states.append(h)
    return torch.stack(states)


def _positive_qr(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (Q, diag R) of the thin QR of ``z`` (B, H, K) with diag(R) > 0 (sign-stable)."""
    import torch

    q, r = torch.linalg.qr(z)
    d = r.diagonal(dim1=-2, dim2=-1)  # (B, K)
    sign = torch.where(d < 0, -1.0, 1.0).to(z.dtype).detach()  # locally constant
    return q * sign.unsqueeze(-2), d * sign


def qr_exponents(
    phi_prime: torch.Tensor,
    w_hh: torch.Tensor,
    *,
    k: int | None = None,
    warmup: int = 0,
    qr_every: int = 1,
    frame: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Return the top-``k`` exponents (B, k) of J_t = diag(φ'_t) W_hh, differentiable in both.

    ``phi_prime`` (T, B, H), ``w_hh`` (H, H); ``frame`` (H, k) or (B, H, k), orthonormal, is
    Q_0 (default: ``probes.lyapunov.initial_frame(H, k, seed=seed)``, made on the host).
    """
    from rnnprobe.probes._shapes import check_directions, check_trajectory
    from rnnprobe.probes.lyapunov import initial_frame

    T, B, H = check_trajectory(phi_prime, w_hh)
    k = check_directions(k, H)
    if not 0 <= warmup < T:
        raise RnnprobeError(f"warmup must lie in [0, T={T}), got {warmup}")
    check_count(qr_every, "qr_every")
    if frame is None:
        frame = initial_frame(H, k, seed=seed, dtype=phi_prime.dtype, device=phi_prime.device)
    if frame.shape not in ((H, k), (B, H, k)):
        raise RnnprobeError(f"frame must be (H, k) or (B, H, k), got {tuple(frame.shape)}")
    q = frame.to(phi_prime).expand(B, H, k)  # (B, H, k)
    log_growth = phi_prime.new_zeros(B, k)
    for t, d_t in enumerate(phi_prime.unbind(0)):
        z = d_t.unsqueeze(-1) * (w_hh @ q)  # J_t Q_{t-1}, (B, H, k)
        if t < warmup or (t + 1 - warmup) % qr_every == 0 or t == T - 1:
            q, r_diag = _positive_qr(z)
            if t >= warmup:
                log_growth = log_growth + r_diag.log()
        else:
            q = z
    return log_growth / (T - warmup)


def floss_penalty(exponents: torch.Tensor) -> torch.Tensor:
    """Return P = Σ_i λ̄_i² (0-d) of exponents (K,), or of their batch mean when (B, K)."""
    mean = exponents.mean(0) if exponents.dim() == 2 else exponents
    return mean.square().sum()


def layer_exponents(
    inputs: torch.Tensor,
    h0: torch.Tensor | None,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None,
    b_hh: torch.Tensor | None = None,
    *,
    nonlinearity: str,
    k: int | None = None,
    warmup: int = 0,
    qr_every: int = 1,
    frame: torch.Tensor | None = None,
    seed: int = 0,
    qr_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (h (T, B, H), exponents (B, k)) of one layer run on ``inputs`` (T, B, I).

    The recurrence runs in the inputs' dtype, the QR in ``qr_dtype`` (default float64);
    both are differentiable in the weights, biases, inputs and ``h0`` (B, H).
    """
    import torch

    from rnnprobe.nonlinearity import derivative

    drive = inputs @ w_ih.t()  # (T, B, H)
    for bias in (b_ih, b_hh):
        if bias is not None:
            drive = drive + bias
    h = run_layer(drive, w_hh, h0, nonlinearity)
    qr_dtype = torch.float64 if qr_dtype is None else qr_dtype
    exponents = qr_exponents(
        derivative(h, nonlinearity).to(qr_dtype),
        w_hh.to(qr_dtype),
        k=k,
        warmup=warmup,
        qr_every=qr_every,
        frame=frame,
        seed=seed,
    )
    return h, exponents


def floss_layers(
    inputs: torch.Tensor,
    h0: torch.Tensor | None,
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    *,
    nonlinearity: str,
    k: int,
    warmup: int = 0,
    qr_every: int = 1,
    frame: torch.Tensor | None = None,
    seed: int = 0,
) -> list[FlossMeasure]:
    """Return one :class:`FlossMeasure` per layer of a stack run on ``inputs`` (T, B, I).

    ``layers`` holds (W_ih, W_hh, b_ih, b_hh) bottom first, ``h0`` (L, B, H) or None. Each
    layer's penalty reaches only its own weights (and ``h0[l]``): its input, the layer
    below's re-run output, is detached. ``warmup`` is cut to T − 1 for short sequences.
    """
    measures, x = [], inputs
    warmup = min(warmup, inputs.shape[0] - 1)
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers):
        h, per_sequence = layer_exponents(
            x,
            None if h0 is None else h0[layer],
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            nonlinearity=nonlinearity,
            k=k,
            warmup=warmup,
            qr_every=qr_every,
            frame=frame,
            seed=seed,
        )
        mean = per_sequence.mean(0)
        measures.append(FlossMeasure(mean, per_sequence, floss_penalty(mean)))
        x = h.detach()
    return measures
