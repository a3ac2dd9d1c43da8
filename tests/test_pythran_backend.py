"""What is particular to the Pythran backend.  Its ops' values at Whisper's shapes and layouts are the conformance
suite's (`whisperkit conformance --backend pythran`, run by tests/test_conformance.py), and what every built-in
backend must do (including being unusable, with the reason, when its compiled kernels are missing) is in
tests/test_backends.py; here: the kernels it was built with are found, and the two paths of decoder_step
(float16 bits widened in the step kernel, prompts on BLAS) compute what the float32 step kernel does.  The kernels are compiled at install time;
if they are missing these tests fail."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from whisperkit.backends.pythran_backend import PythranBackend, S

PT = PythranBackend()
PT.load()


def test_built():
    assert PT.name == "pythran" and PT.version != "not built"


def _step_case(rng, d=64, n_head=2, n_layer=2, n_vocab=300, scale=0.05):
    """Random decoder_step weights holding float16 values (with zeros and subnormals), as float32."""
    def f16(*shape):
        a = (rng.standard_normal(shape) * scale).astype(np.float16)
        flat = a.reshape(-1)
        flat[rng.integers(0, flat.size, 8)] = 0
        flat[rng.integers(0, flat.size, 8)] = np.float16(3e-6) * rng.choice([-1, 1], 8)  # subnormals
        return a.astype(np.float32)

    def layer():
        kw = {"n_head": n_head}
        for name, (n_out, n_in) in {"qkv": (3 * d, d), "out": (d, d), "cross_q": (d, d), "cross_out": (d, d),
                                    "fc1": (4 * d, d), "fc2": (d, 4 * d)}.items():
            kw[f"{name}_weight"], kw[f"{name}_bias"] = f16(n_out, n_in), f16(n_out)
        for name in ("attn_ln", "cross_ln", "mlp_ln"):
            kw[f"{name}_weight"], kw[f"{name}_bias"] = 1 + f16(d), f16(d)
        return kw

    return dict(layers=tuple(layer() for _ in range(n_layer)), ln_weight=1 + f16(d), ln_bias=f16(d),
                logits_weight=f16(n_vocab, d))


def _caches(rng, n_layer, batch, batch_c, d, n_ctx=32, n_audio=24):
    kv = [np.zeros((n_layer, batch, n_ctx, d), np.float32) for _ in range(2)]
    kv[0][:, :, :5], kv[1][:, :, :5] = rng.standard_normal((2, n_layer, batch, 5, d))
    cross = rng.standard_normal((2, n_layer, batch_c, n_audio, d)).astype(np.float32)
    return kv[0], kv[1], cross[0], cross[1]


def test_step_float16_weights_widen_exactly():
    """The step kernel on float16 bits gives the float32 kernel's logits and caches bit for bit: the
    widening (bit shuffle, zeros and subnormals patched in) is exact, and the build did not reorder it."""
    rng = np.random.default_rng(0)
    w16 = PT.prepare_decoder_step(**_step_case(rng))
    assert w16.fp16
    arrays = tuple(a.view(np.float16).astype(np.float32) if getattr(a, "dtype", None) == np.uint16 else a
                   for a in w16.arrays)
    w32 = SimpleNamespace(**{**vars(w16), "arrays": arrays, "kernel": S.step32, "fp16": False})
    x = rng.standard_normal((5, 1, 64)).astype(np.float32)
    out = []
    for w in (w16, w32):
        caches = _caches(np.random.default_rng(1), 2, 5, 1, 64)
        out.append((PT.decoder_step(x, w, *caches, 5, (-1,)), caches[0], caches[1]))
    for a, b in zip(*out):
        assert np.array_equal(a, b)


def test_draft_and_head_give_the_one_row_steps_logits_bit_for_bit():
    """The contract's decoder_step `draft` and `head` on the float16 step: a draft step's final LayerNorm row gives,
    through head, the plain one-row step's logits; its draft columns hold them, the others are -inf; head of several
    rows gives each row's bits; and a draft of more than one row, or on a float32 step, is one clear error."""
    rng = np.random.default_rng(3)
    case = _step_case(rng, n_vocab=300)
    w = PT.prepare_decoder_step(**case)
    columns = np.array([0, 5, 31, 32, 77, 299], np.int64)  # blocks 0, 1, 2 and 9 of 32
    rows, plain = [], []
    for t in range(4):
        x = rng.standard_normal((1, 1, 64)).astype(np.float32)
        a, b = _caches(np.random.default_rng(t), 2, 1, 1, 64), _caches(np.random.default_rng(t), 2, 1, 1, 64)
        want = PT.decoder_step(x, w, *a, 5, (-1,))[0, -1]
        hidden = np.empty((1, 64), np.float32)
        got = PT.decoder_step(x, w, *b, 5, (-1,), draft=(columns, hidden))[0, -1]
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # the same caches written
        assert w.head(hidden)[0].tobytes() == want.tobytes()
        assert got[columns].tobytes() == want[columns].tobytes()
        others = np.setdiff1d(np.arange(300), columns)
        assert np.all((got[others] == -np.inf) | (got[others] == want[others])) and np.isinf(got[others]).any()
        rows.append(hidden[0].copy())
        plain.append(want)
    assert w.head(np.stack(rows)).tobytes() == np.stack(plain).tobytes()
    x2 = rng.standard_normal((2, 1, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="a draft step is one row of one position here"):
        PT.decoder_step(x2, w, *_caches(rng, 2, 2, 1, 64), 5, (-1,), draft=(columns, np.empty((2, 64), np.float32)))
    with pytest.raises(ValueError, match="draft columns must be a 1-d integer array of ids in 0..299"):
        PT.decoder_step(x2[:1], w, *_caches(rng, 2, 1, 1, 64), 5, (-1,), draft=(np.array([300]), np.empty((1, 64), np.float32)))
    case["logits_weight"] = case["logits_weight"] + np.float32(1e-7)  # not float16: a float32 step, no head
    w32 = PT.prepare_decoder_step(**case)
    assert not w32.fp16 and getattr(w32, "head", None) is None
    with pytest.raises(ValueError, match="`draft` needs the prepared object's `head`"):
        PT.decoder_step(x2[:1], w32, *_caches(rng, 2, 1, 1, 64), 5, (-1,), draft=(columns, np.empty((1, 64), np.float32)))


def test_every_finite_float16_widens_to_its_float32():
    """The step kernel's widening of float16 bits, alone: a logits weight holding every finite float16 bit
    pattern (both signs, every exponent, zeros and subnormals through the patch list), read one column at a
    time.  The final LayerNorm with weight 0 and a one-hot bias hands the projection the unit vector e_k,
    so the logits are column k of the weight, widened, plus zeros."""
    from whisperkit.backends.pythran_backend import _exponent0_patches
    bits = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16)
    bits = bits[(bits & 0x7C00) != 0x7C00]  # not inf or nan: 63488 patterns
    d = 16
    w = bits[: bits.size // d * d].reshape(1, -1, d)
    rps, pc, pv = _exponent0_patches([w])
    want = w[0].view(np.float16).astype(np.float32)
    for k in range(d):
        bias = np.zeros((1, d), np.float32)
        bias[0, k] = 1.0
        got = S.logits16(np.ones((1, d), np.float32), np.zeros((1, d), np.float32), bias, w,
                         np.zeros((1, w.shape[1]), np.float32), rps[0], pc, pv)
        assert np.array_equal(got[0], want[:, k]), k  # as values: -0.0 comes out as 0 * 1 + -0.0 = +0.0


def test_long_attention_is_the_same_on_any_number_of_threads(monkeypatch):
    """The encoder's attention runs whole heads on threads of their own, each on a one-thread BLAS: one
    thread or two give the same bits, the BLAS setting is the process's again after, and where OpenBLAS
    cannot set one thread's BLAS threads the heads run in turn to the same values within rounding."""
    import whisperkit.backends.pythran_backend as pb
    from whisperkit.threads import get_num_threads, set_num_threads
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((3, 2, 700, 384)).astype(np.float32)  # 700 rows: two blocks of BLOCK_ROWS
    assert 700 > pb.BLOCK_ROWS and 700 > pb.ROWS_FUSED_MAX
    before = get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            set_num_threads(n)
            outs.append(PT.attention(q, k, v, 6))
            assert PT._blas.set_local_threads(n) == n  # the setting it returns is the one attention left
    finally:
        set_num_threads(before)
    assert np.array_equal(outs[0], outs[1])
    monkeypatch.setattr(PT._blas, "set_local_threads", None)
    alone = PT.attention(q, k, v, 6)
    np.testing.assert_allclose(alone, outs[0], rtol=0, atol=1e-5)  # GEMMs on every thread sum in another order


@pytest.mark.parametrize("n_audio", [1, 2, 3, 5, 8, 23])
def test_step_cross_attention_at_any_key_count(n_audio):
    """The step kernel cuts an audio's keys in two halves, the first a multiple of four: every key count, down
    to a few, gives the reference's logits (each key counted once), for a greedy row and for a group of beams."""
    from helpers import assert_matches_reference
    from whisperkit.registry import get_registry
    case = _step_case(np.random.default_rng(2))
    steps = [get_registry().ops(name).bind("decoder_step", **case) for name in ("pythran", "numpy")]
    assert steps[0].backend_name == "pythran" and steps[1].backend_name == "numpy"
    for batch in (1, 3):  # one row, and three beams sharing one audio's cross K/V
        x = np.random.default_rng(4).standard_normal((batch, 1, 64)).astype(np.float32)
        out = [step(x, *_caches(np.random.default_rng(1), 2, batch, 1, 64, n_audio=n_audio), 5, (-1,))
               for step in steps]
        assert_matches_reference("decoder_step", out[0], out[1])


def test_step_prompt_rows_on_blas_match_the_step_kernel(monkeypatch):
    """Many rows (a prompt) run layer by layer on BLAS; the step kernel computes the same."""
    import whisperkit.backends.pythran_backend as pb
    rng = np.random.default_rng(2)
    weights = _step_case(rng)
    weights["layers"][0]["qkv_weight"][0, 0] = np.float32(0.1)  # not a float16 value: the float32 kernel
    w = PT.prepare_decoder_step(**weights)
    assert not w.fp16
    x = rng.standard_normal((2, 12, 64)).astype(np.float32)
    got = {}
    for rows_max in (1, 64):
        monkeypatch.setattr(pb, "STEP_ROWS_MAX", rows_max)
        caches = _caches(np.random.default_rng(3), 2, 2, 1, 64)
        got[rows_max] = (PT.decoder_step(x, w, *caches, 5, (0, -1)), caches[0])
    np.testing.assert_allclose(got[1][0], got[64][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1][1], got[64][1], rtol=1e-5, atol=1e-5)


def test_listing_the_backends_does_not_load_the_kernels():
    """The registry imports every plugin to list it; the compiled modules (and libgomp with OMP_WAIT_POLICY=PASSIVE,
    which would then slow Numba's OpenMP threads in the same process) wait until pythran is used."""
    import os
    import subprocess
    import sys
    code = ("import os, sys; from whisperkit.registry import get_registry; infos = get_registry().infos; "
            "print(infos['pythran'].usable, 'whisperkit.backends.pythran_backend._kernels' in sys.modules, "
            "os.environ.get('OMP_WAIT_POLICY')); "
            "get_registry().get('pythran'); "
            "print('whisperkit.backends.pythran_backend._kernels' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["True False None", "True PASSIVE"]


def test_load_makes_numpy_blas_workers_sleep_at_once():
    """After pythran's load, NumPy's OpenBLAS has read the shortest spin for its workers (so they do not hold a core
    while the OpenMP kernels run between the encoder's GEMMs) and restarted them, libgomp spins briefly, and a GEMM
    after the restart still gives the right products."""
    import os
    import subprocess
    import sys
    code = ("import os, numpy as np; from whisperkit.registry import get_registry; "
            "from whisperkit.threads import set_num_threads; set_num_threads(2); "
            "be = get_registry().get('pythran'); "
            "t = be._blas.lib.openblas_thread_timeout(); "
            "a = np.random.default_rng(0).standard_normal((600, 700)).astype(np.float32); "
            "ok = np.allclose(a @ a.T, (a.astype(np.float64) @ a.T.astype(np.float64)), rtol=1e-4, atol=1e-3); "
            "print(t, os.environ.get('OPENBLAS_THREAD_TIMEOUT'), os.environ.get('GOMP_SPINCOUNT'), ok)")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "4", "3000", "True"]
