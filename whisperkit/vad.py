"""A voice-activity filter of our own (no model to download): frame energy against the recording's
noise floor, with spectral flatness to tell broadband noise from voice.

``transcribe(..., vad_filter=True)`` keeps only the speech regions, transcribes them joined
together, and maps every timestamp back to the original audio (`SpeechMap`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE

FRAME = 480  # 30 ms analysis frames
HOP = 160  # every 10 ms
SMOOTH_HOPS = 10  # 100 ms


@dataclass(frozen=True)
class VadOptions:
    min_speech_duration_ms: int = 250  # shorter voiced regions are dropped
    min_silence_duration_ms: int = 2000  # shorter pauses do not split speech
    speech_pad_ms: int = 400  # kept on both sides of each region
    floor_margin_db: float = 12.0  # voiced frames are this far above the noise floor ...
    min_level_dbfs: float = -55.0  # ... and above this absolute level
    max_flatness: float = 0.45  # white noise has spectral flatness ~0.56, voice well below


def _frame_features(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 10 ms hop: level in dBFS and spectral flatness (0..1) of a 30 ms Hann frame."""
    n = 1 + max(0, len(audio) - FRAME) // HOP
    padded = np.pad(audio.astype(np.float64), (0, max(0, FRAME - len(audio))))
    frames = np.lib.stride_tricks.as_strided(padded, (n, FRAME), (padded.strides[0] * HOP, padded.strides[0]), writeable=False)
    window = np.hanning(FRAME)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 + 1e-20  # (n, 241)
    level = 10 * np.log10(np.mean(frames ** 2, axis=-1) + 1e-12)
    band = power[:, 3:120]  # ~100 Hz .. 4 kHz, where voice lives
    flatness = np.exp(np.mean(np.log(band), axis=-1)) / np.mean(band, axis=-1)
    return level, flatness


def speech_regions(audio: np.ndarray, options: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of speech in 16 kHz mono audio, padded and merged."""
    if len(audio) == 0:
        return []
    level, flatness = _frame_features(audio)
    # judge 100 ms at a time: single 30 ms frames of noise can look tonal by chance
    kernel = np.ones(SMOOTH_HOPS) / SMOOTH_HOPS
    flatness = np.convolve(flatness, kernel, mode="same")
    floor = np.percentile(level, 10)
    voiced = (level > max(floor + options.floor_margin_db, options.min_level_dbfs)) & (flatness < options.max_flatness)
    hops_per_ms = SAMPLE_RATE / HOP / 1000
    regions: list[list[int]] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    for start, end in zip(edges[::2], edges[1::2]):  # runs of voiced hops [start, end)
        if regions and start - regions[-1][1] < options.min_silence_duration_ms * hops_per_ms:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    pad = int(options.speech_pad_ms * SAMPLE_RATE / 1000)
    out: list[tuple[int, int]] = []
    for start, end in regions:
        if (end - start) < options.min_speech_duration_ms * hops_per_ms:
            continue
        s = max(0, start * HOP - pad)
        e = min(len(audio), end * HOP + FRAME + pad)
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


class SpeechMap:
    """Maps times in the joined speech back to times in the original audio."""

    def __init__(self, regions: list[tuple[int, int]]):
        self.regions = regions
        lengths = [e - s for s, e in regions]
        self.joined_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # in joined samples

    def original_time(self, t: float, is_end: bool = False) -> float:
        """Seconds in the joined audio -> seconds in the original.  A time on a joint belongs to the
        region before it when it is an end, to the region after it when it is a start."""
        if not self.regions:
            return t
        sample = t * SAMPLE_RATE
        side = "left" if is_end else "right"
        i = int(np.searchsorted(self.joined_starts[1:], sample, side=side))
        i = min(i, len(self.regions) - 1)
        return (self.regions[i][0] + sample - self.joined_starts[i]) / SAMPLE_RATE


def join_speech(audio: np.ndarray, regions: list[tuple[int, int]]) -> np.ndarray:
    if not regions:
        return np.zeros(0, np.float32)
    return np.concatenate([audio[s:e] for s, e in regions]).astype(np.float32)
