"""whisperkit.memory: freed large blocks stay mapped for the next window (glibc Linux)."""
import json
import os
import subprocess
import sys

import pytest

# In a fresh process (mallopt is process-wide and applied once): what keep_freed_memory did, and the minor page
# faults of the third round of three 16 MiB arrays allocated, filled and freed together: glibc's own dynamic
# thresholds keep one such block, but trim a free heap top of three (a window frees many arrays at once).
PROBE = r"""
import json, resource, sys
import numpy as np
from whisperkit.memory import keep_freed_memory
done = keep_freed_memory()
faults = []
for _ in range(3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.full(4 << 20, 1.0, np.float32) for _ in range(3)]
    del arrays
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"done": done, "again": keep_freed_memory(), "faults": faults}))
"""


def _probe(**env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="the malloc settings are glibc's")


@glibc
def test_freed_arrays_are_reused_without_faulting_in_again():
    r = _probe()
    assert r["done"] == "applied" and r["again"] == "applied"
    assert r["faults"][2] < 100, r  # the blocks came back from the heap, their pages mapped already


@glibc
def test_off_switch_and_the_processs_own_settings_are_respected():
    assert _probe(WHISPERKIT_KEEP_FREED_MEMORY="0")["done"] == "off: WHISPERKIT_KEEP_FREED_MEMORY=0"
    assert _probe(MALLOC_TRIM_THRESHOLD_="1000000")["done"] == "skipped: the process set MALLOC_TRIM_THRESHOLD_"
    assert _probe(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")["done"] == "skipped: the process set GLIBC_TUNABLES"


@glibc
def test_loading_a_model_applies_it():
    code = ("from whisperkit import Whisper; import whisperkit.memory as m; assert not m._state; "
            "Whisper('tiny.en', backend='numpy'); print(m._state)")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['applied']"
