r"""Per-step statistics of one layer's hidden states h (T, B, H): scale, saturation, dimension.

Convention: time-major ``h`` (T, B, H) = φ(a_t) for t = 1 … T, with φ' read off h
(:func:`rnnprobe.nonlinearity.derivative_from_output`). A unit passes (almost) no gradient at
(t, b) when φ'(a_t) < ``threshold``: for tanh that is *saturation* (|h| close to 1), for ReLU it is
*inactivity* (h = 0, φ' = 0 < any positive threshold). A unit is *dead* when that holds at
every (t, b) of the batch. The effective dimensionality is the participation ratio of the
covariance C of the states pooled over batch and time,

    PR = (Σ_i λ_i)² / Σ_i λ_i² = tr(C)² / ‖C‖_F²  ∈ [1, H],

H for isotropic states, 1 when they vary along a single direction (NaN if they do not vary).

Padded batches: with ``real`` (T, B) bool, True where step t of sequence b is real, every
statistic is taken over the real (t, b) only; ``sequences`` (T,) counts them per step, and a
step no sequence reaches gets NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rnnprobe.errors import RnnprobeError
from rnnprobe.nonlinearity import check_nonlinearity, derivative_from_output
from rnnprobe.probes._rows import RowBlock


@dataclass(frozen=True)
class HiddenStats:
    """Per-step (T,) tensors, plus two whole-batch scalars (0-d tensors).

    ``mean``, ``std`` over batch and units (population std); ``mean_norm`` = mean over batch of
    ‖h_t‖₂; ``mean_phi_prime``; ``saturated_fraction`` (tanh, else None) / ``inactive_fraction``
    (ReLU, else None) = fraction of (b, unit) with φ' < threshold; ``dead_fraction`` = fraction
    of units blocked at every (t, b); ``participation_ratio`` of the pooled covariance;
    ``sequences`` (T,) = how many sequences are real at each step.
    """

    mean: torch.Tensor
    std: torch.Tensor
    mean_norm: torch.Tensor
    mean_phi_prime: torch.Tensor
    saturated_fraction: torch.Tensor | None
    inactive_fraction: torch.Tensor | None
    dead_fraction: torch.Tensor
    participation_ratio: torch.Tensor
    sequences: torch.Tensor | None = None

    def row_blocks(self, step: int, layer: int, batch: int) -> list[RowBlock]:
        """Return a layer's ``hidden`` rows (one per time step t) and its ``health`` row.

        ``batch`` (B) is the ``sequences`` count of every step when no lengths were given;
        the fraction a nonlinearity does not have (and ``dead_fraction`` for tanh) is NaN.
        """
        T = self.mean.shape[0]
        nan = torch.full((T,), float("nan"), device=self.mean.device, dtype=self.mean.dtype)
        saturation = self.saturated_fraction if self.saturated_fraction is not None else nan
        inactive = self.inactive_fraction if self.inactive_fraction is not None else nan
        hidden = RowBlock(
            "hidden",
            dict(
                step=step,
                layer=layer,
                t=np.arange(T),
                sequences=self.sequences if self.sequences is not None else batch,
                mean=self.mean,
                std=self.std,
                norm=self.mean_norm,
                saturation=saturation,
                inactive=inactive,
                mean_phi_prime=self.mean_phi_prime,
            ),
        )
        relu = self.inactive_fraction is not None
        health = RowBlock(
            "health",
            dict(
                step=step,
                layer=layer,
                saturation=saturation.mean(),
                inactive=inactive.mean(),
                dead_fraction=self.dead_fraction if relu else nan[0],
                mean_phi_prime=self.mean_phi_prime.mean(),
                participation_ratio=self.participation_ratio,
            ),
        )
        return [hidden, health]


def participation_ratio(states: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Return tr(C)² / ‖C‖_F² of the covariance of ``states`` (N, H) over its N rows, 0-d.

    ``weights`` (N,) of 0/1 keeps only the rows weighted 1 (no host sync, unlike indexing).
    """
    if weights is None:
        centred = states - states.mean(0)
        cov = centred.mT @ centred / max(states.shape[0] - 1, 1)  # (H, H)
    else:
        w = weights.to(states.dtype)[:, None]  # (N, 1)
        n = w.sum()
        centred = (states - (w * states).sum(0) / n) * w
        cov = centred.mT @ centred / (n - 1).clamp_min(1)
    return cov.diagonal().sum() ** 2 / (cov * cov).sum()


def hidden_state_stats(
    h: torch.Tensor,
    nonlinearity: str,
    *,
    threshold: float = 0.05,
    real: torch.Tensor | None = None,
) -> HiddenStats:
    """Return :class:`HiddenStats` of one layer's outputs ``h`` (T, B, H).

    ``real`` (T, B) bool limits every statistic to the real steps of a padded batch.
    """
    check_nonlinearity(nonlinearity)
    if h.ndim != 3 or 0 in h.shape:
        raise RnnprobeError(
            f"hidden states must be a non-empty (T, B, H) tensor, got {tuple(h.shape)}"
        )
    if not 0 < threshold <= 1:
        raise RnnprobeError(f"threshold must lie in (0, 1], got {threshold}")
    T, B, H = h.shape  # steps, batch, hidden units
    phi_prime = derivative_from_output(h, nonlinearity)
    blocked = phi_prime < threshold  # (T, B, H)
    if real is not None:
        return _padded_stats(h, phi_prime, blocked, real, nonlinearity)
    blocked_fraction = blocked.flatten(1).to(h.dtype).mean(1)  # (T,)
    return HiddenStats(
        mean=h.mean((1, 2)),
        std=h.flatten(1).std(1, correction=0),
        mean_norm=h.norm(dim=2).mean(1),
        mean_phi_prime=phi_prime.mean((1, 2)),
        saturated_fraction=blocked_fraction if nonlinearity == "tanh" else None,
        inactive_fraction=blocked_fraction if nonlinearity == "relu" else None,
        dead_fraction=blocked.all(0).all(0).to(h.dtype).mean(),
        participation_ratio=participation_ratio(h.reshape(T * B, H)),
    )


def _padded_stats(
    h: torch.Tensor,
    phi_prime: torch.Tensor,
    blocked: torch.Tensor,
    real: torch.Tensor,
    nonlinearity: str,
) -> HiddenStats:
    """Return the statistics over the real (t, b) of ``real`` (T, B) only."""
    T, B, H = h.shape
    if tuple(real.shape) != (T, B):
        raise RnnprobeError(f"real must have shape {(T, B)}, got {tuple(real.shape)}")
    w = real.to(h.dtype)  # (T, B)
    sequences = w.sum(1)  # (T,); 0 where no sequence is real: the statistics become NaN

    def over_real(x: torch.Tensor) -> torch.Tensor:  # x (T, B) -> (T,)
        return (x * w).sum(1) / sequences

    mean = over_real(h.mean(2))
    variance = over_real((h - mean[:, None, None]).square().mean(2))
    blocked_fraction = over_real(blocked.to(h.dtype).mean(2))
    dead = (blocked | ~real[:, :, None]).all(0).all(0) & real.any()
    return HiddenStats(
        mean=mean,
        std=variance.sqrt(),
        mean_norm=over_real(h.norm(dim=2)),
        mean_phi_prime=over_real(phi_prime.mean(2)),
        saturated_fraction=blocked_fraction if nonlinearity == "tanh" else None,
        inactive_fraction=blocked_fraction if nonlinearity == "relu" else None,
        dead_fraction=dead.to(h.dtype).mean(),
        participation_ratio=participation_ratio(h.reshape(T * B, H), w.reshape(T * B)),
        sequences=sequences,
    )
