"""The Numba backend against the NumPy reference, op by op, at Whisper's shapes (tiny 384/6 heads,
base 512/8 heads), with contiguous and strided inputs.

`compare` checks the shape, then the dtype, then the values, and prints the first mismatches.
Tolerances are stated once, in `TOL`, with their reason."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from whisperkit.backend import Ops
from whisperkit.backends.numpy_backend import NumpyBackend

numba = pytest.importorskip("numba")
from whisperkit.backends.numba_backend import NumbaBackend  # noqa: E402

REF = NumpyBackend()
NB = NumbaBackend()

#: op -> (rtol, atol as a fraction of the reference's largest magnitude)
TOL = {
    # same BLAS sgemm (row blocks) or a Numba dot loop (decode rows): float32 sums over n_in <= 1536
    # terms in another order -> ~1e-6 of the row's magnitude.
    "linear": (1e-5, 1e-5),
    # one GEMM per tap like the reference, but on column blocks: summation order over 3*c_in terms.
    "conv1d": (1e-5, 1e-5),
    # float64 accumulation of mean/variance vs NumPy's float32 pairwise sums: ~1 ulp apart.
    "layer_norm": (1e-5, 1e-6),
    # the reference's own erfc formula in float64 with a polynomial exp accurate to 1e-14: the float32
    # results agree to about one rounding.
    "gelu": (1e-6, 0.0),
    # scores summed in a different order (abs. error ~1e-6 at magnitudes ~20) and a polynomial expf
    # (~1 ulp): ~1e-5 relative on probabilities and outputs.
    "attention": (1e-5, 1e-5),
    "attention_weights": (1e-4, 1e-6),
    # compositions of the above through up to five GEMMs with LayerNorms in between.
    "mlp_block": (1e-4, 1e-5),
    "encoder_layer": (1e-4, 1e-5),
    "decoder_layer": (1e-4, 1e-5),
}


def compare(op, got, ref):
    assert got.shape == ref.shape, f"{op}: shape {got.shape}, reference {ref.shape}"
    assert got.dtype == np.float32, f"{op}: dtype {got.dtype}, expected float32"
    rtol, atol_frac = TOL[op]
    atol = atol_frac * float(np.abs(ref).max())
    diff = np.abs(got.astype(np.float64) - ref)
    bad = diff > atol + rtol * np.abs(ref)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        lines = [f"  at {tuple(i)}: got {got[tuple(i)]!r}, reference {ref[tuple(i)]!r}" for i in idx]
        rel = diff.max() / max(float(np.abs(ref).max()), 1e-30)
        pytest.fail(f"{op}: {int(bad.sum())} of {bad.size} values differ (max abs {diff.max():.3g}, "
                    f"max abs / max |ref| {rel:.3g}; rtol {rtol}, atol {atol:.3g}):\n" + "\n".join(lines))


def f32(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def strided(a):
    """`a`'s values in a view that is not C-contiguous (every other element of a wider array)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), np.float32)
    wide[..., 1::2] = a
    v = wide[..., 1::2]
    assert not v.flags.c_contiguous
    return v


def maybe_strided(a, contig):
    return a if contig else strided(a)


def bind_pair(op, **weights):
    return Ops(NB, REF).bind(op, **weights), Ops(REF, REF).bind(op, **weights)


def test_available_and_complete():
    assert NB.unavailable_reason() is None
    assert NB.name == "numba" and NB.version == numba.__version__
    from whisperkit.contract import OPS
    assert set(NB.implemented_ops()) == set(OPS)


def test_module_imports_without_numba():
    code = ("import sys; sys.modules['numba'] = None\n"
            "from whisperkit.backends.numba_backend import NumbaBackend\n"
            "r = NumbaBackend().unavailable_reason(); assert r and 'Numba' in r, r; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize("n_in,n_out,rows", [(384, 1152, 1500), (384, 1536, 3), (1536, 384, 1500),
                                             (512, 512, 1), (512, 1536, 20), (384, 51864, 1), (384, 51864, 5)])
@pytest.mark.parametrize("contig", [True, False])
def test_linear(n_in, n_out, rows, contig):
    w = dict(weight=f32(n_out, n_in, seed=1, scale=n_in ** -0.5), bias=f32(n_out, seed=2))
    x = maybe_strided(f32(1, rows, n_in, seed=3), contig)
    got, ref = (b(x) for b in bind_pair("linear", **w))
    compare("linear", got, ref)


def test_linear_without_bias():
    w = dict(weight=f32(51864, 384, seed=1, scale=0.05), bias=None)
    x = f32(2, 1, 384, seed=4)
    got, ref = (b(x) for b in bind_pair("linear", **w))
    compare("linear", got, ref)


@pytest.mark.parametrize("c_in,c_out,t,stride", [(80, 384, 3000, 1), (384, 384, 3000, 2), (80, 512, 3000, 1),
                                                 (512, 512, 3000, 2), (80, 384, 7, 2)])
@pytest.mark.parametrize("contig", [True, False])
def test_conv1d(c_in, c_out, t, stride, contig):
    w = dict(weight=f32(c_out, c_in, 3, seed=1, scale=(3 * c_in) ** -0.5), bias=f32(c_out, seed=2), stride=stride,
             padding=1)
    x = maybe_strided(f32(1, c_in, t, seed=3), contig)
    got, ref = (b(x) for b in bind_pair("conv1d", **w))
    compare("conv1d", got, ref)


@pytest.mark.parametrize("shape", [(1, 1500, 384), (5, 1, 512), (2, 3, 384)])
@pytest.mark.parametrize("contig", [True, False])
def test_layer_norm(shape, contig):
    n = shape[-1]
    w = dict(weight=f32(n, seed=1), bias=f32(n, seed=2))
    x = maybe_strided(f32(*shape, seed=3, scale=4.0) + 3.0, contig)
    got, ref = (b(x) for b in bind_pair("layer_norm", **w))
    compare("layer_norm", got, ref)


@pytest.mark.parametrize("contig", [True, False])
def test_gelu(contig):
    x = f32(1, 1500, 1536, seed=5, scale=4.0)
    x[0, 0, :9] = [0.0, -0.0, 3e38, -3e38, -12.0, -30.0, 1e-30, -1e-30, 9.0]  # extremes and the deep negative tail
    x = maybe_strided(x, contig)
    with np.errstate(all="raise"):
        got = NB.gelu(x)
    compare("gelu", got, REF.gelu(x))
    assert np.isfinite(got).all()


ATTN_CASES = [  # (batch, n_q, n_kv, n_state, n_head, causal, offset)
    (1, 1500, 1500, 384, 6, False, 0),  # encoder self-attention, tiny
    (1, 1500, 1500, 512, 8, False, 0),  # encoder, base
    (2, 1, 1500, 384, 6, False, 0),  # decoder cross-attention, one token
    (1, 3, 1500, 512, 8, False, 0),
    (1, 3, 3, 384, 6, True, 0),  # decoder self-attention over the KV cache
    (2, 1, 2, 384, 6, True, 1),
    (1, 1, 448, 512, 8, True, 447),
    (5, 3, 450, 384, 6, True, 447),
]


@pytest.mark.parametrize("b,n_q,n_kv,d,h,causal,offset", ATTN_CASES)
@pytest.mark.parametrize("contig", [True, False])
def test_attention(b, n_q, n_kv, d, h, causal, offset, contig):
    if causal and offset + n_q > n_kv:
        n_kv = offset + n_q
    q = maybe_strided(f32(b, n_q, d, seed=1, scale=2.0), contig)
    k = maybe_strided(f32(b, n_kv, d, seed=2, scale=2.0), contig)
    v = f32(b, n_kv, d, seed=3)
    compare("attention", NB.attention(q, k, v, h, causal, offset), REF.attention(q, k, v, h, causal, offset))
    compare("attention_weights", NB.attention_weights(q, k, h, causal, offset),
            REF.attention_weights(q, k, h, causal, offset))


def test_attention_softmax_is_stable():
    q = f32(1, 4, 384, seed=1, scale=300.0)  # scores in the 1e5 range: exp would overflow without the max
    k = f32(1, 40, 384, seed=2, scale=300.0)
    p = NB.attention_weights(q, k, 6)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


def layer_weights(n, n_head, seed, decoder=False):
    g = np.random.default_rng(seed)

    def m(*s, scale=1.0):
        return (g.standard_normal(s) * scale).astype(np.float32)
    w = dict(n_head=n_head, attn_ln_weight=1 + m(n, scale=0.1), attn_ln_bias=m(n, scale=0.1),
             qkv_weight=m(3 * n, n, scale=n ** -0.5), qkv_bias=m(3 * n, scale=0.1),
             out_weight=m(n, n, scale=n ** -0.5), out_bias=m(n, scale=0.1),
             mlp_ln_weight=1 + m(n, scale=0.1), mlp_ln_bias=m(n, scale=0.1),
             fc1_weight=m(4 * n, n, scale=n ** -0.5), fc1_bias=m(4 * n, scale=0.1),
             fc2_weight=m(n, 4 * n, scale=(4 * n) ** -0.5), fc2_bias=m(n, scale=0.1))
    if decoder:
        w.update(cross_ln_weight=1 + m(n, scale=0.1), cross_ln_bias=m(n, scale=0.1),
                 cross_q_weight=m(n, n, scale=n ** -0.5), cross_q_bias=m(n, scale=0.1),
                 cross_out_weight=m(n, n, scale=n ** -0.5), cross_out_bias=m(n, scale=0.1))
    return w


@pytest.mark.parametrize("n,h,rows", [(384, 6, 1500), (512, 8, 1500), (384, 6, 1), (512, 8, 3)])
@pytest.mark.parametrize("contig", [True, False])
def test_mlp_block(n, h, rows, contig):
    lw = layer_weights(n, h, seed=7)
    w = dict(ln_weight=lw["mlp_ln_weight"], ln_bias=lw["mlp_ln_bias"], fc1_weight=lw["fc1_weight"],
             fc1_bias=lw["fc1_bias"], fc2_weight=lw["fc2_weight"], fc2_bias=lw["fc2_bias"])
    x = maybe_strided(f32(1, rows, n, seed=8), contig)
    got, ref = (b(x) for b in bind_pair("mlp_block", **w))
    compare("mlp_block", got, ref)


@pytest.mark.parametrize("n,h,batch", [(384, 6, 1), (512, 8, 1), (384, 6, 2)])
@pytest.mark.parametrize("contig", [True, False])
def test_encoder_layer(n, h, batch, contig):
    x = maybe_strided(f32(batch, 1500, n, seed=9), contig)
    got, ref = (b(x) for b in bind_pair("encoder_layer", **layer_weights(n, h, seed=10)))
    compare("encoder_layer", got, ref)


@pytest.mark.parametrize("n,h", [(384, 6), (512, 8)])
@pytest.mark.parametrize("batch", [1, 5])
def test_decoder_layer_steps(n, h, batch):
    """A prompt of 3 tokens, then single-token steps, then the last position of the context (447):
    outputs and the caches written in place must match the reference's at every step."""
    nb, nr = bind_pair("decoder_layer", **layer_weights(n, h, seed=11, decoder=True))
    cross_k, cross_v = f32(batch, 1500, n, seed=12), f32(batch, 1500, n, seed=13)
    kc_nb, vc_nb = np.zeros((batch, 448, n), np.float32), np.zeros((batch, 448, n), np.float32)
    kc_ref, vc_ref = kc_nb.copy(), vc_nb.copy()
    for step, (offset, n_q) in enumerate([(0, 3), (3, 1), (4, 1), (444, 3), (447, 1)]):
        x = f32(batch, n_q, n, seed=20 + step)
        compare("decoder_layer", nb(x, kc_nb, vc_nb, cross_k, cross_v, offset),
                nr(x, kc_ref, vc_ref, cross_k, cross_v, offset))
        compare("linear", kc_nb, kc_ref)  # the cache holds linear outputs (the K and V projections)
        compare("linear", vc_nb, vc_ref)


def test_decoder_layer_writes_cache_in_place():
    n, h = 384, 6
    nb, _ = bind_pair("decoder_layer", **layer_weights(n, h, seed=11, decoder=True))
    kc, vc = np.zeros((1, 448, n), np.float32), np.zeros((1, 448, n), np.float32)
    k_id, v_id = kc.ctypes.data, vc.ctypes.data
    nb(f32(1, 1, n, seed=1), kc, vc, f32(1, 1500, n, seed=2), f32(1, 1500, n, seed=3), 5)
    assert kc.ctypes.data == k_id and vc.ctypes.data == v_id
    assert np.abs(kc[0, 5]).sum() > 0 and np.abs(vc[0, 5]).sum() > 0, "position 5 not written"
    assert not kc[0, :5].any() and not kc[0, 6:].any(), "cache written outside [offset, offset + n_q)"


def test_decoder_layer_strided_cache():
    """Caches that are not C-contiguous are still written in place, with the same values."""
    n, h = 384, 6
    nb, nr = bind_pair("decoder_layer", **layer_weights(n, h, seed=11, decoder=True))
    kc = strided(np.zeros((1, 448, n), np.float32))
    vc = strided(np.zeros((1, 448, n), np.float32))
    kr, vr = np.zeros((1, 448, n), np.float32), np.zeros((1, 448, n), np.float32)
    ck, cv = f32(1, 1500, n, seed=2), f32(1, 1500, n, seed=3)
    for offset in (0, 1):
        x = f32(1, 1, n, seed=offset)
        compare("decoder_layer", nb(x, kc, vc, ck, cv, offset), nr(x, kr, vr, ck, cv, offset))
    compare("linear", np.ascontiguousarray(kc), kr)


def test_decoder_layer_rejects_offset_outside_cache():
    n, h = 384, 6
    nb, _ = bind_pair("decoder_layer", **layer_weights(n, h, seed=11, decoder=True))
    kc = np.zeros((1, 448, n), np.float32)
    with pytest.raises(ValueError, match="outside the KV cache"):
        nb(f32(1, 2, n), kc, kc.copy(), f32(1, 1500, n), f32(1, 1500, n), 447)


def test_threads_follow_setting():
    before = numba.get_num_threads()
    try:
        NB.set_num_threads(1)
        assert numba.get_num_threads() == 1
        x = f32(1, 300, 384, seed=3)
        w = dict(weight=f32(384, 384, seed=1, scale=0.05), bias=f32(384, seed=2))
        got, ref = (b(x) for b in bind_pair("linear", **w))
        compare("linear", got, ref)
        NB.set_num_threads(10 ** 6)  # bounded by NUMBA_NUM_THREADS
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(before)
