"""The Triton kernels of :mod:`rnnprobe.core.fused` (see there), imported on first use:
``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined. Pointer arguments are in
capitals, Triton's convention. Every masked load reads 0 where masked: padding columns and
rows must add nothing to a product or a norm."""

import triton
import triton.language as tl


@triton.jit
def phi(x, RELU: tl.constexpr):
    if RELU:
        return tl.maximum(x, 0.0)
    e = tl.exp(-2.0 * tl.abs(x))  # tanh, stable for large |x|
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def tile_of(X, row_stride, rows, cols, B, H):
    """Return X[rows, cols] (rows ``row_stride`` apart), 0 outside the B × H block."""
    mask = (rows < B)[:, None] & (cols < H)[None, :]
    return tl.load(X + rows[:, None] * row_stride + cols[None, :], mask, other=0.0)


@triton.jit
def times_matrix(acc, X, row_stride, rows, M, cols, B, H, BLOCK_K: tl.constexpr):
    """Return acc + X[rows, :] M[:, cols] for X (B, H) and M (H, H) row-major, over K-blocks."""
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tile_of(X, row_stride, rows, k, B, H)
        m = tile_of(M, H, k, cols, H, H)
        acc += tl.dot(x, m, input_precision="ieee")
    return acc


# Strides stay runtime values: one equal to 1 would become a constant, and the two branches
# that pick the previous state would then disagree in type.
@triton.jit(do_not_specialize=["stride_at", "stride_ab", "stride_h0"])
def forward_kernel(
    A, W_T, H0, T, B, H, stride_at, stride_ab, stride_h0,
    RELU: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    tile = (rows < B)[:, None] & (cols < H)[None, :]
    for i in range(T):
        t = T - 1 - i if REVERSE else i
        a_t = A + t * stride_at
        if i == 0:  # the first step visited reads h0
            previous, previous_stride = H0, stride_h0
        else:
            previous, previous_stride = a_t + (stride_at if REVERSE else -stride_at), stride_ab
        acc = tile_of(a_t, stride_ab, rows, cols, B, H)
        acc = times_matrix(acc, previous, previous_stride, rows, W_T, cols, B, H, BLOCK_K)
        tl.store(a_t + rows[:, None] * stride_ab + cols[None, :], phi(acc, RELU), tile)
        tl.debug_barrier()  # this step's h is written before the next step reads it


@triton.jit(do_not_specialize=["stride_eb", "stride_gt", "stride_gb", "stride_hn"])
def backward_kernel(
    EPS, GRAD_HN, OUT, W, G, NORMS, DELTA, T, B, H,
    stride_et, stride_eb, stride_ot, stride_ob, stride_gt, stride_gb, stride_hn,
    RELU: tl.constexpr, REVERSE: tl.constexpr, RECORD: tl.constexpr, KEEP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    tile = (rows < B)[:, None] & (cols < H)[None, :]
    for i in range(T):
        t = i if REVERSE else T - 1 - i  # the backward pass visits the steps in reverse
        g_t = G + t * stride_gt
        eps = tile_of(EPS + t * stride_et, stride_eb, rows, cols, B, H)
        if i == 0:  # through h_n
            r = tile_of(GRAD_HN, stride_hn, rows, cols, B, H)
        else:  # through the next state: g of the step visited before, times W_hh
            g_next = g_t + (-stride_gt if REVERSE else stride_gt)
            r = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            r = times_matrix(r, g_next, stride_gb, rows, W, cols, B, H, BLOCK_K)
        delta = eps + r
        h = tile_of(OUT + t * stride_ot, stride_ob, rows, cols, B, H)
        d = tl.where(h > 0, 1.0, 0.0) if RELU else 1.0 - h * h  # φ'(a_t) from h_t
        tl.debug_barrier()  # ε_t is read before g_t overwrites it (G may be EPS)
        tl.store(g_t + rows[:, None] * stride_gb + cols[None, :], d * delta, tile)
        if RECORD:
            norms = NORMS + t * B + rows
            # squares summed in float64: in float32 they underflow once |δ| < 1e-19
            delta64, r64, eps64 = delta.to(tl.float64), r.to(tl.float64), eps.to(tl.float64)
            norm = tl.sqrt(tl.sum(delta64 * delta64, 1)).to(tl.float32)
            tl.store(norms, norm, rows < B)
            norm = tl.sqrt(tl.sum(r64 * r64, 1)).to(tl.float32)
            tl.store(norms + T * B, norm, rows < B)
            norm = tl.sqrt(tl.sum(eps64 * eps64, 1)).to(tl.float32)
            tl.store(norms + 2 * T * B, norm, rows < B)
        if KEEP:
            tl.store(DELTA + (t * B + rows[:, None]) * H + cols[None, :], delta, tile)
        tl.debug_barrier()  # g_t is written before the next step reads it
