r"""Truncation bias: the truncated-BPTT gradient of a batch against its full-BPTT gradient.

Truncated BPTT (``--bptt K`` or ``random:K``) runs one backward pass per segment, so every
path from a loss term ℓ_s back to a state h_t that crosses a segment boundary is cut. With
``g`` the truncated gradient and ``f`` the full one of the same batch and weights, per
parameter tensor and in total (all tensors as one vector):

    cosine = ⟨g, f⟩ / (‖g‖ ‖f‖),    norm_ratio = ‖g‖ / ‖f‖,    dropped = ‖f − g‖ / ‖f‖

``f − g`` is the gradient the cut paths carry (with segments of K steps, every dependency longer
than K and the shorter ones that straddle a boundary); ``dropped`` is its norm relative to the
full gradient's: a ratio of norms, not a share of a whole — it exceeds 1 where the cut part
opposes the kept one. With K ≥ T
nothing is cut: cosine 1, norm_ratio 1, dropped 0. A tensor whose full gradient is zero gives
NaN (no direction to compare).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from rnnprobe.probes._rows import Column, RowBlock

__all__ = ["TruncationBias", "truncation_bias"]

TOTAL = "total"  # the name of the row that treats every tensor as one vector


@dataclass(frozen=True)
class TruncationBias:
    """Per tensor name (and ``TOTAL``): 0-d tensors on the gradients' device."""

    cosine: dict[str, torch.Tensor]
    norm_ratio: dict[str, torch.Tensor]
    dropped: dict[str, torch.Tensor]

    def row_blocks(self, step: int) -> list[RowBlock]:
        """Return the ``truncation`` rows: one per parameter tensor, then ``total``."""
        names = list(self.cosine)
        columns: dict[str, Column] = dict(
            step=step,
            tensor=np.array(names, dtype=object),
            cosine=torch.stack([self.cosine[n] for n in names]),
            norm_ratio=torch.stack([self.norm_ratio[n] for n in names]),
            dropped=torch.stack([self.dropped[n] for n in names]),
        )
        return [RowBlock("truncation", columns)]


def truncation_bias(
    truncated: Mapping[str, torch.Tensor], full: Mapping[str, torch.Tensor]
) -> TruncationBias:
    """Return how the truncated gradients depart from the full ones, tensor by tensor.

    ``truncated`` and ``full`` map the same parameter names to gradients of equal shapes.
    Computed in float64, without a host sync.
    """
    if truncated.keys() != full.keys():
        raise ValueError("truncated and full gradients must name the same tensors")
    norm = torch.linalg.vector_norm  # scaled: no underflow of squares on tiny gradients
    dots, ng, nf, nd = {}, {}, {}, {}
    for name in full:
        g = truncated[name].detach().to(torch.float64).reshape(-1)
        f = full[name].detach().to(torch.float64).reshape(-1)
        dots[name], ng[name], nf[name], nd[name] = g @ f, norm(g), norm(f), norm(f - g)
    dots[TOTAL] = torch.stack(list(dots.values())).sum()
    for norms in (ng, nf, nd):
        norms[TOTAL] = norm(torch.stack(list(norms.values())))
    # a zero full gradient gives NaN everywhere: there is nothing to compare against
    nf = {k: torch.where(v > 0, v, torch.nan) for k, v in nf.items()}
    cosine = {k: dots[k] / ng[k] / nf[k] for k in dots}
    norm_ratio = {k: ng[k] / nf[k] for k in dots}
    dropped = {k: nd[k] / nf[k] for k in dots}
    return TruncationBias(cosine, norm_ratio, dropped)
