"""Pythran kernels of the whisperkit Pythran backend, compiled once at install time by setup.py.

float32 in, float32 out: every float literal that meets float32 data is wrapped in np.float32, so no
array is ever promoted to float64.  The only float64 values are scalars: row accumulators, and the
per-element erfc of GELU, whose exp(-z*z) tail needs double range and precision to stay within one
float32 ulp of the reference.  GEMMs are not here: the backend runs them on NumPy's BLAS.

This file is a build input, not a module of the package: it is never imported as plain Python.
"""
import numpy as np
import omp


#pythran export set_threads(int)
def set_threads(n):
    omp.set_num_threads(n)


#pythran export layer_norm(float32[:,:], float32[:], float32[:], float32)
def layer_norm(x, w, b, eps):
    n, d = x.shape
    y = np.empty((n, d), np.float32)
    #omp parallel for schedule(static)
    for i in range(n):
        s = 0.
        for j in range(d):
            s += x[i, j]
        mean = np.float32(s / d)
        ss = 0.
        for j in range(d):
            c = x[i, j] - mean
            ss += c * c
        inv = np.float32(1. / np.sqrt(ss / d + eps))
        for j in range(d):
            y[i, j] = (x[i, j] - mean) * inv * w[j] + b[j]
    return y


def _gelu1(v):
    # 0.5 x (1 + erf(x / sqrt 2)) written with erfc (Numerical Recipes "erfcc", relative error
    # < 1.2e-7, the reference's formula) so the negative tail keeps its relative precision.
    xd = float(v)
    z = abs(xd) * 0.7071067811865476
    t = 1. / (1. + 0.5 * z)
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
    # e^-70 appears only for x < -11, where |gelu(x)| < 1e-29: such a value is 0 here, as in numba, because it
    # would be denormal in float32 and its products in fc2's GEMM slow (the last encoder layer's MLP took 90 ms
    # against 15 ms for the others on jfk)
    h = 0.5 * t * np.exp(r) if r >= -70. else 0.
    g = xd * (1. - h) if xd >= 0. else xd * h
    return np.float32(g)


#pythran export gelu(float32[:])
def gelu(x):
    n = x.shape[0]
    y = np.empty(n, np.float32)
    #omp parallel for schedule(static)
    for i in range(n):
        y[i] = _gelu1(x[i])
    return y


#pythran export log_softmax(float32[:,:])
def log_softmax(x):
    """y = (x - max) - log(sum(exp(x - max))) per row (the contract's op), the rows over the threads; the log of
    the float32 sum in double, rounded once; -inf stays -inf."""
    n, d = x.shape
    y = np.empty((n, d), np.float32)
    #omp parallel for schedule(static)
    for i in range(n):
        m = np.max(x[i])
        s = np.sum(np.exp(x[i] - m))
        lse = np.float32(np.log(np.float64(s)))
        y[i] = x[i] - m  # two statements: -ffast-math would take (x - m) - lse as x - (m + lse), losing the bits
        y[i] -= lse      # of m + lse when |m| is large
    return y


#pythran export logsumexp(float32[:,:])
def logsumexp(x):
    """y[i] = max + log(sum(exp(x[i] - max))) (the contract's op), the log of the float32 sum in double, rounded
    once.  A row of only -inf gives -inf: tested as "max not above -3e38", since -ffast-math may fold a test
    against an infinity away, and np.max may give the lowest finite float for such a row."""
    n, d = x.shape
    y = np.empty(n, np.float32)
    for i in range(n):
        m = np.max(x[i])
        if m > np.float32(-3.0e38):
            s = np.sum(np.exp(x[i] - m))
            y[i] = m + np.float32(np.log(np.float64(s)))
        else:  # not m: np.max may start from the lowest finite float
            y[i] = -np.inf
    return y


#pythran export top_k(float32[:,:], int)
def top_k(x, k):
    """The columns of each row's k largest values, largest first, ties by lower column (the contract's op),
    the rows over the threads.  The maximum of each block of 256 columns is a distinct element, so the k-th
    largest of them bounds the row's k-th largest from below: only the blocks reaching it and the ragged tail
    are scanned, in column order, into a sorted buffer that a later equal value never overtakes."""
    rows, n = x.shape
    chunk = 256
    nc = n // chunk if chunk >= k and n // chunk >= k else 0  # 0: no bound, the whole row is the tail
    out = np.empty((rows, k), np.int64)
    #omp parallel for schedule(static)
    for r in range(rows):
        bound = np.float32(-np.inf)
        maxima = np.empty(nc, np.float32)
        if nc:
            for c in range(nc):  # not np.max: its reduction starts from the lowest finite float, above -inf
                m = x[r, c * chunk]
                for j in range(c * chunk + 1, (c + 1) * chunk):
                    m = x[r, j] if x[r, j] > m else m
                maxima[c] = m
            bound = np.sort(maxima)[nc - k]
        bv = np.empty(k, np.float32)
        bi = np.empty(k, np.int64)
        cnt = 0
        for c in range(nc + 1):
            if c < nc and maxima[c] < bound:
                continue
            hi = (c + 1) * chunk if c < nc else n
            for j in range(c * chunk, hi):
                v = x[r, j]
                if v < bound or (cnt == k and not v > bv[k - 1]):
                    continue
                p = cnt if cnt < k else k - 1
                while p > 0 and bv[p - 1] < v:
                    bv[p] = bv[p - 1]
                    bi[p] = bi[p - 1]
                    p -= 1
                bv[p] = v
                bi[p] = j
                if cnt < k:
                    cnt += 1
        out[r] = bi
    return out


#pythran export bias_gelu_(float32[:,:], float32[:])
def bias_gelu_(x, b):
    """x <- gelu(x + b), in place: the epilogue of fc1 in the MLP."""
    n, d = x.shape
    #omp parallel for schedule(static)
    for i in range(n):
        for j in range(d):
            x[i, j] = _gelu1(x[i, j] + b[j])


#pythran export bias_residual_(float32[:,:], float32[:], float32[:,:])
def bias_residual_(y, b, r):
    """y <- y + b + r, in place: the epilogue of an output projection with its residual."""
    n, d = y.shape
    #omp parallel for schedule(static)
    for i in range(n):
        for j in range(d):
            y[i, j] = y[i, j] + b[j] + r[i, j]


#pythran export bias_(float32[:,:], float32[:])
def bias_(y, b):
    n, d = y.shape
    #omp parallel for schedule(static)
    for i in range(n):
        for j in range(d):
            y[i, j] += b[j]


#: the shifted score below which a softmax's exp is flushed to 0 (`_exp_flushed`), and the lower one for
#: probabilities that are an op's output (attention_weights: e^-86 is under the contract's 1e-37 for them)
SOFTMAX_FLOOR = -50.
PROB_FLOOR = -86.


def _exp_flushed(d):
    """exp(d) of a softmax's shifted score d <= 0, or 0 under -50: a probability under e^-50 (the row's largest
    is 1) changes no float32 output, and exp() would make it denormal there; denormals cost microcode assists
    here and in the P.V product after (real encoder scores: 45 ms a layer's attention, against 25 ms on random
    ones).  numba flushes alike (its SOFTMAX_FLUSH).  The softmaxes of _step.py use it too."""
    return np.exp(d) if d >= SOFTMAX_FLOOR else np.float32(0.)


#pythran export attention_rows(float32[:,:,:], float32[:,:,:], float32[:,:,:], int, bool, int)
def attention_rows(q, k, v, n_head, causal, offset):
    """Fused attention for few query rows (the decoder): one (batch, head, query row) per iteration,
    scores, stable softmax and weighted sum of V without materialising the probabilities."""
    nb, nq, d = q.shape
    nkv = k.shape[1]
    dh = d // n_head
    # np.zeros, not np.empty: Pythran 0.18.1 compiles the np.empty form into a far slower loop here
    out = np.zeros((nb, nq, d), np.float32)
    scale = np.float32(1. / np.sqrt(dh))
    #omp parallel for schedule(dynamic)
    for idx in range(nb * n_head * nq):
        bi = idx // (n_head * nq)
        h = (idx // nq) % n_head
        i = idx % nq
        c0 = h * dh
        end = min(offset + i + 1, nkv) if causal else nkv
        s = np.zeros(nkv, np.float32)
        qr = q[bi, i, c0:c0 + dh] * scale
        for j in range(end):
            s[j] = np.sum(qr * k[bi, j, c0:c0 + dh])
        m = np.max(s[:end])
        tot = 0.
        for j in range(end):
            e = _exp_flushed(s[j] - m)
            s[j] = e
            tot += e
        inv = np.float32(1. / tot)
        o = np.zeros(dh, np.float32)
        for j in range(end):
            o += (s[j] * inv) * v[bi, j, c0:c0 + dh]
        out[bi, i, c0:c0 + dh] = o
    return out


#pythran export softmax_rows_(float32[:,:], float32, bool, int, bool)
def softmax_rows_(s, scale, causal, first, probs):
    """s <- softmax(scale * s) over each row, in place (many query rows, between two GEMMs).
    causal: row i sits at absolute position first + i and keeps columns j <= first + i, the rest 0.
    probs: the probabilities are the output (attention_weights), which no product follows: flushed only below
    e^-86, under the contract's absolute tolerance for them (1e-37), rather than `_exp_flushed`'s e^-50."""
    n, m = s.shape
    floor = PROB_FLOOR if probs else SOFTMAX_FLOOR
    #omp parallel for schedule(static)
    for i in range(n):
        end = min(first + i + 1, m) if causal else m
        mx = np.max(s[i, :end])
        tot = 0.
        for j in range(end):
            d = (s[i, j] - mx) * scale
            e = np.exp(d) if d >= floor else np.float32(0.)
            s[i, j] = e
            tot += e
        inv = np.float32(1. / tot)
        for j in range(end):
            s[i, j] *= inv
        for j in range(end, m):
            s[i, j] = np.float32(0.)


#pythran export im2col(float32[:,:,:], int, int, int, int)
def im2col(x, k, stride, padding, t_out):
    """(batch, c_in, t) -> (batch, c_in * k, t_out): cols[b, c*k + tap, o] = x[b, c, o*stride + tap - padding] (0 outside)."""
    nb, c_in, t = x.shape
    cols = np.empty((nb, c_in * k, t_out), np.float32)
    #omp parallel for schedule(static)
    for idx in range(nb * c_in * k):
        bi = idx // (c_in * k)
        c = (idx // k) % c_in
        tap = idx % k
        for o in range(t_out):
            src = o * stride + tap - padding
            cols[bi, c * k + tap, o] = x[bi, c, src] if 0 <= src < t else np.float32(0.)
    return cols


def _int8_scale(x, i, k0, k1):
    """The contract's int8 scale of x[i, k0:k1] (quantize_rows_int8: max |x| / 127, 1 for zeros) and its inverse in
    double.  The divisions are in double, rounded to float32: the float32 quotients the contract takes (-ffast-math
    would multiply by a float32 reciprocal, whose last bit moves values across rounding ties).  _step.py uses it too."""
    m = np.float32(0.)
    for k in range(k0, k1):
        m = max(m, abs(x[i, k]))
    sc = np.float32(float(m) / 127.) if m > np.float32(0.) else np.float32(1.)
    return sc, 1. / float(sc)


def _int8_level(v, inv):
    """v quantized with the inverse scale inv (_int8_scale): rint, clipped to [-127, 127], as a float32."""
    q = np.rint(np.float32(float(v) * inv))
    return min(max(q, np.float32(-127.)), np.float32(127.))


#pythran export int8_rows_dequant(float32[:,:], int)
def int8_rows_dequant(x, bs):
    """The contract's int8 activations (quantize_rows_int8, blocks of bs inputs) of the rows of x, returned
    dequantized, x8 * scale in float32: the int8 linear of many rows is then one float32 GEMM on NumPy's BLAS."""
    nr, n = x.shape
    y = np.empty((nr, n), np.float32)
    #omp parallel for schedule(static)
    for i in range(nr):
        for q in range(n // bs):
            sc, inv = _int8_scale(x, i, q * bs, q * bs + bs)
            for k in range(q * bs, q * bs + bs):
                y[i, k] = _int8_level(x[i, k], inv) * sc
    return y
