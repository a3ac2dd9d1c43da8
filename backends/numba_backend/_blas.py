"""Bind the single-precision GEMM of the OpenBLAS that NumPy ships, so Numba kernels can call it.

Numba's own ``np.dot`` needs SciPy (absent here), so we look up ``cblas_sgemm`` in the OpenBLAS shared
library bundled with the NumPy wheel, register it with LLVM under its symbol name and declare it as an
`ExternalFunction`.  Referring to the symbol by name (not through a ctypes pointer) keeps the kernels
cacheable (``cache=True``): a later process re-registers the symbol at import and links the cached code.

``openblas_set_num_threads_local`` lets each Numba worker run its GEMMs single-threaded, so the kernels
parallelise over their own blocks (rows, heads) with Numba's thread pool and BLAS never oversubscribes.
"""
from __future__ import annotations

import ctypes

from whisperkit.threads import numpy_openblas_paths

_SGEMM_NAMES = ("scipy_cblas_sgemm64_", "cblas_sgemm64_", "cblas_sgemm")
_LOCAL_THREADS = "openblas_set_num_threads_local"

SGEMM = None  # the symbol name found, or None
ILP64 = True
ERROR: str | None = None


def bind():
    """Find the library and register the symbols with LLVM; sets SGEMM or ERROR."""
    global SGEMM, ILP64, ERROR
    import llvmlite.binding as llb
    for path in numpy_openblas_paths():
        try:
            dll = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SGEMM_NAMES:
            if hasattr(dll, name) and hasattr(dll, _LOCAL_THREADS):
                llb.add_symbol(name, ctypes.cast(getattr(dll, name), ctypes.c_void_p).value)
                llb.add_symbol(_LOCAL_THREADS, ctypes.cast(getattr(dll, _LOCAL_THREADS), ctypes.c_void_p).value)
                SGEMM = name
                ILP64 = "64" in name
                return
    ERROR = ("no OpenBLAS with cblas_sgemm and openblas_set_num_threads_local (OpenBLAS >= 0.3.27) "
             "found beside NumPy; the Numba backend calls NumPy's bundled OpenBLAS for its GEMMs")
