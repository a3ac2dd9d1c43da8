"""Keep the memory a window frees for the next window, instead of handing it back to the OS.

glibc's malloc gives every block above its mmap threshold pages of its own and unmaps them on free (the threshold
starts at 128 KiB and rises as such blocks are freed, up to 32 MiB), and it trims the heap's free top above 128 KiB.
A window's large arrays (the encoder's activations, 2-9 MB each; the cross-attention K/V, 9 MB on tiny and 18 MB
on base) then come back as fresh pages every window, and every page faults in again, zero-filled.  On the bench
machine a warm greedy transcribe() of jfk took about 7,900 minor faults, and they cost the cross K/V projection
19 → 40 ms and the encoder 190 → 207 ms (docs/bench-results.md, issue 14, stop 39).

`keep_freed_memory()` fixes the mmap threshold at glibc's maximum and raises the trim threshold, so freed blocks
stay in the heap and the next window's arrays reuse them already mapped.  What stays mapped is bounded by the
largest window's working set (what the process needed anyway) plus `TRIM_THRESHOLD` of free heap top.
`Whisper()` calls it.  It changes the process's malloc, so it is skipped when the process chose its own (the
`MALLOC_*_` variables or ``GLIBC_TUNABLES``), off with ``WHISPERKIT_KEEP_FREED_MEMORY=0``, and a no-op where
the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed on 64-bit: blocks up to this size come from the heap
#: free heap top kept mapped: at 32 MiB, base still faulted its encoder's and cross K/V's arrays in every window
#: (2,600 faults a jfk transcription); at 64 MiB neither tiny nor base did (`sa3.py`, stop 39)
TRIM_THRESHOLD = 64 << 20

_state: list[str] = []  # [what the one call did], filled by the first call


def _user_chose() -> str | None:
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        if name in os.environ:
            return name
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return None


def keep_freed_memory() -> str:
    """Apply the malloc settings once per process; returns what was done ("applied" or why not)."""
    if _state:
        return _state[0]
    if os.environ.get("WHISPERKIT_KEEP_FREED_MEMORY", "").strip() == "0":
        done = "off: WHISPERKIT_KEEP_FREED_MEMORY=0"
    elif (chosen := _user_chose()) is not None:
        done = f"skipped: the process set {chosen}"
    else:
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # glibc only: musl and macOS have other allocators
            ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            done = "applied" if ok else "refused: mallopt returned 0"
        except (OSError, AttributeError):
            done = "skipped: the C library is not glibc"
    log.debug("malloc thresholds: %s", done)
    _state.append(done)
    return done
