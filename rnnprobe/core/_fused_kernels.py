"""The Triton kernels of :mod:`rnnprobe.core.fused` (see there), imported on first use:
``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined. Pointer arguments are in
capitals, Triton's convention."""

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
def forward_kernel(
    A, W_T, H0, T, B, H, stride_at, stride_ab, stride_h0,
    RELU: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < B
    tile = row_ok[:, None] & (cols < H)[None, :]
    for i in range(T):
        t = T - 1 - i if REVERSE else i
        acc = tl.load(A + t * stride_at + rows[:, None] * stride_ab + cols[None, :], tile)
        for k0 in range(0, H, BLOCK_K):
            k = k0 + ks
            w = tl.load(
                W_T + k[:, None] * H + cols[None, :], (k < H)[:, None] & (cols < H)[None, :]
            )
            hk = (rows[:, None] < B) & (k < H)[None, :]
            if i == 0:
                h_prev = tl.load(H0 + rows[:, None] * stride_h0 + k[None, :], hk, other=0.0)
            else:
                p = t + 1 if REVERSE else t - 1
                previous = A + p * stride_at + rows[:, None] * stride_ab + k[None, :]
                h_prev = tl.load(previous, hk, other=0.0)
            acc += tl.dot(h_prev, w, input_precision="ieee")
        tl.store(
            A + t * stride_at + rows[:, None] * stride_ab + cols[None, :], phi(acc, RELU), tile
        )
        tl.debug_barrier()  # this step's h is written before the next step reads it


@triton.jit
def backward_kernel(
    EPS, GRAD_HN, OUT, W, G, NORMS, DELTA, T, B, H,
    stride_et, stride_eb, stride_ot, stride_ob, stride_gt, stride_gb, stride_hn,
    RELU: tl.constexpr, REVERSE: tl.constexpr, RECORD: tl.constexpr, KEEP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < B
    tile = row_ok[:, None] & (cols < H)[None, :]
    for i in range(T):
        t = i if REVERSE else T - 1 - i  # the backward pass visits the steps in reverse
        eps = tl.load(EPS + t * stride_et + rows[:, None] * stride_eb + cols[None, :], tile)
        if i == 0:
            r = tl.load(GRAD_HN + rows[:, None] * stride_hn + cols[None, :], tile)
        else:
            n = t - 1 if REVERSE else t + 1  # the step visited before: t's next state
            r = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                k = k0 + ks
                gk = row_ok[:, None] & (k < H)[None, :]
                g_next = tl.load(
                    G + n * stride_gt + rows[:, None] * stride_gb + k[None, :], gk, other=0.0
                )
                w = tl.load(
                    W + k[:, None] * H + cols[None, :], (k < H)[:, None] & (cols < H)[None, :]
                )
                r += tl.dot(g_next, w, input_precision="ieee")
        delta = eps + r
        h = tl.load(OUT + t * stride_ot + rows[:, None] * stride_ob + cols[None, :], tile)
        d = tl.where(h > 0, 1.0, 0.0) if RELU else 1.0 - h * h  # φ'(a_t) from h_t
        tl.debug_barrier()  # ε_t is read before g_t overwrites it (G may be EPS)
        tl.store(G + t * stride_gt + rows[:, None] * stride_gb + cols[None, :], d * delta, tile)
        if RECORD:
            base = NORMS + t * B + rows
            tl.store(base, tl.sqrt(tl.sum(delta * delta, 1)), row_ok)
            tl.store(base + T * B, tl.sqrt(tl.sum(r * r, 1)), row_ok)
            tl.store(base + 2 * T * B, tl.sqrt(tl.sum(eps * eps, 1)), row_ok)
        if KEEP:
            tl.store(DELTA + (t * B + rows[:, None]) * H + cols[None, :], delta, tile)
        tl.debug_barrier()  # g_t is written before the next step reads it
