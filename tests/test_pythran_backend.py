"""What is particular to the Pythran backend.  Its ops' values at Whisper's shapes and layouts are the conformance
suite's (`whisperkit conformance --backend pythran`, run by tests/test_conformance.py); here: the compiled kernels
are found (and, when they are missing, the backend says so instead of failing to import), a clear error for a
wrong input width, and results under the thread setting.  The kernels are compiled at install time; if they are
missing these tests fail."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from whisperkit.backend import Ops
from whisperkit.backends.numpy_backend import NumpyBackend
from whisperkit.backends.pythran_backend import PythranBackend
from whisperkit.conformance.cases import CASES
from whisperkit.conformance.checks import run_case
from whisperkit.contract import OPS
from whisperkit.threads import get_num_threads

REF = NumpyBackend()
PT = PythranBackend()


def test_available():
    assert PT.unavailable_reason() is None
    assert set(PT.implemented_ops()) == set(OPS)
    assert PT.version != "not built"


def test_linear_rejects_a_wrong_input_width():
    linear = Ops(PT, REF).bind("linear", weight=np.zeros((8, 384), np.float32), bias=None)
    with pytest.raises(ValueError, match="384"):
        linear(np.zeros((1, 3, 385), np.float32))


@pytest.mark.parametrize("case", ["attention/tiny_encoder_1500", "linear/tiny_fc1_1500"])
def test_one_thread_conforms(case):
    """The OpenMP kernels and NumPy's BLAS on one thread still give the reference's values (the suite's case and
    tolerance); the setting is then given back."""
    try:
        PT.set_num_threads(1)
        run_case(CASES[case], PT, Ops(PT, REF), Ops(REF, REF))
    finally:
        PT.set_num_threads(get_num_threads())


def test_missing_kernels_make_the_backend_unavailable():

    code = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.endswith("pythran_backend._kernels"):
                    raise ImportError("simulated: not built")
        sys.meta_path.insert(0, Block())
        from whisperkit.registry import get_registry
        info = get_registry().infos["pythran"]
        print(info.usable, "|", info.reason)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    usable, reason = out.strip().split(" | ", 1)
    assert usable == "False"
    assert "compiled kernels not found" in reason and "reinstall" in reason
