"""One thread setting for every backend (BLAS, Numba, OpenMP, ONNX Runtime), so comparisons are fair.

The default is every core (``os.cpu_count()``), or ``WHISPERKIT_NUM_THREADS`` when set.  Backends
read `get_num_threads()` when they create their pools and are told of changes through
``Backend.set_num_threads``.
"""
from __future__ import annotations

import glob
import os

_num_threads: int | None = None


def _default() -> int:
    env = os.environ.get("WHISPERKIT_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"WHISPERKIT_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n >= 1:
            return n
        raise ValueError(f"WHISPERKIT_NUM_THREADS must be a positive integer, got {env!r}")
    return os.cpu_count() or 1


def get_num_threads() -> int:
    global _num_threads
    if _num_threads is None:
        _num_threads = _default()
    return _num_threads


def set_num_threads(n: int) -> None:
    """Set the thread count of every backend, now and for backends created later."""
    global _num_threads
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    _num_threads = n
    from .registry import get_registry
    for info in get_registry().loaded().values():
        if info.usable and info.backend is not None:
            info.backend.set_num_threads(n)


def numpy_openblas_paths() -> list[str]:
    """The shared libraries of the OpenBLAS that NumPy's wheel bundles, most likely first (the backends that
    call it directly, or set its threads, look it up here)."""
    import numpy as np
    root = os.path.dirname(np.__file__)
    pats = [os.path.join(root, "..", "numpy.libs", "libscipy_openblas*.so*"),
            os.path.join(root, ".libs", "libopenblas*.so*"),
            os.path.join(root, "..", "numpy.libs", "libopenblas*.so*")]
    return [path for pat in pats for path in sorted(glob.glob(pat))]
