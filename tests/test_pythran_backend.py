"""What is particular to the Pythran backend.  Its ops' values at Whisper's shapes and layouts are the conformance
suite's (`whisperkit conformance --backend pythran`, run by tests/test_conformance.py), and what every built-in
backend must do (including being unusable, with the reason, when its compiled kernels are missing) is in
tests/test_backends.py; here: the kernels it was built with are found.  The kernels are compiled at install time;
if they are missing these tests fail."""
from __future__ import annotations

from whisperkit.backends.pythran_backend import PythranBackend

PT = PythranBackend()


def test_built():
    assert PT.name == "pythran" and PT.version != "not built"
