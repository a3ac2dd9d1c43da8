"""One thread setting for every backend (BLAS, Numba, OpenMP, ONNX Runtime), so comparisons are fair.

The default is every core (``os.cpu_count()``), or ``WHISPERKIT_NUM_THREADS`` when set.  Backends
read `get_num_threads()` when they create their pools and are told of changes through
``Backend.set_num_threads``.
"""
from __future__ import annotations

import ctypes
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


_openblas: list = []  # [the handle or None], filled at the first call


def numpy_openblas() -> ctypes.CDLL | None:
    """NumPy's bundled OpenBLAS as a ctypes library (the first of `numpy_openblas_paths` that loads), or None."""
    if not _openblas:
        lib = None
        for path in numpy_openblas_paths():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            break
        _openblas.append(lib)
    return _openblas[0]


_short_spin_done = False


def short_blas_spin() -> None:
    """Make the idle workers of NumPy's OpenBLAS sleep at once instead of spinning for about 0.1 s (2**28
    cycles) after each GEMM.  A backend with threads of its own (OpenMP, ONNX Runtime) calls this at load:
    a BLAS worker still spinning after NumPy's last GEMM (the log-mel's filterbank, an encoder GEMM) holds a
    core while that backend's threads run.  onnxruntime's encoder took 235-243 ms a window inside
    transcribe() against 191-195 alone (stop 35); pythran's 245 against 201-212 (stop 29).  OpenBLAS reads
    OPENBLAS_THREAD_TIMEOUT (log2 of the spin in cycles; 4 is its minimum) when its thread server starts, so
    the server is restarted once; a value the user set is kept."""
    global _short_spin_done
    if _short_spin_done or "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return
    _short_spin_done = True
    lib = numpy_openblas()
    read_env = getattr(lib, "openblas_read_env", None) if lib is not None else None
    shutdown = getattr(lib, "blas_thread_shutdown_", None) if lib is not None else None
    if read_env is None or shutdown is None:
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"
    read_env()
    shutdown()  # the next threaded call starts the workers again, with the new timeout
