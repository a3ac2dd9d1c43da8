"""Machine facts, versions, where the shared audio lives, and the one thread setting."""
from __future__ import annotations

import ctypes
import datetime as _dt
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

#: Environment variables that size the thread pools of child processes (read at library load time).
THREAD_ENV = ("WHISPERKIT_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

DEFAULT_CLIPS = ("jfk_16k.wav", "osr_16k.wav")


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_env(n: int, base: dict | None = None) -> dict:
    """A copy of the environment that gives a fresh process `n` threads in every pool."""
    env = dict(os.environ if base is None else base)
    for k in THREAD_ENV:
        env[k] = str(n)
    return env


def set_blas_threads(n: int) -> str:
    """Limit the BLAS NumPy is linked with to `n` threads; returns how it was done."""
    try:
        import threadpoolctl  # optional
        threadpoolctl.threadpool_limits(n, user_api="blas")
        return "threadpoolctl"
    except ImportError:
        pass
    import numpy  # noqa: F401  (make sure its BLAS is loaded before looking for it)
    done = []
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return "unknown (no /proc, no threadpoolctl)"
    libs = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn(int(n))
                done.append(Path(path).name)
                break
    return "ctypes " + ", ".join(done) if done else "not set (no OpenBLAS found; env vars only)"


def apply_threads(n: int) -> dict:
    """The one thread setting: every whisperkit backend, NumPy's BLAS, and the env of child processes."""
    os.environ.update(thread_env(n, {}))
    from whisperkit.threads import set_num_threads
    set_num_threads(n)
    return {"threads": n, "blas": set_blas_threads(n)}


def find_shared_audio(start: Path | None = None) -> Path | None:
    """The shared audio folder: $WHISPERKIT_SHARED/audio, else the first `shared/audio` walking up from cwd."""
    env = os.environ.get("WHISPERKIT_SHARED", "").strip()
    if env:
        p = Path(env)
        p = p if p.name == "audio" else p / "audio"
        return p if p.is_dir() else None
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        cand = d / "shared" / "audio"
        if cand.is_dir():
            return cand
    return None


def default_audio() -> list[Path]:
    d = find_shared_audio()
    if d is None:
        return []
    return [d / name for name in DEFAULT_CLIPS if (d / name).is_file()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _blas() -> str:
    try:
        import numpy as np
        cfg = np.show_config(mode="dicts")
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{b.get('name', '?')} {b.get('version', '')}".strip()
    except Exception:
        return "?"


def read_bandwidth(mib: int = 96, threads: int | None = None, reps: int = 3) -> float:
    """The host's read bandwidth now, in GB/s: `threads` threads (default `default_threads()`) OR-reducing a share
    each of a `mib` MiB array, larger than the L3, so every byte comes from memory (NumPy releases the GIL in the
    reduction); the best of `reps`.  The machine is shared, and this moves with what its other tenants take: so do the
    memory-bound figures of a run (a decode step streams 30-75 MB), which is why the end-to-end tables give it."""
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    a = np.ones((mib << 20) // 8, np.uint64)
    parts = np.array_split(a, max(1, threads or default_threads()))
    best = 0.0
    with ThreadPoolExecutor(len(parts)) as pool:
        for _ in range(reps):
            t = time.perf_counter()
            list(pool.map(np.bitwise_or.reduce, parts))
            best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def machine_info() -> dict:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": default_threads(),
        "memory_gb": _mem_gb(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy_blas": _blas(),
        "loadavg_at_start": load,
    }


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    out = {}
    for dist in ("whisperkit", "numpy", "numba", "pythran", "onnxruntime", "faster-whisper", "ctranslate2",
                 "openai-whisper", "torch"):
        v = version_of(dist)
        if v is not None:
            out[dist] = v
    return out


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
