"""The Numba kernels of the Numba backend.  Imported only when Numba is available.

Layout conventions: every kernel takes 2-D row-major float32 arrays ("rows" = batch * n_ctx flattened)
or raw element offsets into them, so a handful of signatures serve every shape (few compilations,
``cache=True`` so a second process compiles nothing).

GEMMs: every matrix product (linear, conv1d taps, QK^T and PV of attention) is a call to the OpenBLAS
``sgemm`` bundled with NumPy, made from inside the Numba kernels (see `_blas`), single-threaded per call
while Numba's `prange` spreads the blocks over the threads.  OpenBLAS runs the encoder's large products
near the machine's peak (figure in docs/bench-results.md); a Numba GEMM for them was NOT written or
measured -- the choice rests on that BLAS figure.  For few rows (the decode step) a Numba
dot loop was measured against sgemm and won (see `SMALL_M`).  Weights stay (n_out, n_in) row-major and
are used with transB=Trans (the layout np.matmul(x, W.T) hands OpenBLAS too), so a column slice W[c0:c1]
is contiguous for the decode loop; the pre-transposed (n_in, n_out) layout was measured no better.
Everything between the GEMMs (bias, residual, LayerNorm, GELU, mask, softmax) is Numba code fused into
the same parallel loop, on blocks still in cache.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from whisperkit.contract import LAYER_NORM_EPS

from . import _blas

_blas.bind()
if _blas.SGEMM is None:
    raise ImportError(_blas.ERROR)

_I = types.int64 if _blas.ILP64 else types.int32
_sgemm = types.ExternalFunction(
    _blas.SGEMM, types.void(types.int32, types.int32, types.int32, _I, _I, _I, types.float32, types.intp, _I,
                            types.intp, _I, types.float32, types.intp, _I))
_set_local_threads = types.ExternalFunction("openblas_set_num_threads_local", types.int32(types.int32))

ROW_MAJOR = np.int32(101)
NO_T = np.int32(111)
T = np.int32(112)
F0 = np.float32(0.0)
F1 = np.float32(1.0)
EPS = np.float32(LAYER_NORM_EPS)


@njit(cache=True, nogil=True)
def mm(transb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc):
    """C = alpha * A @ op(B) + beta * C on raw byte addresses; row-major, A never transposed."""
    if m > 0 and n > 0:
        _sgemm(ROW_MAJOR, NO_T, transb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc)


@njit(cache=True, nogil=True)
def blas_single():
    return _set_local_threads(np.int32(1))


@njit(cache=True, nogil=True)
def blas_restore(prev):
    _set_local_threads(prev)


# ---- vectorisable exp: LLVM cannot vectorise libm's exp (no SVML here), these loops can ----------
@intrinsic
def _i64_as_f64(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@intrinsic
def _i32_as_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(cache=True, inline="always")
def exp_f32(x):
    """exp(x) for float32 x <= 0 (clamped below at -87.3, where exp underflows float32 anyway).
    Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-5 polynomial; about 1 ulp."""
    x = max(x, np.float32(-87.3))
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    return y * _i32_as_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


@njit(cache=True, inline="always")
def exp_f64(x):
    """exp(x) for float64 x in [-700, 700]: x = n ln2 + r, Taylor to r^11 (|r| <= 0.35: error < 1e-14)."""
    x = min(max(x, -700.0), 700.0)
    n = np.floor(x * 1.4426950408889634 + 0.5)
    r = x - n * 0.6931471803691238 - n * 1.9082149292705877e-10
    p = 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _i64_as_f64((np.int64(n) + np.int64(1023)) << np.int64(52))


@njit(cache=True, inline="always")
def gelu_scalar(v):
    """Exact-erf GELU as the reference computes it: float64, Numerical Recipes' erfcc (rel. err < 1.2e-7).
    Callers compile with ``error_model="numpy"``: Python's model guards the division against zero, and
    that branch keeps LLVM from vectorising the loop around it."""
    x = np.float64(v)
    z = abs(x) * 0.7071067811865476
    t = 1.0 / (1.0 + 0.5 * z)
    r = t * 0.17087277
    r = (r - 0.82215223) * t
    r = (r + 1.48851587) * t
    r = (r - 1.13520398) * t
    r = (r + 0.27886807) * t
    r = (r - 0.18628806) * t
    r = (r + 0.09678418) * t
    r = (r + 0.37409196) * t
    r = (r + 1.00002368) * t
    r = r - 1.26551223 - z * z
    h = 0.5 * t * exp_f64(r)
    if x >= 0.0:
        return np.float32(x * (1.0 - h))
    return np.float32(x * h)


# ---- row helpers (serial; called inside the parallel loops) --------------------------------------
@njit(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def ln_rows(x, r0, r1, g, b, out, o0):
    """out[o0 + i] = layer_norm(x[r0 + i]) for i < r1 - r0; float64 sums, float32 result."""
    n = x.shape[1]
    for i in range(r1 - r0):
        xr = x[r0 + i]
        s = 0.0
        for j in range(n):
            s += xr[j]
        mean = np.float32(s / n)
        s2 = 0.0
        for j in range(n):
            d = xr[j] - mean
            s2 += np.float64(d * d)
        inv = np.float32(1.0 / np.sqrt(np.float32(s2 / n) + EPS))
        orow = out[o0 + i]
        for j in range(n):
            orow[j] = (xr[j] - mean) * inv * g[j] + b[j]


@njit(cache=True, error_model="numpy")
def bias_gelu_rows(f, r0, r1, bias):
    n = f.shape[1]
    for i in range(r0, r1):
        fr = f[i]
        for j in range(n):
            fr[j] = gelu_scalar(fr[j] + bias[j])


@njit(cache=True)
def fill_rows(out, r0, r1, c0, c1, res, bias):
    """out[r, c0:c1] = res[r, c0:c1] + bias[c0:c1] (res may be None: bias only)."""
    for i in range(r0, r1):
        orow = out[i]
        if res is None:
            for j in range(c0, c1):
                orow[j] = bias[j]
        else:
            rrow = res[i]
            for j in range(c0, c1):
                orow[j] = rrow[j] + bias[j]


@njit(cache=True)
def gemm_wt(a, r0, r1, w, c0, c1, out, beta):
    """out[r0:r1, c0:c1] = a[r0:r1] @ w[c0:c1].T + beta * out[r0:r1, c0:c1]; all C-contiguous 2-D."""
    k = a.shape[1]
    n = out.shape[1]
    mm(T, r1 - r0, c1 - c0, k, F1, a.ctypes.data + 4 * r0 * k, k,
       w.ctypes.data + 4 * c0 * k, k, beta, out.ctypes.data + 4 * (r0 * n + c0), n)


@njit(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def softmax_row(s, length, total):
    """In place over s[:length]; s[length:total] (masked or not computed) set to 0."""
    m = s[0]
    for j in range(1, length):
        m = max(m, s[j])
    tot = np.float32(0.0)
    for j in range(length):
        e = exp_f32(s[j] - m)
        s[j] = e
        tot += e
    inv = np.float32(1.0) / tot
    for j in range(length):
        s[j] *= inv
    for j in range(length, total):
        s[j] = np.float32(0.0)


# ---- fine ops --------------------------------------------------------------------------------------


@njit(cache=True)
def _blocks(n, parts, align):
    """Boundaries of `parts` near-equal blocks of range(n), inner boundaries multiples of `align`."""
    bounds = np.empty(parts + 1, np.int64)
    for p in range(parts + 1):
        c = (n * p) // parts
        if 0 < p < parts:
            c = min(n, (c + align - 1) // align * align)
        bounds[p] = c
    return bounds


@njit(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def gemv_cols(x, w, c0, c1, out):
    """out[:, c0:c1] += x @ w[c0:c1].T for a few rows: each weight row is streamed once and used for
    every row of x (the decode step is bound by reading the weights)."""
    m = x.shape[0]
    k = x.shape[1]
    for j in range(c0, c1):
        wr = w[j]
        for i in range(m):
            xr = x[i]
            acc = np.float32(0.0)
            for t in range(k):
                acc += xr[t] * wr[t]
            out[i, j] += acc


#: Below this many rows `linear` is a Numba GEMV-style loop (the decode step), above it BLAS sgemm on
#: row blocks.  For the (51864, 384) logits product the loop beat single-threaded sgemm on column slices
#: (OpenBLAS does not forward small-M transposed GEMMs to its GEMV) at 1 row, and NumPy's own x @ W.T
#: at 5 rows (beam search).
SMALL_M = 16


@njit(parallel=True, cache=True)
def linear_kernel(x, w, bias, out, res, nt, blk=256):
    """out = x @ w.T + bias (+ res).  x (M, K), w (N, K), out (M, N).  Row blocks through sgemm when M
    is large, column blocks of the Numba GEMV loop when M is small (decode)."""
    m = x.shape[0]
    n = w.shape[0]
    if m >= SMALL_M:
        nb = max(nt, (m + blk - 1) // blk)
        rb = _blocks(m, nb, 1)
        for p in prange(nb):
            prev = blas_single()
            fill_rows(out, rb[p], rb[p + 1], 0, n, res, bias)
            gemm_wt(x, rb[p], rb[p + 1], w, 0, n, out, F1)
            blas_restore(prev)
    else:
        nb = max(nt, min(64, n // 256))
        cb = _blocks(n, nb, 16)
        for p in prange(nb):
            fill_rows(out, 0, m, cb[p], cb[p + 1], res, bias)
            gemv_cols(x, w, cb[p], cb[p + 1], out)


@njit(parallel=True, cache=True)
def layer_norm_kernel(x, g, b, out, nt):
    m = x.shape[0]
    nt = nt
    rb = _blocks(m, nt * 4 if m >= nt * 4 else 1, 1)
    for p in prange(rb.shape[0] - 1):
        ln_rows(x, rb[p], rb[p + 1], g, b, out, rb[p])


@njit(parallel=True, cache=True, error_model="numpy")
def gelu_kernel(x, out, nt):
    """x, out: 1-D contiguous."""
    n = x.shape[0]
    nb = max(1, min(64, n // 4096))
    bnd = _blocks(n, nb, 16)
    for p in prange(nb):
        for i in range(bnd[p], bnd[p + 1]):
            out[i] = gelu_scalar(x[i])


@njit(parallel=True, cache=True)
def conv1d_kernel(xs, w, bias, out, stride, t_out, nt):
    """One batch item.  xs: (stride, c_in, t_phase) the padded input split into `stride` phases
    (phase p holds padded frames p, p+stride, ...), w: (k, c_out, c_in), out: (c_out, t_out).
    y[:, t] = sum_tap w[tap] @ xpad[:, stride*t + tap]; tap lives in phase tap % stride at offset tap // stride."""
    k = w.shape[0]
    c_out = w.shape[1]
    c_in = w.shape[2]
    tp = xs.shape[2]
    nt = nt
    nb = max(nt, (t_out + 255) // 256)
    tb = _blocks(t_out, nb, 16)
    for p in prange(nb):
        prev = blas_single()
        t0 = tb[p]
        t1 = tb[p + 1]
        for o in range(c_out):
            for t in range(t0, t1):
                out[o, t] = bias[o]
        for tap in range(k):
            ph = tap % stride
            off = tap // stride
            # out[:, t0:t1] += w[tap] (c_out, c_in) @ xs[ph][:, off + t0: off + t1] (c_in, t1 - t0)
            mm(NO_T, c_out, t1 - t0, c_in, F1, w.ctypes.data + 4 * tap * c_out * c_in, c_in,
               xs.ctypes.data + 4 * (ph * c_in * tp + off + t0), tp, F1, out.ctypes.data + 4 * t0, t_out)
        blas_restore(prev)


# ---- attention -------------------------------------------------------------------------------------
@njit(cache=True)
def attn_task(qp, q_bs, q_rs, kp, k_bs, k_rs, vp, v_bs, v_rs, op, o_bs, o_rs,
              b, h, r0, r1, n_kv, d_head, causal, offset, scale, s, s_rs):
    """Query rows r0:r1 of head h, batch b: S = scale Q K^T (BLAS), masked stable softmax (Numba),
    O = P V (BLAS).  s: scores block (C-contiguous, row stride s_rs).  op == 0: keep P in s only."""
    rows = r1 - r0
    n_cols = min(n_kv, offset + r1) if causal else n_kv  # keys any of these rows can see
    mm(T, rows, n_cols, d_head, scale, qp + 4 * (b * q_bs + r0 * q_rs + h * d_head), q_rs,
       kp + 4 * (b * k_bs + h * d_head), k_rs, F0, s.ctypes.data, s_rs)
    for i in range(rows):
        length = min(n_kv, offset + r0 + i + 1) if causal else n_kv
        softmax_row(s[i], length, n_kv)
    if op != 0:
        mm(NO_T, rows, d_head, n_cols, F1, s.ctypes.data, s_rs, vp + 4 * (b * v_bs + h * d_head), v_rs,
           F0, op + 4 * (b * o_bs + r0 * o_rs + h * d_head), o_rs)


@njit(parallel=True, cache=True)
def attention_kernel(qp, q_bs, q_rs, kp, k_bs, k_rs, vp, v_bs, v_rs, out, o_bs, o_rs,
                     batch, n_q, n_kv, n_head, d_head, causal, offset, blk, p_out, nt):
    """Fused attention over tasks (batch, head, block of `blk` query rows), spread over the threads.
    q/k/v are raw addresses with element strides (batch, row), so views into a QKV buffer need no copy.
    out: the attention output (written through `out` address) or 0; p_out: (batch, n_head, n_q, n_kv)
    probabilities when wanted (then written in place), else a (1, 1, 1, 1) dummy."""
    scale = np.float32(1.0 / np.sqrt(np.float64(d_head)))
    nrb = (n_q + blk - 1) // blk
    ntask = batch * n_head * nrb
    nt = min(nt, ntask)
    want_p = p_out.shape[3] == n_kv and p_out.shape[2] == n_q and out == 0
    for t in prange(nt):
        prev = blas_single()
        scratch = np.empty((1, 1), np.float32) if want_p else np.empty((blk, n_kv), np.float32)
        for task in range(t, ntask, nt):
            b = task // (n_head * nrb)
            h = (task // nrb) % n_head
            r0 = (task % nrb) * blk
            r1 = min(n_q, r0 + blk)
            if want_p:
                s = p_out[b, h, r0:r1]
            else:
                s = scratch[: r1 - r0]
            attn_task(qp, q_bs, q_rs, kp, k_bs, k_rs, vp, v_bs, v_rs, out, o_bs, o_rs,
                      b, h, r0, r1, n_kv, d_head, causal, offset, scale, s, n_kv)
        blas_restore(prev)


@njit(cache=True)
def keep_alive(a):
    """A use of `a` after kernels that only saw its address, so Numba does not free it before them."""
    return a.shape[0]


# ---- coarse ops ------------------------------------------------------------------------------------
@njit(cache=True)
def add_bias_rows(out, r0, r1, bias):
    n = out.shape[1]
    for i in range(r0, r1):
        orow = out[i]
        for j in range(n):
            orow[j] += bias[j]


@njit(cache=True)
def mlp_rows(x1, r0, r1, lng, lnb, w1, b1, w2, b2, y, hbuf, fbuf):
    """y[r0:r1] = x1 + fc2(gelu(fc1(layer_norm(x1)))) for one row block, in per-thread buffers."""
    n = x1.shape[1]
    nf = w1.shape[0]
    rows = r1 - r0
    ln_rows(x1, r0, r1, lng, lnb, hbuf, 0)
    mm(T, rows, nf, n, F1, hbuf.ctypes.data, n, w1.ctypes.data, n, F0, fbuf.ctypes.data, nf)
    bias_gelu_rows(fbuf, 0, rows, b1)
    fill_rows(y, r0, r1, 0, n, x1, b2)
    mm(T, rows, n, nf, F1, fbuf.ctypes.data, nf, w2.ctypes.data, nf, F1, y.ctypes.data + 4 * r0 * n, n)


@njit(parallel=True, cache=True)
def mlp_kernel(x, lng, lnb, w1, b1, w2, b2, y, blk, nt):
    m, n = x.shape
    nb = max(nt, (m + blk - 1) // blk) if m >= 32 else 1
    rb = _blocks(m, nb, 1)
    for p in prange(nb):
        prev = blas_single()
        rows = rb[p + 1] - rb[p]
        hbuf = np.empty((rows, n), np.float32)
        fbuf = np.empty((rows, w1.shape[0]), np.float32)
        mlp_rows(x, rb[p], rb[p + 1], lng, lnb, w1, b1, w2, b2, y, hbuf, fbuf)
        blas_restore(prev)


@njit(parallel=True, cache=True)
def encoder_layer_kernel(x, batch, n_head, ln1g, ln1b, wqkv, bqkv, wo, bo, ln2g, ln2b, w1, b1, w2, b2,
                         blk, attn_blk, nt):
    """x: (batch * n_ctx, n) C-contiguous.  Three parallel phases over row blocks / attention tasks:
    LayerNorm + QKV GEMM; fused attention; out-projection + residual + LayerNorm + fc1 + GELU + fc2 + residual."""
    m, n = x.shape
    n_ctx = m // batch
    d_head = n // n_head
    qkv = np.empty((m, 3 * n), np.float32)
    a = np.empty((m, n), np.float32)
    x1 = np.empty((m, n), np.float32)
    y = np.empty((m, n), np.float32)
    nb = max(nt, (m + blk - 1) // blk)
    rb = _blocks(m, nb, 1)
    for p in prange(nb):
        prev = blas_single()
        r0 = rb[p]
        r1 = rb[p + 1]
        hbuf = np.empty((r1 - r0, n), np.float32)
        ln_rows(x, r0, r1, ln1g, ln1b, hbuf, 0)
        mm(T, r1 - r0, 3 * n, n, F1, hbuf.ctypes.data, n, wqkv.ctypes.data, n, F0,
           qkv.ctypes.data + 4 * r0 * 3 * n, 3 * n)
        add_bias_rows(qkv, r0, r1, bqkv)
        blas_restore(prev)
    qp = qkv.ctypes.data
    attention_kernel(qp, n_ctx * 3 * n, 3 * n, qp + 4 * n, n_ctx * 3 * n, 3 * n, qp + 8 * n, n_ctx * 3 * n, 3 * n,
                     a.ctypes.data, n_ctx * n, n, batch, n_ctx, n_ctx, n_head, d_head, False, 0, attn_blk,
                     np.empty((1, 1, 1, 1), np.float32), nt)
    keep_alive(qkv)  # qkv was only read through its address: hold it until attention is done
    for p in prange(nb):
        prev = blas_single()
        r0 = rb[p]
        r1 = rb[p + 1]
        fill_rows(x1, r0, r1, 0, n, x, bo)
        mm(T, r1 - r0, n, n, F1, a.ctypes.data + 4 * r0 * n, n, wo.ctypes.data, n, F1,
           x1.ctypes.data + 4 * r0 * n, n)
        hbuf = np.empty((r1 - r0, n), np.float32)
        fbuf = np.empty((r1 - r0, w1.shape[0]), np.float32)
        mlp_rows(x1, r0, r1, ln2g, ln2b, w1, b1, w2, b2, y, hbuf, fbuf)
        blas_restore(prev)
    return y


@njit(parallel=True, cache=True, error_model="numpy")
def gelu_rows_kernel(f, nt):
    m = f.shape[0]
    nt = min(nt, m)
    rb = _blocks(m, nt, 1)
    for p in prange(nt):
        for i in range(rb[p], rb[p + 1]):
            fr = f[i]
            for j in range(fr.shape[0]):
                fr[j] = gelu_scalar(fr[j])


@njit(cache=True)
def decoder_layer_kernel(x, n_q, n_head, k_cache, v_cache, cross_k, cross_v, offset,
                         ln1g, ln1b, wqkv, bqkv, wo, bo, lncg, lncb, wcq, bcq, wco, bco,
                         ln2g, ln2b, w1, b1, w2, b2, hbuf, qkv, abuf, x1, x2, fbuf, y, attn_blk, dummy, nt):
    """One decoder block over x: (batch * n_q, n).  All work buffers preallocated by the caller
    (per row count); the KV caches (batch, n_text_ctx, n), C-contiguous, are written in place."""
    m, n = x.shape
    batch = m // n_q
    d_head = n // n_head
    ln_rows(x, 0, m, ln1g, ln1b, hbuf, 0)
    linear_kernel(hbuf, wqkv, bqkv, qkv, None, nt)
    for b in range(batch):
        for i in range(n_q):
            src = qkv[b * n_q + i]
            kd = k_cache[b, offset + i]
            vd = v_cache[b, offset + i]
            for j in range(n):
                kd[j] = src[n + j]
                vd[j] = src[2 * n + j]
    n_text = k_cache.shape[1]
    n_kv = offset + n_q
    attention_kernel(qkv.ctypes.data, n_q * 3 * n, 3 * n, k_cache.ctypes.data, n_text * n, n,
                     v_cache.ctypes.data, n_text * n, n, abuf.ctypes.data, n_q * n, n,
                     batch, n_q, n_kv, n_head, d_head, True, offset, attn_blk, dummy, nt)
    linear_kernel(abuf, wo, bo, x1, x, nt)
    ln_rows(x1, 0, m, lncg, lncb, hbuf, 0)
    linear_kernel(hbuf, wcq, bcq, abuf, None, nt)
    # abuf now holds the cross-attention queries; attention output goes to hbuf
    # The rows of one audio (its beams) share one cross K/V row: as queries they are one block of rows.
    n_audio = cross_k.shape[1]
    batch_c = cross_k.shape[0]
    n_qc = m // batch_c
    attention_kernel(abuf.ctypes.data, n_qc * n, n, cross_k.ctypes.data, n_audio * n, n,
                     cross_v.ctypes.data, n_audio * n, n, hbuf.ctypes.data, n_qc * n, n,
                     batch_c, n_qc, n_audio, n_head, d_head, False, 0, attn_blk, dummy, nt)
    linear_kernel(hbuf, wco, bco, x2, x1, nt)
    ln_rows(x2, 0, m, ln2g, ln2b, hbuf, 0)
    linear_kernel(hbuf, w1, b1, fbuf, None, nt)
    gelu_rows_kernel(fbuf, nt)
    linear_kernel(fbuf, w2, b2, y, x2, nt)


# ---- the decoder step: every layer, the final LayerNorm and the logits in one call ---------------
# A decode step has few rows (one per beam or batched file), so every product is a GEMV-like pass that
# reads each weight row once for all rows, from float16 where the checkpoint's weights are float16.
FAST = {"reassoc", "contract", "nsz", "arcp"}


@intrinsic
def widen(typingctx, x):
    """A weight element as float32: a float16 stored as uint16 is bitcast to LLVM's half and extended
    (vectorised, that is F16C's vcvtph2ps); a float32 is returned as is.  Numba has no float16
    arithmetic on the CPU, LLVM has the type."""
    if isinstance(x, types.Integer) and x.bitwidth == 16:
        def codegen(context, builder, sig, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(x), codegen
    if x == types.float32:
        def codegen(context, builder, sig, args):
            return args[0]
        return types.float32(x), codegen
    return None


def _hsums(builder, vecs):
    """The lane sums of several 16-lane float vectors, reduced together: pairs of vectors fold into one
    (each group of lanes added to its other half, the two vectors' groups side by side), so n sums take
    about 2n shuffles and n adds instead of 4 shuffles and 4 adds each."""
    i32 = ir.IntType(32)
    zero = ir.Constant(vecs[0].type, None)
    items = [(v, [k]) for k, v in enumerate(vecs)]  # (vector, the sum each group of lanes belongs to; None: padding)
    w = 16
    while w > 1:
        h = w // 2
        folded = []
        for a in range(0, len(items), 2):
            va, ga = items[a]
            vb, gb = items[a + 1] if a + 1 < len(items) else (zero, [None] * len(ga))
            lo = [q * w + lane for q in range(len(ga)) for lane in range(h)]
            mask = lambda idx: ir.Constant(ir.VectorType(i32, 16), idx + [16 + t for t in idx])  # noqa: E731
            v = builder.fadd(builder.shuffle_vector(va, vb, mask(lo)), builder.shuffle_vector(va, vb, mask([t + h for t in lo])))
            folded.append((v, ga + gb))
        items = folded
        w = h
    out = [None] * len(vecs)
    for v, groups in items:
        for lane, k in enumerate(groups):
            if k is not None:
                out[k] = builder.extract_element(v, ir.Constant(i32, lane))
    return out


@intrinsic
def gemv_tile(typingctx, w, j, x, i, out, k16, C, R):
    """out[i + r, j + c] = sum over t < k16 of x[i + r, t] * widen(w[j + c, t]), for r < R, c < C (literals):
    explicit 16-lane vectors, so every load, conversion and FMA is one zmm instruction.  LLVM's own
    vectoriser stops at 256 bits on this CPU family (its "prefer 256-bit" tuning), which halves the FMA
    and F16C conversion rate of these loops.  C weight rows by R rows of x share each widened weight
    vector and each x vector: C * R accumulators.  k16: a multiple of 16; the caller adds the tail."""
    if not (isinstance(C, types.IntegerLiteral) and isinstance(R, types.IntegerLiteral)):
        return None
    nc, nr = C.literal_value, R.literal_value
    half = isinstance(w.dtype, types.Integer)
    wty, xty, oty = w, x, out

    def codegen(context, builder, sig, args):
        w_a, j_v, x_a, i_v, o_a, k_v = args[:6]
        i64 = ir.IntType(64)
        f32 = ir.FloatType()
        vf = ir.VectorType(f32, 16)
        vw = ir.VectorType(ir.HalfType() if half else f32, 16)
        esz = 2 if half else 4
        c64 = lambda v: ir.Constant(i64, v)  # noqa: E731

        def rows(aty, a_v, first, count):
            arr = context.make_array(aty)(context, builder, a_v)
            stride = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
            base = builder.ptrtoint(arr.data, i64)
            return [builder.add(base, builder.mul(builder.add(first, c64(q)), stride)) for q in range(count)]

        wrow = rows(wty, w_a, j_v, nc)
        w_stride = cgutils.unpack_tuple(builder, context.make_array(wty)(context, builder, w_a).strides, 2)[0]
        pf_ahead = builder.mul(w_stride, c64(PREFETCH_ROWS))
        xrow = rows(xty, x_a, i_v, nr)
        orow = rows(oty, o_a, i_v, nr)
        zero = ir.Constant(vf, None)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nc)] for _ in range(nr)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fma.v16f32")
        i8p = ir.IntType(8).as_pointer()
        i32c = lambda v: ir.Constant(ir.IntType(32), v)  # noqa: E731
        pf = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3),
                                            "llvm.prefetch.p0")
        with cgutils.for_range(builder, builder.udiv(k_v, c64(16))) as loop:
            t = loop.index
            wv = []
            for c in range(nc):  # the same bytes PREFETCH_ROWS rows further on
                ahead = builder.add(builder.add(wrow[c], builder.mul(t, c64(16 * esz))), pf_ahead)
                builder.call(pf, [builder.inttoptr(ahead, i8p), i32c(0), i32c(3), i32c(1)])
            for c in range(nc):
                p = builder.inttoptr(builder.add(wrow[c], builder.mul(t, c64(16 * esz))), vw.as_pointer())
                v = builder.load(p, align=esz)
                wv.append(builder.fpext(v, vf) if half else v)
            for r in range(nr):
                p = builder.inttoptr(builder.add(xrow[r], builder.mul(t, c64(64))), vf.as_pointer())
                xv = builder.load(p, align=4)
                for c in range(nc):
                    builder.store(builder.call(fma, [xv, wv[c], builder.load(acc[r][c])]), acc[r][c])
        sums = _hsums(builder, [builder.load(acc[r][c]) for r in range(nr) for c in range(nc)])
        for r in range(nr):
            for c in range(nc):
                addr = builder.add(orow[r], builder.mul(builder.add(j_v, c64(c)), c64(4)))
                builder.store(sums[r * nc + c], builder.inttoptr(addr, f32.as_pointer()))
        return context.get_dummy_value()

    return types.none(w, j, x, i, out, k16, C, R), codegen


@njit(cache=True, inline="always")
def _strip(x, i, w, t0, t1, out, k16, R, C):
    """Weight rows t0:t1 against rows i:i+R of x, C weight rows at a time (C * R >= 8 accumulators: an
    FMA's latency is 4 cycles and two issue per cycle, so fewer chains would leave the units idle)."""
    j = t0
    while t1 - j >= C:
        gemv_tile(w, j, x, i, out, k16, C, R)
        j += C
    while j < t1:
        gemv_tile(w, j, x, i, out, k16, 1, R)
        j += 1


#: Software prefetch distance, in rows of the weight (or key, value) matrix: the hardware prefetchers alone
#: leave part of the memory latency exposed once several rows of x make each weight byte cost more work,
#: and do not follow the strided head columns of the attention's keys and values.
PREFETCH_ROWS = 16

#: Weight rows per tile of the GEMV: when x has more rows than one register block (8), the tile stays
#: in L2 while every block of rows passes over it, so it comes from memory once per call.
GEMV_TILE = 64


@njit(cache=True)
def gemv_core(x, w, c0, c1, out):
    """out[:, c0:c1] = x[:, :k16] @ widen(w[c0:c1, :k16]).T, k16 = k rounded down to 16 lanes.  Each weight
    row is read once for a block of up to 8 rows of x (register blocks of gemv_tile; more weight rows per
    block when x has few rows, so enough FMA chains are in flight)."""
    m, k = x.shape
    k16 = k - k % 16
    for t0 in range(c0, c1, GEMV_TILE):
        t1 = min(c1, t0 + GEMV_TILE)
        i = 0
        while i < m:
            left = m - i
            r = (left + (left + 7) // 8 - 1) // ((left + 7) // 8)  # equal blocks of at most 8 rows
            if r == 1:
                _strip(x, i, w, t0, t1, out, k16, 1, 8)
            elif r == 2:
                _strip(x, i, w, t0, t1, out, k16, 2, 4)
            elif r == 3:
                _strip(x, i, w, t0, t1, out, k16, 3, 3)
            elif r == 4:
                _strip(x, i, w, t0, t1, out, k16, 4, 2)
            elif r == 5:
                _strip(x, i, w, t0, t1, out, k16, 5, 2)
            elif r == 6:
                _strip(x, i, w, t0, t1, out, k16, 6, 2)
            elif r == 7:
                _strip(x, i, w, t0, t1, out, k16, 7, 2)
            else:
                _strip(x, i, w, t0, t1, out, k16, 8, 2)
            i += r


@njit(cache=True, fastmath=FAST, error_model="numpy")
def gemv_block(x, w, c0, c1, bias, res, out, act):
    """out[:, c0:c1] = x @ widen(w[c0:c1]).T + bias (+ res unless res is out), then GELU if `act`.  x: (m, k)
    float32, few rows, unit stride along k; w: (n, k) uint16 (float16 bits) or float32.  One signature per
    weight type (a parallel wrapper costs seconds to compile per signature)."""
    m, k = x.shape
    k16 = k - k % 16
    gemv_core(x, w, c0, c1, out)
    add_res = res.ctypes.data != out.ctypes.data
    for i in range(m):
        xr = x[i]
        orow = out[i]
        rrow = res[i]
        for j in range(c0, c1):
            acc = orow[j]
            wr = w[j]
            for t in range(k16, k):
                acc += xr[t] * widen(wr[t])
            acc += bias[j]
            if add_res:
                acc += rrow[j]
            orow[j] = acc
    if act:
        for i in range(m):
            orow = out[i]
            for j in range(c0, c1):
                orow[j] = gelu_scalar(orow[j])


@njit(parallel=True, cache=True)
def gemv_par(x, w, bias, res, out, act, nt):
    cb = _blocks(w.shape[0], nt, 16)
    for p in prange(nt):
        gemv_block(x, w, cb[p], cb[p + 1], bias, res, out, act)


@njit(cache=True)
def gemv(x, w, bias, res, out, act, nt):
    """out = x @ widen(w).T + bias (+ res unless res is out) (GELU'd if act), over `nt` threads by column blocks."""
    if nt == 1:
        gemv_block(x, w, 0, w.shape[0], bias, res, out, act)
    else:
        gemv_par(x, w, bias, res, out, act, nt)


@intrinsic
def pv_tile(typingctx, p, i, v, out, n_keys, R, NV):
    """out[i + r, :16 * NV] += sum over j < n_keys of p[i + r, j] * v[j, :16 * NV] for r < R (literals): the
    probability-weighted values of one head, each value row loaded once (NV zmm vectors) for the R
    query rows, the sums held in R * NV registers over all keys."""
    if not (isinstance(R, types.IntegerLiteral) and isinstance(NV, types.IntegerLiteral)):
        return None
    nr, nv = R.literal_value, NV.literal_value
    pty, vty, oty = p, v, out

    def codegen(context, builder, sig, args):
        p_a, i_v, v_a, o_a, n_v = args[:5]
        i64 = ir.IntType(64)
        f32 = ir.FloatType()
        vf = ir.VectorType(f32, 16)
        c64 = lambda x: ir.Constant(i64, x)  # noqa: E731

        def base(aty, a_v):
            arr = context.make_array(aty)(context, builder, a_v)
            return builder.ptrtoint(arr.data, i64), cgutils.unpack_tuple(builder, arr.strides, 2)[0]

        pb, ps = base(pty, p_a)
        vb, vs = base(vty, v_a)
        ob, os_ = base(oty, o_a)
        prow = [builder.add(pb, builder.mul(builder.add(i_v, c64(r)), ps)) for r in range(nr)]
        orow = [builder.add(ob, builder.mul(builder.add(i_v, c64(r)), os_)) for r in range(nr)]
        ovec = lambda r, c: builder.inttoptr(builder.add(orow[r], c64(64 * c)), vf.as_pointer())  # noqa: E731
        # two keys per iteration, each with its own accumulators, when few rows leave FMA chains idle
        nu = 2 if nr <= 2 else 1
        acc = [[[cgutils.alloca_once_value(builder, builder.load(ovec(r, c), align=4) if u == 0 else ir.Constant(vf, None))
                 for c in range(nv)] for r in range(nr)] for u in range(nu)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fma.v16f32")

        i8p = ir.IntType(8).as_pointer()
        i32c = lambda v: ir.Constant(ir.IntType(32), v)  # noqa: E731
        pf = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3),
                                            "llvm.prefetch.p0")
        pf_ahead = builder.mul(vs, c64(PREFETCH_ROWS))

        def key(j, a):
            vrow = builder.add(vb, builder.mul(j, vs))
            for c in range(nv):  # the same columns PREFETCH_ROWS value rows further on
                builder.call(pf, [builder.inttoptr(builder.add(builder.add(vrow, pf_ahead), c64(64 * c)), i8p),
                                  i32c(0), i32c(3), i32c(1)])
            vv = [builder.load(builder.inttoptr(builder.add(vrow, c64(64 * c)), vf.as_pointer()), align=4)
                  for c in range(nv)]
            for r in range(nr):
                pj = builder.load(builder.inttoptr(builder.add(prow[r], builder.mul(j, c64(4))), f32.as_pointer()))
                pv = builder.insert_element(ir.Constant(vf, ir.Undefined), pj, ir.Constant(ir.IntType(32), 0))
                pv = builder.shuffle_vector(pv, pv, ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
                for c in range(nv):
                    builder.store(builder.call(fma, [pv, vv[c], builder.load(a[r][c])]), a[r][c])

        with cgutils.for_range(builder, builder.udiv(n_v, c64(nu))) as loop:
            for u in range(nu):
                key(builder.add(builder.mul(loop.index, c64(nu)), c64(u)), acc[u])
        if nu > 1:
            with cgutils.for_range(builder, builder.sub(n_v, builder.mul(builder.udiv(n_v, c64(nu)), c64(nu)))) as loop:
                key(builder.add(builder.mul(builder.udiv(n_v, c64(nu)), c64(nu)), loop.index), acc[0])
        for r in range(nr):
            for c in range(nv):
                tot = builder.load(acc[0][r][c])
                for u in range(1, nu):
                    tot = builder.fadd(tot, builder.load(acc[u][r][c]))
                builder.store(tot, ovec(r, c), align=4)
        return context.get_dummy_value()

    return types.none(p, i, v, out, n_keys, R, NV), codegen


@intrinsic
def vmax(typingctx, a, n):
    """max(a[:n]) of a contiguous 1-D float32 array, n >= 1, in 16-lane vectors (LLVM does not vectorise a
    float max reduction written in Numba)."""
    aty = a

    def codegen(context, builder, sig, args):
        a_v, n_v = args
        i64 = ir.IntType(64)
        f32 = ir.FloatType()
        vf = ir.VectorType(f32, 16)
        c64 = lambda x: ir.Constant(i64, x)  # noqa: E731
        base = builder.ptrtoint(context.make_array(aty)(context, builder, a_v).data, i64)
        first = builder.load(builder.inttoptr(base, f32.as_pointer()))
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), first, ir.Constant(ir.IntType(32), 0)),
                                       ir.Constant(vf, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
        vm = cgutils.alloca_once_value(builder, splat)
        sm = cgutils.alloca_once_value(builder, first)
        n16 = builder.udiv(n_v, c64(16))
        with cgutils.for_range(builder, n16) as loop:
            v = builder.load(builder.inttoptr(builder.add(base, builder.mul(loop.index, c64(64))), vf.as_pointer()), align=4)
            cur = builder.load(vm)
            builder.store(builder.select(builder.fcmp_ordered(">", v, cur), v, cur), vm)
        with cgutils.for_range(builder, builder.sub(n_v, builder.mul(n16, c64(16)))) as loop:
            j = builder.add(builder.mul(n16, c64(16)), loop.index)
            v = builder.load(builder.inttoptr(builder.add(base, builder.mul(j, c64(4))), f32.as_pointer()))
            cur = builder.load(sm)
            builder.store(builder.select(builder.fcmp_ordered(">", v, cur), v, cur), sm)
        v = builder.load(vm)
        n = 16
        while n > 1:
            n //= 2
            idx = lambda lo: ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(lo, lo + n)))  # noqa: E731
            lo, hi = builder.shuffle_vector(v, v, idx(0)), builder.shuffle_vector(v, v, idx(n))
            v = builder.select(builder.fcmp_ordered(">", lo, hi), lo, hi)
        m = builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
        cur = builder.load(sm)
        return builder.select(builder.fcmp_ordered(">", m, cur), m, cur)

    return types.float32(a, n), codegen


@njit(cache=True, fastmath=FAST)
def pv_head(p, v, out, rows, n_keys):
    """out[:rows] += p[:rows, :n_keys] @ v[:n_keys] for one head (v, out: views of the head's columns)."""
    dh = v.shape[1]
    if dh == 64:  # every Whisper size: 4 zmm per value row, up to 4 query rows per pass (16 accumulators)
        i = 0
        while i < rows:
            r = min(4, rows - i)
            if r == 1:
                pv_tile(p, i, v, out, n_keys, 1, 4)
            elif r == 2:
                pv_tile(p, i, v, out, n_keys, 2, 4)
            elif r == 3:
                pv_tile(p, i, v, out, n_keys, 3, 4)
            else:
                pv_tile(p, i, v, out, n_keys, 4, 4)
            i += r
        return
    for r in range(rows):
        orow = out[r]
        for j in range(n_keys):
            pj = p[r, j]
            vr = v[j]
            for t in range(dh):
                orow[t] += pj * vr[t]


#: Keys per block in attention: the block's key (value) rows of every head stay in L1/L2 while the heads
#: take their columns in turn.
ATTN_KEYS = 128


@njit(cache=True, fastmath=FAST)
def attn_part(q, qc, q0, rows, kv_k, kv_v, lim, j0, j1, n_head, scale, s, o, pm, pl):
    """Attention of the query rows q[q0:q0+rows, qc:qc+n] (every head) over the keys j0:j1 of kv_k/kv_v
    ((n_keys, n)), query r seeing keys j < lim[r].  Unnormalised: o[r] = sum_j exp(s_rj - pm[r, h]) v_j
    per head, pl[r, h] = sum_j exp(s_rj - pm[r, h]), so blocks of keys combine afterwards.  Per head, the
    scores are a GEMV over the key rows and the values a pass over the value rows, each row read once for
    every query row (the rows of one audio share its cross K/V).  s: scratch (rows, n_head, >= j1 - j0)."""
    n = o.shape[1]
    dh = n // n_head
    nk = j1 - j0
    for b0 in range(0, nk, ATTN_KEYS):
        b1 = min(nk, b0 + ATTN_KEYS)
        for h in range(n_head):
            c = h * dh
            qh = q[q0:q0 + rows, qc + c:qc + c + dh]
            kh = kv_k[j0 + b0:j0 + b1, c:c + dh]
            sh = s[:rows, h, b0:b1]
            gemv_core(qh, kh, 0, b1 - b0, sh)
            for t in range(dh - dh % 16, dh):  # head widths off the 16 lanes
                for r in range(rows):
                    for j in range(b1 - b0):
                        sh[r, j] += qh[r, t] * kh[j, t]
    for r in range(rows):
        e = min(j1, lim[r]) - j0
        orow = o[r]
        for u in range(n):
            orow[u] = np.float32(0.0)
        for h in range(n_head):
            sr = s[r, h]
            if e <= 0:
                pm[r, h] = -np.inf
                pl[r, h] = np.float32(0.0)
                for j in range(nk):
                    sr[j] = np.float32(0.0)
                continue
            mx = vmax(sr, e) * scale  # scale > 0: the max of the scaled scores
            tot = np.float32(0.0)
            for j in range(e):
                val = exp_f32(sr[j] * scale - mx)
                sr[j] = val
                tot += val
            for j in range(e, nk):
                sr[j] = np.float32(0.0)
            pm[r, h] = mx
            pl[r, h] = tot
    for b0 in range(0, nk, ATTN_KEYS):
        b1 = min(nk, b0 + ATTN_KEYS)
        for h in range(n_head):
            c = h * dh
            pv_head(s[:rows, h, b0:b1], kv_v[j0 + b0:j0 + b1, c:c + dh], o[:rows, c:c + dh], rows, b1 - b0)


@njit(cache=True, fastmath=FAST)
def attn_merge(po, pm, pl, g, q0, rows, n_head, out):
    """out[q0:q0+rows] = the softmax-weighted values of one group, from the partial blocks of every thread."""
    nparts = po.shape[0]
    n = out.shape[1]
    dh = n // n_head
    for r in range(rows):
        orow = out[q0 + r]
        for h in range(n_head):
            mx = pm[0, g, r, h]
            for t in range(1, nparts):
                mx = max(mx, pm[t, g, r, h])
            tot = np.float32(0.0)
            for t in range(nparts):
                tot += exp_f32(pm[t, g, r, h] - mx) * pl[t, g, r, h] if pl[t, g, r, h] > 0 else np.float32(0.0)
            c = h * dh
            for u in range(dh):
                orow[c + u] = np.float32(0.0)
            for t in range(nparts):
                if pl[t, g, r, h] > 0:
                    f = exp_f32(pm[t, g, r, h] - mx) / tot
                    prow = po[t, g, r]
                    for u in range(dh):
                        orow[c + u] += f * prow[c + u]


#: Keys per partial block of attention.  The blocks are fixed by the key count alone, and merged in order,
#: so the result does not depend on the number of threads that computed them.
ATTN_PART_KEYS = 256


@njit(cache=True)
def attn_blocks(q, qc, kv_k, kv_v, n_keys, lims, n_head, scale, po, pm, pl, b0, b1):
    """Partial blocks b0:b1 (ATTN_PART_KEYS keys each) of every group, in one thread's scratch."""
    groups = kv_k.shape[0]
    rows = lims.shape[1]
    s = np.empty((rows, n_head, ATTN_PART_KEYS), np.float32)
    for g in range(groups):
        for b in range(b0, b1):
            j0 = b * ATTN_PART_KEYS
            attn_part(q, qc, g * rows, rows, kv_k[g], kv_v[g], lims[g], j0, min(n_keys, j0 + ATTN_PART_KEYS), n_head,
                      scale, s, po[b, g], pm[b, g], pl[b, g])


@njit(parallel=True, cache=True)
def attn_blocks_par(q, qc, kv_k, kv_v, n_keys, lims, n_head, scale, po, pm, pl, nt):
    nb = po.shape[0]
    bb = _blocks(nb, nt, 1)  # contiguous runs of blocks: each thread streams its part of K and V once
    for t in prange(nt):
        attn_blocks(q, qc, kv_k, kv_v, n_keys, lims, n_head, scale, po, pm, pl, bb[t], bb[t + 1])


@njit(cache=True)
def attn_groups(q, qc, kv_k, kv_v, n_keys, lims, n_head, out, nt):
    """Attention for few query rows: group g (a batch row over its own KV cache, or the beams of one audio
    over its cross K/V) holds the query rows g*R:(g+1)*R of q (columns qc:qc+n) and the keys kv_k[g, :n_keys];
    row r of a group sees the keys j < lims[g, r].  The keys are cut into blocks, computed as unnormalised
    partials spread over the threads, then merged."""
    groups = kv_k.shape[0]
    rows = lims.shape[1]
    n = out.shape[1]
    scale = np.float32(1.0 / np.sqrt(np.float64(n // n_head)))
    nb = max(1, (n_keys + ATTN_PART_KEYS - 1) // ATTN_PART_KEYS)
    po = np.empty((nb, groups, rows, n), np.float32)
    pm = np.empty((nb, groups, rows, n_head), np.float32)
    pl = np.empty((nb, groups, rows, n_head), np.float32)
    nt = min(nt, nb)
    if nt == 1:
        attn_blocks(q, qc, kv_k, kv_v, n_keys, lims, n_head, scale, po, pm, pl, 0, nb)
    else:
        attn_blocks_par(q, qc, kv_k, kv_v, n_keys, lims, n_head, scale, po, pm, pl, nt)
    for g in range(groups):
        attn_merge(po, pm, pl, g, g * rows, rows, n_head, out)


@njit(cache=True)
def decoder_step_kernel(x, n_q, n_head, k_cache, v_cache, cross_k, cross_v, offset, ln1g, ln1b, wqkv, bqkv, wo, bo,
                        lncg, lncb, wcq, bcq, wco, bco, ln2g, ln2b, w1, b1, w2, b2, lnfg, lnfb, wlog, blog, pos_rows,
                        logits, nt):
    """One decoding step for few rows.  x: (batch * n_q, n) embedded tokens; caches (n_layer, batch, n_ctx, n)
    written in place at offset; cross K/V (n_layer, batch_c, n_audio, n); per-layer weights stacked on a
    leading layer axis (matrices float16-as-uint16 or float32); logits (len(pos_rows), n_vocab) of the rows
    pos_rows of the last layer's output."""
    m, n = x.shape
    n_layer = wqkv.shape[0]
    batch = m // n_q
    batch_c = cross_k.shape[1]
    n_audio = cross_k.shape[2]
    g_rows = m // batch_c
    h = np.empty((m, n), np.float32)
    qkv = np.empty((m, 3 * n), np.float32)
    a = np.empty((m, n), np.float32)
    xa = x.copy()
    x1 = np.empty((m, n), np.float32)
    x2 = np.empty((m, n), np.float32)
    f = np.empty((m, w1.shape[1]), np.float32)
    self_lims = np.empty((batch, n_q), np.int64)
    for b in range(batch):
        for i in range(n_q):
            self_lims[b, i] = offset + i + 1
    cross_lims = np.full((batch_c, g_rows), n_audio, np.int64)
    n_kv = offset + n_q
    for li in range(n_layer):
        ln_rows(xa, 0, m, ln1g[li], ln1b[li], h, 0)
        gemv(h, wqkv[li], bqkv[li], qkv, qkv, False, nt)
        for b in range(batch):
            for i in range(n_q):
                src = qkv[b * n_q + i]
                kd = k_cache[li, b, offset + i]
                vd = v_cache[li, b, offset + i]
                for j in range(n):
                    kd[j] = src[n + j]
                    vd[j] = src[2 * n + j]
        attn_groups(qkv, 0, k_cache[li], v_cache[li], n_kv, self_lims, n_head, a, nt)
        gemv(a, wo[li], bo[li], xa, x1, False, nt)
        ln_rows(x1, 0, m, lncg[li], lncb[li], h, 0)
        gemv(h, wcq[li], bcq[li], a, a, False, nt)
        attn_groups(a, 0, cross_k[li], cross_v[li], n_audio, cross_lims, n_head, h, nt)
        gemv(h, wco[li], bco[li], x1, x2, False, nt)
        ln_rows(x2, 0, m, ln2g[li], ln2b[li], h, 0)
        gemv(h, w1[li], b1[li], f, f, True, nt)
        gemv(f, w2[li], b2[li], x2, xa, False, nt)
    p = pos_rows.shape[0]
    hl = np.empty((p, n), np.float32)
    for i in range(p):
        ln_rows(xa, pos_rows[i], pos_rows[i] + 1, lnfg, lnfb, hl, i)
    gemv(hl, wlog, blog, logits, logits, False, nt)
