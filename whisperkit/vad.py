"""Voice-activity filters: Silero VAD (`whisperkit.silero`, a trained model, with the ``vad`` extra) and
one of our own that needs no model: frame energy against the recording's noise floor, with spectral
flatness to tell broadband noise from voice.

``transcribe(..., vad_filter=True)`` keeps only the speech regions, transcribes them joined together,
and maps every timestamp back to the original audio (`SpeechMap`).  ``vad_method``: "silero", "energy",
or "auto" (Silero when installed).  The options take faster-whisper's names and meanings.
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
    """faster-whisper's VadOptions (threshold .. speech_pad_ms, the same meanings), plus the energy filter's own."""

    threshold: float = 0.5  # Silero: a chunk with this speech probability or more is speech ...
    neg_threshold: float | None = None  # ... and speech ends below this one (default threshold - 0.15)
    min_speech_duration_ms: int = 250  # shorter voiced regions are dropped
    max_speech_duration_s: float = float("inf")  # longer regions are split (Silero: at their last pause)
    min_silence_duration_ms: int = 2000  # shorter pauses do not split speech
    speech_pad_ms: int = 400  # kept on both sides of each region
    floor_margin_db: float = 12.0  # energy: voiced frames are this far above the noise floor ...
    min_level_dbfs: float = -55.0  # ... and above this absolute level
    max_flatness: float = 0.45  # white noise has spectral flatness ~0.56, voice well below


VAD_METHODS = ("auto", "silero", "energy")


def resolve_method(method: str) -> str:
    """"auto" -> "silero" when its model is installed, else "energy"."""
    if method not in VAD_METHODS:
        raise ValueError(f"vad_method must be one of {', '.join(VAD_METHODS)}, got {method!r}")
    if method == "auto":
        from . import silero
        return "silero" if silero.available() else "energy"
    return method


def find_speech(audio, options: VadOptions = VadOptions(), method: str = "auto", *, strict: bool = False,
                damage: list | None = None) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of speech by the chosen method, in a 16 kHz mono array or a file.  A file
    is read block by block (`stream._Samples`; ``strict`` and ``damage`` as in `audio.iter_file_blocks`):
    only the per-frame features or probabilities are held, a few hundred kB an hour."""
    from .stream import _Samples
    samples = _Samples(audio, strict, damage)
    counted = _Counted(samples.blocks())
    if resolve_method(method) == "silero":
        from .silero import speech_probabilities
        return _silero_regions(speech_probabilities(counted), counted.n, options)
    level, flatness = _frame_features_blocks(counted)
    return _energy_regions(level, flatness, counted.n, options)


class _Counted:
    """Blocks passed through, counting their samples."""

    def __init__(self, blocks):
        self.blocks, self.n = blocks, 0

    def __iter__(self):
        for b in self.blocks:
            self.n += len(b)
            yield b


def _silero_regions(probs: np.ndarray, n_samples: int, options: VadOptions) -> list[tuple[int, int]]:
    """Speech ranges [start, end) from Silero's per-chunk probabilities, as faster-whisper forms them: speech
    starts at a chunk at or above `threshold` and ends after `min_silence_duration_ms` below `neg_threshold`;
    regions longer than `max_speech_duration_s` are split at their last pause (else cut); regions shorter
    than `min_speech_duration_ms` are dropped; `speech_pad_ms` pads both sides, merging what then touches."""
    from .silero import CHUNK
    if n_samples == 0:
        return []
    step = SAMPLE_RATE // 1000  # samples per ms
    on = options.threshold
    off = options.neg_threshold if options.neg_threshold is not None else max(on - 0.15, 0.01)
    min_silence = options.min_silence_duration_ms * step
    max_speech = options.max_speech_duration_s * SAMPLE_RATE
    regions: list[list[int]] = []
    start = silence_from = last_pause = None
    for i, p in enumerate(probs):
        at = i * CHUNK
        if start is None:
            if p >= on:
                start, silence_from, last_pause = at, None, None
            continue
        if p >= on:
            silence_from = None
        elif p < off and silence_from is None:
            silence_from = at
        if silence_from is not None and at - silence_from >= min_silence:
            regions.append([start, silence_from])
            start = None
            continue
        if silence_from is not None:
            last_pause = silence_from
        if at + CHUNK - start > max_speech:  # too long: close at the last pause, or here
            cut = last_pause if last_pause is not None and last_pause > start else at
            regions.append([start, cut])
            start, silence_from, last_pause = at, None, None  # speech goes on: a new region from here
    if start is not None:
        regions.append([start, n_samples])
    return _pad_and_merge([(s, min(e, n_samples)) for s, e in regions
                           if e - s >= options.min_speech_duration_ms * step], options.speech_pad_ms, n_samples)


def _pad_and_merge(regions, pad_ms: int, n: int) -> list[tuple[int, int]]:
    pad = int(pad_ms * SAMPLE_RATE / 1000)
    out: list[tuple[int, int]] = []
    for start, end in regions:
        s, e = max(0, start - pad), min(n, end + pad)
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return out


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


def _frame_features_blocks(blocks) -> tuple[np.ndarray, np.ndarray]:
    """`_frame_features` of the audio given as consecutive blocks, the same frames, holding only a frame's
    overlap between blocks."""
    levels, flats = [], []
    carry = np.zeros(0, np.float32)
    seen = 0
    for block in blocks:
        data = np.concatenate([carry, block]) if carry.size else np.asarray(block, np.float32)
        seen += len(block)
        if len(data) >= FRAME:
            n = 1 + (len(data) - FRAME) // HOP  # the frames wholly inside
            level, flat = _frame_features(data[:(n - 1) * HOP + FRAME])
            levels.append(level)
            flats.append(flat)
            data = data[n * HOP:]
        carry = data
    if seen and seen < FRAME:  # shorter than one frame: the one zero-padded frame, as on an array
        level, flat = _frame_features(carry)
        levels.append(level)
        flats.append(flat)
    if not levels:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(levels), np.concatenate(flats)


def _energy_regions(level: np.ndarray, flatness: np.ndarray, n_samples: int, options: VadOptions) -> list[tuple[int, int]]:
    if n_samples == 0 or level.size == 0:
        return []
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
    kept = [(start * HOP, end * HOP + FRAME) for start, end in regions
            if (end - start) >= options.min_speech_duration_ms * hops_per_ms]
    return _pad_and_merge(kept, options.speech_pad_ms, n_samples)


class SpeechMap:
    """Maps times in the joined speech back to times in the original audio."""

    def __init__(self, regions: list[tuple[int, int]]):
        self.regions = regions
        lengths = [e - s for s, e in regions]
        self.joined_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # in joined samples

    def original_time(self, t: float, is_end: bool = False, snap: float = 0.0) -> float:
        """Seconds in the joined audio -> seconds in the original.  A time on a joint belongs to the
        region before it when it is an end, to the region after it when it is a start.  With `snap`
        (seconds; the VAD's speech_pad_ms), a start in the last `snap` of a region moves to the next
        region's start, and an end in the first `snap` of a region to the previous region's end: that much
        of each region is the pause the VAD padded it with, so speech starts or ends across the joint."""
        if not self.regions:
            return t
        sample = t * SAMPLE_RATE
        side = "left" if is_end else "right"
        i = int(np.searchsorted(self.joined_starts[1:], sample, side=side))
        i = min(i, len(self.regions) - 1)
        pad = snap * SAMPLE_RATE
        if not is_end and i + 1 < len(self.regions) and sample > self.joined_starts[i + 1] - pad:
            return self.regions[i + 1][0] / SAMPLE_RATE
        if is_end and i > 0 and sample < self.joined_starts[i] + pad:
            return self.regions[i - 1][1] / SAMPLE_RATE
        return (self.regions[i][0] + sample - self.joined_starts[i]) / SAMPLE_RATE


class SpeechOnly:
    """The speech regions of a file or array, joined, as a source of blocks that `stream.StreamingMel` reads
    (twice, like a file) without the whole audio ever being held."""

    def __init__(self, source, regions: list[tuple[int, int]]):
        self.source, self.regions = source, regions

    def blocks(self):
        from .stream import _Samples
        at, k = 0, 0  # samples read so far; the first region not yet passed
        for block in _Samples(self.source, damage=[]).blocks():
            end = at + len(block)
            while k < len(self.regions) and self.regions[k][0] < end:
                s, e = self.regions[k]
                part = block[max(s - at, 0):max(min(e, end) - at, 0)]
                if part.size:
                    yield part
                if e > end:
                    break
                k += 1
            at = end
            if k == len(self.regions):
                return
