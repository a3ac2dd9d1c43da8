"""Pythran kernels of a whole decoding step (the decoder_step op) for few query rows, compiled at install by setup.py.

One call runs every decoder layer, the final LayerNorm and the logits.  The projections are GEMV-style:
the output features are shared out between the OpenMP threads, and each weight row is read from memory
once and multiplied with EVERY query row (the beams of a beam step), so a step of several rows reads the
weights no more than a greedy step does.  Cross-attention takes one K/V row per audio: the query rows of
one audio (its beams) are one block of queries, so K and V are read once per head for all of them.

Weights come stacked per kind, (n_layer, n_out, n_in), either float32 or as the bits of float16 values
(uint16) that `_mv16` widens exactly to float32 in a per-thread buffer: the products and sums are the
float32 ones either way.  Pythran has no float16 type, so the widening is integer arithmetic on the bits
reinterpreted as float32 (ndarray.view), exact for normal values; the few zeros and subnormals are then
patched in from a side list made at prepare.  Every store into the buffer is through its uint32 view
and every load through its float32 view, after them.

int8 (the contract's compute type): the layers' matrices are int8 with one float32 scale per output channel,
and `_mv8` quantizes the rows of x per block of inputs as `contract.quantize_rows_int8` does; each block's dot
product is an exact int32 sum.  The logits stay float32 (float16 bits), as the contract says.

This file is a build input, not a module of the package: it is never imported as plain Python.
"""
import numpy as np
from _kernels import _exp_flushed, _gelu1, _int8_level, _int8_scale

#: Output rows per OpenMP work item of a projection.
BLK = 32


# In the loops below, arrays are indexed in place: a view (w[li, o], x[i]) or an array passed to a
# function costs two atomic reference-count updates, which per weight row would cost more than the row.

def _mv32(w, b, s, li, x, y, rp, pc, pv):
    """y = x @ w[li].T + b[li] for few rows x (R, n); w (n_layer, n_out, n) float32: each weight row is
    read once, for all R rows of x (four at a time).  s, rp, pc, pv: unused (see _mv8, _mv16)."""
    nr, n = x.shape
    n_out = w.shape[1]
    n4 = nr - nr % 4
    #omp parallel for schedule(static)
    for blk in range((n_out + BLK - 1) // BLK):
        for o in range(blk * BLK, min(n_out, blk * BLK + BLK)):
            bo = b[li, o]
            for i in range(0, n4, 4):
                s0 = np.float32(0.)
                s1 = np.float32(0.)
                s2 = np.float32(0.)
                s3 = np.float32(0.)
                for k in range(n):
                    wk = w[li, o, k]
                    s0 += x[i, k] * wk
                    s1 += x[i + 1, k] * wk
                    s2 += x[i + 2, k] * wk
                    s3 += x[i + 3, k] * wk
                y[i, o] = s0 + bo
                y[i + 1, o] = s1 + bo
                y[i + 2, o] = s2 + bo
                y[i + 3, o] = s3 + bo
            for i in range(n4, nr):
                s = np.float32(0.)
                for k in range(n):
                    s += x[i, k] * w[li, o, k]
                y[i, o] = s + bo


def _mv16_five(w, b, s, li, x, y, rp, pc, pv):
    """_mv16 for exactly five rows (a beam step's) in one pass: as four rows and one, the fifth row cost a second
    pass over each widened weight row (five rows' logits took 1.4 times four rows').  Four widened weight rows by the
    five rows of x are 20 sums, so each vector of x or of the weight is loaded once for four or five FMAs; each sum
    is the one _mv16 makes, bit for bit (`pylog.py`, stop 44: the logits of five rows 2.9-3.4 ms -> 2.8 ms).  A
    function of its own: with a block of five and one of four in one function, GCC vectorised only the first one's
    sums (a 4-row step took ten times as long).  Its widening is _mv16's, written out again: as a helper taking the
    products as a function argument, a one-row call took 4.5 times as long (stop 44)."""
    n = x.shape[1]
    n_out = w.shape[1]
    #omp parallel for schedule(static)
    for blk in range((n_out + BLK - 1) // BLK):
        buf = np.empty(4 * n, np.float32)
        bits = buf.view(np.uint32)
        o1 = min(n_out, blk * BLK + BLK)
        for o0 in range(blk * BLK, o1, 4):
            nb = min(4, o1 - o0)
            for c in range(nb):
                for k in range(n):
                    # the bits sign-extended: after the shift, the AND keeps the sign at bit 31 and the
                    # exponent and mantissa below it (four vector operations per 16 values, against eight
                    # with the sign moved on its own: logits 8 % faster, stop 35)
                    u = np.uint32(np.int32(np.int16(w[li, o0 + c, k])))
                    bits[c * n + k] = ((u << np.uint32(13)) & np.uint32(0x8fffe000)) + np.uint32(0x38000000)
                for p in range(rp[li, o0 + c], rp[li, o0 + c + 1]):
                    bits[c * n + pc[p]] = pv[p]
            if nb == 4:  # 5 rows by 4 widened weight rows: 20 sums, each x and weight vector loaded once for 4 or 5 FMAs
                a00 = np.float32(0.)
                a01 = np.float32(0.)
                a02 = np.float32(0.)
                a03 = np.float32(0.)
                a10 = np.float32(0.)
                a11 = np.float32(0.)
                a12 = np.float32(0.)
                a13 = np.float32(0.)
                a20 = np.float32(0.)
                a21 = np.float32(0.)
                a22 = np.float32(0.)
                a23 = np.float32(0.)
                a30 = np.float32(0.)
                a31 = np.float32(0.)
                a32 = np.float32(0.)
                a33 = np.float32(0.)
                a40 = np.float32(0.)
                a41 = np.float32(0.)
                a42 = np.float32(0.)
                a43 = np.float32(0.)
                for k in range(n):
                    w0 = buf[0 * n + k]
                    w1 = buf[1 * n + k]
                    w2 = buf[2 * n + k]
                    w3 = buf[3 * n + k]
                    x0 = x[0, k]
                    x1 = x[1, k]
                    x2 = x[2, k]
                    x3 = x[3, k]
                    x4 = x[4, k]
                    a00 += x0 * w0
                    a01 += x0 * w1
                    a02 += x0 * w2
                    a03 += x0 * w3
                    a10 += x1 * w0
                    a11 += x1 * w1
                    a12 += x1 * w2
                    a13 += x1 * w3
                    a20 += x2 * w0
                    a21 += x2 * w1
                    a22 += x2 * w2
                    a23 += x2 * w3
                    a30 += x3 * w0
                    a31 += x3 * w1
                    a32 += x3 * w2
                    a33 += x3 * w3
                    a40 += x4 * w0
                    a41 += x4 * w1
                    a42 += x4 * w2
                    a43 += x4 * w3
                y[0, o0 + 0] = a00 + b[li, o0 + 0]
                y[0, o0 + 1] = a01 + b[li, o0 + 1]
                y[0, o0 + 2] = a02 + b[li, o0 + 2]
                y[0, o0 + 3] = a03 + b[li, o0 + 3]
                y[1, o0 + 0] = a10 + b[li, o0 + 0]
                y[1, o0 + 1] = a11 + b[li, o0 + 1]
                y[1, o0 + 2] = a12 + b[li, o0 + 2]
                y[1, o0 + 3] = a13 + b[li, o0 + 3]
                y[2, o0 + 0] = a20 + b[li, o0 + 0]
                y[2, o0 + 1] = a21 + b[li, o0 + 1]
                y[2, o0 + 2] = a22 + b[li, o0 + 2]
                y[2, o0 + 3] = a23 + b[li, o0 + 3]
                y[3, o0 + 0] = a30 + b[li, o0 + 0]
                y[3, o0 + 1] = a31 + b[li, o0 + 1]
                y[3, o0 + 2] = a32 + b[li, o0 + 2]
                y[3, o0 + 3] = a33 + b[li, o0 + 3]
                y[4, o0 + 0] = a40 + b[li, o0 + 0]
                y[4, o0 + 1] = a41 + b[li, o0 + 1]
                y[4, o0 + 2] = a42 + b[li, o0 + 2]
                y[4, o0 + 3] = a43 + b[li, o0 + 3]
            else:
                for c in range(nb):
                    o = o0 + c
                    bo = b[li, o]
                    s0 = np.float32(0.)
                    s1 = np.float32(0.)
                    s2 = np.float32(0.)
                    s3 = np.float32(0.)
                    s4 = np.float32(0.)
                    for k in range(n):
                        wk = buf[c * n + k]
                        s0 += x[0, k] * wk
                        s1 += x[1, k] * wk
                        s2 += x[2, k] * wk
                        s3 += x[3, k] * wk
                        s4 += x[4, k] * wk
                    y[0, o] = s0 + bo
                    y[1, o] = s1 + bo
                    y[2, o] = s2 + bo
                    y[3, o] = s3 + bo
                    y[4, o] = s4 + bo


def _mv16(w, b, s, li, x, y, rp, pc, pv):
    """_mv32 on float16 bits w (uint16), each row widened exactly into a per-thread float32 buffer.

    The widening is the bit shuffle that is exact for normal float16 values (exponent rebias 15 -> 127,
    sign at bit 31; checked for every normal value in test_pythran_backend).  The few elements with exponent 0 (zeros, subnormals), for which it is not,
    are then overwritten with their float32 bits: those of row o of layer li are pc[p] (column) and
    pv[p] (bits) for p in rp[li, o] .. rp[li, o + 1] - 1.  Weight rows are widened four at a time, so that
    the rows of x left over from the blocks of four (all of them, in a greedy step) run four independent
    sums, not one chain of dependent FMAs."""
    nr = x.shape[0]
    if nr == 5:
        _mv16_five(w, b, s, li, x, y, rp, pc, pv)
        return
    _mv16_blocks(w, b, li, x, y, rp, pc, pv, np.arange((w.shape[1] + BLK - 1) // BLK), nr - nr % 4)


def _mv16_blocks(w, b, li, x, y, rp, pc, pv, blocks, n4):
    """_mv16 over the blocks of BLK outputs listed in `blocks` (the other columns of y are left as they are): the
    first n4 rows of x (a multiple of four) four at a time, the others each alone.  A row alone gets the sums of a
    one-row call whatever the other rows and the listed blocks: a one-row step's logits, a draft step's (its listed
    blocks) and head16's (n4 = 0) are the same bits, so a draft's final LayerNorm row gives through head16 the logits
    its plain step gives (the contract's decoder_step `draft` and `head`)."""
    nr, n = x.shape
    n_out = w.shape[1]
    #omp parallel for schedule(static)
    for bi in range(blocks.shape[0]):
        blk = blocks[bi]
        buf = np.empty(4 * n, np.float32)
        bits = buf.view(np.uint32)
        o1 = min(n_out, blk * BLK + BLK)
        for o0 in range(blk * BLK, o1, 4):
            nb = min(4, o1 - o0)
            for c in range(nb):
                for k in range(n):
                    # the bits sign-extended: after the shift, the AND keeps the sign at bit 31 and the
                    # exponent and mantissa below it (four vector operations per 16 values, against eight
                    # with the sign moved on its own: logits 8 % faster, stop 35)
                    u = np.uint32(np.int32(np.int16(w[li, o0 + c, k])))
                    bits[c * n + k] = ((u << np.uint32(13)) & np.uint32(0x8fffe000)) + np.uint32(0x38000000)
                for p in range(rp[li, o0 + c], rp[li, o0 + c + 1]):
                    bits[c * n + pc[p]] = pv[p]
            for c in range(nb):
                o = o0 + c
                bo = b[li, o]
                for i in range(0, n4, 4):
                    s0 = np.float32(0.)
                    s1 = np.float32(0.)
                    s2 = np.float32(0.)
                    s3 = np.float32(0.)
                    for k in range(n):
                        wk = buf[c * n + k]
                        s0 += x[i, k] * wk
                        s1 += x[i + 1, k] * wk
                        s2 += x[i + 2, k] * wk
                        s3 += x[i + 3, k] * wk
                    y[i, o] = s0 + bo
                    y[i + 1, o] = s1 + bo
                    y[i + 2, o] = s2 + bo
                    y[i + 3, o] = s3 + bo
            for i in range(n4, nr):
                if nb == 4:
                    t0 = np.float32(0.)
                    t1 = np.float32(0.)
                    t2 = np.float32(0.)
                    t3 = np.float32(0.)
                    for k in range(n):
                        xk = x[i, k]
                        t0 += xk * buf[k]
                        t1 += xk * buf[n + k]
                        t2 += xk * buf[2 * n + k]
                        t3 += xk * buf[3 * n + k]
                    y[i, o0] = t0 + b[li, o0]
                    y[i, o0 + 1] = t1 + b[li, o0 + 1]
                    y[i, o0 + 2] = t2 + b[li, o0 + 2]
                    y[i, o0 + 3] = t3 + b[li, o0 + 3]
                else:
                    for c in range(nb):
                        t = np.float32(0.)
                        for k in range(n):
                            t += x[i, k] * buf[c * n + k]
                        y[i, o0 + c] = t + b[li, o0 + c]


def _quant_rows(x, bs):
    """The contract's int8 activations (quantize_rows_int8) of the rows x (R, n): int8 (R, n) and the
    scales (R, n // bs) of its blocks of bs inputs."""
    nr, n = x.shape
    nb = n // bs
    x8 = np.empty((nr, n), np.int8)
    xs = np.empty((nr, nb), np.float32)
    for i in range(nr):
        for q in range(nb):
            sc, inv = _int8_scale(x, i, q * bs, q * bs + bs)
            xs[i, q] = sc
            for k in range(q * bs, q * bs + bs):
                x8[i, k] = np.int8(_int8_level(x[i, k], inv))
    return x8, xs


def _int8_block(n):
    """contract.int8_block: the largest of 128, 64, 32, 16 dividing n, else n."""
    for bs in (128, 64, 32, 16):
        if n % bs == 0:
            return bs
    return n


def _mv8(w, b, s, li, x, y, rp, pc, pv):
    """y = linear(x) in the contract's int8 for few rows x (R, n): w (n_layer, n_out, n) int8, s (n_layer, n_out)
    its scales.  Per row and output: the blocks' exact int32 dot products, each times the row's block scale,
    summed in float32, then times s[li, o], plus b[li, o].  rp, pc, pv: unused."""
    nr, n = x.shape
    n_out = w.shape[1]
    bs = _int8_block(n)
    nb = n // bs
    x8, xs = _quant_rows(x, bs)
    #omp parallel for schedule(static)
    for blk in range((n_out + BLK - 1) // BLK):
        for o in range(blk * BLK, min(n_out, blk * BLK + BLK)):
            so = s[li, o]
            bo = b[li, o]
            for i in range(nr):
                acc = np.float32(0.)
                for q in range(nb):
                    t = np.int32(0)
                    for k in range(q * bs, q * bs + bs):
                        t += np.int32(x8[i, k]) * np.int32(w[li, o, k])
                    acc += np.float32(t) * xs[i, q]
                y[i, o] = acc * so + bo


def _ln(x, w, b, li, y):
    """y = layer_norm(x) over the rows of x with weight w[li] and bias b[li] (as _kernels.layer_norm)."""
    nr, d = x.shape
    for i in range(nr):
        s = 0.
        for j in range(d):
            s += x[i, j]
        mean = np.float32(s / d)
        ss = 0.
        for j in range(d):
            c = x[i, j] - mean
            ss += c * c
        inv = np.float32(1. / np.sqrt(ss / d + 1e-5))
        for j in range(d):
            y[i, j] = (x[i, j] - mean) * inv * w[li, j] + b[li, j]


def _add(x, t):
    nr, d = x.shape
    for i in range(nr):
        for j in range(d):
            x[i, j] += t[i, j]


def _self_attn(qkv, kc, vc, li, nq, offset, pad, n_head, out):
    """Causal self-attention of rows r = b * nq + i (position offset + i) over the cache of row b,
    after writing their keys and values into it; row b's first pad[b] positions are left padding (the
    contract's decoder_step `pad`).  qkv (R, 3d); kc, vc (n_layer, batch, n_ctx, d)."""
    nr, d = out.shape
    dh = d // n_head
    for r in range(nr):
        kc[li, r // nq, offset + r % nq] = qkv[r, d:2 * d]
        vc[li, r // nq, offset + r % nq] = qkv[r, 2 * d:3 * d]
    scale = np.float32(1. / np.sqrt(dh))
    #omp parallel for schedule(dynamic)
    for idx in range(nr * n_head):
        r = idx // n_head
        c0 = (idx % n_head) * dh
        bi = r // nq
        end = offset + r % nq + 1
        start = pad[bi] if end > pad[bi] else 0  # a real token sees the keys from its row's start on
        qr = qkv[r, c0:c0 + dh] * scale
        s = np.empty(end - start, np.float32)
        for j in range(start, end):
            s[j - start] = np.sum(qr * kc[li, bi, j, c0:c0 + dh])
        m = np.max(s)
        tot = 0.
        for j in range(end - start):
            e = _exp_flushed(s[j] - m)
            s[j] = e
            tot += e
        inv = np.float32(1. / tot)
        o = np.zeros(dh, np.float32)
        for j in range(start, end):
            o += (s[j - start] * inv) * vc[li, bi, j, c0:c0 + dh]
        out[r, c0:c0 + dh] = o


def _cross_attn(q, ck, cv, li, gq, n_head, out):
    """Attention of query rows c * gq .. (c + 1) * gq - 1 over cross K/V row c: K and V are read once for all
    gq query rows.  q, out (R, d); ck, cv (n_layer, batch_c, n_kv, d).

    The keys of an audio are cut into two halves, one work item each (one per core on two), and each item
    walks its keys in order, every head of a key row at a time: each core streams whole rows of one half
    of K and of V.  Three passes: the scores of every head, the softmax of every (head, row) over all the
    keys, then each half's share of P.V, the two halves added in the end (the split depends on the key
    count only, not on the threads).  One item per head, reading 256 bytes at a 1536-byte stride, took a
    third of a greedy step."""
    nbc, nkv, d = ck.shape[1], ck.shape[2], ck.shape[3]
    dh = d // n_head
    scale = np.float32(1. / np.sqrt(dh))
    half = min(nkv, (nkv // 2 + 3) // 4 * 4)  # the first half's keys: a multiple of four, or all of 2 or 3
    s = np.empty((nbc, n_head, gq, nkv), np.float32)
    o2 = np.zeros((nbc, 2, gq, d), np.float32)
    qs = q * scale
    #omp parallel for schedule(static)
    for idx in range(nbc * 2):
        c = idx // 2
        j0 = (idx % 2) * half
        j1 = min(nkv, j0 + half) if idx % 2 == 0 else nkv
        n4 = j0 + (j1 - j0) - (j1 - j0) % 4
        r0 = c * gq
        # four keys at a time: four independent sums per query row, where one sum at a time waited on each
        # FMA's latency; each key's sum is the same as alone
        for j in range(j0, n4, 4):
            for h in range(n_head):
                c0 = h * dh
                k0 = ck[li, c, j, c0:c0 + dh]
                k1 = ck[li, c, j + 1, c0:c0 + dh]
                k2 = ck[li, c, j + 2, c0:c0 + dh]
                k3 = ck[li, c, j + 3, c0:c0 + dh]
                for a in range(gq):
                    a0 = np.float32(0.)
                    a1 = np.float32(0.)
                    a2 = np.float32(0.)
                    a3 = np.float32(0.)
                    for t in range(dh):
                        qt = qs[r0 + a, c0 + t]
                        a0 += qt * k0[t]
                        a1 += qt * k1[t]
                        a2 += qt * k2[t]
                        a3 += qt * k3[t]
                    s[c, h, a, j] = a0
                    s[c, h, a, j + 1] = a1
                    s[c, h, a, j + 2] = a2
                    s[c, h, a, j + 3] = a3
        for j in range(n4, j1):
            for h in range(n_head):
                c0 = h * dh
                kr = ck[li, c, j, c0:c0 + dh]
                for a in range(gq):
                    acc = np.float32(0.)
                    for t in range(dh):
                        acc += qs[r0 + a, c0 + t] * kr[t]
                    s[c, h, a, j] = acc
    #omp parallel for schedule(static)
    for idx in range(nbc * n_head):
        c = idx // n_head
        h = idx % n_head
        for a in range(gq):
            m = np.max(s[c, h, a])
            tot = 0.
            for j in range(nkv):
                e = _exp_flushed(s[c, h, a, j] - m)
                s[c, h, a, j] = e
                tot += e
            inv = np.float32(1. / tot)
            for j in range(nkv):
                s[c, h, a, j] *= inv
    #omp parallel for schedule(static)
    for idx in range(nbc * 2):
        c = idx // 2
        part = idx % 2
        j0 = part * half
        j1 = min(nkv, j0 + half) if part == 0 else nkv
        n4 = j0 + (j1 - j0) - (j1 - j0) % 4
        for j in range(j0, n4, 4):  # four value rows a pass: one load and store of o for four FMAs
            for h in range(n_head):
                c0 = h * dh
                v0 = cv[li, c, j, c0:c0 + dh]
                v1 = cv[li, c, j + 1, c0:c0 + dh]
                v2 = cv[li, c, j + 2, c0:c0 + dh]
                v3 = cv[li, c, j + 3, c0:c0 + dh]
                for a in range(gq):
                    p0 = s[c, h, a, j]
                    p1 = s[c, h, a, j + 1]
                    p2 = s[c, h, a, j + 2]
                    p3 = s[c, h, a, j + 3]
                    for t in range(dh):
                        o2[c, part, a, c0 + t] += p0 * v0[t] + p1 * v1[t] + p2 * v2[t] + p3 * v3[t]
        for j in range(n4, j1):
            for h in range(n_head):
                c0 = h * dh
                vr = cv[li, c, j, c0:c0 + dh]
                for a in range(gq):
                    p = s[c, h, a, j]
                    for t in range(dh):
                        o2[c, part, a, c0 + t] += p * vr[t]
    for c in range(nbc):
        for a in range(gq):
            for u in range(d):
                out[c * gq + a, u] = o2[c, 0, a, u] + o2[c, 1, a, u]


def _step(mv, mvl, x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco, bco,
          wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, scs, kc, vc, ck, cv):
    """The layers' projections through mv, the logits through mvl; scs: the int8 scales of the six kinds of
    matrices (_mv8), unused by the float kernels."""
    sel = _layers(mv, x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco, bco,
                  wfc1, bfc1, wfc2, bfc2, rps, pc, pv, scs, kc, vc, ck, cv)
    return _logits(mvl, sel, lnfw, lnfb, wlog, blog, rps[6], pc, pv)


def _layers(mv, x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco, bco,
            wfc1, bfc1, wfc2, bfc2, rps, pc, pv, scs, kc, vc, ck, cv):
    """Every layer of the step; returns the rows at the positions `pos` of each row, before the final LayerNorm."""
    nr, d = x.shape
    h = x.copy()  # the residual stream
    t = np.empty((nr, d), np.float32)
    a = np.empty((nr, d), np.float32)
    qkv = np.empty((nr, wqkv.shape[1]), np.float32)
    f1 = np.empty((nr, wfc1.shape[1]), np.float32)
    for li in range(wqkv.shape[0]):
        _ln(h, lnw, lnb, 3 * li, t)
        mv(wqkv, bqkv, scs[0], li, t, qkv, rps[0], pc, pv)
        _self_attn(qkv, kc, vc, li, nq, offset, pad, n_head, a)
        mv(wout, bout, scs[1], li, a, t, rps[1], pc, pv)
        _add(h, t)
        _ln(h, lnw, lnb, 3 * li + 1, t)
        mv(wcq, bcq, scs[2], li, t, a, rps[2], pc, pv)
        _cross_attn(a, ck, cv, li, group * nq, n_head, t)
        mv(wco, bco, scs[3], li, t, a, rps[3], pc, pv)
        _add(h, a)
        _ln(h, lnw, lnb, 3 * li + 2, t)
        mv(wfc1, bfc1, scs[4], li, t, f1, rps[4], pc, pv)
        for i in range(nr):
            for j in range(f1.shape[1]):
                f1[i, j] = _gelu1(f1[i, j])
        mv(wfc2, bfc2, scs[5], li, f1, t, rps[5], pc, pv)
        _add(h, t)
    n_pos = pos.shape[0]
    sel = np.empty((nr // nq * n_pos, d), np.float32)
    for r in range(nr // nq * n_pos):
        for j in range(d):
            sel[r, j] = h[r // n_pos * nq + pos[r % n_pos], j]
    return sel


def _logits(mv, x, lnfw, lnfb, wlog, blog, rp, pc, pv):
    hs = np.empty_like(x)
    _ln(x, lnfw, lnfb, 0, hs)
    logits = np.empty((x.shape[0], wlog.shape[1]), np.float32)
    mv(wlog, blog, blog, 0, hs, logits, rp, pc, pv)
    return logits


#pythran export step32(float32[:,:] order(C), int, int, int, int[:], int, int[:], float32[:,:] order(C), float32[:,:] order(C),
#       float32[:,:,:], float32[:,:] order(C), float32[:,:,:], float32[:,:] order(C), float32[:,:,:], float32[:,:] order(C), float32[:,:,:], float32[:,:] order(C), float32[:,:,:], float32[:,:] order(C), float32[:,:,:], float32[:,:] order(C),
#       float32[:,:] order(C), float32[:,:] order(C), float32[:,:,:], float32[:,:] order(C),
#       int32[:,:] list, int32[:], uint32[:], float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:])
def step32(x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco, bco,
           wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, kc, vc, ck, cv):
    """decoder_step on float32 weights: x (rows, d), rows r = b * nq + i at positions offset + i, pad (batch,)
    the left padding of each row (zeros: none); the
    matrices stacked (n_layer, n_out, n_in), their biases (n_layer, n_out), the LayerNorms' (3 * n_layer, d)
    (attention, cross-attention, MLP of each layer), the final LayerNorm's (1, d), the logits' weight
    (1, n_vocab, d) and zero bias (1, n_vocab); rps, pc, pv: unused here (see _mv16).  Returns logits
    (batch * len(pos), n_vocab)."""
    return _step(_mv32, _mv32, x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq,
                 wco, bco, wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, [bqkv] * 6, kc, vc, ck, cv)


#pythran export step16(float32[:,:] order(C), int, int, int, int[:], int, int[:], float32[:,:] order(C), float32[:,:] order(C),
#       uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C),
#       float32[:,:] order(C), float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C),
#       int32[:,:] list, int32[:], uint32[:], float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:])
def step16(x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco, bco,
           wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, kc, vc, ck, cv):
    """step32 on matrices stored as float16 bits (uint16), widened exactly in the kernels; rps: the patch
    row pointers of _mv16 for each matrix (qkv, out, cross_q, cross_out, fc1, fc2, logits), (n_layer, n_out + 1)."""
    return _step(_mv16, _mv16, x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq,
                 wco, bco, wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, [bqkv] * 6, kc, vc, ck, cv)


#pythran export step16d(float32[:,:] order(C), int, int, int, int[:], int, int[:], float32[:,:] order(C), float32[:,:] order(C),
#       uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C),
#       float32[:,:] order(C), float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C),
#       int32[:,:] list, int32[:], uint32[:], float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:],
#       int[:], float32[:,:] order(C))
def step16d(x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco, bco,
            wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, kc, vc, ck, cv, blocks, hidden):
    """step16 of one row as a draft (the contract's decoder_step `draft`): the final LayerNorm's row into hidden
    (1, d), and the logits of the blocks of BLK columns `blocks` only, the other columns -inf."""
    sel = _layers(_mv16, x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq,
                  wco, bco, wfc1, bfc1, wfc2, bfc2, rps, pc, pv, [bqkv] * 6, kc, vc, ck, cv)
    _ln(sel, lnfw, lnfb, 0, hidden)
    logits = np.full((1, wlog.shape[1]), -np.inf, np.float32)
    _mv16_blocks(wlog, blog, 0, hidden, logits, rps[6], pc, pv, blocks, 0)
    return logits


#pythran export head16(float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C), int32[:,:] order(C), int32[:], uint32[:])
def head16(h, wlog, blog, rp, pc, pv):
    """The logits of final-LayerNormed rows h (rows, d) (the contract's decoder_step `head`): each row's are those
    of the one-row step16 that made it, bit for bit."""
    logits = np.empty((h.shape[0], wlog.shape[1]), np.float32)
    _mv16_blocks(wlog, blog, 0, h, logits, rp, pc, pv, np.arange((wlog.shape[1] + BLK - 1) // BLK), 0)
    return logits


#pythran export logits32(float32[:,:] order(C), float32[:,:] order(C), float32[:,:] order(C), float32[:,:,:],
#                        float32[:,:] order(C), int32[:,:] order(C), int32[:], uint32[:])
def logits32(x, lnfw, lnfb, wlog, blog, rp, pc, pv):
    """The end of step32 alone: logits of the rows x (the layers having run elsewhere)."""
    return _logits(_mv32, x, lnfw, lnfb, wlog, blog, rp, pc, pv)


#pythran export logits16(float32[:,:] order(C), float32[:,:] order(C), float32[:,:] order(C), uint16[:,:,:],
#                        float32[:,:] order(C), int32[:,:] order(C), int32[:], uint32[:])
def logits16(x, lnfw, lnfb, wlog, blog, rp, pc, pv):
    """The end of step16 alone."""
    return _logits(_mv16, x, lnfw, lnfb, wlog, blog, rp, pc, pv)


#pythran export step8(float32[:,:] order(C), int, int, int, int[:], int, int[:], float32[:,:] order(C), float32[:,:] order(C),
#       int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C),
#       float32[:,:] order(C), float32[:,:] order(C), uint16[:,:,:], float32[:,:] order(C),
#       int32[:,:] list, int32[:], uint32[:], float32[:,:] list, float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:])
def step8(x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco, bco,
          wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, scs, kc, vc, ck, cv):
    """step16 with the layers' matrices in the contract's int8 (int8 stacks, scs their scales (n_layer, n_out)
    per kind); the logits' weight as float16 bits, widened exactly (rps[6], pc, pv as in step16)."""
    return _step(_mv8, _mv16, x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco,
                 bco, wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, scs, kc, vc, ck, cv)


#pythran export step8f(float32[:,:] order(C), int, int, int, int[:], int, int[:], float32[:,:] order(C), float32[:,:] order(C),
#       int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C),
#       float32[:,:] order(C), float32[:,:] order(C), float32[:,:,:], float32[:,:] order(C),
#       int32[:,:] list, int32[:], uint32[:], float32[:,:] list, float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:], float32[:,:,:,:])
def step8f(x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco, bco,
           wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, scs, kc, vc, ck, cv):
    """step8 with a float32 logits weight (a checkpoint float16 cannot hold)."""
    return _step(_mv8, _mv32, x, nq, group, offset, pad, n_head, pos, lnw, lnb, wqkv, bqkv, wout, bout, wcq, bcq, wco,
                 bco, wfc1, bfc1, wfc2, bfc2, lnfw, lnfb, wlog, blog, rps, pc, pv, scs, kc, vc, ck, cv)


#pythran export linear8(float32[:,:] order(C), int8[:,:,:], float32[:,:] order(C), float32[:,:] order(C))
def linear8(x, w, s, b):
    """The contract's int8 linear of few rows x (R, n): w (1, n_out, n) int8, s (1, n_out) its scales, b (1, n_out)."""
    y = np.empty((x.shape[0], w.shape[1]), np.float32)
    _mv8(w, b, s, 0, x, y, np.zeros((1, 1), np.int32), np.zeros(0, np.int32), np.zeros(0, np.uint32))
    return y
