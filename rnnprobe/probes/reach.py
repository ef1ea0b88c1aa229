r"""Gradient reach: how far back the loss of one step reaches, ‖∂ℓ_s/∂h_t‖ for all t ≤ s.

``ℓ_s`` is the term of the loss attached to the top layer's output at step ``s``; its direct
gradient ``ε_s = ∂ℓ_s/∂h^{(L)}_s`` is exactly the top layer's direct adjoint at ``s`` (for a
language model, the head's gradient at ``s``). One reverse scan carries all sources at once,
through the closed-form Jacobians J_t = diag(φ'(a_t)) W_hh and, between layers, W_ih:

    A_t = ε_t·[t = s] (top) or the layer above's input gradient at t,  + A_{t+1}-term
    g_t = φ'(a_t) ⊙ A_t,      A_{t-1} ← g_t W_hh,      below_t = g_t W_ih.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rnnprobe.errors import RnnprobeError, check_count
from rnnprobe.nonlinearity import derivative_from_output
from rnnprobe.probes._rows import Column, RowBlock
from rnnprobe.probes.norms import record_norm


def default_reach_sources(seq_len: int, count: int = 5) -> list[int]:
    """Return the last step and log-spaced earlier steps (0-based), ascending, at most ``count``."""
    check_count(seq_len, "seq_len")
    ends = np.unique(np.round(np.geomspace(1, seq_len, num=max(count, 1))).astype(int))
    return [int(e) - 1 for e in ends]


def gradient_reach(
    outputs: Sequence[torch.Tensor],
    seeds: torch.Tensor,
    weights: Sequence[tuple[torch.Tensor, torch.Tensor]],
    nonlinearity: str,
    sources: Sequence[int],
) -> torch.Tensor:
    """Return ‖∂ℓ_s/∂h^{(l)}_t‖ per sample as (L, S, T, B); zero where t > s.

    ``outputs`` per layer (T, B, H), ``seeds`` (T, B, H) the top layer's direct adjoints,
    ``weights`` per layer (W_ih, W_hh), ``sources`` the S steps s. Pass a sub-batch (slice the
    batch dimension of outputs and seeds alike) to keep the O(S·T) scan cheap.
    """
    T = seeds.shape[0]
    if not sources:
        raise RnnprobeError("gradient reach needs at least one source step")
    bad = [s for s in sources if not 0 <= s < T]
    if bad:
        raise RnnprobeError(f"reach source steps {bad} lie outside [0, {T - 1}]")
    S, B = len(sources), seeds.shape[1]
    from_above = seeds.new_zeros(T, S, B, seeds.shape[2])  # injected adjoint per (t, source)
    for i, s in enumerate(sources):  # Python indices: no host-to-device index copy
        from_above[s, i] = seeds[s]
    norms = []
    for layer in range(len(outputs) - 1, -1, -1):
        w_ih, w_hh = weights[layer]
        g = derivative_from_output(outputs[layer], nonlinearity).unsqueeze(1)  # (T, 1, B, H)
        g = g.expand(T, S, B, g.shape[-1]).clone()
        adjoint = torch.empty_like(g)
        a_t = torch.zeros_like(g[0])
        for t in range(T - 1, -1, -1):
            a_t = a_t + from_above[t]
            adjoint[t] = a_t
            g_t = g[t].mul_(a_t)
            a_t = g_t @ w_hh
        norms.append(record_norm(adjoint).transpose(0, 1))  # (S, T, B)
        if layer > 0:
            from_above = g @ w_ih
    return torch.stack(norms[::-1])


def reach_row_blocks(
    reach: torch.Tensor, sources: Sequence[int], offset: int, step: int
) -> list[RowBlock]:
    """Return the ``reach`` rows of one backward pass: ``reach`` (L, S, T, B') as recorded
    by the capture for ``sources``, averaged over its sequences, one row per (layer, source,
    t ≤ source); ``offset`` is the pass's first time step within the batch."""
    L, _, T, _ = reach.shape
    layer, source, t = np.meshgrid(np.arange(L), np.asarray(sources), np.arange(T), indexing="ij")
    columns: dict[str, Column] = dict(
        step=step,
        layer=layer.reshape(-1),
        source=source.reshape(-1) + offset,
        t=t.reshape(-1) + offset,
        distance=(source - t).reshape(-1),
        norm=reach.mean(-1),
    )
    return [RowBlock("reach", columns, keep=(t <= source).reshape(-1))]
