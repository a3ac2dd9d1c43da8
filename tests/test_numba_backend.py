"""What is particular to the Numba backend.  Its ops' values at Whisper's shapes and layouts are the conformance
suite's (`whisperkit conformance --backend numba`, run by tests/test_conformance.py); here: registration and the
missing-library path, the KV cache written through its own paths (several decode steps of a beam batch, caches that
are not C-contiguous), a bad offset, and the thread setting.  Values are compared with the suite's tolerance for the
op (`test_conformance.assert_decode_steps_match_reference`, `whisperkit.conformance.checks.run_case`)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from test_conformance import assert_decode_steps_match_reference
from whisperkit.backend import Ops
from whisperkit.backends.numpy_backend import NumpyBackend
from whisperkit.conformance.cases import CASES
from whisperkit.conformance.checks import run_case

numba = pytest.importorskip("numba")
from whisperkit.backends.numba_backend import NumbaBackend  # noqa: E402

REF = NumpyBackend()
NB = NumbaBackend()
#: a tiny decoder layer's weights (n_state 384, 6 heads), from the conformance table
DECODER = CASES["decoder_layer/tiny_1_off3"].make().weights


def f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


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


@pytest.mark.parametrize("batch,strided_cache", [(1, False), (5, False), (1, True)])
def test_decoder_layer_steps(batch, strided_cache):
    """A prompt of 3 tokens, single-token steps reusing the work buffers kept per row count, then the last
    positions of the context (447), for one sequence or a beam of 5; caches that are not C-contiguous go through
    contiguous copies written back."""
    assert_decode_steps_match_reference(NB, [(0, 3), (3, 1), (4, 1), (444, 3), (447, 1)], batch, strided_cache)


def test_decoder_layer_rejects_offset_outside_cache():
    nb, _ = bind_pair("decoder_layer", **DECODER)
    kc = np.zeros((1, 448, 384), np.float32)
    with pytest.raises(ValueError, match="outside the KV cache"):
        nb(f32(1, 2, 384), kc, kc.copy(), f32(1, 1500, 384), f32(1, 1500, 384), 447)


def test_threads_follow_setting():
    before = numba.get_num_threads()
    try:
        NB.set_num_threads(1)
        assert numba.get_num_threads() == 1
        run_case(CASES["linear/tiny_fc1_1500"], NB, Ops(NB, REF), Ops(REF, REF))  # one thread still conforms
        NB.set_num_threads(10 ** 6)  # bounded by NUMBA_NUM_THREADS
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        # a decode step runs on one thread, then gives the setting back
        run_case(CASES["decoder_layer/tiny_1_off3"], NB, Ops(NB, REF), Ops(REF, REF))
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(before)
