"""The encoder layer and the linear op of the Numba backend, on the step's packed-weight tiles.

The QKV, out-projection, fc1 and fc2 products take their weights packed by `_step.pack_blocks` (float32 here:
an encoder weight is read ~250 times per call, so its bytes do not matter and widening would only cost) and run
`_step.gemvt_range`: a register block of 6 rows by 64 outputs, each weight vector loaded once for 6 rows' FMAs,
the block of the weight (64 outputs by n_in) in L2 while every 6 rows of the thread's row block pass over it.
On this machine's Zen 4 that tile runs a 1500 x 384 x 1536 product at 109 GFLOP/s on one core and 219 on two,
where OpenBLAS's sgemm (its SkylakeX kernel) gave 104 and 207 (`gemmt.py`, stop 38; docs/bench-results.md).
The attention's products run on the same tiles: each head's keys packed as a weight of n_ctx outputs, its values
as one of d_head outputs over n_ctx inputs.  Bias, residual and GELU are the tiles' epilogue
(`_step.bias_res_act`), on rows still in cache.  The linear op takes its weight packed the same way
(`linear_rows_kernel`; few rows go through the step's `gemvt`), as the window's cross K/V projection does, and so
does the encoder's stem (`encoder_stem_kernel`): its two convolutions as products with frames as rows, over views
whose overlapping rows are the convolution's windows, so neither the mel nor conv1's output is copied per tap, and
the layers get their rows without a transpose.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._kernels import _blocks, exp_row, ln_rows
from ._step import _gemvt_rows, bias_res_act, gemvt_range


@njit(cache=True)
def packed_linear_rows(x, wp, bias, res, out, act):
    """out = x @ widen(w).T + bias (+ res unless res is out), GELU'd if act: every row of x, w packed (`pack_blocks`)."""
    gemvt_range(x, wp, 0, wp.shape[0], out)
    bias_res_act(out, 0, out.shape[1], bias, res, act)


@njit(cache=True)
def pack_head(qkv, b, h, n_ctx, n, dh, kp, vp):
    """Head h of batch item b, from the QKV rows, as two packed weights (`_step.pack_blocks`'s layout, zeros past
    the end): its keys as one of n_ctx outputs over dh inputs (kp: (key blocks, dh, PACK_BLOCK)), its values as one
    of dh outputs over n_ctx inputs (vp: (dh blocks, n_ctx, PACK_BLOCK): for heads of 64, the values as they are)."""
    p = kp.shape[2]
    for k in range(kp.shape[0]):
        blk = kp[k]
        for j in range(p):
            key = k * p + j
            if key < n_ctx:
                row = qkv[b * n_ctx + key]
                for d in range(dh):
                    blk[d, j] = row[n + h * dh + d]
            else:
                for d in range(dh):
                    blk[d, j] = np.float32(0.0)
    for c in range(vp.shape[0]):
        for key in range(n_ctx):
            row = qkv[b * n_ctx + key]
            out = vp[c, key]
            for j in range(p):
                d = c * p + j
                out[j] = row[2 * n + h * dh + d] if d < dh else np.float32(0.0)


@njit(cache=True)
def attn_rows(qkv, b, h, r0, r1, n_ctx, n, dh, kp, vp, s, a):
    """Query rows r0:r1 of head h, batch item b (queries already scaled): S = Q K^T, softmax, O = P V, both
    products on the packed tiles; s: (>= r1 - r0, key blocks * PACK_BLOCK) scratch.  The softmax's 1/sum
    scales each row of O (dh values) instead of its n_ctx probabilities: one pass over the scores fewer."""
    rows = r1 - r0
    q = qkv[b * n_ctx + r0:b * n_ctx + r1, h * dh:(h + 1) * dh]
    sb = s[:rows]
    for k in range(kp.shape[0]):
        _gemvt_rows(q, kp, k, sb, k * kp.shape[2])
    inv = np.empty(rows, np.float32)
    for i in range(rows):
        inv[i] = exp_row(sb[i], n_ctx)
    o = a[b * n_ctx + r0:b * n_ctx + r1, h * dh:(h + 1) * dh]
    gemvt_range(sb, vp, 0, vp.shape[0], o)
    for i in range(rows):
        orow = o[i]
        for d in range(dh):
            orow[d] *= inv[i]


@njit(parallel=True, cache=True)
def encoder_layer_kernel(x, batch, n_head, ln1g, ln1b, wqkv, bqkv, wo, bo, ln2g, ln2b, w1, b1, w2, b2,
                         blk, attn_blk, nt):
    """x: (batch * n_ctx, n) C-contiguous; the linears' weights packed (`_step.pack_blocks`), float32.  Four
    parallel phases: LayerNorm + QKV (the queries scaled) over row blocks; each head's keys and values packed;
    attention over (batch, head, query block) tasks; out-projection + residual, LayerNorm, fc1 + GELU,
    fc2 + residual over row blocks."""
    m, n = x.shape
    n_ctx = m // batch
    dh = n // n_head
    nf = b1.shape[0]
    pb = wqkv.shape[2]
    nkb = (n_ctx + pb - 1) // pb
    # 1/sqrt(d_head): 1/8 for Whisper's heads of 64, so scaling the queries gives the bits of scaling the scores
    scale = np.float32(1.0 / np.sqrt(np.float64(dh)))
    qkv = np.empty((m, 3 * n), np.float32)
    a = np.empty((m, n), np.float32)
    x1 = np.empty((m, n), np.float32)
    y = np.empty((m, n), np.float32)
    kp = np.empty((batch * n_head, nkb, dh, pb), np.float32)
    vp = np.empty((batch * n_head, (dh + pb - 1) // pb, n_ctx, pb), np.float32)
    nb = max(nt, (m + blk - 1) // blk)
    rb = _blocks(m, nb, 1)
    for p in prange(nb):
        r0 = rb[p]
        r1 = rb[p + 1]
        hbuf = np.empty((r1 - r0, n), np.float32)
        ln_rows(x, r0, r1, ln1g, ln1b, hbuf, 0)
        q = qkv[r0:r1]
        packed_linear_rows(hbuf, wqkv, bqkv, q, q, False)
        for i in range(r1 - r0):
            qr = q[i]
            for j in range(n):
                qr[j] *= scale
    for t in prange(batch * n_head):
        pack_head(qkv, t // n_head, t % n_head, n_ctx, n, dh, kp[t], vp[t])
    nrb = (n_ctx + attn_blk - 1) // attn_blk
    ntask = batch * n_head * nrb
    nta = min(nt, ntask)
    for t in prange(nta):
        s = np.empty((attn_blk, nkb * pb), np.float32)
        for task in range(t, ntask, nta):
            bh = task // nrb
            r0 = (task % nrb) * attn_blk
            attn_rows(qkv, bh // n_head, bh % n_head, r0, min(n_ctx, r0 + attn_blk), n_ctx, n, dh, kp[bh], vp[bh], s, a)
    for p in prange(nb):
        r0 = rb[p]
        r1 = rb[p + 1]
        x1s = x1[r0:r1]
        packed_linear_rows(a[r0:r1], wo, bo, x[r0:r1], x1s, False)
        hbuf = np.empty((r1 - r0, n), np.float32)
        ln_rows(x1, r0, r1, ln2g, ln2b, hbuf, 0)
        fbuf = np.empty((r1 - r0, nf), np.float32)
        packed_linear_rows(hbuf, w1, b1, fbuf, fbuf, True)
        packed_linear_rows(fbuf, w2, b2, x1s, y[r0:r1], False)
    return y


@njit(parallel=True, cache=True)
def encoder_stem_kernel(mel_rows, w1, b1, h1, h1_rows, w2, b2, pos, out, blk, nt):
    """The contract's encoder_stem for one audio, both convolutions as products on the packed tiles with frames as
    rows.  mel_rows: (n_frames, 3 n_mels), row t the padded mel's frames t, t+1, t+2 (a view with overlapping rows of
    the time-major mel, `NumbaBackend.encoder_stem`); w1, w2: the weights packed with their columns tap-major;
    h1: (n_frames + 2, n_state), rows 0 and n_frames + 1 zero (conv2's padding), the rest written here;
    h1_rows: (n_ctx, 3 n_state), row r of it h1's rows 2r .. 2r+2 (conv2's stride and taps); out: (n_ctx, n_state).
    Two parallel phases over row blocks: conv1 + bias + GELU into h1, then conv2 + bias + GELU + positional embedding."""
    m1 = mel_rows.shape[0]
    nb1 = max(nt, (m1 + blk - 1) // blk)
    rb1 = _blocks(m1, nb1, 1)
    for p in prange(nb1):
        o = h1[1 + rb1[p]:1 + rb1[p + 1]]
        gemvt_range(mel_rows[rb1[p]:rb1[p + 1]], w1, 0, w1.shape[0], o)
        bias_res_act(o, 0, o.shape[1], b1, o, True)
    m2 = out.shape[0]
    nb2 = max(nt, (m2 + blk - 1) // blk)
    rb2 = _blocks(m2, nb2, 1)
    for p in prange(nb2):
        r0 = rb2[p]
        o = out[r0:rb2[p + 1]]
        gemvt_range(h1_rows[r0:rb2[p + 1]], w2, 0, w2.shape[0], o)
        bias_res_act(o, 0, o.shape[1], b2, o, True)
        for i in range(o.shape[0]):
            orow = o[i]
            prow = pos[r0 + i]
            for j in range(o.shape[1]):
                orow[j] += prow[j]


@njit(parallel=True, cache=True)
def linear_rows_kernel(x, wp, bias, out, blk, nt):
    """out = x @ widen(w).T + bias for many rows: row blocks over the threads, w packed (`_step.pack_blocks`)."""
    m = x.shape[0]
    nb = max(nt, (m + blk - 1) // blk)
    rb = _blocks(m, nb, 1)
    for p in prange(nb):
        o = out[rb[p]:rb[p + 1]]
        packed_linear_rows(x[rb[p]:rb[p + 1]], wp, bias, o, o, False)
