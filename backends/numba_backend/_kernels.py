"""The Numba kernels of the Numba backend.  Imported only when Numba is available.

Layout conventions: every kernel takes 2-D row-major float32 arrays ("rows" = batch * n_ctx flattened)
or raw element offsets into them, so a handful of signatures serve every shape (few compilations,
``cache=True`` so a second process compiles nothing).

GEMMs: every matrix product here (the decoder layer's linears, conv1d taps, QK^T and PV of attention) is a call
to the OpenBLAS ``sgemm`` bundled with NumPy, made from inside the Numba kernels (see `_blas`), single-threaded per
call while Numba's `prange` spreads the blocks over the threads.  The encoder layer and the linear op are the
exception: their products run on the decoder step's packed-weight tiles, which were measured faster than OpenBLAS
at their shapes on this machine (`_encoder`).  For few rows (the decode step) a Numba
dot loop was measured against sgemm and won (see `SMALL_M`).  Weights stay (n_out, n_in) row-major and
are used with transB=Trans (the layout np.matmul(x, W.T) hands OpenBLAS too), so a column slice W[c0:c1]
is contiguous for the decode loop; the pre-transposed (n_in, n_out) layout was measured no better.
Everything between the GEMMs (bias, residual, LayerNorm, GELU, mask, softmax) is Numba code fused into
the same parallel loop, on blocks still in cache.  LLVM leaves the softmax's max/exp and the GELU loops
scalar (and stops at 256-bit vectors here), so those two are explicit 16-lane intrinsics (`vmax16`,
`vexp_sum16`, `vgelu_bias16`); they flush values that would make the next GEMM run on denormals.


The decoder step has its own kernels, in `_step`.
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
    """One-thread GEMMs for the calling thread; returns the setting before.  NumPy's OpenBLAS applies this
    "local" setting to the whole process, so two workers' set/restore pairs race: the kernels below also call
    it once in the calling thread before their parallel loop and restore that value after it, which leaves the
    process as they found it (it was left on one thread after every numba encoder, stop 36)."""
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


# ---- explicit 16-lane exp, softmax and GELU -------------------------------------------------------
# LLVM does not vectorise the scalar loops above here (the max reduction, and the exp and GELU loops
# stay scalar), and its loop vectoriser stops at 256 bits on this CPU family.  The encoder's softmax
# (n_head * n_ctx^2 exps per layer) and GELU (n_ctx * 4 n_state) were scalar passes costing as much as
# a GEMM each; these intrinsics emit the same formulas as zmm vectors.  They cover the first n16 * 16
# elements of a contiguous 1-D float32 array; the callers finish the tail with the scalar helpers.
_F32 = ir.FloatType()
_VF = ir.VectorType(_F32, 16)
_VI = ir.VectorType(ir.IntType(32), 16)
_I64 = ir.IntType(64)


def _vc(v):
    return ir.Constant(_VF, [ir.Constant(_F32, float(np.float32(v)))] * 16)


def _vfn(builder, name, nargs):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF] * nargs), name)


def _vmin_c(builder, x, c):
    return builder.select(builder.fcmp_ordered("<", x, _vc(c)), _vc(c), x)


def _host_has(feature: str) -> bool:
    try:
        import llvmlite.binding as llb
        return bool(llb.get_host_cpu_features().get(feature))
    except Exception:  # noqa: BLE001
        return False


_SCALEF = _host_has("avx512f")


def _emit_exp(builder, x, flush):
    """exp_f32 on a 16-lane vector (x <= ~0): the same reduction and polynomial, with FMAs; 0 where
    x < flush (> -87.3).  Flushing keeps denormals out: results near float32's smallest normal, and
    the products the next GEMM forms from them, are denormal, and each denormal operation or result
    costs the core a microcode assist (a real window's scores and GELU inputs reach such values)."""
    fma = _vfn(builder, "llvm.fma.v16f32", 3)
    tiny = builder.fcmp_ordered("<", x, _vc(flush))
    if not _SCALEF:  # the integer 2^n below needs n in range: clamp (vscalefps takes any n; a lane below `flush`,
        x = builder.select(tiny, _vc(flush), x)  # even -inf, whose reduction gives NaN, is replaced by 0 at the end)
    n = builder.call(_vfn(builder, "llvm.floor.v16f32", 1), [builder.call(fma, [x, _vc(1.44269504088896341), _vc(0.5)])])
    r = builder.call(fma, [n, _vc(-0.693359375), x])
    r = builder.call(fma, [n, _vc(2.12194440e-4), r])
    p = _vc(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = builder.call(fma, [p, r, _vc(c)])
    y = builder.call(fma, [builder.fmul(p, r), r, builder.fadd(r, _vc(1.0))])
    if _SCALEF:  # y * 2^n in one instruction
        scalef = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF, _VF, _VF, ir.IntType(16),
                                                ir.IntType(32)]), "llvm.x86.avx512.mask.scalef.ps.512")
        y = builder.call(scalef, [y, n, ir.Constant(_VF, None), ir.Constant(ir.IntType(16), -1), ir.Constant(ir.IntType(32), 4)])
    else:  # 2^n built from its exponent bits
        e = builder.shl(builder.add(builder.fptosi(n, _VI), ir.Constant(_VI, [ir.Constant(ir.IntType(32), 127)] * 16)),
                        ir.Constant(_VI, [ir.Constant(ir.IntType(32), 23)] * 16))
        y = builder.fmul(y, builder.bitcast(e, _VF))
    return builder.select(tiny, ir.Constant(_VF, None), y)


#: exp arguments below these give 0: a probability under e^-50 (relative to the row's largest, which
#: is 1) changes no output in float32, and keeps its products with the values far from denormal; GELU's
#: factor e^-70 only appears for x < -11, where |gelu(x)| < 1e-29 (its products with fc2 would be denormal).
SOFTMAX_FLUSH = -50.0
GELU_FLUSH = -70.0
#: attention_weights returns the probabilities themselves, which no product follows: they are flushed only where
#: they fall below the contract's absolute tolerance for them (1e-37 > e^-85.2)
PROB_FLUSH = -86.0


def _hsum16(builder, v):
    n = 16
    while n > 1:
        n //= 2
        idx = lambda lo: ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(lo, lo + n)))  # noqa: E731
        v = builder.fadd(builder.shuffle_vector(v, v, idx(0)), builder.shuffle_vector(v, v, idx(n)))
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


def _base(context, builder, aty, a_v):
    return builder.ptrtoint(context.make_array(aty)(context, builder, a_v).data, _I64)


def _vptr(builder, base, j):
    return builder.inttoptr(builder.add(base, builder.mul(j, ir.Constant(_I64, 64))), _VF.as_pointer())


def hmax_lanes(builder, v):
    """The largest of the 16 lanes of float vector v, by halving (codegen helper of the vector intrinsics)."""
    n = 16
    while n > 1:
        n //= 2
        idx = lambda lo: ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(lo, lo + n)))  # noqa: E731
        lo, hi = builder.shuffle_vector(v, v, idx(0)), builder.shuffle_vector(v, v, idx(n))
        v = builder.select(builder.fcmp_ordered(">", lo, hi), lo, hi)
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


@intrinsic
def vmax16(typingctx, a, n16):
    """max(a[:16 * n16]), n16 >= 1."""
    aty = a

    def codegen(context, builder, sig, args):
        base = _base(context, builder, aty, args[0])
        vm = cgutils.alloca_once_value(builder, builder.load(_vptr(builder, base, ir.Constant(_I64, 0)), align=4))
        with cgutils.for_range(builder, args[1]) as loop:
            v = builder.load(_vptr(builder, base, loop.index), align=4)
            cur = builder.load(vm)
            builder.store(builder.select(builder.fcmp_ordered(">", v, cur), v, cur), vm)
        v = builder.load(vm)
        return hmax_lanes(builder, v)

    return types.float32(a, n16), codegen


def _exp_sum_codegen(aty, store, flush=SOFTMAX_FLUSH):
    def codegen(context, builder, sig, args):
        base = _base(context, builder, aty, args[0])
        undef = ir.Constant(_VF, ir.Undefined)
        mv = builder.shuffle_vector(builder.insert_element(undef, args[2], ir.Constant(ir.IntType(32), 0)), undef,
                                    ir.Constant(_VI, [ir.Constant(ir.IntType(32), 0)] * 16))
        acc = cgutils.alloca_once_value(builder, ir.Constant(_VF, None))
        with cgutils.for_range(builder, args[1]) as loop:
            p = _vptr(builder, base, loop.index)
            e = _emit_exp(builder, builder.fsub(builder.load(p, align=4), mv), flush)
            if store:
                builder.store(e, p, align=4)
            builder.store(builder.fadd(builder.load(acc), e), acc)
        return _hsum16(builder, builder.load(acc))
    return codegen


@intrinsic
def vexp_sum16(typingctx, a, n16, m):
    """a[j] = exp(a[j] - m) for j < 16 * n16, in place; returns their sum."""
    return types.float32(a, n16, m), _exp_sum_codegen(a, True)


@intrinsic
def vexp_prob16(typingctx, a, n16, m):
    """`vexp_sum16` flushed below PROB_FLUSH rather than SOFTMAX_FLUSH (attention_weights' probabilities)."""
    return types.float32(a, n16, m), _exp_sum_codegen(a, True, PROB_FLUSH)


@intrinsic
def vexp_total16(typingctx, a, n16, m):
    """The sum of exp(a[j] - m) for j < 16 * n16 (a is only read)."""
    return types.float32(a, n16, m), _exp_sum_codegen(a, False)


@intrinsic
def vgelu_bias16(typingctx, a, b, n16):
    """a[j] = gelu(a[j] + b[j]) for j < 16 * n16, in place: the erfcc formula of `gelu_scalar`, in float32
    (its error stays near float32 rounding, far inside gelu's tolerance)."""
    aty, bty = a, b

    def codegen(context, builder, sig, args):
        base = _base(context, builder, aty, args[0])
        bbase = _base(context, builder, bty, args[1])
        fma = _vfn(builder, "llvm.fma.v16f32", 3)
        fabs = _vfn(builder, "llvm.fabs.v16f32", 1)
        with cgutils.for_range(builder, args[2]) as loop:
            p = _vptr(builder, base, loop.index)
            x = builder.fadd(builder.load(p, align=4), builder.load(_vptr(builder, bbase, loop.index), align=4))
            z = builder.fmul(builder.call(fabs, [x]), _vc(0.7071067811865476))
            t = builder.fdiv(_vc(1.0), builder.call(fma, [z, _vc(0.5), _vc(1.0)]))
            r = builder.fmul(t, _vc(0.17087277))
            for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196):
                r = builder.fmul(builder.fadd(r, _vc(c)), t)
            r = builder.fmul(builder.fadd(r, _vc(1.00002368)), t)
            r = builder.fsub(builder.fsub(r, _vc(1.26551223)), builder.fmul(z, z))
            h = builder.fmul(builder.fmul(_vc(0.5), t), _emit_exp(builder, r, GELU_FLUSH))
            pos = builder.fcmp_ordered(">=", x, _vc(0.0))
            y = builder.fmul(x, builder.select(pos, builder.fsub(_vc(1.0), h), h))
            builder.store(y, p, align=4)
        return context.get_dummy_value()

    return types.none(a, b, n16), codegen


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


@njit(cache=True)
def row_max(xr):
    """max(xr) of a 1-D C-contiguous row: 16 lanes, then the tail."""
    n = xr.shape[0]
    n16 = n // 16
    m = vmax16(xr, n16) if n16 > 0 else xr[0]
    for j in range(16 * n16, n):
        if xr[j] > m:
            m = xr[j]
    return m


@njit(cache=True)
def row_exp_total(xr, m):
    """The float32 sum of exp(xr - m) of a 1-D C-contiguous row: 16 lanes (`vexp_total16`), then the tail;
    -inf (and anything below float32's exp range) adds 0."""
    n = xr.shape[0]
    n16 = n // 16
    s = vexp_total16(xr, n16, m) if n16 > 0 else np.float32(0.0)
    for j in range(16 * n16, n):
        d = xr[j] - m
        if d > np.float32(-87.3):
            s += exp_f32(d)
    return s


@njit(cache=True)
def row_lse(xr, m):
    """log(sum(exp(xr - m))) of a row as every log-softmax here takes it: the float32 sum, its log in float64 rounded
    once."""
    return np.float32(np.log(np.float64(row_exp_total(xr, m))))


@njit(cache=True)
def log_softmax_rows(x, y, r0, r1):
    """y[r] = log_softmax(x[r]) for r0 <= r < r1 (the contract's op): a 16-lane max, the sum of exp(x - max) in
    16 lanes (`vexp_total16`), then y = (x - max) - log(sum).  -inf stays -inf (its exp is flushed to 0);
    the log is taken in float64 and rounded once."""
    n = x.shape[1]
    for r in range(r0, r1):
        xr = x[r]
        yr = y[r]
        m = row_max(xr)
        lse = row_lse(xr, m)
        for j in range(n):
            yr[j] = (xr[j] - m) - lse


@njit(cache=True)
def first_index(xr, value):
    """The first j with xr[j] == value, which xr holds: blocks of 64 counted in vector lanes, then the block's values."""
    n = xr.shape[0]
    j = 0
    while j + 64 <= n:
        c = 0
        for k in range(64):
            c += xr[j + k] == value
        if c > 0:
            break
        j += 64
    while xr[j] != value:
        j += 1
    return j


@njit(cache=True)
def filter_row(xr, tok, n, sample_begin, blank, suppress, timestamps, no_ts, tb, eot, max_init, ys):
    """Decoding's logit filters on one row of logits xr (n_vocab,), in place, given its tokens so far tok[:n]: the
    masks of SuppressBlank (`blank`, at the first sampled position), SuppressTokens (`suppress`) and, when
    `timestamps`, ApplyTimestampRules, whose forced timestamp reads the row's log-probabilities.  Those are
    `log_softmax_rows`' arithmetic, computed only where read (ys, (n_vocab - tb,), holds the timestamps'), the
    timestamps' log-sum-exp is `logsumexp_kernel`'s arithmetic on them, and the best text log-probability is that
    of the best text logit ((x - max) - lse in float32 is monotone in x).  Returns (known, max, lse): the row's
    log_softmax pair when the filters computed it and left the row as it was; known is False when they computed
    none, or a forced timestamp masked the row after (the caller computes it then)."""
    v = xr.shape[0]
    first = n == sample_begin
    if first:
        for t in blank:
            xr[t] = -np.inf
    for t in suppress:
        xr[t] = -np.inf
    if not timestamps:
        return False, np.float32(0.0), np.float32(0.0)
    if no_ts >= 0:
        xr[no_ts] = -np.inf
    last_ts = n - sample_begin >= 1 and tok[n - 1] >= tb
    penultimate_ts = n - sample_begin < 2 or tok[n - 2] >= tb
    if last_ts:
        if penultimate_ts:  # a pair just closed: text must follow
            for j in range(tb, v):
                xr[j] = -np.inf
        else:  # an opening timestamp: it cannot be followed by text
            for j in range(eot):
                xr[j] = -np.inf
    latest = -1
    for i in range(n - 1, sample_begin - 1, -1):
        if tok[i] >= tb:
            latest = tok[i]
            break
    if latest >= 0:  # no going backwards; after a closed pair, no zero-length segment either
        for j in range(tb, min(v, latest if (last_ts and not penultimate_ts) else latest + 1)):
            xr[j] = -np.inf
    if first:  # the first sampled token is a timestamp, no later than max_init
        for j in range(tb):
            xr[j] = -np.inf
        if max_init >= 0:
            for j in range(tb + max_init + 1, v):
                xr[j] = -np.inf
    # log_softmax_rows' values, only where they are read: its max (the larger of the text's and the timestamps',
    # exact), its sum, the timestamps' log-probabilities, and the text's best one, (max - m) - lse of the best text
    # logit
    m_text = row_max(xr[:tb])
    m = max(m_text, row_max(xr[tb:]))
    lse = row_lse(xr, m)
    for j in range(v - tb):
        ys[j] = (xr[tb + j] - m) - lse
    mt = row_max(ys)
    lse_ts = mt if mt == -np.inf else mt + row_lse(ys, mt)
    if lse_ts > (m_text - m) - lse:  # forced: a timestamp
        for j in range(tb):
            xr[j] = -np.inf
        return False, m, lse
    return True, m, lse


@njit(cache=True)
def greedy_pick_kernel(x, tokens, sample_begin, blank, suppress, timestamps, no_ts, tb, eot, max_init, y, out_tok, out_lp):
    """The backend's greedy_pick (whisperkit.contract.GREEDY_PICK): per row of the logits x (rows, n_vocab),
    `filter_row` in place (y, (rows, n_vocab - tb), its scratch), then the arg-max (the first of equal maxima, as
    NumPy's) and its log-probability, computed from its logit: the values the filters and GreedyDecoder compute on
    this backend's ops."""
    n = tokens.shape[1]
    for r in range(x.shape[0]):
        xr = x[r]
        known, m, lse = filter_row(xr, tokens[r], n, sample_begin, blank, suppress, timestamps, no_ts, tb, eot, max_init,
                                   y[r])
        if not known:
            m = row_max(xr)
            lse = row_lse(xr, m)
        best = first_index(xr, m)  # the first of equal maxima, as NumPy's arg-max
        out_tok[r] = best
        out_lp[r] = (xr[best] - m) - lse


@njit(parallel=True, cache=True)
def beam_pick_kernel(x, tokens, sample_begin, blank, suppress, timestamps, no_ts, tb, eot, max_init, y, out_tok, out_lp, nt):
    """The backend's beam_pick (whisperkit.contract.BEAM_PICK): per row of the logits x (rows, n_vocab),
    `filter_row` in place (y its scratch), then the k = out_tok.shape[1] best log-probabilities of the row, best
    first, ties by lower column: `top_k_row` over log_softmax_rows' values (x - max) - lse, each computed where the
    scan reads it, none stored.  The values BeamSearchDecoder takes from this backend's log_softmax and top_k.  The
    rows split over `nt` threads (a beam step's 5)."""
    n = tokens.shape[1]
    k = out_tok.shape[1]
    nt = max(1, min(nt, x.shape[0]))
    rb = _blocks(x.shape[0], nt, 1)
    for t in prange(nt):
        for r in range(rb[t], rb[t + 1]):
            xr = x[r]
            known, m, lse = filter_row(xr, tokens[r], n, sample_begin, blank, suppress, timestamps, no_ts, tb, eot,
                                       max_init, y[r])
            if not known:
                m = row_max(xr)
                lse = row_lse(xr, m)
            top_k_row(xr, k, out_tok[r], 256, m, lse)
            for i in range(k):
                out_lp[r, i] = (xr[out_tok[r, i]] - m) - lse


@njit(parallel=True, cache=True)
def log_softmax_kernel(x, y, nt):
    """log_softmax_rows over every row, the rows split over `nt` threads (a beam step's 5 rows of 51864)."""
    nt = max(1, min(nt, x.shape[0]))
    rb = _blocks(x.shape[0], nt, 1)
    for t in prange(nt):
        log_softmax_rows(x, y, rb[t], rb[t + 1])


@njit(cache=True)
def logsumexp_kernel(x, y):
    """y[r] = max + log(sum(exp(x[r] - max))) (the contract's op), row by row: 16-lane max and exp sum
    (`vexp_total16`), the log in float64 rounded once; a row of only -inf gives -inf.  Serial: the timestamp
    rule's rows are 1501 long, less than waking a second thread costs."""
    for r in range(x.shape[0]):
        m = row_max(x[r])
        y[r] = m if m == -np.inf else m + row_lse(x[r], m)


@njit(cache=True)
def top_k_row(xr, k, out, chunk, m, lse):
    """out[:k] = the columns of the k largest values of (xr - m) - lse, largest first, ties by lower column (the
    contract's top_k; m = lse = 0 gives xr's own values, bit for bit; beam_pick gives the log_softmax's).  That map
    is monotone, so the maximum of each block of `chunk` columns is a distinct element and the k-th largest of those
    maxima bounds the row's k-th largest from below: only blocks reaching it (and the ragged tail) are scanned, in
    column order, into a sorted buffer that a later equal value never overtakes."""
    n = xr.shape[0]
    nc = n // chunk if chunk >= k and n // chunk >= k else 0  # 0: no bound, the whole row is the tail
    bound = -np.inf
    maxima = np.empty(nc, np.float32)
    for c in range(nc):
        maxima[c] = (vmax16(xr[c * chunk:(c + 1) * chunk], chunk // 16) - m) - lse
    if nc:
        bound = np.sort(maxima)[nc - k]
    bv = np.empty(k, np.float32)
    bi = np.empty(k, np.int64)
    cnt = 0
    for c in range(nc + 1):
        if c < nc and maxima[c] < bound:
            continue
        hi = (c + 1) * chunk if c < nc else n
        for j in range(c * chunk, hi):
            v = (xr[j] - m) - lse
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
    for i in range(k):
        out[i] = bi[i]


@njit(parallel=True, cache=True)
def top_k_kernel(x, k, out, nt):
    """top_k_row over every row, the rows split over `nt` threads (a beam step's 5 rows of 51864)."""
    nt = max(1, min(nt, x.shape[0]))
    rb = _blocks(x.shape[0], nt, 1)
    for t in prange(nt):
        for r in range(rb[t], rb[t + 1]):
            top_k_row(x[r], k, out[r], 256, np.float32(0.0), np.float32(0.0))


@njit(cache=True, error_model="numpy")
def bias_gelu_rows(f, r0, r1, bias):
    n = f.shape[1]
    n16 = n // 16
    for i in range(r0, r1):
        fr = f[i]
        vgelu_bias16(fr, bias, n16)
        for j in range(16 * n16, n):
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
def exp_sum_inplace(xr, m, probs=False):
    """xr[j] = exp(xr[j] - m) in place over a 1-D contiguous row, 16 lanes (`vexp_sum16`) then the tail, flushed to 0
    below SOFTMAX_FLUSH as the lanes are (below PROB_FLUSH if probs: `vexp_prob16`); returns their sum."""
    n = xr.shape[0]
    n16 = n // 16
    tot = vexp_prob16(xr, n16, m) if probs else vexp_sum16(xr, n16, m)
    lo = PROB_FLUSH if probs else SOFTMAX_FLUSH
    for j in range(16 * n16, n):
        d = xr[j] - m
        e = exp_f32(d) if d >= lo else np.float32(0.0)
        xr[j] = e
        tot += e
    return tot


@njit(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def exp_row(s, length):
    """s[:length] = exp(s - max) in place, unnormalised; returns 1 / their sum (the caller scales what it makes
    of them: the encoder's P V rows, 64 values, rather than the 1500 probabilities)."""
    n16 = length // 16
    m = vmax16(s, n16) if n16 > 0 else s[0]
    for j in range(16 * n16, length):
        m = max(m, s[j])
    return np.float32(1.0) / exp_sum_inplace(s[:length], m)


@njit(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def softmax_row(s, length, total, probs):
    """In place over s[:length]; s[length:total] (masked or not computed) set to 0.  probs: the probabilities are the
    output (attention_weights), flushed below PROB_FLUSH; else below SOFTMAX_FLUSH, as P V needs."""
    n16 = length // 16
    m = vmax16(s, n16) if n16 > 0 else s[0]
    for j in range(16 * n16, length):
        m = max(m, s[j])
    tot = exp_sum_inplace(s[:length], m, probs)
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
        outer = blas_single()
        for p in prange(nb):
            prev = blas_single()
            fill_rows(out, rb[p], rb[p + 1], 0, n, res, bias)
            gemm_wt(x, rb[p], rb[p + 1], w, 0, n, out, F1)
            blas_restore(prev)
        blas_restore(outer)
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


#: Elements per pass of `gelu_kernel`: its zero "bias" stays in L1.
GELU_CHUNK = 4096


@njit(parallel=True, cache=True, error_model="numpy")
def gelu_kernel(x, out, nt):
    """x, out: 1-D contiguous.  The MLP's 16-lane float32 GELU (`vgelu_bias16`, here with a zero bias) over chunks,
    the tail scalar: the encoder's two convolutions' GELUs (1.7M values a window) took 4.3 ms scalar."""
    n = x.shape[0]
    nb = max(1, min(64, n // GELU_CHUNK))
    bnd = _blocks(n, nb, 16)
    for p in prange(nb):
        zero = np.zeros(GELU_CHUNK, np.float32)
        i = bnd[p]
        while i < bnd[p + 1]:
            j = min(bnd[p + 1], i + GELU_CHUNK)
            seg = out[i:j]
            seg[:] = x[i:j]
            n16 = (j - i) // 16
            vgelu_bias16(seg, zero, n16)
            for t in range(i + 16 * n16, j):
                out[t] = gelu_scalar(x[t])
            i = j


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
    outer = blas_single()
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
    blas_restore(outer)


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
        softmax_row(s[i], length, n_kv, op == 0)
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
    outer = blas_single()
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
    blas_restore(outer)


@njit(cache=True)
def keep_alive(a):
    """A use of `a` after kernels that only saw its address, so Numba does not free it before them."""
    return a.shape[0]


# ---- coarse ops ------------------------------------------------------------------------------------
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
    outer = blas_single()
    for p in prange(nb):
        prev = blas_single()
        rows = rb[p + 1] - rb[p]
        hbuf = np.empty((rows, n), np.float32)
        fbuf = np.empty((rows, w1.shape[0]), np.float32)
        mlp_rows(x, rb[p], rb[p + 1], lng, lnb, w1, b1, w2, b2, y, hbuf, fbuf)
        blas_restore(prev)
    blas_restore(outer)


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
def write_new_kv(qkv, k_cache, v_cache, batch, n_q, offset):
    """This step's keys and values (columns n:2n and 2n:3n of qkv, row b * n_q + i) into the caches
    (batch, n_ctx, n) at positions offset + i."""
    n = k_cache.shape[2]
    for b in range(batch):
        for i in range(n_q):
            src = qkv[b * n_q + i]
            kd = k_cache[b, offset + i]
            vd = v_cache[b, offset + i]
            for j in range(n):
                kd[j] = src[n + j]
                vd[j] = src[2 * n + j]


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
    write_new_kv(qkv, k_cache, v_cache, batch, n_q, offset)
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
