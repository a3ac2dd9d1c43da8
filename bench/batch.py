"""Batch throughput: the same set of files transcribed one at a time (`transcribe` in a loop) and
together (`transcribe_batch`), greedy at temperature 0, as audio hours per wall-clock hour."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .machine import find_shared_audio

BATCH_CLIPS = ("jfk_16k.wav", "pv_en.wav", "osr_16k.wav", "pv_de.wav")
SR = 16000


def batch_clips() -> list[Path]:
    """The shared clips the batch run uses by default (whichever of BATCH_CLIPS exist)."""
    d = find_shared_audio()
    if d is None:
        return []
    return [d / name for name in BATCH_CLIPS if (d / name).is_file()]


def file_set(clips: list[tuple[str, np.ndarray]], n: int) -> list[tuple[str, np.ndarray]]:
    """The clip list repeated until there are at least `n` files (whole repetitions only)."""
    if not clips:
        raise ValueError("no clips for the batch run")
    reps = -(-n // len(clips))
    return clips * reps


@dataclass
class BatchResult:
    engine: str
    batch_size: int
    n_files: int
    audio_s: float
    sequential_s: float | None = None
    batched_s: float | None = None
    tokens_equal: bool | None = None
    error: str | None = None

    @property
    def throughput_sequential(self):
        return self.audio_s / self.sequential_s if self.sequential_s else None

    @property
    def throughput_batched(self):
        return self.audio_s / self.batched_s if self.batched_s else None

    @property
    def speedup(self):
        if self.sequential_s and self.batched_s:
            return self.sequential_s / self.batched_s
        return None

    def figures(self) -> dict:
        """name -> (value, unit).  Throughput: audio duration / wall time (= audio hours per wall-clock hour)."""
        return {
            "batch_size": (self.batch_size, "count"),
            "batch_files": (self.n_files, "count"),
            "batch_audio_s": (self.audio_s, "s"),
            "sequential_s": (self.sequential_s, "s"),
            "batched_s": (self.batched_s, "s"),
            "throughput_sequential_x_realtime": (self.throughput_sequential, "audio h / wall h"),
            "throughput_batched_x_realtime": (self.throughput_batched, "audio h / wall h"),
            "batch_speedup": (self.speedup, "sequential time / batched time"),
            "batch_tokens_equal": (self.tokens_equal, "bool"),
        }


def _tokens(result) -> list[list[int]]:
    return [[int(t) for t in s.tokens] for s in result.segments]


def run_batch(engine, files: list[tuple[str, np.ndarray]], batch_size: int, warmup: bool = True) -> BatchResult:
    """Time `files` one at a time, then batched, on a loaded BackendEngine.  The warm-up (one batched
    call on `batch_size` copies of the shortest file) builds whatever the batched shapes need first."""
    audio_s = sum(len(a) for _, a in files) / SR
    res = BatchResult(engine.name, batch_size, len(files), audio_s)
    model = engine.model
    arrays = [a for _, a in files]
    try:
        if warmup:
            shortest = min(arrays, key=len)
            model.transcribe_batch([shortest] * batch_size, batch_size=batch_size, temperature=0.0)
        t = time.perf_counter()
        single = [model.transcribe(a, temperature=0.0) for a in arrays]
        res.sequential_s = time.perf_counter() - t
        t = time.perf_counter()
        batched = model.transcribe_batch(arrays, batch_size=batch_size, temperature=0.0)
        res.batched_s = time.perf_counter() - t
        res.tokens_equal = [_tokens(r) for r in batched] == [_tokens(r) for r in single]
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    return res
