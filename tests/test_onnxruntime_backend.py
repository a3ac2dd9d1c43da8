"""What is particular to the ONNX Runtime backend.  Its ops' values at Whisper's shapes and layouts are the
conformance suite's (`whisperkit conformance --backend onnxruntime`, run by tests/test_conformance.py); here:
registration and the missing-library path, the exact-GELU option, the KV cache written in place through pointer
binding (a beam with strided inputs) and through the copy-back path (a strided cache), sessions shared by layers of
one shape and rebuilt on a thread change, runners shared by threads, and the transcription's tokens.  Values are
compared with the suite's tolerance for the op (`assert_matches_reference`)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import shared
from test_conformance import assert_decode_steps_match_reference, assert_matches_reference
from whisperkit.backend import Ops
from whisperkit.backends.numpy_backend import NumpyBackend
from whisperkit.conformance.cases import CASES

ort = pytest.importorskip("onnxruntime")
from whisperkit.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402

REF = NumpyBackend()
ORT = OnnxRuntimeBackend()
#: a tiny decoder layer's weights (n_state 384, 6 heads), from the conformance table
DECODER = CASES["decoder_layer/tiny_1_off3"].make().weights


def f32(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def strided(a):
    """The same values as `a` in a non-contiguous view (every other element of a wider buffer)."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), np.float32)
    big[..., ::2] = a
    v = big[..., ::2]
    assert not v.flags.c_contiguous
    return v


def bind_both(op, **weights):
    return Ops(ORT, REF).bind(op, **weights), Ops(REF, REF).bind(op, **weights)


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


# ---- options and bad input ---------------------------------------------------------------------------
def test_gelu_exact_option_is_bit_equal_to_reference():
    exact = OnnxRuntimeBackend(exact_gelu=True)
    x = np.concatenate([f32(100_000, seed=6, scale=4.0), np.linspace(-20, 20, 4001, dtype=np.float32),
                        np.array([-3e38, 3e38, -1e30, 1e30, 0.0, -1e-45], np.float32)])
    got = exact.gelu(strided(x[None])[0])
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, REF.gelu(x))


def test_linear_rejects_a_wrong_input_width():
    linear, _ = bind_both("linear", weight=f32(51864, 384, seed=1, scale=0.05), bias=None)
    with pytest.raises(ValueError, match="385"):
        linear(f32(1, 3, 385))


# ---- the KV cache ------------------------------------------------------------------------------------------
def test_decoder_layer_binds_strided_inputs_of_a_beam_and_writes_the_cache_in_place():
    """Strided x and cross keys bound by pointer, a beam of 2: rows [offset, offset + n_q) of the caches written
    in place as the reference writes them, the other rows untouched."""
    batch, n_q, offset = 2, 1, 5
    got, ref = bind_both("decoder_layer", **DECODER)
    x = f32(batch, n_q, 384, seed=3)
    cross_k, cross_v = f32(batch, 1500, 384, seed=4), f32(batch, 1500, 384, seed=5)
    (kc, vc), (kr, vr) = [(f32(batch, 448, 384, seed=6), f32(batch, 448, 384, seed=7)) for _ in range(2)]
    k_ptr = kc.ctypes.data
    y = got(strided(x), kc, vc, strided(cross_k), cross_v, offset)
    assert_matches_reference("decoder_layer", y, ref(x, kr, vr, cross_k, cross_v, offset))
    assert kc.ctypes.data == k_ptr
    assert_matches_reference("decoder_layer", kc, kr)
    assert_matches_reference("decoder_layer", vc, vr)
    untouched = np.ones(448, bool)
    untouched[offset:offset + n_q] = False
    np.testing.assert_array_equal(kc[:, untouched], f32(batch, 448, 384, seed=6)[:, untouched])
    assert not np.array_equal(kc[:, offset], f32(batch, 448, 384, seed=6)[:, offset]), "the new row was not written"


def test_decoder_layer_steps_through_a_strided_cache():
    """A cache whose rows are not contiguous (a view) is still written in place, via the copy-back path."""
    assert_decode_steps_match_reference(ORT, [(0, 3), (3, 1), (4, 1), (5, 1)], strided_cache=True)


def test_decoder_layer_refuses_a_short_cache():
    got, _ = bind_both("decoder_layer", **DECODER)
    kc = np.zeros((1, 4, 384), np.float32)
    with pytest.raises(ValueError, match="KV cache"):
        got(f32(1, 3, 384), kc, kc.copy(), f32(1, 1500, 384), f32(1, 1500, 384), 2)


# ---- sessions and threads ----------------------------------------------------------------------------------
def test_layers_of_one_shape_share_one_session_created_lazily():
    be = OnnxRuntimeBackend()
    ops = Ops(be, REF)
    cases = ("encoder_layer/tiny_1500", "encoder_layer/tiny_7", "encoder_layer/strided_x")  # 384 wide, 6 heads
    weights = [CASES[c].make().weights for c in cases]
    layers = [ops.bind("encoder_layer", **w) for w in weights]
    assert all(s.sess is None for s in be._sessions.values())  # nothing created at load time
    assert len(be._sessions) == 1
    x = f32(1, 20, 384)
    outs = [layer(x) for layer in layers]
    assert not np.allclose(outs[0], outs[1])  # each layer ran its own weights through the shared session
    for w, out in zip(weights, outs):
        assert_matches_reference("encoder_layer", out, Ops(REF, REF).bind("encoder_layer", **w)(x))


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
