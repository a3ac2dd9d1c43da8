"""compute_type="int8" on the Numba backend: the contract's int8 linear as AVX-512 VNNI kernels, and the decoder
step with its layer linears in int8 (the logits stay float32, as the contract says).

The scheme (whisperkit.contract): weights quantized once per output channel (`contract.quantize_int8`, the same
int8 values as the reference), activations per row and block of ``B = int8_block(n_in)`` inputs at each call
(`quant_rows`, the reference's float32 division and round-half-to-even), integer block dot products, then
``y = (sum_b float32(dot_b) * xs_b) * scale + bias`` in that float32 order (no FMA contraction), which is the
reference's order: the integer dots are exact on both sides, so the outputs are the reference's bit for bit.

Layout and instruction: ``vpdpbusd`` multiplies 4 unsigned bytes by 4 signed bytes and adds the four products
into each of 16 int32 lanes.  The weights are packed at prepare as (n_out / 16, n_in / 4, 16, 4) bytes: one zmm
holds 4 consecutive inputs of 16 output channels, so a broadcast of 4 activation bytes against it accumulates
16 outputs at once with no horizontal sums (the layout oneDNN uses).  The activations go in as unsigned
``x8 + 128``; ``128 * sum(W8)`` per channel and block, computed at prepare, is subtracted at each block's end
(exact integers).  A register tile is R rows of x by G groups of 16 channels: every weight vector loaded is used
for R rows (the beams or batched files of a decode step, a block of the encoder's rows), every broadcast for G
groups.  LLVM does not form vpdpbusd from plain Numba loops, so the tile is an intrinsic (`i8_tile`).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from whisperkit.contract import int8_block, quantize_int8

from ._kernels import _blocks, attention_kernel, bias_gelu_rows, gelu_scalar, vgelu_bias16, hmax_lanes, keep_alive, ln_rows, write_new_kv
from ._step import attn_groups, gemvt, step_limits

#: output channels per vpdpbusd lane group
LANES = 16


# ---------------------------------------------------------------------------------------------- prepare
def pack_int8(weight, bias=None):
    """(n_out, n_in) float32 -> the int8 weights as the kernels read them, quantized with the contract's
    `quantize_int8` (so the int8 values are the reference's): (packed (n_out_pad / 16, n_in * 16) int8,
    wsum (n_out_pad / 16, n_blocks, 16) int32 = 128 * the block sums, scale (n_out_pad,) float32,
    bias (n_out_pad,) float32, n_out, block).  n_out is padded to 16 channels with zero rows."""
    q, scale = quantize_int8(weight)
    n_out, n_in = q.shape
    block = int8_block(n_in)
    if n_in % 4:
        raise ValueError(f"int8 linear: n_in {n_in} is not a multiple of 4")
    groups = -(-n_out // LANES)
    n_pad = groups * LANES
    qp = np.zeros((n_pad, n_in), np.int8)
    qp[:n_out] = q
    packed = np.ascontiguousarray(qp.reshape(groups, LANES, n_in // 4, 4).transpose(0, 2, 1, 3)).reshape(groups, n_in * LANES)
    wsum = (128 * qp.astype(np.int32).reshape(groups, LANES, n_in // block, block).sum(axis=3)).transpose(0, 2, 1)
    sp = np.ones(n_pad, np.float32)
    sp[:n_out] = scale
    bp = np.zeros(n_pad, np.float32)
    if bias is not None:
        bp[:n_out] = np.asarray(bias, np.float32)
    return packed, np.ascontiguousarray(wsum, dtype=np.int32), sp, bp, n_out, block


def unpack_int8(packed, n_out):
    """The (n_out, n_in) int8 matrix back from `pack_int8`'s layout (tests)."""
    groups, k16 = packed.shape
    n_in = k16 // LANES
    return packed.reshape(groups, n_in // 4, LANES, 4).transpose(0, 2, 1, 3).reshape(groups * LANES, n_in)[:n_out]


# ---------------------------------------------------------------------------------------------- activations
@intrinsic
def quant_row16(typingctx, x, r, block, xu, xs):
    """`quant_rows` of row r for a block of a multiple of 16 inputs, as 16-lane vectors: the block's |x| max,
    its scale (one float32 division), then vdivps (the IEEE division, as the reference's), round half to even
    (llvm.roundeven), the clip, + 128 and narrow to bytes.  LLVM leaves the scalar loop's max reduction and
    divisions scalar."""
    xty, uty, sty = x, xu, xs

    def codegen(context, builder, sig, args):
        x_a, r_v, b_v, u_a, s_a = args
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        f32 = ir.FloatType()
        vf = ir.VectorType(f32, 16)
        c64 = lambda v: ir.Constant(i64, v)  # noqa: E731
        vc = lambda v: ir.Constant(vf, [ir.Constant(f32, v)] * 16)  # noqa: E731

        def row(aty, a_v):
            a = context.make_array(aty)(context, builder, a_v)
            s0 = cgutils.unpack_tuple(builder, a.strides, 2)[0]
            return builder.add(builder.ptrtoint(a.data, i64), builder.mul(r_v, s0)), cgutils.unpack_tuple(builder, a.shape, 2)

        xb, (_, n_in) = row(xty, x_a)
        ub, _ = row(uty, u_a)
        sb, _ = row(sty, s_a)
        fn = lambda name, n: cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf] * n), name)  # noqa: E731
        fabs, vmaxn, vminn, rne = fn("llvm.fabs.v16f32", 1), fn("llvm.maxnum.v16f32", 2), fn("llvm.minnum.v16f32", 2), \
            fn("llvm.roundeven.v16f32", 1)
        nv = builder.udiv(b_v, c64(16))
        with cgutils.for_range(builder, builder.udiv(n_in, b_v)) as bl:
            x0 = builder.add(xb, builder.mul(bl.index, builder.mul(b_v, c64(4))))
            u0 = builder.add(ub, builder.mul(bl.index, b_v))
            vp = lambda base, t, size, ty: builder.inttoptr(builder.add(base, builder.mul(t, c64(size))), ty.as_pointer())  # noqa: E731
            mx = cgutils.alloca_once_value(builder, vc(0.0))
            with cgutils.for_range(builder, nv) as tl:
                v = builder.call(fabs, [builder.load(vp(x0, tl.index, 64, vf), align=4)])
                builder.store(builder.call(vmaxn, [builder.load(mx), v]), mx)
            peak = hmax_lanes(builder, builder.load(mx))
            s = builder.select(builder.fcmp_ordered(">", peak, ir.Constant(f32, 0.0)),
                               builder.fdiv(peak, ir.Constant(f32, 127.0)), ir.Constant(f32, 1.0))
            builder.store(s, builder.inttoptr(builder.add(sb, builder.mul(bl.index, c64(4))), f32.as_pointer()))
            sv = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), s, ir.Constant(i32, 0)),
                                        ir.Constant(vf, ir.Undefined), ir.Constant(ir.VectorType(i32, 16), [ir.Constant(i32, 0)] * 16))
            with cgutils.for_range(builder, nv) as tl:
                q = builder.call(rne, [builder.fdiv(builder.load(vp(x0, tl.index, 64, vf), align=4), sv)])
                q = builder.call(vminn, [builder.call(vmaxn, [q, vc(-127.0)]), vc(127.0)])
                qi = builder.add(builder.fptosi(q, ir.VectorType(i32, 16)), ir.Constant(ir.VectorType(i32, 16), [ir.Constant(i32, 128)] * 16))
                builder.store(builder.trunc(qi, ir.VectorType(i8, 16)), vp(u0, tl.index, 16, ir.VectorType(i8, 16)), align=1)
        return context.get_dummy_value()

    return types.none(x, r, block, xu, xs), codegen


@njit(cache=True)
def quant_rows(x, r0, r1, block, xu, xs):
    """The contract's activation quantization (`contract.quantize_rows_int8`) of rows r0:r1 of x (m, n_in):
    xu[r] = x8 + 128 as uint8, xs[r, b] the block's scale.  No fastmath: x / scale is the IEEE float32 division
    and np.rint rounds half to even, as the reference's NumPy does."""
    if block % 16 == 0:
        for r in range(r0, r1):
            quant_row16(x, r, block, xu, xs)
        return
    n = x.shape[1]
    nb = n // block
    for r in range(r0, r1):
        xr = x[r]
        ur = xu[r]
        for b in range(nb):
            c0 = b * block
            peak = np.float32(0.0)
            for t in range(c0, c0 + block):
                peak = max(peak, abs(xr[t]))
            s = peak / np.float32(127.0) if peak > 0 else np.float32(1.0)
            xs[r, b] = s
            for t in range(c0, c0 + block):
                v = np.rint(xr[t] / s)
                v = min(max(v, np.float32(-127.0)), np.float32(127.0))
                ur[t] = np.uint8(np.int32(v) + 128)


# ---------------------------------------------------------------------------------------------- the tile
@intrinsic
def i8_tile(typingctx, wp, g0, xu, i0, xs, wsum, scale, out, R, G):
    """out[i0 + r, 16 (g0 + g) : 16 (g0 + g + 1)] = (sum_b float32(x8[i0 + r, b] . W8[16 (g0 + g) + lane, b]) *
    xs[i0 + r, b]) * scale[lane], r < R, g < G (literals): the contract's int8 linear before its bias, for R rows
    by 16 G channels.  Per 4 inputs: G weight loads, R broadcasts, R * G vpdpbusd; at each block's end the
    int32 sums, corrected by wsum, are widened (exact), scaled by the row's block scale and added, unfused."""
    if not (isinstance(R, types.IntegerLiteral) and isinstance(G, types.IntegerLiteral)):
        return None
    nr, ng = R.literal_value, G.literal_value
    wty, xty, sty, qty, cty, oty = wp, xu, xs, wsum, scale, out

    def codegen(context, builder, sig, args):
        w_a, g_v, x_a, i_v, s_a, q_a, c_a, o_a = args[:8]
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        f32 = ir.FloatType()
        vi = ir.VectorType(i32, 16)
        vb = ir.VectorType(i8, 64)
        vf = ir.VectorType(f32, 16)
        c64 = lambda v: ir.Constant(i64, v)  # noqa: E731
        zero16 = ir.Constant(ir.VectorType(i32, 16), [ir.Constant(i32, 0)] * 16)

        def arr(aty, a_v):
            a = context.make_array(aty)(context, builder, a_v)
            return a, builder.ptrtoint(a.data, i64), cgutils.unpack_tuple(builder, a.strides, aty.ndim)

        _, wb, (ws0, _ws1) = arr(wty, w_a)
        xa, xb_, (xs0, _xs1) = arr(xty, x_a)
        _, sb, (ss0, _ss1) = arr(sty, s_a)
        _, qb, (qs0, qs1, _qs2) = arr(qty, q_a)
        _, cb, _ = arr(cty, c_a)
        _, ob, (os0, _os1) = arr(oty, o_a)
        n_in = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        n_blk = cgutils.unpack_tuple(builder, context.make_array(qty)(context, builder, q_a).shape, 3)[1]
        blk4 = builder.udiv(builder.udiv(n_in, n_blk), c64(4))  # 4-input steps per block
        grow = [builder.add(wb, builder.mul(builder.add(g_v, c64(g)), ws0)) for g in range(ng)]
        xrow = [builder.add(xb_, builder.mul(builder.add(i_v, c64(r)), xs0)) for r in range(nr)]
        srow = [builder.add(sb, builder.mul(builder.add(i_v, c64(r)), ss0)) for r in range(nr)]
        orow = [builder.add(ob, builder.mul(builder.add(i_v, c64(r)), os0)) for r in range(nr)]
        dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi, [vi, vi, vi]), "llvm.x86.avx512.vpdpbusd.512")
        splat0 = ir.Constant(vi, [ir.Constant(i32, 0)] * 16)
        facc = [[cgutils.alloca_once_value(builder, ir.Constant(vf, None)) for _ in range(ng)] for _ in range(nr)]
        iacc = [[cgutils.alloca_once_value(builder, zero16) for _ in range(ng)] for _ in range(nr)]
        with cgutils.for_range(builder, n_blk) as bl:
            b = bl.index
            for r in range(nr):
                for g in range(ng):
                    builder.store(zero16, iacc[r][g])
            k0 = builder.mul(b, blk4)
            with cgutils.for_range(builder, blk4) as kl:
                k4 = builder.add(k0, kl.index)
                wv = [builder.bitcast(builder.load(builder.inttoptr(builder.add(grow[g], builder.mul(k4, c64(64))),
                                                                    vb.as_pointer()), align=1), vi) for g in range(ng)]
                for r in range(nr):
                    x4 = builder.load(builder.inttoptr(builder.add(xrow[r], builder.mul(k4, c64(4))), i32.as_pointer()), align=1)
                    xv = builder.shuffle_vector(builder.insert_element(ir.Constant(vi, ir.Undefined), x4, ir.Constant(i32, 0)),
                                                ir.Constant(vi, ir.Undefined), splat0)
                    for g in range(ng):
                        builder.store(builder.call(dp, [builder.load(iacc[r][g]), xv, wv[g]]), iacc[r][g])
            for g in range(ng):
                qaddr = builder.add(builder.add(qb, builder.mul(builder.add(g_v, c64(g)), qs0)), builder.mul(b, qs1))
                corr = builder.load(builder.inttoptr(qaddr, vi.as_pointer()), align=4)
                for r in range(nr):
                    d = builder.sitofp(builder.sub(builder.load(iacc[r][g]), corr), vf)
                    s = builder.load(builder.inttoptr(builder.add(srow[r], builder.mul(b, c64(4))), f32.as_pointer()))
                    sv = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), s, ir.Constant(i32, 0)),
                                                ir.Constant(vf, ir.Undefined), splat0)
                    builder.store(builder.fadd(builder.load(facc[r][g]), builder.fmul(d, sv)), facc[r][g])
        for g in range(ng):
            col = builder.mul(builder.add(g_v, c64(g)), c64(64))  # 16 float32 channels
            sc = builder.load(builder.inttoptr(builder.add(cb, col), vf.as_pointer()), align=4)
            for r in range(nr):
                builder.store(builder.fmul(builder.load(facc[r][g]), sc),
                              builder.inttoptr(builder.add(orow[r], col), vf.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(wp, g0, xu, i0, xs, wsum, scale, out, R, G), codegen


@njit(cache=True, inline="always")
def _groups(wp, g0, g1, xu, i, xs, wsum, scale, out, R, G):
    g = g0
    while g1 - g >= G:
        i8_tile(wp, g, xu, i, xs, wsum, scale, out, R, G)
        g += G
    while g < g1:
        i8_tile(wp, g, xu, i, xs, wsum, scale, out, R, 1)
        g += 1


#: Groups of 16 channels per weight tile: every register block of rows passes over the tile while it is in L1/L2,
#: so a step with more rows than one register block (a batch of 8) reads its weights from memory once.
GROUP_TILE = 16


@njit(cache=True)
def i8_core(wp, g0, g1, xu, i0, i1, xs, wsum, scale, out):
    """out[i0:i1, 16 g0 : 16 g1] = the int8 products before the bias (`i8_tile`): rows in equal register blocks
    of up to 6, groups of 16 channels per tile in blocks fitting the 32 zmm registers (R * G int32 and float32
    accumulators, G weight vectors, one broadcast)."""
    for t0 in range(g0, g1, GROUP_TILE):
        t1 = min(g1, t0 + GROUP_TILE)
        i = i0
        while i < i1:
            left = i1 - i
            r = (left + (left + 5) // 6 - 1) // ((left + 5) // 6)  # equal blocks of at most 6 rows
            if r == 1:
                _groups(wp, t0, t1, xu, i, xs, wsum, scale, out, 1, 4)
            elif r == 2:
                _groups(wp, t0, t1, xu, i, xs, wsum, scale, out, 2, 4)
            elif r == 3:
                _groups(wp, t0, t1, xu, i, xs, wsum, scale, out, 3, 3)
            elif r == 4:
                _groups(wp, t0, t1, xu, i, xs, wsum, scale, out, 4, 3)
            elif r == 5:
                _groups(wp, t0, t1, xu, i, xs, wsum, scale, out, 5, 2)
            else:
                _groups(wp, t0, t1, xu, i, xs, wsum, scale, out, 6, 2)
            i += r


@njit(cache=True, error_model="numpy")
def _epilogue(out, i0, i1, c0, c1, bias, res, act):
    """out[i0:i1, c0:c1] += bias, then + res unless res is out (the reference's order), or GELU'd if act (the
    16-lane float32 GELU of the float32 kernels, `vgelu_bias16`; a scalar float64 one cost 0.8 ms per beam-5 step)."""
    add_res = res.ctypes.data != out.ctypes.data
    n16 = (c1 - c0) // 16
    for i in range(i0, i1):
        orow = out[i]
        if act:
            vgelu_bias16(orow[c0:c1], bias[c0:c1], n16)
            for j in range(c0 + 16 * n16, c1):
                orow[j] = gelu_scalar(orow[j] + bias[j])
        elif add_res:
            rrow = res[i]
            for j in range(c0, c1):
                orow[j] = rrow[j] + (orow[j] + bias[j])
        else:
            for j in range(c0, c1):
                orow[j] += bias[j]


@njit(cache=True)
def lin8_part(x, xu, xs, wp, wsum, scale, bias, res, out, act, g0, g1, i0, i1, quant):
    """Rows i0:i1 by groups g0:g1 (quantizing rows i0:i1 first if `quant`)."""
    n_in = x.shape[1]
    if quant:
        quant_rows(x, i0, i1, n_in // wsum.shape[1], xu, xs)
    i8_core(wp, g0, g1, xu, i0, i1, xs, wsum, scale, out)
    _epilogue(out, i0, i1, g0 * 16, g1 * 16, bias, res, act)


@njit(parallel=True, cache=True)
def lin8_cols_par(x, xu, xs, wp, wsum, scale, bias, res, out, act, nt):
    gb = _blocks(wp.shape[0], nt, 1)
    for p in prange(nt):
        lin8_part(x, xu, xs, wp, wsum, scale, bias, res, out, act, gb[p], gb[p + 1], 0, x.shape[0], False)


@njit(parallel=True, cache=True)
def lin8_rows_par(x, xu, xs, wp, wsum, scale, bias, res, out, act, nb):
    rb = _blocks(x.shape[0], nb, 1)
    for p in prange(nb):
        lin8_part(x, xu, xs, wp, wsum, scale, bias, res, out, act, 0, wp.shape[0], rb[p], rb[p + 1], True)


#: From this many rows on, an int8 linear splits its rows over the threads (each thread reads every weight,
#: which stays in its L2 for a Whisper layer); below, the threads split the output channels (a decode step).
ROWS_SPLIT = 16
#: rows per task of the row split
ROW_TASK = 96


@njit(cache=True)
def lin8(x, xu, xs, wp, wsum, scale, bias, res, out, act, nt):
    """out = int8_linear(x) + bias (+ res unless res is out), GELU'd if act.  x (m, n_in) float32; xu (m, n_in)
    uint8 and xs (m, n_blocks) float32 scratch; wp, wsum, scale, bias from `pack_int8`; out (m, n_out_pad)."""
    m = x.shape[0]
    if m >= ROWS_SPLIT and nt > 1:
        lin8_rows_par(x, xu, xs, wp, wsum, scale, bias, res, out, act, max(nt, (m + ROW_TASK - 1) // ROW_TASK))
    else:
        quant_rows(x, 0, m, x.shape[1] // wsum.shape[1], xu, xs)
        if nt == 1 or m >= ROWS_SPLIT:
            lin8_part(x, xu, xs, wp, wsum, scale, bias, res, out, act, 0, wp.shape[0], 0, m, False)
        else:
            lin8_cols_par(x, xu, xs, wp, wsum, scale, bias, res, out, act, nt)


@njit(cache=True)
def linear_int8_kernel(x, wp, wsum, scale, bias, out, nt):
    """The fine op: out (m, n_out_pad) = int8_linear(x) + bias."""
    m, n_in = x.shape
    xu = np.empty((m, n_in), np.uint8)
    xs = np.empty((m, wsum.shape[1]), np.float32)
    lin8(x, xu, xs, wp, wsum, scale, bias, out, out, False, nt)


# ---------------------------------------------------------------------------------------------- decoder step
@njit(cache=True)
def decoder_step_int8_kernel(x, n_q, n_head, k_cache, v_cache, cross_k, cross_v, offset, pad, ln1g, ln1b,
                             qkv_w, qkv_c, qkv_s, qkv_b, o_w, o_c, o_s, o_b, lncg, lncb,
                             cq_w, cq_c, cq_s, cq_b, co_w, co_c, co_s, co_b, ln2g, ln2b,
                             f1_w, f1_c, f1_s, f1_b, f2_w, f2_c, f2_s, f2_b, lnfg, lnfb, wlog, pos_rows, logits, nt):
    """`_step.decoder_step_kernel` with the layers' linears in int8 (`lin8`; per kind: packed weights, wsum,
    scale, bias, stacked over the layers) and the same attention (`_step.attn_groups`, left-padded rows as the
    contract's `pad`); the final LayerNorm and the logits (`_step.gemvt`, float16 or float32 weights) are the float32 step's."""
    m, n = x.shape
    n_layer = qkv_w.shape[0]
    batch = m // n_q
    batch_c = cross_k.shape[1]
    n_audio = cross_k.shape[2]
    g_rows = m // batch_c
    n_ff = f1_s.shape[1]
    h = np.empty((m, n), np.float32)
    qkv = np.empty((m, 3 * n), np.float32)
    a = np.empty((m, n), np.float32)
    xa = x.copy()
    x1 = np.empty((m, n), np.float32)
    x2 = np.empty((m, n), np.float32)
    f = np.empty((m, n_ff), np.float32)
    xu = np.empty((m, n), np.uint8)
    xs = np.empty((m, qkv_c.shape[2]), np.float32)
    fu = np.empty((m, n_ff), np.uint8)
    fs = np.empty((m, f2_c.shape[2]), np.float32)
    self_lims, self_starts, cross_lims, cross_starts = step_limits(batch, n_q, offset, pad, batch_c, g_rows, n_audio)
    no_keys = np.empty((0, 0, 0, 0, 0), np.float32)  # the row-major keys (`_step.attn_groups`)
    n_kv = offset + n_q
    for li in range(n_layer):
        ln_rows(xa, 0, m, ln1g[li], ln1b[li], h, 0)
        lin8(h, xu, xs, qkv_w[li], qkv_c[li], qkv_s[li], qkv_b[li], qkv, qkv, False, nt)
        write_new_kv(qkv, k_cache[li], v_cache[li], batch, n_q, offset)
        attn_groups(qkv, 0, k_cache[li], v_cache[li], n_kv, self_lims, self_starts, n_head, a, nt, no_keys, no_keys)
        lin8(a, xu, xs, o_w[li], o_c[li], o_s[li], o_b[li], xa, x1, False, nt)
        ln_rows(x1, 0, m, lncg[li], lncb[li], h, 0)
        lin8(h, xu, xs, cq_w[li], cq_c[li], cq_s[li], cq_b[li], a, a, False, nt)
        attn_groups(a, 0, cross_k[li], cross_v[li], n_audio, cross_lims, cross_starts, n_head, h, nt, no_keys, no_keys)
        lin8(h, xu, xs, co_w[li], co_c[li], co_s[li], co_b[li], x1, x2, False, nt)
        ln_rows(x2, 0, m, ln2g[li], ln2b[li], h, 0)
        lin8(h, xu, xs, f1_w[li], f1_c[li], f1_s[li], f1_b[li], f, f, True, nt)
        lin8(f, fu, fs, f2_w[li], f2_c[li], f2_s[li], f2_b[li], x2, xa, False, nt)
    p = pos_rows.shape[0]
    hl = np.empty((p, n), np.float32)
    for i in range(p):
        ln_rows(xa, pos_rows[i], pos_rows[i] + 1, lnfg, lnfb, hl, i)
    gemvt(hl, wlog, None, logits, logits, False, nt)


# ---------------------------------------------------------------------------------------------- coarse ops
@njit(cache=True)
def mlp8_rows(x1, r0, r1, lng, lnb, f1_w, f1_c, f1_s, f1_b, f2_w, f2_c, f2_s, f2_b, y):
    """y[r0:r1] = x1 + fc2(gelu(fc1(layer_norm(x1)))) for one row block, both linears int8, in this thread's
    buffers.  fc1's bias and GELU are the float32 step of the float32 kernels (`bias_gelu_rows`)."""
    n = x1.shape[1]
    rows = r1 - r0
    nf = f1_s.shape[0]
    h = np.empty((rows, n), np.float32)
    hu = np.empty((rows, n), np.uint8)
    hs = np.empty((rows, f1_c.shape[1]), np.float32)
    f = np.empty((rows, nf), np.float32)
    fu = np.empty((rows, nf), np.uint8)
    fs = np.empty((rows, f2_c.shape[1]), np.float32)
    ln_rows(x1, r0, r1, lng, lnb, h, 0)
    quant_rows(h, 0, rows, n // f1_c.shape[1], hu, hs)
    i8_core(f1_w, 0, f1_w.shape[0], hu, 0, rows, hs, f1_c, f1_s, f)
    bias_gelu_rows(f, 0, rows, f1_b)
    lin8_part(f, fu, fs, f2_w, f2_c, f2_s, f2_b, x1[r0:r1], y[r0:r1], False, 0, f2_w.shape[0], 0, rows, True)


@njit(parallel=True, cache=True)
def mlp_int8_kernel(x, lng, lnb, f1_w, f1_c, f1_s, f1_b, f2_w, f2_c, f2_s, f2_b, y, blk, nt):
    m = x.shape[0]
    nb = max(nt, (m + blk - 1) // blk) if m >= 32 else 1
    rb = _blocks(m, nb, 1)
    for p in prange(nb):
        mlp8_rows(x, rb[p], rb[p + 1], lng, lnb, f1_w, f1_c, f1_s, f1_b, f2_w, f2_c, f2_s, f2_b, y)


@njit(parallel=True, cache=True)
def encoder_layer_int8_kernel(x, batch, n_head, ln1g, ln1b, qkv_w, qkv_c, qkv_s, qkv_b, o_w, o_c, o_s, o_b,
                              ln2g, ln2b, f1_w, f1_c, f1_s, f1_b, f2_w, f2_c, f2_s, f2_b, blk, attn_blk, nt):
    """`_encoder.encoder_layer_kernel`'s phases with the four linears int8 (row blocks of `i8_core` over the threads,
    each thread reading every weight, which stays in its L2) and OpenBLAS's attention (`_kernels.attention_kernel`)."""
    m, n = x.shape
    n_ctx = m // batch
    d_head = n // n_head
    qkv = np.empty((m, 3 * n), np.float32)
    a = np.empty((m, n), np.float32)
    x1 = np.empty((m, n), np.float32)
    y = np.empty((m, n), np.float32)
    nb = max(nt, (m + blk - 1) // blk)
    rb = _blocks(m, nb, 1)
    nblk = qkv_c.shape[1]
    for p in prange(nb):
        r0 = rb[p]
        r1 = rb[p + 1]
        h = np.empty((r1 - r0, n), np.float32)
        hu = np.empty((r1 - r0, n), np.uint8)
        hs = np.empty((r1 - r0, nblk), np.float32)
        ln_rows(x, r0, r1, ln1g, ln1b, h, 0)
        lin8_part(h, hu, hs, qkv_w, qkv_c, qkv_s, qkv_b, qkv[r0:r1], qkv[r0:r1], False, 0, qkv_w.shape[0], 0, r1 - r0, True)
    qp = qkv.ctypes.data
    attention_kernel(qp, n_ctx * 3 * n, 3 * n, qp + 4 * n, n_ctx * 3 * n, 3 * n, qp + 8 * n, n_ctx * 3 * n, 3 * n,
                     a.ctypes.data, n_ctx * n, n, batch, n_ctx, n_ctx, n_head, d_head, False, 0, attn_blk,
                     np.empty((1, 1, 1, 1), np.float32), nt)
    keep_alive(qkv)  # qkv was only read through its address: hold it until attention is done
    for p in prange(nb):
        r0 = rb[p]
        r1 = rb[p + 1]
        au = np.empty((r1 - r0, n), np.uint8)
        as_ = np.empty((r1 - r0, nblk), np.float32)
        lin8_part(a[r0:r1], au, as_, o_w, o_c, o_s, o_b, x[r0:r1], x1[r0:r1], False, 0, o_w.shape[0], 0, r1 - r0, True)
        mlp8_rows(x1, r0, r1, ln2g, ln2b, f1_w, f1_c, f1_s, f1_b, f2_w, f2_c, f2_s, f2_b, y)
    return y


@njit(cache=True)
def decoder_layer_int8_kernel(x, n_q, n_head, k_cache, v_cache, cross_k, cross_v, offset, ln1g, ln1b,
                              qkv_w, qkv_c, qkv_s, qkv_b, o_w, o_c, o_s, o_b, lncg, lncb,
                              cq_w, cq_c, cq_s, cq_b, co_w, co_c, co_s, co_b, ln2g, ln2b,
                              f1_w, f1_c, f1_s, f1_b, f2_w, f2_c, f2_s, f2_b,
                              hbuf, qkv, abuf, x1, x2, fbuf, y, attn_blk, dummy, nt):
    """`_kernels.decoder_layer_kernel` with its seven linears int8 (`lin8`) and the same attention; the work
    buffers are the float32 kernel's (the caller's, per row count)."""
    m, n = x.shape
    batch = m // n_q
    d_head = n // n_head
    n_ff = f1_s.shape[0]
    xu = np.empty((m, n), np.uint8)
    xs = np.empty((m, qkv_c.shape[1]), np.float32)
    fu = np.empty((m, n_ff), np.uint8)
    fs = np.empty((m, f2_c.shape[1]), np.float32)
    ln_rows(x, 0, m, ln1g, ln1b, hbuf, 0)
    lin8(hbuf, xu, xs, qkv_w, qkv_c, qkv_s, qkv_b, qkv, qkv, False, nt)
    write_new_kv(qkv, k_cache, v_cache, batch, n_q, offset)
    n_text = k_cache.shape[1]
    n_kv = offset + n_q
    attention_kernel(qkv.ctypes.data, n_q * 3 * n, 3 * n, k_cache.ctypes.data, n_text * n, n,
                     v_cache.ctypes.data, n_text * n, n, abuf.ctypes.data, n_q * n, n,
                     batch, n_q, n_kv, n_head, d_head, True, offset, attn_blk, dummy, nt)
    lin8(abuf, xu, xs, o_w, o_c, o_s, o_b, x, x1, False, nt)
    ln_rows(x1, 0, m, lncg, lncb, hbuf, 0)
    lin8(hbuf, xu, xs, cq_w, cq_c, cq_s, cq_b, abuf, abuf, False, nt)
    # the rows of one audio (its beams) share one cross K/V row: as queries they are one block of rows
    n_audio = cross_k.shape[1]
    batch_c = cross_k.shape[0]
    n_qc = m // batch_c
    attention_kernel(abuf.ctypes.data, n_qc * n, n, cross_k.ctypes.data, n_audio * n, n,
                     cross_v.ctypes.data, n_audio * n, n, hbuf.ctypes.data, n_qc * n, n,
                     batch_c, n_qc, n_audio, n_head, d_head, False, 0, attn_blk, dummy, nt)
    lin8(hbuf, xu, xs, co_w, co_c, co_s, co_b, x1, x2, False, nt)
    ln_rows(x2, 0, m, ln2g, ln2b, hbuf, 0)
    lin8(hbuf, xu, xs, f1_w, f1_c, f1_s, f1_b, fbuf, fbuf, True, nt)
    lin8(fbuf, fu, fs, f2_w, f2_c, f2_s, f2_b, x2, y, False, nt)
