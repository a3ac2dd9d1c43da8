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
def test_layers_have_sessions_of_constant_weights_created_ahead():
    """Encoder layers are graphs of constant (pre-packed) weights: one session per layer, created on a background
    thread as the layers are prepared, ahead of their first run (`_prebuild`)."""
    be = OnnxRuntimeBackend()
    ops = Ops(be, REF)
    cases = ("encoder_layer/tiny_1500", "encoder_layer/tiny_7", "encoder_layer/strided_x")  # 384 wide, 6 heads
    weights = [CASES[c].make().weights for c in cases]
    layers = [ops.bind("encoder_layer", **w) for w in weights]
    assert len(be._sessions) == 3
    assert all(not layer.w.run.weights for layer in layers)  # nothing bound: all constants
    builder = be._builder
    if builder is not None:
        builder.join(timeout=300)
    assert all(s.sess is not None for s in be._sessions.values()) and not be._pending
    x = f32(1, 20, 384)
    outs = [layer(x) for layer in layers]
    for w, out in zip(weights, outs):
        assert_matches_reference("encoder_layer", out, Ops(REF, REF).bind("encoder_layer", **w)(x))


def test_bound_weights_share_one_session():
    """Linears of one shape bind their weights to one shared session."""
    be = OnnxRuntimeBackend()
    ops = Ops(be, REF)
    lins = [ops.bind("linear", weight=f32(64, 32, seed=s), bias=f32(64, seed=s + 1)) for s in (1, 3)]
    assert len(be._sessions) == 1
    x = f32(1, 5, 32)
    a, b = (lin(x) for lin in lins)
    assert not np.allclose(a, b)


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


# ---- decoder_step: one graph per step --------------------------------------------------------------------------
def _step_weights():
    return CASES["decoder_step/tiny_beam5_shared_cross_1_off20"].make().weights  # 4 tiny layers, random fp32 weights


@pytest.mark.parametrize("audios, group, strided_cache, steps", [
    (1, 1, False, ((0, 3, (0, -1)), (3, 1, (-1,)), (4, 1, (0,)))),
    (2, 3, False, ((0, 3, (0, -1)), (3, 1, (-1,)), (4, 1, (0,)))),
    (1, 2, True, ((0, 3, (0, -1)), (3, 1, (-1,)), (4, 1, (0,)))),
    (1, 1, False, ((0, 1, (-1,)), (1, 1, (-1,)), (2, 3, (-1,)))),
], ids=["greedy", "2audios_3beams", "strided_cache", "one_token_at_0_then_a_block"])
def test_decoder_step_paths_write_the_cache_in_place(audios, group, strided_cache, steps):
    """Each path of the step graph against the reference over a few steps: one new token per row (the cache
    prefix and the new row attended where they are) or several (MultiHeadAttention on their concatenation),
    one query per audio (the cross K/V read in place) or several, one logits row (the bound transpose) or
    several (the pre-packed constant), new k/v rows bound onto a batch-1 cache, copied into a batch-n one or
    into a strided view.  Nothing outside the steps' rows is written."""
    weights = _step_weights()
    got = Ops(ORT, REF).bind("decoder_step", **weights)
    want = Ops(REF, REF).bind("decoder_step", **weights)
    assert got.backend_name == "onnxruntime"
    n_layer, n, batch = len(weights["layers"]), 384, audios * group
    rng = np.random.default_rng(3)
    cross = [rng.standard_normal((n_layer, audios, 1500, n)).astype(np.float32) for _ in range(2)]
    shape = (n_layer, batch, 448, n)
    if strided_cache:
        buffers = [np.zeros(shape[:-1] + (2 * n,), np.float32) for _ in range(2)]
        kc, vc = (b[..., ::2] for b in buffers)
    else:
        kc, vc = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    kr, vr = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for offset, n_q, positions in steps:
        x = rng.standard_normal((batch, n_q, n)).astype(np.float32)
        out = got(x, kc, vc, *cross, offset, positions)
        assert out.shape == (batch, len(positions), weights["logits_weight"].shape[0])
        assert_matches_reference("decoder_step", out, want(x, kr, vr, *cross, offset, positions))
        for mine, theirs in ((kc, kr), (vc, vr)):
            assert_matches_reference("decoder_step", np.ascontiguousarray(mine), theirs)
    assert not kc[:, :, 5:].any() and not vc[:, :, 5:].any()
    if strided_cache:
        assert not any(b[..., 1::2].any() for b in buffers), "cache written between the view's elements"


@pytest.mark.parametrize("audios, group", [(1, 1), (2, 3)], ids=["greedy", "2audios_3beams"])
def test_decoder_step_reads_the_cross_layout_it_made(audios, group):
    """The prepared step offers `cross_layout` (the contract): K as (n_layer, b_c, n_head, d_head, n_audio), V as
    (n_layer, b_c, n_head, n_audio, d_head), each head's block the one of the arrays it was made from, the keys
    scaled by the attention's 1/sqrt(d_head) = 1/8 (a power of two, so exactly: `graphs.keys_scaled`).  Given as
    `cross=`, the step gives the same bits as laying them out itself (cross=None)."""
    weights = _step_weights()
    got = Ops(ORT, REF).bind("decoder_step", **weights)
    n_layer, n, batch = len(weights["layers"]), 384, audios * group
    rng = np.random.default_rng(5)
    cross = [rng.standard_normal((n_layer, audios, 1500, n)).astype(np.float32) for _ in range(2)]
    kt, vh = got.w.cross_layout(*cross)
    assert kt.shape == (n_layer, audios, 6, 64, 1500) and vh.shape == (n_layer, audios, 6, 1500, 64)
    assert kt.flags.c_contiguous and vh.flags.c_contiguous and kt.dtype == vh.dtype == np.float32
    np.testing.assert_array_equal(kt[3, audios - 1, 4], cross[0][3, audios - 1, :, 256:320].T * np.float32(0.125))
    np.testing.assert_array_equal(vh[2, 0, 5], cross[1][2, 0, :, 320:384])
    caches = [[np.zeros((n_layer, batch, 448, n), np.float32) for _ in range(2)] for _ in range(2)]
    for offset, n_q in ((0, 3), (3, 1), (4, 1)):
        x = rng.standard_normal((batch, n_q, n)).astype(np.float32)
        alone = got(x, *caches[0], *cross, offset, (-1,))
        given = got(x, *caches[1], *cross, offset, (-1,), cross=(kt, vh))
        np.testing.assert_array_equal(given, alone)
    np.testing.assert_array_equal(caches[1][0], caches[0][0])


def test_model_lays_out_a_window_once(tiny_on):
    """The model makes the step's cross layout once per window and shares it: a beam search (its prompt runs on
    the cache of one row per audio) and the same features decoded again (set_audio's memo) add no layout.  Rows
    leaving a batch replace the cross arrays: the next step lays them out again, and its logits are those of a
    fresh cache over the kept row (not the row that left: its audio is another)."""
    from whisperkit.decoding import DecodingOptions, decode
    model = tiny_on("onnxruntime")
    dec = model.graph.decoder
    made = []
    layout = dec._cross_layout
    dec._cross_layout = lambda k, v: made.append(1) or layout(k, v)
    try:
        feats = np.random.default_rng(2).standard_normal((1, 1500, 384)).astype(np.float32)
        decode(model.graph, model.tokenizer, feats, DecodingOptions(beam_size=3, without_timestamps=True, sample_len=4))
        assert len(made) == 1
        decode(model.graph, model.tokenizer, feats.copy(), DecodingOptions(without_timestamps=True, sample_len=4))
        assert len(made) == 1
        two = np.concatenate([feats, feats[:, ::-1]])
        cache = model.graph.new_cache(two)
        tokens = np.array([[50257, 50362], [50257, 50362]])
        model.graph.decoder(tokens, cache, 0)
        assert len(made) == 2
        cache.select(np.array([1]), filled=2)
        got = model.graph.decoder(tokens[1:, 1:], cache, 1)
        assert len(made) == 3
    finally:
        dec._cross_layout = layout
    fresh = model.graph.new_cache(two[1:])
    model.graph.decoder(tokens[1:, :1], fresh, 0)
    # one row's GEMMs against two rows' may round differently: the op's tolerance
    assert_matches_reference("decoder_step", got, model.graph.decoder(tokens[1:, 1:], fresh, 1))


def test_decoder_step_has_its_own_session_of_constant_weights():
    """The step's weights are constants of its own session (pre-packed by ORT), except the bound transpose of the
    logits weight for single rows; two models never share it."""
    be = OnnxRuntimeBackend()
    ops = Ops(be, REF)
    steps = [ops.bind("decoder_step", **_step_weights()) for _ in range(2)]
    sessions = [s.w.run.session for s in steps]
    assert sessions[0] is not sessions[1]
    assert list(steps[0].w.run.weights) == ["logits.wT"]
    assert len(sessions[0].constants) > 4 * 8


def test_only_the_decoder_step_session_spins():
    """The step's session keeps its pool spinning between its nodes, not after its run; every other session's pool
    sleeps (two spinning pools on two cores steal each other's core: the module comment)."""
    be = OnnxRuntimeBackend()
    ops = Ops(be, REF)
    step = ops.bind("decoder_step", **_step_weights())
    layer = ops.bind("encoder_layer", **CASES["encoder_layer/tiny_7"].make().weights)
    x = f32(1, 7, 384)
    layer(x)
    step(f32(1, 1, 384, seed=2), *[np.zeros((4, 1, 448, 384), np.float32) for _ in range(2)],
         *[f32(4, 1, 1500, 384, seed=s) for s in (3, 4)], 0, (-1,))
    spins = [s.sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
             for s in (step.w.run.session, layer.w.run.session)]
    assert spins == ["1", "0"]
    # and it stops at the end of each run: the next window's encoder gets the core
    assert step.w.run.session.sess.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"


@pytest.mark.parametrize("user_timeout", [None, "6"])
def test_load_makes_numpy_blas_workers_sleep_at_once(user_timeout):
    """After onnxruntime's load, NumPy's OpenBLAS has restarted its workers with the shortest spin (so a worker
    left spinning by the log-mel's GEMM does not hold a core while ORT's threads run the encoder), a GEMM after
    the restart still gives the right products, and a timeout the user set is kept."""
    import os
    import subprocess
    import sys
    code = ("import ctypes, os, numpy as np; from whisperkit.registry import get_registry; "
            "from whisperkit.threads import numpy_openblas_paths, set_num_threads; set_num_threads(2); "
            "a = np.random.default_rng(0).standard_normal((600, 700)).astype(np.float32); a @ a.T; "
            "get_registry().get('onnxruntime'); "
            "t = ctypes.CDLL(numpy_openblas_paths()[0]).openblas_thread_timeout(); "
            "ok = np.allclose(a @ a.T, (a.astype(np.float64) @ a.T.astype(np.float64)), rtol=1e-4, atol=1e-3); "
            "print(t, os.environ.get('OPENBLAS_THREAD_TIMEOUT'), ok)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if user_timeout is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = user_timeout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    want = user_timeout or "4"
    assert out.stdout.split() == [want, want, "True"]
