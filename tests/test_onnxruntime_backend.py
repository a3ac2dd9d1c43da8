"""What is particular to the ONNX Runtime backend.  Its ops' values at Whisper's shapes and layouts are the
conformance suite's (`whisperkit conformance --backend onnxruntime`, run by tests/test_conformance.py), and what
every built-in backend must do (the missing-library path, the KV cache written in place through pointer binding and
the copy-back path, runners shared by threads, the transcription's tokens) is in tests/test_backends.py; here: its
version, the exact-GELU option, and sessions shared by layers of one shape and rebuilt on a thread change.  Values are
compared with the suite's tolerance for the op (`assert_matches_reference`)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_matches_reference, f32, strided
from whisperkit.backend import Ops
from whisperkit.backends.numpy_backend import NumpyBackend
from whisperkit.conformance.cases import CASES

ort = pytest.importorskip("onnxruntime")
from whisperkit.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402

REF = NumpyBackend()
ORT = OnnxRuntimeBackend()


# ---- registration ----------------------------------------------------------------------------------
def test_version():
    from whisperkit.registry import get_registry
    assert get_registry().infos["onnxruntime"].version == ort.__version__ == ORT.version


# ---- options ----------------------------------------------------------------------------------------------
def test_gelu_exact_option_is_bit_equal_to_reference():
    exact = OnnxRuntimeBackend(exact_gelu=True)
    x = np.concatenate([f32(100_000, seed=6, scale=4.0), np.linspace(-20, 20, 4001, dtype=np.float32),
                        np.array([-3e38, 3e38, -1e30, 1e30, 0.0, -1e-45], np.float32)])
    got = exact.gelu(strided(x[None])[0])
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, REF.gelu(x))


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
