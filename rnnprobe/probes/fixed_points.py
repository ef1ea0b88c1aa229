r"""Fixed and slow points of one Elman layer under a constant input, and their linearisation.

Conventions (row vectors, one layer of H units, float64). With the layer's input held at a
constant x, the input part of the pre-activation is one vector

    u = x W_ihᵀ + b_ih + b_hh                                          (H,)

and the state follows the autonomous map

    F(h) = φ(a(h)),      a(h) = u + h W_hhᵀ.

A fixed point h* has F(h*) = h*. As in Sussillo & Barak (2013) and Golub & Sussillo's
FixedPointFinder (2018), we minimise the speed

    q(h) = ½ ‖F(h) − h‖²

from N starts at once, ``h`` (N, H). The starts' terms share nothing, so the minimiser of the
batch sum Σ_n q(h_n) is each start's own minimiser, and one optimiser moves all of them:

1. L-BFGS (``torch.optim.LBFGS``, strong Wolfe line search) on Σ_n q(h_n) finds minima of q:
   zeros (fixed points) and positive minima (slow points, where the flow nearly stops: ghosts
   of fixed points that a bifurcation removed, points along an approximate line attractor).
2. Guarded Newton steps on the residual r(h) = F(h) − h: the step δ solves
   (J − I) δᵀ = −r(h)ᵀ, with J below, and is taken (or a half, quarter, eighth of it) only
   where it lowers that start's q. Next to a fixed point with J − I nonsingular it converges
   quadratically, to q ≈ ε²; at a slow point there is no root nearby, every step is refused,
   and the point stays where L-BFGS left it.
3. A fresh L-BFGS on the starts not yet at a fixed point, whose slow convergence along a
   nearly flat valley of q (|λ| ≈ 1) the shared curvature history of step 1 held back.

A point is **fixed** when q < ``fixed_tol``, **slow** when ``fixed_tol`` ≤ q < ``slow_tol``;
starts that end above ``slow_tol`` are discarded. The speed ‖F(h) − h‖ = √(2q) is how far the
state moves in one step: the defaults call a point slow when it moves less than 0.045 per step
(q < 1e-3) and fixed when it moves less than 1.4e-6 (q < 1e-12). Points closer than
``merge_tol`` (Euclidean) are one point: the one with the lowest q stands for them, with the
number of starts merged.

Linearisation: F(h* + ε) ≈ h* + ε Jᵀ, i.e. ε_{t+1}ᵀ = J ε_tᵀ, with the closed form of
:mod:`rnnprobe.probes.jacobian`

    J = ∂F/∂h = diag(φ'(a*)) W_hh,       a* = u + h* W_hhᵀ.

In discrete time an eigen-direction of J grows when |λ| > 1 and decays when |λ| < 1, by |λ|
per step: time constant τ = 1 / |ln |λ|| steps. A fixed point is **stable** when no direction
grows (ρ(J) ≤ 1), a **saddle** when some do, a **source** when all H do. The slowest mode is
the eigenvalue with |λ| closest to 1 (the longest τ): the direction along which the layer
integrates or remembers its input. Index letters: ``N`` points or starts, ``H`` units,
``T`` time steps, ``B`` sequences.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from rnnprobe.errors import RnnprobeError, check_choice, check_count
from rnnprobe.probes._shapes import check_recurrent_weight
from rnnprobe.probes.jacobian import step_jacobians

__all__ = [
    "CATEGORIES",
    "NONLINEARITIES",
    "FixedPoints",
    "Linearisation",
    "Projection",
    "constant_drive",
    "find_fixed_points",
    "fixed_point_jacobians",
    "layer_trajectories",
    "linearise",
    "merge_points",
    "minimise_speed",
    "principal_components",
    "sample_starts",
    "speed",
]

# φ and φ' of a pre-activation a. "linear" (φ = identity) has one fixed point
# h* = u (I − W_hhᵀ)⁻¹ when 1 is no eigenvalue of W_hh: the search's closed-form check.
NONLINEARITIES: dict[str, tuple[Callable, Callable]] = {
    "tanh": (torch.tanh, lambda a: 1 - torch.tanh(a) ** 2),
    "relu": (torch.relu, lambda a: (a > 0).to(a.dtype)),  # φ'(0) = 0, as in PyTorch
    "linear": (lambda a: a, torch.ones_like),
}
NEWTON_SCALES = (1.0, 0.5, 0.25, 0.125)  # fractions of a Newton step tried, largest first
CATEGORIES = ("stable", "saddle", "source", "slow")  # the values of a point's `category`


def _phi(nonlinearity: str) -> tuple[Callable, Callable]:
    return NONLINEARITIES[check_choice(nonlinearity, NONLINEARITIES, "nonlinearity")]


def _check(w_hh: torch.Tensor, u: torch.Tensor, h: torch.Tensor, what: str) -> int:
    H = check_recurrent_weight(w_hh)
    if u.shape != (H,):
        raise RnnprobeError(f"u must be (H={H},), got shape {tuple(u.shape)}")
    if h.ndim != 2 or h.shape[1] != H:
        raise RnnprobeError(f"{what} must be (N, H={H}), got shape {tuple(h.shape)}")
    return H


def speed(h: torch.Tensor, w_hh: torch.Tensor, u: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """Return q(h) = ½‖F(h) − h‖² for each row of ``h`` (N, H): shape (N,)."""
    phi, _ = _phi(nonlinearity)
    return 0.5 * (phi(u + h @ w_hh.mT) - h).square().sum(-1)


def fixed_point_jacobians(
    h: torch.Tensor, w_hh: torch.Tensor, u: torch.Tensor, nonlinearity: str
) -> torch.Tensor:
    """Return J = diag(φ'(u + h W_hhᵀ)) W_hh at each row of ``h`` (N, H): shape (N, H, H)."""
    _, phi_prime = _phi(nonlinearity)
    return step_jacobians(phi_prime(u + h @ w_hh.mT), w_hh)


def minimise_speed(
    starts: torch.Tensor,
    w_hh: torch.Tensor,
    u: torch.Tensor,
    nonlinearity: str = "tanh",
    *,
    fixed_tol: float = 1e-12,
    lbfgs_iterations: int = 500,
    newton_steps: int = 50,
    progress: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (h (N, H), q (N,)): each start moved to a minimum of q, all in float64.

    ``progress(stage)`` is called at each evaluation of q ("L-BFGS", "Newton", "L-BFGS on the
    rest"), for a progress bar.

    L-BFGS on the batch sum of q, guarded Newton steps on F(h) − h (module docstring), then a
    fresh L-BFGS on the starts still at q ≥ ``fixed_tol``: its curvature history no longer
    mixes in the starts already at a fixed point, so starts in one slow valley end closer
    together (within 1e-3 of each other rather than 1e-2 in a trained adding-task run).
    """
    _check(w_hh, u, starts, "starts")
    w_hh, u = w_hh.detach().double(), u.detach().double()
    tick = progress or (lambda stage: None)
    h = _lbfgs(starts.detach().double(), w_hh, u, nonlinearity, lbfgs_iterations, tick)
    q = speed(h, w_hh, u, nonlinearity)
    phi, _ = _phi(nonlinearity)
    eye = torch.eye(w_hh.shape[0], dtype=h.dtype)
    for _ in range(newton_steps if len(h) else 0):
        tick("Newton")
        residual = phi(u + h @ w_hh.mT) - h  # (N, H)
        system = fixed_point_jacobians(h, w_hh, u, nonlinearity) - eye  # (N, H, H)
        delta, info = torch.linalg.solve_ex(system, -residual.unsqueeze(-1))
        delta = delta.squeeze(-1).masked_fill((info != 0).unsqueeze(-1), 0.0)
        improved = torch.zeros_like(q, dtype=torch.bool)
        for scale in NEWTON_SCALES:  # the largest fraction of the step that lowers q
            trial = h + scale * delta
            q_trial = speed(trial, w_hh, u, nonlinearity)
            better = ~improved & torch.isfinite(q_trial) & (q_trial < q)
            h = torch.where(better.unsqueeze(-1), trial, h)
            q = torch.where(better, q_trial, q)
            improved |= better
        if not improved.any():
            break
    rest = torch.isfinite(q) & (q >= fixed_tol)
    if rest.any():
        h_rest = _lbfgs(h[rest], w_hh, u, nonlinearity, lbfgs_iterations, tick, "on the rest")
        q_rest = speed(h_rest, w_hh, u, nonlinearity)
        better = q_rest < q[rest]  # the sum went down; keep each start's own gain only
        h[rest] = torch.where(better.unsqueeze(-1), h_rest, h[rest])
        q[rest] = torch.where(better, q_rest, q[rest])
    return h, q


def _lbfgs(
    h: torch.Tensor,
    w_hh: torch.Tensor,
    u: torch.Tensor,
    nonlinearity: str,
    iterations: int,
    tick: Callable[[str], None],
    which: str = "",
) -> torch.Tensor:
    """Return ``h`` (N, H) after ``iterations`` of L-BFGS on Σ_n q(h_n); ``tick`` at each
    evaluation."""
    stage = f"L-BFGS {which}".strip()
    h = h.clone().requires_grad_(True)
    if iterations > 0 and len(h):
        optimiser = torch.optim.LBFGS(
            [h],
            lr=1.0,
            max_iter=iterations,
            tolerance_grad=1e-14,
            tolerance_change=1e-30,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            tick(stage)
            optimiser.zero_grad()
            total = speed(h, w_hh, u, nonlinearity).sum()
            total.backward()
            return total

        optimiser.step(closure)
    return h.detach()


def merge_points(
    points: torch.Tensor, q: torch.Tensor, merge_tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (kept indices (K,), starts merged into each (K,)): one point per cluster.

    Greedy by increasing q: a point within ``merge_tol`` of a kept one joins it; otherwise it
    is kept. Kept indices come in increasing q.
    """
    if points.ndim != 2 or q.shape != points.shape[:1]:
        raise RnnprobeError(f"points (N, H) and q (N,) disagree: {points.shape}, {q.shape}")
    order = torch.argsort(q, stable=True)
    kept: list[int] = []
    counts: list[int] = []
    for i in order.tolist():
        if kept:
            distance = torch.linalg.vector_norm(points[kept] - points[i], dim=-1)
            nearest = int(distance.argmin())
            if float(distance[nearest]) <= merge_tol:
                counts[nearest] += 1
                continue
        kept.append(i)
        counts.append(1)
    return torch.tensor(kept, dtype=torch.long), torch.tensor(counts, dtype=torch.long)


@dataclass(frozen=True)
class Linearisation:
    """Eigen-analysis of J at N points: see :func:`linearise`."""

    eigenvalues: torch.Tensor  # (N, H) complex128, by descending modulus
    spectral_radius: torch.Tensor  # (N,) ρ(J) = max |λ|
    unstable_dims: torch.Tensor  # (N,) int64, directions with |λ| > 1
    stability: tuple[str, ...]  # stable | saddle | source


def linearise(
    points: torch.Tensor, w_hh: torch.Tensor, u: torch.Tensor, nonlinearity: str
) -> Linearisation:
    """Return the eigenvalues of J = diag(φ'(a*)) W_hh at each point and its stability class."""
    H = _check(w_hh, u, points, "points")
    jacobians = fixed_point_jacobians(points.double(), w_hh.double(), u.double(), nonlinearity)
    eig = torch.linalg.eigvals(jacobians) if len(points) else torch.zeros(0, H, dtype=torch.cdouble)
    eig = torch.gather(eig, 1, eig.abs().argsort(dim=1, descending=True))
    unstable = (eig.abs() > 1).sum(1)
    stability = tuple(
        "stable" if n == 0 else "source" if n == H else "saddle" for n in unstable.tolist()
    )
    radius = eig.abs()[:, 0] if H else torch.zeros(len(points), dtype=torch.double)
    return Linearisation(eig, radius, unstable, stability)


@dataclass(frozen=True)
class FixedPoints:
    """Fixed and slow points of F(h) = φ(u + h W_hhᵀ), one row per distinct point.

    ``points`` (N, H) float64, in increasing q; ``q`` (N,) = ½‖F(h*) − h*‖²; ``kind`` fixed |
    slow; ``starts_merged`` (N,) starts that ended at the point (its share of the starts'
    basins); ``eigenvalues`` (N, H) of J at the point, by descending modulus;
    ``spectral_radius`` (N,); ``unstable_dims`` (N,) directions with |λ| > 1; ``stability``
    stable | saddle | source. ``starts`` optimised, ``discarded`` of them ending with
    q ≥ ``slow_tol``.
    """

    points: torch.Tensor
    q: torch.Tensor
    kind: tuple[str, ...]
    starts_merged: torch.Tensor
    eigenvalues: torch.Tensor
    spectral_radius: torch.Tensor
    unstable_dims: torch.Tensor
    stability: tuple[str, ...]
    u: torch.Tensor
    nonlinearity: str
    starts: int
    discarded: int
    fixed_tol: float
    slow_tol: float
    merge_tol: float

    def __len__(self) -> int:
        return len(self.points)

    @property
    def category(self) -> tuple[str, ...]:
        """Return each point's class for a reader: stable | saddle | source (fixed) or slow."""
        return tuple(
            "slow" if k == "slow" else s for k, s in zip(self.kind, self.stability, strict=True)
        )

    def counts(self) -> dict[str, int]:
        """Return the number of points of each category, every category named."""
        return {c: self.category.count(c) for c in CATEGORIES}

    @property
    def slowest(self) -> torch.Tensor:
        """Return (N,) complex: the eigenvalue of J with |λ| closest to 1 at each point."""
        if self.eigenvalues.shape[1] == 0:
            return torch.zeros(len(self), dtype=torch.cdouble)
        index = (self.eigenvalues.abs() - 1).abs().argmin(dim=1, keepdim=True)
        return torch.gather(self.eigenvalues, 1, index).squeeze(1)

    @property
    def time_constant(self) -> torch.Tensor:
        """Return (N,) τ = 1/|ln|λ|| of the slowest mode, in steps (inf when |λ| = 1)."""
        return 1.0 / self.slowest.abs().log().abs()

    def rows(self) -> list[dict]:
        """Return one dict per point: its class, speed and linearisation (no coordinates)."""
        slowest, tau = self.slowest, self.time_constant
        norms = torch.linalg.vector_norm(self.points, dim=-1)
        return [
            {
                "point": i,
                "kind": self.kind[i],
                "stability": self.stability[i],
                "category": self.category[i],
                "q": float(self.q[i]),
                "speed": math.sqrt(2 * max(float(self.q[i]), 0.0)),  # ‖F(h*) − h*‖ per step
                "unstable_dims": int(self.unstable_dims[i]),
                "spectral_radius": float(self.spectral_radius[i]),
                "slowest_modulus": float(slowest[i].abs()),
                "slowest_real": float(slowest[i].real),
                "slowest_imag": float(slowest[i].imag),
                "time_constant": float(tau[i]),
                "starts_merged": int(self.starts_merged[i]),
                "norm": float(norms[i]),
            }
            for i in range(len(self))
        ]

    def eigenvalue_rows(self) -> list[dict]:
        """Return one dict per (point, eigenvalue index): real, imag and modulus of λ."""
        eig = self.eigenvalues
        real, imag, modulus = eig.real.tolist(), eig.imag.tolist(), eig.abs().tolist()
        return [
            {
                "point": i,
                "category": self.category[i],
                "index": j,
                "real": real[i][j],
                "imag": imag[i][j],
                "modulus": modulus[i][j],
            }
            for i in range(len(self))
            for j in range(eig.shape[1])
        ]


def find_fixed_points(
    w_hh: torch.Tensor,
    u: torch.Tensor,
    starts: torch.Tensor,
    *,
    nonlinearity: str = "tanh",
    fixed_tol: float = 1e-12,
    slow_tol: float = 1e-3,
    merge_tol: float = 1e-3,
    lbfgs_iterations: int = 500,
    newton_steps: int = 50,
    progress: Callable[[str], None] | None = None,
) -> FixedPoints:
    """Return the distinct fixed (q < fixed_tol) and slow (q < slow_tol) points reached from
    ``starts`` (N, H) under F(h) = φ(u + h W_hhᵀ), each with its Jacobian's eigenvalues."""
    _check(w_hh, u, starts, "starts")
    if not 0 < fixed_tol <= slow_tol:
        raise RnnprobeError(f"need 0 < fixed_tol <= slow_tol, got {fixed_tol}, {slow_tol}")
    if not merge_tol >= 0:
        raise RnnprobeError(f"merge_tol must be >= 0, got {merge_tol}")
    w_hh, u = w_hh.detach().double(), u.detach().double()
    h, q = minimise_speed(
        starts,
        w_hh,
        u,
        nonlinearity,
        fixed_tol=fixed_tol,
        lbfgs_iterations=lbfgs_iterations,
        newton_steps=newton_steps,
        progress=progress,
    )
    good = torch.isfinite(q) & (q < slow_tol)
    h, q = h[good], q[good]
    kept, counts = merge_points(h, q, merge_tol)
    points, q = h[kept], q[kept]
    lin = linearise(points, w_hh, u, nonlinearity)
    return FixedPoints(
        points=points,
        q=q,
        kind=tuple("fixed" if v < fixed_tol else "slow" for v in q.tolist()),
        starts_merged=counts,
        eigenvalues=lin.eigenvalues,
        spectral_radius=lin.spectral_radius,
        unstable_dims=lin.unstable_dims,
        stability=lin.stability,
        u=u,
        nonlinearity=nonlinearity,
        starts=len(starts),
        discarded=int((~good).sum()),
        fixed_tol=fixed_tol,
        slow_tol=slow_tol,
        merge_tol=merge_tol,
    )


def sample_starts(
    states: torch.Tensor, count: int, *, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """Return ``count`` starts (count, H): visited ``states`` (M, H) drawn uniformly with
    replacement, plus N(0, noise²) in every unit."""
    check_count(count, "the number of starts")
    if states.ndim != 2 or len(states) == 0:
        raise RnnprobeError(f"visited states must be (M >= 1, H), got {tuple(states.shape)}")
    if not noise >= 0:
        raise RnnprobeError(f"noise must be >= 0, got {noise}")
    index = torch.randint(len(states), (count,), generator=generator)
    jitter = torch.randn(count, states.shape[1], generator=generator, dtype=torch.double)
    return states[index].double() + noise * jitter


def constant_drive(
    x: torch.Tensor | None, w_ih: torch.Tensor, b_ih: torch.Tensor | None, b_hh: torch.Tensor | None
) -> torch.Tensor:
    """Return u = x W_ihᵀ + b_ih + b_hh (H,) for a constant input x (I,); x = None is zero."""
    H = w_ih.shape[0]
    u = torch.zeros(H, dtype=torch.double)
    if x is not None:
        u = u + x.detach().double() @ w_ih.detach().double().mT
    for b in (b_ih, b_hh):
        if b is not None:
            u = u + b.detach().double()
    return u


class _ElmanStack(Protocol):
    """What ``layer_trajectories`` reads of a stacked Elman RNN besides its parameters."""

    @property
    def num_layers(self) -> int:
        """Return L, the number of stacked layers."""

    @property
    def nonlinearity(self) -> str:
        """Return φ's name: 'tanh' or 'relu'."""


def layer_trajectories(
    rnn: _ElmanStack, x: torch.Tensor, layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (input x (T, B, I_l), states h (T, B, H)) of ``layer`` of a stacked Elman RNN.

    ``rnn`` has ``torch.nn.RNN``'s parameters and ``nonlinearity``; ``x`` (T, B, I) is the
    network's input; every layer starts from h_0 = 0 and runs the cell in float64 (dropout
    off, as in evaluation): a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh, h_t = φ(a_t).
    """
    if not 0 <= layer < rnn.num_layers:
        raise RnnprobeError(f"layer must lie in [0, {rnn.num_layers}), got {layer}")
    phi, _ = _phi(rnn.nonlinearity)
    inputs = x.detach().double()
    for k in range(layer + 1):
        w_ih = getattr(rnn, f"weight_ih_l{k}").detach().double()
        w_hh = getattr(rnn, f"weight_hh_l{k}").detach().double()
        b_ih, b_hh = (getattr(rnn, f"bias_{n}_l{k}", None) for n in ("ih", "hh"))
        drive = inputs @ w_ih.mT + constant_drive(None, w_ih, b_ih, b_hh)  # (T, B, H)
        h = drive.new_zeros(drive.shape[1:])
        states = []
        for drive_t in drive.unbind(0):
            h = phi(drive_t + h @ w_hh.mT)
            states.append(h)
        if k == layer:
            return inputs, torch.stack(states)
        inputs = torch.stack(states)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Projection:
    """The first principal components of visited states: ``mean`` (H,), ``components``
    (k, H) orthonormal rows, ``explained`` (k,) share of the states' variance each carries."""

    mean: torch.Tensor
    components: torch.Tensor
    explained: torch.Tensor

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Return the coordinates (..., k) of states ``h`` (..., H) on the components."""
        return (h.double() - self.mean) @ self.components.mT


def principal_components(states: torch.Tensor, k: int = 2) -> Projection:
    """Return the top ``k`` principal components of ``states`` (M, H); fewer when H < k,
    padded with zero rows so that projections always have k coordinates."""
    if states.ndim != 2 or len(states) == 0:
        raise RnnprobeError(f"states must be (M >= 1, H), got {tuple(states.shape)}")
    states = states.detach().double()
    mean = states.mean(0)
    _, s, vh = torch.linalg.svd(states - mean, full_matrices=False)
    variance = s.square()
    total = float(variance.sum())
    components = torch.zeros(k, states.shape[1], dtype=torch.double)
    explained = torch.zeros(k, dtype=torch.double)
    m = min(k, len(s))
    components[:m] = vh[:m]
    if total > 0:
        explained[:m] = variance[:m] / total
    return Projection(mean, components, explained)
