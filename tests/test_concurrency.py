"""One loaded model shared by several threads gives every caller the tokens of a single-threaded run."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import shared
from whisperkit.registry import get_registry

USABLE = [n for n, i in get_registry().infos.items() if i.usable]


@pytest.mark.parametrize("backend", USABLE)
def test_threads_share_one_model(backend, tiny_numpy, tiny_weights):
    from whisperkit import Whisper
    model = Whisper("tiny.en", backend=backend, weights=tiny_weights)
    clips = [str(shared("audio", c)) for c in ("jfk_16k.wav", "pv_en.wav")]
    alone = {c: [s.tokens for s in model.transcribe(c, temperature=0.0).segments] for c in clips}
    jobs = clips * 2  # two callers per clip, four at once
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda c: [s.tokens for s in model.transcribe(c, temperature=0.0).segments], jobs))
    assert together == [alone[c] for c in jobs]
