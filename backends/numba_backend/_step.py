"""The decoder step of the Numba backend: every layer, the final LayerNorm and the logits in one call.

`decoder_step_kernel` reads ~64 MB per token for tiny.en (~75 MB when it reads the window's cross K/V rather than
folding them: beams), weights it cannot reuse, so every product is a GEMV-like pass (`gemvt`; `gemv_core` for
attention's scores) that reads each weight once for all rows of the step, from float16 where the checkpoint's
weights are float16 (half the bytes, the same products).  What Numba and LLVM cannot do here, and what is done
instead:
* Numba has no float16 arithmetic on the CPU.  The weights are kept as uint16 bits, which the tiles bitcast to
  LLVM's ``half`` and extend (F16C's vcvtph2ps); ``widen(w)`` below is that float32 value.
* LLVM's loop vectoriser stops at 256-bit vectors on this CPU family (its "prefer 256-bit" tuning), which
  halves the FMA and conversion rate, and it does not vectorise a float max reduction.  The inner loops
  are therefore intrinsics emitting explicit 16-lane vectors (`gemv_tile`, `pv_tile`, `vmax`): zmm loads,
  vcvtph2ps and FMAs, register blocks of weight rows by rows of x, lane sums reduced together.
* The hardware prefetchers leave latency exposed when several rows share each weight byte, and do not
  follow the strided head columns of attention's keys and values: the tiles prefetch rows ahead.
* Every weight of the step (the layers' and the logits') is packed in blocks of 64 outputs by n_in
  (`pack_blocks`), so the vectors run along the outputs and each x value is broadcast (`gemvt_tile`, `gemvt`):
  the row-major GEMV (`gemv_tile`, still the layer op's) folds 16 lanes per output, which cost a beam step's 5
  rows about a fifth of the logits' time (docs/bench-results.md, issue 14, stop 33).
  The packed logits weight is the only copy of the token embedding: the model reads its rows through
  `embedding_rows` (the contract's decoder_step).
* The window's cross-attention keys are packed the same way, and its values too, by block of 64 keys then head,
  once per window (`pack_cross`, the contract's `cross_layout`): a step's scores are `gemvt_tile` products along
  the keys, and the keys and values are each read in memory order.  The row-major keys folded 16 lanes per (row,
  key) (5 rows of one head took three times as long, `scores.py`, stop 37); the row-major values came from memory
  in one strided pass per head (`phases.py`, stop 38).
* The attention's exp runs in 16 lanes (`_kernels.exp_sum_inplace`); the scalar exp loop was most of a 5-row step's
  cross-attention (`attn_micro.py`, stop 38).
* A draft step (the contract's decoder_step `draft`: speculative greedy decoding) computes only the logits blocks of
  its draft vocabulary (`gemvt_list`) and hands back its final LayerNorm row; `head` runs the rows of a round through
  the same `gemvt` as the step's logits, whose rows do not depend on each other.
Prompts (n_q up to ~224 rows) run the same kernel, 6 rows of x a pass over a block still in L1/L2, so no
float32 copy of the float16 weights is kept.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._kernels import (_blocks, exp_f32, exp_sum_inplace, gelu_scalar, hmax_lanes, ln_rows, vgelu_bias16,
                       write_new_kv)

# A decode step has few rows (one per beam or batched file), so every product is a GEMV-like pass that
# reads each weight row once for all rows, from float16 where the checkpoint's weights are float16.
FAST = {"reassoc", "contract", "nsz", "arcp"}


def _prefetch_fn(builder):
    """LLVM's prefetch(address, rw, locality, cache type)."""
    i8p = ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3)
    return cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")


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
            v = builder.fadd(builder.shuffle_vector(va, vb, mask(lo)),
                             builder.shuffle_vector(va, vb, mask([t + h for t in lo])))
            folded.append((v, ga + gb))
        items = folded
        w = h
    out = [None] * len(vecs)
    for v, groups in items:
        for lane, k in enumerate(groups):
            if k is not None:
                out[k] = builder.extract_element(v, ir.Constant(i32, lane))
    return out


def _lanes(half):
    """The LLVM types of the 16-lane tiles: i64, float, <16 x float>, the weight vector (<16 x half> or
    <16 x float>), a weight element's bytes, and an i64 constant maker."""
    i64 = ir.IntType(64)
    f32 = ir.FloatType()
    return (i64, f32, ir.VectorType(f32, 16), ir.VectorType(ir.HalfType() if half else f32, 16), 2 if half else 4,
            lambda v: ir.Constant(i64, v))


def _row_addresses(context, builder, aty, a_v, first, count):
    """Byte addresses (i64) of rows first .. first + count - 1 of a 2-D array argument."""
    i64 = ir.IntType(64)
    arr = context.make_array(aty)(context, builder, a_v)
    stride = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
    base = builder.ptrtoint(arr.data, i64)
    return [builder.add(base, builder.mul(builder.add(first, ir.Constant(i64, q)), stride)) for q in range(count)]


@intrinsic
def prefetch_rows(typingctx, a, r0, r1):
    """Prefetch every cache line of rows r0:r1 of a 2-D array whose rows are contiguous (into all cache levels)."""
    aty = a

    def codegen(context, builder, sig, args):
        a_v, r0_v, r1_v = args
        i64 = ir.IntType(64)
        i32c = lambda v: ir.Constant(ir.IntType(32), v)  # noqa: E731
        arr = context.make_array(aty)(context, builder, a_v)
        stride = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
        width = builder.mul(cgutils.unpack_tuple(builder, arr.shape, 2)[1], ir.Constant(i64, aty.dtype.bitwidth // 8))
        lines = builder.udiv(builder.add(width, ir.Constant(i64, 63)), ir.Constant(i64, 64))
        base = builder.ptrtoint(arr.data, i64)
        pf = _prefetch_fn(builder)
        i8p = ir.IntType(8).as_pointer()
        with cgutils.for_range(builder, builder.sub(r1_v, r0_v)) as rows:
            row = builder.add(base, builder.mul(builder.add(r0_v, rows.index), stride))
            with cgutils.for_range(builder, lines) as line:
                at = builder.add(row, builder.mul(line.index, ir.Constant(i64, 64)))
                builder.call(pf, [builder.inttoptr(at, i8p), i32c(0), i32c(3), i32c(1)])
        return context.get_dummy_value()

    return types.none(a, r0, r1), codegen


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
        i64, f32, vf, vw, esz, c64 = _lanes(half)
        rows = lambda aty, a_v, first, count: _row_addresses(context, builder, aty, a_v, first, count)  # noqa: E731
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
        pf = _prefetch_fn(builder)
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
    block when x has few rows, so enough FMA chains are in flight).  From 4 rows of x on the blocks are as
    wide as the 32 vector registers allow (R * C accumulators, C weight vectors, one x vector): each x
    vector loaded then feeds C FMAs.  Every (row, weight row) sum is the same arithmetic whatever R and C."""
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
                _strip(x, i, w, t0, t1, out, k16, 4, 4)
            elif r == 5:
                _strip(x, i, w, t0, t1, out, k16, 5, 4)
            elif r == 6:
                _strip(x, i, w, t0, t1, out, k16, 6, 3)
            elif r == 7:
                _strip(x, i, w, t0, t1, out, k16, 7, 3)
            else:
                _strip(x, i, w, t0, t1, out, k16, 8, 3)
            i += r


@njit(cache=True, fastmath=FAST, error_model="numpy")
def bias_res_act(out, c0, c1, bias, res, act):
    """out[:, c0:c1] += bias (+ res unless res is out), then GELU if `act`: the GEMVs' epilogue, on columns
    still in cache."""
    m = out.shape[0]
    add_res = res.ctypes.data != out.ctypes.data
    if act and not add_res:  # bias and GELU in one 16-lane pass, as the encoder does (a scalar float64 GELU cost more than the GEMV)
        n16 = (c1 - c0) // 16
        for i in range(m):
            orow = out[i]
            vgelu_bias16(orow[c0:c1], bias[c0:c1], n16)
            for j in range(c0 + 16 * n16, c1):
                orow[j] = gelu_scalar(orow[j] + bias[j])
        return
    for i in range(m):  # loops LLVM vectorises
        orow = out[i]
        if add_res:
            rrow = res[i]
            for j in range(c0, c1):
                orow[j] = orow[j] + bias[j] + rrow[j]
        else:
            for j in range(c0, c1):
                orow[j] = orow[j] + bias[j]
    if act:
        for i in range(m):
            orow = out[i]
            for j in range(c0, c1):
                orow[j] = gelu_scalar(orow[j])


#: Outputs per block of a packed weight (`pack_blocks`): 4 zmm vectors of float32.
PACK_BLOCK = 64
#: Bytes ahead of a packed weight's current row that `gemvt_tile` prefetches (its rows are 128 contiguous bytes):
#: the best of the distances measured (docs/bench-results.md, issue 14, stop 33).
PACK_PREFETCH = 8192
#: Weight rows per partial sum in `gemvt_tile`: each output's sum over n_in is made of sums of 64 added in turn,
#: which keeps its rounding error near the row-major GEMV's (lane sums, then a tree); one running sum over all of
#: n_in had several times the error (docs/bench-results.md).
PACK_SEGMENT = 64


def pack_blocks(w: np.ndarray) -> np.ndarray:
    """A weight (n_out, n_in) as `gemvt_tile` reads it: (blocks, n_in, PACK_BLOCK), block b holding outputs
    b * PACK_BLOCK .. + PACK_BLOCK - 1 transposed, the last block zero-padded; same dtype."""
    n, k = w.shape
    p = PACK_BLOCK
    full, nb = n // p, -(-n // p)
    out = np.empty((nb, k, p), w.dtype)
    out[:full] = w[:full * p].reshape(full, p, k).transpose(0, 2, 1)
    if full < nb:
        out[full] = 0
        out[full, :, :n - full * p] = w[full * p:].T
    return out


@intrinsic
def widen(typingctx, v):
    """A stored weight as float32: float16 bits (uint16) extended exactly, float32 as it is."""
    if isinstance(v, types.Integer):
        def codegen(context, builder, sig, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(v), codegen
    if v == types.float32:
        return types.float32(v), lambda context, builder, sig, args: args[0]
    return None


@njit(cache=True)
def embedding_rows_kernel(packed, tokens, n_vocab, out, plus):
    """out[i] = row tokens[i] of a weight packed by `pack_blocks` (the token embedding, float16 bits or float32),
    widened to float32, plus plus[i % len(plus)] in float32 when plus has rows (the positional embedding); returns
    the index of the first token outside 0..n_vocab-1 (out then unfinished), else -1."""
    p = packed.shape[2]
    for i in range(tokens.shape[0]):
        t = tokens[i]
        if t < 0 or t >= n_vocab:
            return i
        blk = packed[t // p]
        orow = out[i]
        for d in range(packed.shape[1]):
            orow[d] = widen(blk[d, t % p])
        if plus.shape[0] > 0:
            prow = plus[i % plus.shape[0]]
            for d in range(packed.shape[1]):
                orow[d] += prow[d]
    return -1


@intrinsic
def gemvt_tile(typingctx, wp, blk, x, i, out, oc, R):
    """out[i + r, oc + c] = sum over t of x[i + r, t] * widen(wp[blk, t, c]) for r < R (a literal), c < PACK_BLOCK:
    a packed weight (`pack_blocks`), so the vectors run along the outputs, each x value is broadcast
    into R * 4 FMAs, and no lane sums are needed (in the row-major GEMV, a beam step's 5 rows spent about a fifth
    of the logits' time folding lanes).  Each widened weight vector still feeds one FMA per row."""
    if not isinstance(R, types.IntegerLiteral):
        return None
    nr, nc = R.literal_value, PACK_BLOCK // 16
    half = isinstance(wp.dtype, types.Integer)
    wty, xty, oty = wp, x, out

    def codegen(context, builder, sig, args):
        w_a, b_v, x_a, i_v, o_a, oc_v = args[:6]
        i64, f32, vf, vw, esz, c64 = _lanes(half)
        i32c = lambda v: ir.Constant(ir.IntType(32), v)  # noqa: E731
        warr = context.make_array(wty)(context, builder, w_a)
        ws = cgutils.unpack_tuple(builder, warr.strides, 3)
        kt = cgutils.unpack_tuple(builder, warr.shape, 3)[1]
        wbase = builder.add(builder.ptrtoint(warr.data, i64), builder.mul(b_v, ws[0]))
        xrow = _row_addresses(context, builder, xty, x_a, i_v, nr)
        orow = _row_addresses(context, builder, oty, o_a, i_v, nr)
        ocol = builder.mul(oc_v, c64(4))
        optr = lambda r, c: builder.inttoptr(builder.add(builder.add(orow[r], ocol), c64(64 * c)), vf.as_pointer())  # noqa: E731
        zero = ir.Constant(vf, None)
        undef = ir.Constant(vf, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nc)] for _ in range(nr)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fma.v16f32")
        pf = _prefetch_fn(builder)
        i8p = ir.IntType(8).as_pointer()
        nseg = builder.udiv(builder.add(kt, c64(PACK_SEGMENT - 1)), c64(PACK_SEGMENT))
        with cgutils.for_range(builder, nseg) as seg:
            for r in range(nr):
                for c in range(nc):
                    builder.store(zero, acc[r][c])
            t0 = builder.mul(seg.index, c64(PACK_SEGMENT))
            end = builder.add(t0, c64(PACK_SEGMENT))
            t1 = builder.select(builder.icmp_unsigned("<", end, kt), end, kt)
            with cgutils.for_range(builder, builder.sub(t1, t0)) as loop:
                t = builder.add(t0, loop.index)
                row = builder.add(wbase, builder.mul(t, ws[1]))
                for q in range(0, nc * 16 * esz, 64):  # the lines PACK_PREFETCH bytes further on
                    builder.call(pf, [builder.inttoptr(builder.add(row, c64(PACK_PREFETCH + q)), i8p),
                                      i32c(0), i32c(3), i32c(1)])
                wv = []
                for c in range(nc):
                    v = builder.load(builder.inttoptr(builder.add(row, c64(16 * esz * c)), vw.as_pointer()), align=esz)
                    wv.append(builder.fpext(v, vf) if half else v)
                for r in range(nr):
                    xv = builder.load(builder.inttoptr(builder.add(xrow[r], builder.mul(t, c64(4))), f32.as_pointer()))
                    xb = builder.shuffle_vector(builder.insert_element(undef, xv, i32c(0)), undef, splat)
                    for c in range(nc):
                        builder.store(builder.call(fma, [xb, wv[c], builder.load(acc[r][c])]), acc[r][c])
            first = builder.icmp_unsigned("==", seg.index, c64(0))
            for r in range(nr):
                for c in range(nc):
                    prev = builder.select(first, zero, builder.load(optr(r, c), align=4))
                    builder.store(builder.fadd(prev, builder.load(acc[r][c])), optr(r, c), align=4)
        return context.get_dummy_value()

    return types.none(wp, blk, x, i, out, oc, R), codegen


@njit(cache=True)
def _gemvt_rows(x, wp, b, out, oc):
    """Every row of x against block b of a packed weight, into out[:, oc:oc + PACK_BLOCK]: up to 6 rows a
    pass (24 accumulators), in equal passes (the row count alone sets them, so the bits do not depend on threads)."""
    m = x.shape[0]
    i = 0
    while i < m:
        left = m - i
        r = (left + (left + 5) // 6 - 1) // ((left + 5) // 6)
        if r == 1:
            gemvt_tile(wp, b, x, i, out, oc, 1)
        elif r == 2:
            gemvt_tile(wp, b, x, i, out, oc, 2)
        elif r == 3:
            gemvt_tile(wp, b, x, i, out, oc, 3)
        elif r == 4:
            gemvt_tile(wp, b, x, i, out, oc, 4)
        elif r == 5:
            gemvt_tile(wp, b, x, i, out, oc, 5)
        else:
            gemvt_tile(wp, b, x, i, out, oc, 6)
        i += r


@njit(cache=True)
def gemvt_range(x, wp, b0, b1, out):
    """out[:, blocks b0:b1] = x @ widen(weight).T from a packed weight (`pack_blocks`); a last block past out's
    columns goes through a scratch."""
    n_out = out.shape[1]
    p = wp.shape[2]
    for b in range(b0, b1):
        if (b + 1) * p <= n_out:
            _gemvt_rows(x, wp, b, out, b * p)
        else:
            tail = np.empty((x.shape[0], p), np.float32)
            _gemvt_rows(x, wp, b, tail, 0)
            for i in range(x.shape[0]):
                for j in range(n_out - b * p):
                    out[i, b * p + j] = tail[i, j]


@njit(cache=True)
def gemvt_block(x, wp, b0, b1, bias, res, out, act):
    """Blocks b0:b1 of `gemvt`."""
    gemvt_range(x, wp, b0, b1, out)
    if bias is not None:  # None (the logits): no epilogue
        bias_res_act(out, b0 * wp.shape[2], min(b1 * wp.shape[2], out.shape[1]), bias, res, act)


@njit(parallel=True, cache=True)
def gemvt_par(x, wp, bias, res, out, act, nt):
    cb = _blocks(wp.shape[0], nt, 1)
    for p in prange(nt):
        gemvt_block(x, wp, cb[p], cb[p + 1], bias, res, out, act)


@njit(cache=True)
def _gemvt_listed(x, wp, blocks, i0, i1, out):
    """The blocks blocks[i0:i1] of `gemvt_list`."""
    for i in range(i0, i1):
        gemvt_range(x, wp, blocks[i], blocks[i] + 1, out)


@njit(parallel=True, cache=True)
def gemvt_list_par(x, wp, blocks, out, nt):
    cb = _blocks(blocks.shape[0], nt, 1)
    for p in prange(nt):
        _gemvt_listed(x, wp, blocks, cb[p], cb[p + 1], out)


@njit(cache=True)
def gemvt_list(x, wp, blocks, out, nt):
    """`gemvt` without bias over the listed blocks of 64 outputs only (a draft step's vocabulary): the other columns
    of out are left as they were."""
    if nt == 1 or blocks.shape[0] < 2:
        _gemvt_listed(x, wp, blocks, 0, blocks.shape[0], out)
    else:
        gemvt_list_par(x, wp, blocks, out, nt)


@njit(cache=True)
def gemvt(x, wp, bias, res, out, act, nt):
    """The step's GEMVs, from a weight packed by `pack_blocks`: out = x @ widen(w).T + bias (+ res unless res is out),
    GELU'd if act; bias None (the logits): the product alone.  The blocks of 64 outputs over `nt` threads."""
    if nt == 1:
        gemvt_block(x, wp, 0, wp.shape[0], bias, res, out, act)
    else:
        gemvt_par(x, wp, bias, res, out, act, nt)


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
        zero = ir.Constant(vf, None)
        acc = [[[cgutils.alloca_once_value(builder, builder.load(ovec(r, c), align=4) if u == 0 else zero)
                 for c in range(nv)] for r in range(nr)] for u in range(nu)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fma.v16f32")

        i8p = ir.IntType(8).as_pointer()
        i32c = lambda v: ir.Constant(ir.IntType(32), v)  # noqa: E731
        pf = _prefetch_fn(builder)
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
        undef = ir.Constant(vf, ir.Undefined)
        splat = builder.shuffle_vector(builder.insert_element(undef, first, ir.Constant(ir.IntType(32), 0)), undef,
                                       ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
        vm = cgutils.alloca_once_value(builder, splat)
        sm = cgutils.alloca_once_value(builder, first)
        n16 = builder.udiv(n_v, c64(16))
        with cgutils.for_range(builder, n16) as loop:
            p = builder.inttoptr(builder.add(base, builder.mul(loop.index, c64(64))), vf.as_pointer())
            v = builder.load(p, align=4)
            cur = builder.load(vm)
            builder.store(builder.select(builder.fcmp_ordered(">", v, cur), v, cur), vm)
        with cgutils.for_range(builder, builder.sub(n_v, builder.mul(n16, c64(16)))) as loop:
            j = builder.add(builder.mul(n16, c64(16)), loop.index)
            v = builder.load(builder.inttoptr(builder.add(base, builder.mul(j, c64(4))), f32.as_pointer()))
            cur = builder.load(sm)
            builder.store(builder.select(builder.fcmp_ordered(">", v, cur), v, cur), sm)
        v = builder.load(vm)
        m = hmax_lanes(builder, v)
        cur = builder.load(sm)
        return builder.select(builder.fcmp_ordered(">", m, cur), m, cur)

    return types.float32(a, n), codegen


@njit(cache=True, fastmath=FAST)
def pv_head(p, v, out, rows, n_keys):
    """out[:rows] += p[:rows, :n_keys] @ v[:n_keys] for one head (v, out: views of the head's columns)."""
    dh = v.shape[1]
    if dh == 64:  # every Whisper size: 4 zmm per value row
        # Up to 6 query rows per pass (24 accumulators), so a beam step's 5 rows read each value row once: a
        # pass for the 5th row alone would read the block again from L2 for 4 FMAs a row, at L2's pace.
        i = 0
        while i < rows:
            left = rows - i
            r = left if left <= 6 else (4 if left <= 8 else 6)
            if r == 1:
                pv_tile(p, i, v, out, n_keys, 1, 4)
            elif r == 2:
                pv_tile(p, i, v, out, n_keys, 2, 4)
            elif r == 3:
                pv_tile(p, i, v, out, n_keys, 3, 4)
            elif r == 4:
                pv_tile(p, i, v, out, n_keys, 4, 4)
            elif r == 5:
                pv_tile(p, i, v, out, n_keys, 5, 4)
            else:
                pv_tile(p, i, v, out, n_keys, 6, 4)
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
def attn_part(q, qc, q0, rows, kv_k, kv_v, lim, start, j0, j1, n_head, scale, s, o, pm, pl, kp, vp):
    """Attention of the query rows q[q0:q0+rows, qc:qc+n] (every head) over the keys j0:j1 of kv_k/kv_v
    ((n_keys, n)), query r seeing keys start[r] <= j < lim[r].  Unnormalised: o[r] = sum_j exp(s_rj - pm[r, h]) v_j
    per head, pl[r, h] = sum_j exp(s_rj - pm[r, h]), so blocks of keys combine afterwards.  Per head, the
    scores are a GEMV over the key rows and the values a pass over the value rows, each row read once for
    every query row (the rows of one audio share its cross K/V).  s: scratch (rows, n_head, >= j1 - j0 rounded up
    to PACK_BLOCK).  kp, vp: the window's keys and values by block of PACK_BLOCK keys, then head (`pack_cross`:
    (blocks, n_head, d_head, PACK_BLOCK) and (blocks, n_head, PACK_BLOCK, d_head)), or empty (the row-major kv_k,
    kv_v).  Packed (j0 a multiple of PACK_BLOCK), a head's scores are `gemvt_tile` products, vectors along the
    keys, and both passes walk the packed arrays in memory order, block by block and head by head."""
    n = o.shape[1]
    dh = n // n_head
    nk = j1 - j0
    packed = kp.shape[0] > 0
    if packed:
        for blk in range(j0 // PACK_BLOCK, (j1 + PACK_BLOCK - 1) // PACK_BLOCK):
            for h in range(n_head):
                qh = q[q0:q0 + rows, qc + h * dh:qc + (h + 1) * dh]
                _gemvt_rows(qh, kp[blk], h, s[:rows, h], blk * PACK_BLOCK - j0)
    else:
        # the heads take their columns of the same rows in turn: the first pass would fetch a quarter-line-wide
        # column of each row at a time, so the block's whole rows are asked for at once, the values' too
        prefetch_rows(kv_k, j0, j1)
        prefetch_rows(kv_v, j0, j1)
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
        lo = max(start[r] - j0, 0)  # keys before a row's start (its left padding) get probability 0
        orow = o[r]
        for u in range(n):
            orow[u] = np.float32(0.0)
        for h in range(n_head):
            sr = s[r, h]
            if e <= lo:
                pm[r, h] = -np.inf
                pl[r, h] = np.float32(0.0)
                for j in range(nk):
                    sr[j] = np.float32(0.0)
                continue
            for j in range(lo):
                sr[j] = np.float32(0.0)
            for j in range(lo, e):  # the scaled scores (1/8 for Whisper's heads of 64: exact)
                sr[j] *= scale
            mx = vmax(sr[lo:], e - lo)
            tot = exp_sum_inplace(sr[lo:e], mx)  # 16 lanes: the scalar exp loop was most of a 5-row step's cross-attention
            for j in range(e, nk):
                sr[j] = np.float32(0.0)
            pm[r, h] = mx
            pl[r, h] = tot
    if packed:
        for blk in range(j0 // PACK_BLOCK, (j1 + PACK_BLOCK - 1) // PACK_BLOCK):
            b0 = blk * PACK_BLOCK - j0
            b1 = min(nk, b0 + PACK_BLOCK)
            for h in range(n_head):
                pv_head(s[:rows, h, b0:b1], vp[blk, h, :b1 - b0], o[:rows, h * dh:(h + 1) * dh], rows, b1 - b0)
        return
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


@njit(parallel=True, cache=True)
def pack_cross(ck, cv, n_head, kout, vout):
    """A window's cross keys and values by block of PACK_BLOCK keys, then head (the contract's cross_layout), so that
    a step's cross-attention reads each in memory order: kout[l, b, k, h] = the keys k * PACK_BLOCK .. + PACK_BLOCK - 1
    of head h of ck[l, b] transposed, (d_head, PACK_BLOCK), as `pack_blocks` packs a weight; vout[l, b, k, h] = the
    same keys' values of head h, (PACK_BLOCK, d_head); zeros past the last key.  The row-major values, read head by
    head, came from memory in six strided passes; the keys packed by head jumped between heads (`phases.py`, stop 38)."""
    n_layer, batch, n_keys, n = ck.shape
    dh = n // n_head
    nb = kout.shape[2]
    for t in prange(n_layer * batch * nb):
        li, b, k = t // (batch * nb), (t // nb) % batch, t % nb
        for h in range(n_head):
            kblk = kout[li, b, k, h]
            vblk = vout[li, b, k, h]
            for j in range(PACK_BLOCK):
                key = k * PACK_BLOCK + j
                if key < n_keys:
                    krow = ck[li, b, key]
                    vrow = cv[li, b, key]
                    for d in range(dh):
                        kblk[d, j] = krow[h * dh + d]
                        vblk[j, d] = vrow[h * dh + d]
                else:
                    for d in range(dh):
                        kblk[d, j] = np.float32(0.0)
                        vblk[j, d] = np.float32(0.0)


def cross_arrays(n_layer: int, batch: int, n_keys: int, n: int, n_head: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty keys and values in `pack_cross`'s layout, for K/V of (n_layer, batch, n_keys, n)."""
    shape = (n_layer, batch, -(-n_keys // PACK_BLOCK), n_head)
    return (np.empty(shape + (n // n_head, PACK_BLOCK), np.float32),
            np.empty(shape + (PACK_BLOCK, n // n_head), np.float32))


def cross_layout(cross_k: np.ndarray, cross_v: np.ndarray, n_head: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_layer, batch_c, n_audio, n) float32 C twice -> the keys and values by block and head, `pack_cross`'s layout."""
    kout, vout = cross_arrays(*cross_k.shape, n_head)
    pack_cross(cross_k, cross_v, n_head, kout, vout)
    return kout, vout


@njit(parallel=True, cache=True)
def project_cross(x, xp, wk, bk, wvp, bv, kout, vout):
    """`cross_layout` of the window's K/V made straight from the audio features (the fold's `cross`): no K/V arrays,
    no packing pass.  x: (batch, n_keys, n_a) float32; xp: x[b] packed as a weight of n_keys outputs (the fold's
    layout); wk: (n_layer, n, n_a) float32, W_k; bk: (n_layer, n); wvp: (n_layer, heads, n_a, PACK_BLOCK), W_v packed
    (`pack_blocks`: a block of 64 outputs is one head's); bv: (n_layer, n).  kout[l, b, k, h] = W_k rows of head h
    against key block k of xp, so each key is the product the K/V linear makes with W_k's rows and x's row swapped in
    every FMA (the same products, summed in the same order: pack_cross's values, bit for bit); vout[l, b, k, h] = the
    block's rows of x against W_v's block h, as the linear makes them; then the biases, as its epilogue adds them."""
    n_layer, batch, nb, n_head, dh, p = kout.shape
    n_keys = x.shape[1]
    for t in prange(n_layer * batch * nb):
        li, b, k = t // (batch * nb), (t // nb) % batch, t % nb
        k0 = k * p
        rows = min(p, n_keys - k0)
        for h in range(n_head):
            kblk = kout[li, b, k, h]
            _gemvt_rows(wk[li, h * dh:(h + 1) * dh], xp[b], k, kblk, 0)
            for d in range(dh):
                bias = bk[li, h * dh + d]
                for j in range(rows):
                    kblk[d, j] = kblk[d, j] + bias
                for j in range(rows, p):
                    kblk[d, j] = np.float32(0.0)
            vblk = vout[li, b, k, h]
            _gemvt_rows(x[b, k0:k0 + rows], wvp[li], h, vblk, 0)
            for j in range(rows):
                for d in range(dh):
                    vblk[j, d] = vblk[j, d] + bv[li, h * dh + d]
            for j in range(rows, p):
                for d in range(dh):
                    vblk[j, d] = np.float32(0.0)


#: Keys per partial block of attention.  The blocks are fixed by the key count alone, and merged in order,
#: so the result does not depend on the number of threads that computed them.
ATTN_PART_KEYS = 256


@njit(cache=True)
def attn_units(q, qc, kv_k, kv_v, n_keys, lims, starts, n_head, scale, po, pm, pl, u0, u1, kp, vp):
    """Partial blocks u0:u1 of the list of every group's blocks (group-major, ATTN_PART_KEYS keys each),
    in one thread's scratch."""
    nb = po.shape[0]
    rows = lims.shape[1]
    s = np.empty((rows, n_head, ATTN_PART_KEYS), np.float32)
    for u in range(u0, u1):
        g, b = u // nb, u % nb
        j0 = b * ATTN_PART_KEYS
        attn_part(q, qc, g * rows, rows, kv_k[g], kv_v[g], lims[g], starts[g], j0, min(n_keys, j0 + ATTN_PART_KEYS), n_head,
                  scale, s, po[b, g], pm[b, g], pl[b, g], kp[g] if kp.shape[0] > 0 else np.empty((0, 0, 0, 0), np.float32),
                  vp[g] if vp.shape[0] > 0 else np.empty((0, 0, 0, 0), np.float32))


@njit(parallel=True, cache=True)
def attn_units_par(q, qc, kv_k, kv_v, n_keys, lims, starts, n_head, scale, po, pm, pl, nt, kp, vp):
    ub = _blocks(po.shape[0] * kv_k.shape[0], nt, 1)  # contiguous runs: each thread streams its part of K and V once
    for t in prange(nt):
        attn_units(q, qc, kv_k, kv_v, n_keys, lims, starts, n_head, scale, po, pm, pl, ub[t], ub[t + 1], kp, vp)


@njit(cache=True)
def attn_groups(q, qc, kv_k, kv_v, n_keys, lims, starts, n_head, out, nt, kp, vp):
    """Attention for few query rows: group g (a batch row over its own KV cache, or the beams of one audio
    over its cross K/V) holds the query rows g*R:(g+1)*R of q (columns qc:qc+n) and the keys kv_k[g, :n_keys];
    row r of a group sees the keys starts[g, r] <= j < lims[g, r].  The keys are cut into blocks, computed as unnormalised
    partials spread over the threads (the blocks of all groups: a beam step's short self-attention caches
    split by beam), then merged.  kp, vp: (groups, blocks, n_head, ...), the keys and values packed by block and head
    (`pack_cross`), or empty arrays: the row-major kv_k and kv_v."""
    groups = kv_k.shape[0]
    rows = lims.shape[1]
    n = out.shape[1]
    scale = np.float32(1.0 / np.sqrt(np.float64(n // n_head)))
    nb = max(1, (n_keys + ATTN_PART_KEYS - 1) // ATTN_PART_KEYS)
    po = np.empty((nb, groups, rows, n), np.float32)
    pm = np.empty((nb, groups, rows, n_head), np.float32)
    pl = np.empty((nb, groups, rows, n_head), np.float32)
    nt = min(nt, nb * groups)
    if nt == 1:
        attn_units(q, qc, kv_k, kv_v, n_keys, lims, starts, n_head, scale, po, pm, pl, 0, nb * groups, kp, vp)
    else:
        attn_units_par(q, qc, kv_k, kv_v, n_keys, lims, starts, n_head, scale, po, pm, pl, nt, kp, vp)
    for g in range(groups):
        attn_merge(po, pm, pl, g, g * rows, rows, n_head, out)


#: the parts a folded cross-attention splits its keys into (`fold_attn`): fixed, so the bits do not depend on the
#: thread count (the one-row steps switch between one thread and all, `_ThreadChoice`)
FOLD_PARTS = 2


@njit(parallel=True, cache=True)
def fold_attn(q, r0, rows, wkt, xp, xtp, wvp, bv, n_audio, out, nt):
    """The cross-attention of the query rows r0:r0+rows of one audio, from its features instead of its keys and values
    (the contract's decoder_step `audio`, laid out by `_audio_fold`): per head, q'_h = W_k[h]^T q_h (the key bias adds a constant to every score of a row, which the
    softmax drops), scores = q'_h . x_j, y_h = sum over j of p_j x_j, out_h = W_v[h] y_h + b_v[h] (the p sum to 1).
    wkt: (n_head, n_a / 64, d_head, 64), W_k[h]^T packed (`pack_blocks`); xp: (key blocks, n_a, 64), the features
    packed as a weight of n_audio outputs; xtp: (n_a / 64, n_audio, 64), their transpose packed; wvp: W_v packed;
    bv: b_v.  Two parallel phases, as few barriers as the K/V path's: FOLD_PARTS parts of the keys, each with its
    own q' (a few hundred KB of W_k, read again rather than waited for), scores, unnormalised softmax and partial y;
    then the parts merged and the output projected, by head.  The rows of every head go through each tile together."""
    n_head = wkt.shape[0]
    n = q.shape[1]
    dh = n // n_head
    na = xp.shape[1]
    p = xp.shape[2]
    hr = n_head * rows
    scale = np.float32(1.0 / np.sqrt(np.float64(dh)))
    parts = min(FOLD_PARTS, xp.shape[0])
    kb = _blocks(xp.shape[0], parts, 1)
    ys = np.empty((parts, hr, na), np.float32)
    ms = np.empty((parts, hr), np.float32)
    ls = np.empty((parts, hr), np.float32)
    for t in prange(parts):
        qp = np.empty((hr, na), np.float32)
        for h in range(n_head):
            gemvt_range(q[r0:r0 + rows, h * dh:(h + 1) * dh], wkt[h], 0, wkt.shape[1], qp[h * rows:(h + 1) * rows])
        for i in range(hr):
            for j in range(na):
                qp[i, j] *= scale
        k0 = kb[t] * p
        k1 = min(n_audio, kb[t + 1] * p)
        s = np.empty((hr, (kb[t + 1] - kb[t]) * p), np.float32)
        gemvt_range(qp, xp[kb[t]:kb[t + 1]], 0, kb[t + 1] - kb[t], s)
        for i in range(hr):
            si = s[i, :k1 - k0]
            ms[t, i] = vmax(si, k1 - k0)
            ls[t, i] = exp_sum_inplace(si, ms[t, i])
        gemvt_range(s[:, :k1 - k0], xtp[:, k0:k1], 0, xtp.shape[0], ys[t])
    for t in prange(nt):
        for h in range(t, n_head, nt):
            y = np.zeros((rows, na), np.float32)
            wgt = np.empty(parts, np.float32)
            for r in range(rows):
                i = h * rows + r
                top = ms[:, i].max()
                for u in range(parts):  # each part's share of the row's softmax
                    wgt[u] = np.float32(np.exp(ms[u, i] - top))
                tot = np.float32(0.0)
                for u in range(parts):
                    tot += wgt[u] * ls[u, i]
                for u in range(parts):
                    for j in range(na):
                        y[r, j] += wgt[u] / tot * ys[u, i, j]
            _gemvt_rows(y, wvp, h, out[r0:r0 + rows], h * dh)
            for r in range(rows):
                for d in range(dh):
                    out[r0 + r, h * dh + d] += bv[h * dh + d]


@njit(cache=True)
def step_limits(batch, n_q, offset, pad, batch_c, g_rows, n_audio):
    """The keys each query row of a step sees, as attn_groups takes them: self-attention (batch, n_q) limits and
    starts (the causal mask, and the contract's left padding `pad`), cross-attention (batch_c, g_rows) ones."""
    self_lims = np.empty((batch, n_q), np.int64)
    self_starts = np.empty((batch, n_q), np.int64)
    for b in range(batch):
        for i in range(n_q):
            self_lims[b, i] = offset + i + 1
            self_starts[b, i] = pad[b] if offset + i >= pad[b] else 0  # padding queries see the padding before
    return self_lims, self_starts, np.full((batch_c, g_rows), n_audio, np.int64), np.zeros((batch_c, g_rows), np.int64)


@njit(cache=True)
def decoder_step_kernel(x, n_q, n_head, k_cache, v_cache, cross_k, cross_v, offset, pad, ln1g, ln1b, wqkv, bqkv, wo, bo,
                        lncg, lncb, wcq, bcq, wco, bco, ln2g, ln2b, w1, b1, w2, b2, lnfg, lnfb, wlog, pos_rows,
                        logits, nt, cross_kp, cross_vp, fold_xp, fold_xtp, fold_wkt, fold_wvp, fold_bv, draft_blocks, hidden):
    """One decoding step (a few rows, or a prompt).  x: (batch * n_q, n) embedded tokens; caches
    (n_layer, batch, n_ctx, n) written in place at offset; pad (batch,): the contract's left padding per row;
    cross K/V (n_layer, batch_c, n_audio, n);
    per-layer weights stacked on a leading layer axis (matrices float16-as-uint16 or float32); wlog: the logits
    weight packed by `pack_blocks`; logits (len(pos_rows), n_vocab) of the rows pos_rows of the last layer's output;
    cross_kp, cross_vp: cross_k and cross_v packed by block and head (`pack_cross`), which the cross-attention reads.
    fold_*: the contract's `audio` (`fold_attn`'s arrays, the features' with a leading audio axis): when fold_xp has
    rows, the cross-attention comes from the audio features and cross_k, cross_v give only their shapes.
    hidden: (len(pos_rows), n) for a draft step (the contract's decoder_step `draft`): the final LayerNorm's rows are
    copied there and only the logits blocks draft_blocks (blocks of 64 vocabulary columns) are computed, the other
    columns of `logits` left as the caller filled them; no rows: every logit."""
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
    f = np.empty((m, w2.shape[2]), np.float32)  # n_ff: the inputs of fc2 (packed: layer, block, input, output)
    self_lims, self_starts, cross_lims, cross_starts = step_limits(batch, n_q, offset, pad, batch_c, g_rows, n_audio)
    no_keys = np.empty((0, 0, 0, 0, 0), np.float32)  # self-attention reads its row-major cache
    n_kv = offset + n_q
    for li in range(n_layer):
        ln_rows(xa, 0, m, ln1g[li], ln1b[li], h, 0)
        gemvt(h, wqkv[li], bqkv[li], qkv, qkv, False, nt)
        write_new_kv(qkv, k_cache[li], v_cache[li], batch, n_q, offset)
        attn_groups(qkv, 0, k_cache[li], v_cache[li], n_kv, self_lims, self_starts, n_head, a, nt, no_keys, no_keys)
        gemvt(a, wo[li], bo[li], xa, x1, False, nt)
        ln_rows(x1, 0, m, lncg[li], lncb[li], h, 0)
        gemvt(h, wcq[li], bcq[li], a, a, False, nt)
        if fold_xp.shape[0] > 0:
            for g in range(batch_c):
                fold_attn(a, g * g_rows, g_rows, fold_wkt[li], fold_xp[g], fold_xtp[g], fold_wvp[li], fold_bv[li], n_audio,
                          h, nt)
        else:
            attn_groups(a, 0, cross_k[li], cross_v[li], n_audio, cross_lims, cross_starts, n_head, h, nt, cross_kp[li],
                        cross_vp[li])
        gemvt(h, wco[li], bco[li], x1, x2, False, nt)
        ln_rows(x2, 0, m, ln2g[li], ln2b[li], h, 0)
        gemvt(h, w1[li], b1[li], f, f, True, nt)
        gemvt(f, w2[li], b2[li], x2, xa, False, nt)
    p = pos_rows.shape[0]
    hl = np.empty((p, n), np.float32)
    for i in range(p):
        ln_rows(xa, pos_rows[i], pos_rows[i] + 1, lnfg, lnfb, hl, i)
    if hidden.shape[0] > 0:
        hidden[:, :] = hl
        gemvt_list(hl, wlog, draft_blocks, logits, nt)
    else:
        gemvt(hl, wlog, None, logits, logits, False, nt)
