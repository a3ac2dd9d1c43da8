"""What is particular to the Numba backend.  Its ops' values at Whisper's shapes and layouts are the conformance
suite's (`whisperkit conformance --backend numba`, run by tests/test_conformance.py), and what every built-in
backend must do is in tests/test_backends.py; here: its version, and the thread setting (numba's own, bounded by
NUMBA_NUM_THREADS, and a decode step run on one thread)."""
from __future__ import annotations

import pytest

from helpers import run_op_case

numba = pytest.importorskip("numba")
from whisperkit.backends.numba_backend import NumbaBackend  # noqa: E402

NB = NumbaBackend()


def test_version():
    assert NB.name == "numba" and NB.version == numba.__version__


def test_threads_follow_setting():
    before = numba.get_num_threads()
    try:
        NB.set_num_threads(1)
        assert numba.get_num_threads() == 1
        run_op_case("linear/tiny_fc1_1500", NB)  # one thread still conforms
        NB.set_num_threads(10 ** 6)  # bounded by NUMBA_NUM_THREADS
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        # a decode step runs on one thread, then gives the setting back
        run_op_case("decoder_layer/tiny_1_off3", NB)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(before)
