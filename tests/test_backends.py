"""What every built-in backend (numba, pythran, onnxruntime) must do beyond the conformance table, checked the same
way on each: it is usable and implements every op, it still imports and says why when its library or kernels are
missing, a clear error for a wrong input width, the KV cache written through its own paths (decode steps of one
sequence or a beam, caches that are not C-contiguous, strided inputs) and refused outside its rows, one thread
conforming, the transcription's tokens, and two Python threads sharing it.  Values are compared with the suite's
tolerance for the op (`helpers.assert_matches_reference`, `whisperkit.conformance.checks.run_case`).  What is
particular to one backend is in its own test file."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import (
    BUILTIN,
    BUILTIN_BACKENDS,
    LEFT_TO_REFERENCE,
    assert_decode_steps_match_reference,
    assert_matches_reference,
    bind_both,
    decoder_weights,
    f32,
    new_backend,
    run_op_case,
    shared,
    strided,
)
from whisperkit.contract import OPS

ALL_OPS = {"linear", "conv1d", "layer_norm", "gelu", "log_softmax", "logsumexp", "top_k", "attention", "attention_weights",
           "mlp_block", "encoder_stem", "encoder_layer", "decoder_layer", "decoder_step"}


@pytest.fixture(params=BUILTIN_BACKENDS)
def backend(request):
    return new_backend(request.param)


# ---- registration ----------------------------------------------------------------------------------
def test_usable_and_complete(backend):
    from whisperkit.registry import get_registry
    assert backend.unavailable_reason() is None
    assert set(OPS) == ALL_OPS
    assert set(backend.implemented_ops()) == ALL_OPS - LEFT_TO_REFERENCE.get(backend.name, set())
    info = get_registry().infos[backend.name]
    assert info.usable, info.reason
    assert set(info.ops) == set(backend.implemented_ops())


#: what a backend says when what it needs cannot be imported: (module names blocked, words of the reason)
MISSING = {
    "numba": (("numba",), ("Numba",)),
    "pythran": (("whisperkit.backends.pythran_backend._kernels",), ("compiled kernels not found", "reinstall")),
    "onnxruntime": (("onnxruntime", "onnx"), ("onnxruntime", "cannot be imported")),
}


@pytest.mark.parametrize("name", BUILTIN_BACKENDS)
def test_imports_and_says_why_when_its_library_is_missing(name):
    """The module still imports; the backend is listed as unusable with the reason, by itself and in the registry."""
    blocked, words = MISSING[name]
    _, module, cls = BUILTIN[name]
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        BLOCKED = {blocked!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in BLOCKED or name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError("simulated: " + name)
        sys.meta_path.insert(0, Block())
        from {module} import {cls}
        print({cls}().unavailable_reason())
        from whisperkit.registry import get_registry
        info = get_registry().infos[{name!r}]
        print(info.usable, "|", info.reason)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    own, listed = out.stdout.strip().splitlines()[-2:]
    usable, reason = listed.split(" | ", 1)
    assert usable == "False"
    for word in words:
        assert word in own and word in reason, (word, own, reason)


# ---- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_out", [8, 51864])
def test_linear_rejects_a_wrong_input_width(backend, n_out):
    linear, _ = bind_both(backend, "linear", weight=f32(n_out, 384, seed=1, scale=0.05), bias=None)
    with pytest.raises(ValueError, match="385 features.*expects 384"):
        linear(f32(1, 3, 385))


#: backend -> how its refusal of a step outside the KV cache reads
CACHE_REFUSAL = {"numba": "outside the KV cache", "onnxruntime": "KV cache", "pythran": "outside the KV cache"}


@pytest.mark.parametrize("name", sorted(CACHE_REFUSAL))
@pytest.mark.parametrize("cache_len,n_q,offset", [(448, 2, 447), (4, 3, 2)])
def test_decoder_layer_refuses_a_step_outside_the_cache(name, cache_len, n_q, offset):
    got, _ = bind_both(new_backend(name), "decoder_layer", **decoder_weights())
    kc = np.zeros((1, cache_len, 384), np.float32)
    with pytest.raises(ValueError, match=CACHE_REFUSAL[name]):
        got(f32(1, n_q, 384), kc, kc.copy(), f32(1, 1500, 384), f32(1, 1500, 384), offset)


# ---- the KV cache ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,batch,strided_cache", [
    # a prompt of 3 tokens, single-token steps (numba reuses work buffers kept per row count), then the last
    # positions of the context (447), for one sequence or a beam of 5; a strided cache goes through contiguous
    # copies written back
    ([(0, 3), (3, 1), (4, 1), (444, 3), (447, 1)], 1, False),
    ([(0, 3), (3, 1), (4, 1), (444, 3), (447, 1)], 5, False),
    ([(0, 3), (3, 1), (4, 1), (444, 3), (447, 1)], 1, True),
    # a cache whose rows are not contiguous (a view) is still written in place, via the copy-back path
    ([(0, 3), (3, 1), (4, 1), (5, 1)], 1, True),
], ids=["1-to_the_end", "beam5-to_the_end", "1-strided-to_the_end", "1-strided-short"])
def test_decoder_layer_steps(backend, steps, batch, strided_cache):
    assert_decode_steps_match_reference(backend, steps, batch, strided_cache)


def test_decoder_layer_writes_the_cache_of_a_beam_in_place_from_strided_inputs(backend):
    """Strided x and cross keys (onnxruntime binds them by pointer), a beam of 2: rows [offset, offset + n_q) of the
    caches written in place as the reference writes them, the other rows untouched."""
    batch, n_q, offset = 2, 1, 5
    got, ref = bind_both(backend, "decoder_layer", **decoder_weights())
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


# ---- threads -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["attention/tiny_encoder_1500", "linear/tiny_fc1_1500"])
def test_one_thread_conforms(backend, case):
    """The kernels (and NumPy's BLAS) on one thread still give the reference's values (the suite's case and
    tolerance); the setting is then given back."""
    from whisperkit.threads import get_num_threads
    try:
        backend.set_num_threads(1)
        run_op_case(case, backend)
    finally:
        backend.set_num_threads(get_num_threads())


def test_two_threads_share_it(backend):
    """Two Python threads calling the same op (onnxruntime's shared gelu/attention sessions) get their own results."""
    from concurrent.futures import ThreadPoolExecutor
    xs = [f32(1, 384, 3000, seed=s, scale=3.0) for s in range(4)]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(backend.gelu, xs * 3))
    for x, y in zip(xs * 3, outs):
        np.testing.assert_array_equal(y, backend.gelu(x))


# ---- end to end -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN_BACKENDS)
def test_transcription_tokens_equal_the_reference(tiny_numpy, name):
    from whisperkit import load_model
    new_backend(name)  # skipped without its library
    audio = str(shared("audio", "jfk_16k.wav"))
    want = [s.tokens for s in tiny_numpy.transcribe(audio).segments]
    model = load_model("tiny.en", backend=name)
    assert [s.tokens for s in model.transcribe(audio).segments] == want
    assert model.ops.fallbacks <= LEFT_TO_REFERENCE.get(name, set())  # every other op ran on the backend


@pytest.mark.parametrize("name", sorted(CACHE_REFUSAL))
@pytest.mark.parametrize("layers,offset,positions,refusal", [
    (2, 5, (0, 1), None),  # the case as built: accepted
    (1, 5, (-1,), "caches hold 1 layers"),
    (2, 15, (-1,), "outside the KV cache"),
    (2, 5, (2,), "position 2 outside"),
    (2, 5, (-3,), "position -3 outside"),
])
def test_decoder_step_refuses_bad_caches_and_positions(name, layers, offset, positions, refusal):
    from whisperkit.conformance.cases import CASES
    inp = CASES["decoder_step/odd_33_3heads_2_off5"].make()  # 2 layers, 2 rows of 2 tokens, a cache of 16
    got, _ = bind_both(new_backend(name), "decoder_step", **inp.weights)
    x, kc, vc, ck, cv = inp.args[:5]
    args = (x, kc[:layers], vc[:layers], ck, cv, offset, positions)
    if refusal is None:
        assert got(*args).shape == (2, len(positions), 77)
    else:
        with pytest.raises(ValueError, match=refusal):
            got(*args)


@pytest.mark.parametrize("mel_shape", [(1, 80, 2998), (1, 79, 224), (80, 224)])
def test_encoder_stem_refuses_a_mel_of_the_wrong_shape(backend, mel_shape):
    """A mel whose frames do not match the positional embedding (224 frames make 112 rows), whose mel count is not
    conv1's, or without a batch axis: one clear error naming the op and the shape expected, on the backend and on the
    reference its composition falls back to."""
    from whisperkit.conformance.cases import CASES
    weights = CASES["encoder_stem/batch2_224"].make().weights
    for stem in bind_both(backend, "encoder_stem", **weights):
        with pytest.raises(ValueError, match=r"encoder_stem: mel must be \(batch, 80, 224\)"):
            stem(np.zeros(mel_shape, np.float32))
