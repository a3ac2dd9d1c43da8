"""The ONNX Runtime backend against the NumPy reference, op by op, at Whisper's shapes.

Each check looks at the shape, then the dtype, then the values.  Coarse ops are compared with the
reference's composition of fine ops (`Ops(reference, reference)`).  The conformance suite
(`whisperkit conformance --backend onnxruntime`) is the main check; these tests cover what is
particular to this backend: pointer binding of strided inputs, the in-place KV cache, shared sessions,
thread changes, the missing-library path, and the transcription's tokens."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import shared
from whisperkit.backend import Ops
from whisperkit.backends.numpy_backend import NumpyBackend

ort = pytest.importorskip("onnxruntime")
from whisperkit.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402

REF = NumpyBackend()
ORT = OnnxRuntimeBackend()

# Tolerance per op: values must satisfy |got - ref| <= ATOL[op] * max|ref|, stated once with the reason.
ATOL = {
    # MLAS GEMM vs OpenBLAS: float32 sums over n_in <= 1536 (c_in*k <= 1152) terms in another order;
    # measured ~5e-7 of the output's max.
    "linear": 1e-5,
    "conv1d": 1e-5,
    # float32 mean/variance in another order; measured ~1e-7.
    "layer_norm": 1e-5,
    # attention: scores |s| up to ~30 carry ~eps*|s| error that exp() turns into relative error of the
    # probabilities; measured ~7e-7 of max|out|.
    "attention": 1e-5,
    "attention_weights": 1e-5,
    # compositions of 4-10 fine ops with residuals; measured ~7e-7 of the row max.
    "mlp_block": 1e-4,
    "encoder_layer": 1e-4,
    "decoder_layer": 1e-4,
}
# gelu: MLAS's float32 erf has the float32 cancellation of 1 + erf(x/sqrt2) for x < -3 (absolute error
# ~eps*|x|/2, like torch's own float32 GELU), so it is held to |got - ref| <= 1e-5 * (|ref| + 0.01|x|),
# the conformance suite's scale (measured 2.3e-6).  exact_gelu=True is bit-equal to the reference.
GELU_RTOL = 1e-5


def f32(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def strided(a):
    """The same values as `a` in a non-contiguous view (every other element of a wider buffer)."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), np.float32)
    big[..., ::2] = a
    v = big[..., ::2]
    assert not v.flags.c_contiguous
    return v


def check(op, got, ref):
    assert got.shape == ref.shape, f"{op}: shape {got.shape} != {ref.shape}"
    assert got.dtype == np.float32, f"{op}: dtype {got.dtype}"
    assert got.flags.c_contiguous, f"{op}: output not C-contiguous"
    err = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    assert err <= ATOL[op] * float(np.abs(ref).max()), f"{op}: max error {err:.3g} vs max|ref| {np.abs(ref).max():.3g}"


def bind_both(op, **weights):
    return Ops(ORT, REF).bind(op, **weights), Ops(REF, REF).bind(op, **weights)


def block_weights(n_state, n_head, decoder=False, seed=10):
    r = np.random.default_rng(seed)

    def m(*shape, s=0.05):
        return (r.standard_normal(shape) * s).astype(np.float32)

    w = dict(n_head=n_head, attn_ln_weight=1 + m(n_state), attn_ln_bias=m(n_state), qkv_weight=m(3 * n_state, n_state),
             qkv_bias=m(3 * n_state), out_weight=m(n_state, n_state), out_bias=m(n_state),
             mlp_ln_weight=1 + m(n_state), mlp_ln_bias=m(n_state), fc1_weight=m(4 * n_state, n_state),
             fc1_bias=m(4 * n_state), fc2_weight=m(n_state, 4 * n_state), fc2_bias=m(n_state))
    if decoder:
        w.update(cross_ln_weight=1 + m(n_state), cross_ln_bias=m(n_state), cross_q_weight=m(n_state, n_state),
                 cross_q_bias=m(n_state), cross_out_weight=m(n_state, n_state), cross_out_bias=m(n_state))
    return w


# ---- registration ----------------------------------------------------------------------------------
def test_registered_and_usable():
    from whisperkit.registry import get_registry
    info = get_registry().infos["onnxruntime"]
    assert info.usable, info.reason
    assert info.version == ort.__version__
    assert set(info.ops) == {"linear", "conv1d", "layer_norm", "gelu", "attention", "attention_weights",
                             "mlp_block", "encoder_layer", "decoder_layer"}


def test_imports_and_says_why_without_onnxruntime():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("onnxruntime", "onnx"):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        from whisperkit.backends.onnxruntime_backend import OnnxRuntimeBackend
        print(OnnxRuntimeBackend().unavailable_reason())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "onnxruntime" in out.stdout and "cannot be imported" in out.stdout


# ---- fine ops ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_in,n_out,rows", [(384, 1152, 1500), (384, 1536, 3), (1536, 384, 1500), (512, 512, 1),
                                             (384, 768, 1500)])
def test_linear(n_in, n_out, rows):
    got, ref = bind_both("linear", weight=f32(n_out, n_in, seed=1, scale=0.05), bias=f32(n_out, seed=2))
    x = f32(1, rows, n_in, seed=3)
    check("linear", got(x), ref(x))
    check("linear", got(strided(x)), ref(x))


def test_linear_logits_without_bias_any_leading_dims_and_bad_input():
    got, ref = bind_both("linear", weight=f32(51864, 384, seed=1, scale=0.05), bias=None)
    for x in (f32(1, 1, 384), f32(5, 1, 384), f32(2, 3, 384).transpose(1, 0, 2), f32(384)):
        check("linear", got(x), ref(x))
    with pytest.raises(ValueError, match="385"):
        got(f32(1, 3, 385))


@pytest.mark.parametrize("c_in,c_out,stride", [(80, 384, 1), (384, 384, 2), (80, 512, 1), (512, 512, 2)])
def test_conv1d(c_in, c_out, stride):
    got, ref = bind_both("conv1d", weight=f32(c_out, c_in, 3, seed=1, scale=0.05), bias=f32(c_out, seed=2),
                         stride=stride, padding=1)
    x = f32(1, c_in, 3000, seed=3)
    check("conv1d", got(x), ref(x))
    check("conv1d", got(np.asfortranarray(x)), ref(x))
    assert got(x).shape == (1, c_out, 3000 // stride)


@pytest.mark.parametrize("n_state", [384, 512])
def test_layer_norm(n_state):
    got, ref = bind_both("layer_norm", weight=f32(n_state, seed=1), bias=f32(n_state, seed=2))
    x = f32(2, 1500, n_state, seed=3, scale=5.0) + 3.0
    check("layer_norm", got(x), ref(x))
    check("layer_norm", got(strided(x)), ref(x))


def test_gelu_fast_kernel_within_float32_erf_precision():
    xs = [f32(1, 384, 3000, seed=4, scale=3.0), f32(1500, 1536, seed=5, scale=4.0).T,
          np.linspace(-10, 10, 4099, dtype=np.float32), -np.linspace(3, 12, 33, dtype=np.float32),
          np.array([-3e38, -1e30, -1e4, -13.5, -1e-30, 0.0, 1e-45, 1e-30, 13.5, 1e4, 1e30, 3e38], np.float32)]
    for x in xs:
        got, ref = ORT.gelu(x), REF.gelu(x)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.all(np.isfinite(got))
        scale = np.abs(ref.astype(np.float64)) + 0.01 * np.abs(x.astype(np.float64))
        assert np.all(np.abs(got.astype(np.float64) - ref) <= GELU_RTOL * scale)


def test_gelu_exact_option_is_bit_equal_to_reference():
    exact = OnnxRuntimeBackend(exact_gelu=True)
    x = np.concatenate([f32(100_000, seed=6, scale=4.0), np.linspace(-20, 20, 4001, dtype=np.float32),
                        np.array([-3e38, 3e38, -1e30, 1e30, 0.0, -1e-45], np.float32)])
    got = exact.gelu(strided(x[None])[0])
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, REF.gelu(x))


ATTN_CASES = [  # (n_state, n_head, batch, n_q, n_kv, causal, offset)
    (384, 6, 1, 1500, 1500, False, 0),  # encoder, tiny
    (512, 8, 1, 1500, 1500, False, 0),  # encoder, base
    (384, 6, 1, 3, 3, True, 0),  # SOT prompt
    (384, 6, 1, 1, 2, True, 1),
    (384, 6, 2, 3, 4, True, 1),
    (384, 6, 1, 1, 448, True, 447),  # last cache slot
    (512, 8, 1, 3, 450, True, 447),
    (384, 6, 5, 1, 1500, False, 0),  # cross-attention, beam of 5
]


@pytest.mark.parametrize("n_state,n_head,batch,n_q,n_kv,causal,offset", ATTN_CASES)
def test_attention(n_state, n_head, batch, n_q, n_kv, causal, offset):
    q, k, v = (f32(batch, n, n_state, seed=s, scale=2.0) for s, n in ((1, n_q), (2, n_kv), (3, n_kv)))
    ref = REF.attention(q, k, v, n_head, causal, offset)
    check("attention", ORT.attention(strided(q), strided(k), strided(v), n_head, causal, offset), ref)
    p = ORT.attention_weights(strided(q), k, n_head, causal, offset)
    check("attention_weights", p, REF.attention_weights(q, k, n_head, causal, offset))
    assert np.allclose(p.sum(-1), 1.0, atol=1e-5)


# ---- coarse ops -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_state,rows", [(384, 1500), (384, 1), (512, 3)])
def test_mlp_block(n_state, rows):
    w = block_weights(n_state, 1)
    got, ref = bind_both("mlp_block", ln_weight=w["mlp_ln_weight"], ln_bias=w["mlp_ln_bias"], fc1_weight=w["fc1_weight"],
                         fc1_bias=w["fc1_bias"], fc2_weight=w["fc2_weight"], fc2_bias=w["fc2_bias"])
    x = f32(1, rows, n_state, seed=3)
    check("mlp_block", got(strided(x)), ref(x))


@pytest.mark.parametrize("n_state,n_head", [(384, 6), (512, 8)])
def test_encoder_layer(n_state, n_head):
    got, ref = bind_both("encoder_layer", **block_weights(n_state, n_head))
    x = f32(1, 1500, n_state, seed=3)
    check("encoder_layer", got(strided(x)), ref(x))


@pytest.mark.parametrize("n_state,n_head", [(384, 6), (512, 8)])
@pytest.mark.parametrize("batch,n_q,offset", [(1, 3, 0), (1, 1, 0), (1, 1, 1), (1, 1, 447), (1, 3, 100), (2, 1, 5)])
def test_decoder_layer_writes_the_cache_in_place(n_state, n_head, batch, n_q, offset):
    got, ref = bind_both("decoder_layer", **block_weights(n_state, n_head, decoder=True))
    x = f32(batch, n_q, n_state, seed=3)
    cross_k, cross_v = f32(batch, 1500, n_state, seed=4), f32(batch, 1500, n_state, seed=5)
    caches = []
    for _ in range(2):
        kc, vc = f32(batch, 448, n_state, seed=6), f32(batch, 448, n_state, seed=7)
        caches.append((kc, vc))
    (kc, vc), (kr, vr) = caches
    y = got(strided(x), kc, vc, strided(cross_k), cross_v, offset)
    y_ref = ref(x, kr, vr, cross_k, cross_v, offset)
    check("decoder_layer", y, y_ref)
    check("decoder_layer", kc, kr)  # rows [offset, offset + n_q) written, the others untouched
    check("decoder_layer", vc, vr)
    untouched = np.ones(448, bool)
    untouched[offset:offset + n_q] = False
    np.testing.assert_array_equal(kc[:, untouched], f32(batch, 448, n_state, seed=6)[:, untouched])


def test_decoder_layer_steps_through_a_strided_cache():
    """A cache whose rows are not contiguous (a view) is still written in place, via the copy-back path."""
    got, ref = bind_both("decoder_layer", **block_weights(384, 6, decoder=True))
    cross = f32(1, 1500, 384, seed=4), f32(1, 1500, 384, seed=5)
    big_k, big_v = np.zeros((1, 448, 768), np.float32), np.zeros((1, 448, 768), np.float32)
    kc, vc = big_k[..., ::2], big_v[..., ::2]
    kr, vr = np.zeros((1, 448, 384), np.float32), np.zeros((1, 448, 384), np.float32)
    x = f32(1, 3, 384, seed=3)
    check("decoder_layer", got(x, kc, vc, *cross, 0), ref(x, kr, vr, *cross, 0))
    for off in range(3, 6):
        x = f32(1, 1, 384, seed=off)
        check("decoder_layer", got(x, kc, vc, *cross, off), ref(x, kr, vr, *cross, off))
    check("decoder_layer", np.ascontiguousarray(kc), kr)
    check("decoder_layer", np.ascontiguousarray(vc), vr)


def test_decoder_layer_refuses_a_short_cache():
    got, _ = bind_both("decoder_layer", **block_weights(384, 6, decoder=True))
    kc = np.zeros((1, 4, 384), np.float32)
    with pytest.raises(ValueError, match="KV cache"):
        got(f32(1, 3, 384), kc, kc.copy(), f32(1, 1500, 384), f32(1, 1500, 384), 2)


# ---- sessions and threads ----------------------------------------------------------------------------------
def test_layers_of_one_shape_share_one_session_created_lazily():
    be = OnnxRuntimeBackend()
    ops = Ops(be, REF)
    layers = [ops.bind("encoder_layer", **block_weights(384, 6, seed=s)) for s in range(3)]
    assert all(s.sess is None for s in be._sessions.values())  # nothing created at load time
    assert len(be._sessions) == 1
    x = f32(1, 20, 384)
    outs = [layer(x) for layer in layers]
    assert not np.allclose(outs[0], outs[1])  # each layer ran its own weights through the shared session
    for layer, seed, out in zip(layers, range(3), outs):
        check("encoder_layer", out, Ops(REF, REF).bind("encoder_layer", **block_weights(384, 6, seed=seed))(x))


def test_set_num_threads_rebuilds_sessions():
    be = OnnxRuntimeBackend()
    got = Ops(be, REF).bind("linear", weight=f32(64, 32, seed=1), bias=f32(64, seed=2))
    x = f32(1, 5, 32)
    y = got(x)
    (sess,) = be._sessions.values()
    first = sess.sess
    be.set_num_threads(1)
    y1 = got(x)
    assert sess.sess is not first and sess.threads == 1
    assert sess.sess.get_session_options().intra_op_num_threads == 1
    np.testing.assert_array_equal(y, y1)
    with pytest.raises(ValueError):
        be.set_num_threads(0)


# ---- end to end -----------------------------------------------------------------------------------------
def test_transcription_tokens_equal_the_reference(tiny_numpy):
    from whisperkit import load_model
    audio = str(shared("audio", "jfk_16k.wav"))
    want = [s.tokens for s in tiny_numpy.transcribe(audio).segments]
    model = load_model("tiny.en", backend="onnxruntime")
    assert [s.tokens for s in model.transcribe(audio).segments] == want
    assert not model.ops.fallbacks  # every op ran on onnxruntime


def test_two_threads_share_the_weightless_runners():
    """Two Python threads calling the same op (the backend's shared gelu/attention sessions) get their own results."""
    from concurrent.futures import ThreadPoolExecutor
    xs = [f32(1, 384, 3000, seed=s, scale=3.0) for s in range(4)]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(ORT.gelu, xs * 3))
    for x, y in zip(xs * 3, outs):
        np.testing.assert_array_equal(y, ORT.gelu(x))
