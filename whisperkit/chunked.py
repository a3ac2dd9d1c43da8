"""One long file, batched: the speech the VAD finds is cut into chunks of at most 30 s, and the chunks are
decoded together, several rows per decoding step, without conditioning on the text before them.  This is
what faster-whisper's BatchedInferencePipeline and the Hugging Face pipeline do.  Every timestamp is mapped
back to the file.

It is not token-exact with openai-whisper: the sequential loop (`transcribe` without `batch_size`) is,
because each window there is prompted with the text before it, and its windows follow the model's own
timestamps rather than the VAD's chunks.

Memory stays bounded.  The VAD reads the file block by block, and the chunks are read forward, a group of
them at a time (`_ChunkReader`), so at most ``GROUP * batch_size`` chunks of samples are held.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import N_SAMPLES, SAMPLE_RATE
from .vad import VadOptions, find_speech, resolve_method

if TYPE_CHECKING:
    from .protocols import SpeechModel
    from .transcribe import TranscriptionResult

GROUP = 4  # batches of chunks read at once: the batch stays full while some chunks need a second window


def speech_chunks(regions: list[tuple[int, int]], max_samples: int = N_SAMPLES) -> list[tuple[int, int]]:
    """Sample spans [start, end) of at most `max_samples`, covering the speech regions in order.  Consecutive
    regions join while the span from the first one's start to the last one's end still fits.  A region
    longer than that is cut into pieces that fit."""
    chunks: list[tuple[int, int]] = []
    for start, end in regions:
        while end - start > max_samples:  # a long region: full pieces first
            chunks.append((start, start + max_samples))
            start += max_samples
        if chunks and end - chunks[-1][0] <= max_samples and start >= chunks[-1][1]:
            chunks[-1] = (chunks[-1][0], end)
        else:
            chunks.append((start, end))
    return chunks


class _ChunkReader:
    """Samples of increasing spans of a file or array, read forward once."""

    def __init__(self, source):
        from .stream import _Samples
        self._blocks = _Samples(source, damage=[]).blocks()  # damage was reported by the VAD's pass
        self._buf = np.zeros(0, np.float32)
        self._start = 0  # file position of _buf[0]

    def read(self, start: int, end: int) -> np.ndarray:
        while True:
            if start > self._start:  # drop what lies before this span, block by block while skipping ahead
                cut = min(start - self._start, self._buf.size)
                self._buf, self._start = self._buf[cut:], self._start + cut
            if self._start + self._buf.size >= end:
                break
            block = next(self._blocks, None)
            if block is None:
                break
            self._buf = np.concatenate([self._buf, block])
        lo = max(start - self._start, 0)
        return np.ascontiguousarray(self._buf[lo:max(end - self._start, lo)])


def transcribe_chunked(model: "SpeechModel", audio, *, batch_size: int, vad_method: str = "auto",
                       vad_parameters: VadOptions | dict | None = None, strict_audio: bool = False,
                       **options: Any) -> "TranscriptionResult":
    """`transcribe` of one file or array in batched chunks (see the module doc).  The other options are
    transcribe()'s and apply to every chunk: temperature fallback, no-speech gating and word timestamps each
    work per chunk.  condition_on_previous_text is off (chunks are independent), and so are vad_filter
    (the chunks are the VAD's) and clip_timestamps."""
    from .transcribe import TranscriptionResult, _warn_damage, transcribe_batch
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for fixed in ("vad_filter", "clip_timestamps", "condition_on_previous_text"):
        if options.pop(fixed, None) not in (None, False, "0"):
            raise ValueError(f"{fixed} cannot be set in batched mode (batch_size): the VAD's chunks are decoded independently")
    vo = vad_parameters if isinstance(vad_parameters, VadOptions) else VadOptions(**(vad_parameters or {}))
    damage: list = []
    regions = find_speech(audio, vo, resolve_method(vad_method), strict=strict_audio, damage=damage)
    chunks = speech_chunks(regions)
    warnings = _warn_damage(damage)
    options.update(condition_on_previous_text=False, progress=False)
    reader = _ChunkReader(audio)
    segments, text, language = [], [], options.get("language")
    per_group = GROUP * batch_size
    for g in range(0, len(chunks), per_group):
        group = chunks[g:g + per_group]
        results = transcribe_batch(model, [reader.read(s, e) for s, e in group], batch_size=batch_size, **options)
        for (start, _), result in zip(group, results):
            language = language or result.language
            offset = start / SAMPLE_RATE
            for seg in result.segments:
                words = None if seg.words is None else [dict(w, start=round(w["start"] + offset, 2),
                                                             end=round(w["end"] + offset, 2)) for w in seg.words]
                segments.append(replace(seg, id=len(segments), seek=seg.seek + start // 160,
                                        start=round(seg.start + offset, 3), end=round(seg.end + offset, 3), words=words))
            text.append(result.text)
    return TranscriptionResult(text="".join(text), segments=segments, language=language or "en", warnings=warnings)
