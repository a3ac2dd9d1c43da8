"""One long file, batched: the speech the VAD finds is packed into chunks of at most 30 s, and the chunks
are decoded together, several rows per decoding step, without conditioning on the text before them, as
faster-whisper's BatchedInferencePipeline and the Hugging Face pipeline do.  Every timestamp is mapped back
to the file.

A chunk is its speech regions joined (`speech_chunks`), without the pauses between them (the VAD keeps
speech_pad_ms of each pause on both sides).  faster-whisper's chunks span from their first region's start to
their last one's end instead, pauses included.  Joined speech fills a window with more speech, so a file
needs fewer windows: half as many on the bench's long file, where speech and pauses alternate.  And a long
pause inside a window is where tiny.en stops early: with the pauses kept, it dropped the sentence after a
20 s pause in two of the ten chunks of the bench's 10-minute file that had one.

It is not token-exact with openai-whisper: the sequential loop (`transcribe` without `batch_size`) is,
because each window there is prompted with the text before it, and its windows follow the model's own
timestamps rather than the VAD's chunks.

Memory stays bounded.  The VAD reads the file block by block, and the chunks are read forward
(`_ChunkReader`), one each time a row of the batch frees, so about `batch_size` chunks of samples are held.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE
from .vad import SpeechMap, VadOptions, find_speech, resolve_method

if TYPE_CHECKING:
    from .protocols import SpeechModel
    from .transcribe import TranscriptionResult

def speech_chunks(regions: list[tuple[int, int]], max_samples: int = N_SAMPLES) -> list[list[tuple[int, int]]]:
    """The speech regions [start, end) in samples, packed in order into chunks of at most `max_samples` of
    speech: each chunk is the list of its regions.  A region longer than that is cut into pieces that fit
    (the VAD's max_speech_duration_s keeps regions within a window, so this is rare)."""
    chunks: list[list[tuple[int, int]]] = []
    room = 0  # samples left in the last chunk
    for start, end in regions:
        while start < end:
            if room == 0 or (end - start > room and end - start <= max_samples):  # a region is not split if it fits a new chunk
                chunks.append([])
                room = max_samples
            piece = min(end - start, room)
            chunks[-1].append((start, start + piece))
            start += piece
            room -= piece
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

    def read_joined(self, regions: list[tuple[int, int]]) -> np.ndarray:
        """The samples of these regions (in order, after any read before), joined."""
        return np.concatenate([self.read(s, e) for s, e in regions])


def batched_vad_options(given: VadOptions | dict | None) -> VadOptions:
    """The VAD options of batched mode, as faster-whisper's batched mode sets them: speech is split at pauses
    of 160 ms (default) and into regions of at most 30 s, so that chunks end at pauses, not mid-word; the
    regions are then joined into chunks of at most 30 s (`speech_chunks`)."""
    if isinstance(given, VadOptions):
        return replace(given, max_speech_duration_s=min(given.max_speech_duration_s, N_SAMPLES / SAMPLE_RATE))
    return VadOptions(**{"min_silence_duration_ms": 160, **(given or {}), "max_speech_duration_s": N_SAMPLES / SAMPLE_RATE})


def transcribe_chunked(model: "SpeechModel", sources: list, *, batch_size: int, vad_method: str = "auto",
                       vad_parameters: VadOptions | dict | None = None, strict_audio: bool = False,
                       without_timestamps: bool = True, **options: Any) -> list["TranscriptionResult"]:
    """`transcribe` of files or arrays in batched chunks (see the module doc), one result per source.  The
    batch is filled with the chunks of one file after another: the next file's VAD runs when its turn
    comes.  The other options are transcribe()'s and apply to every chunk: temperature fallback, no-speech
    gating and word timestamps each work per chunk.  condition_on_previous_text is off (chunks are
    independent), and so are vad_filter (the chunks are the VAD's) and clip_timestamps.

    without_timestamps (default True, as faster-whisper's batched mode): each chunk is decoded once, as one
    segment spanning the chunk (its words still get their times with word_timestamps).  False: the model's
    timestamps cut each chunk into segments, and a chunk whose last segment is cut off is decoded again
    from there, as in the sequential loop."""
    from .transcribe import iter_transcriptions
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for fixed in ("vad_filter", "clip_timestamps", "condition_on_previous_text"):
        if options.pop(fixed, None) not in (None, False, "0"):
            raise ValueError(f"{fixed} cannot be set in batched mode (batch_size): the VAD's chunks are decoded independently")
    vo = batched_vad_options(vad_parameters)
    method = resolve_method(vad_method)
    options.update(condition_on_previous_text=False, progress=False, without_timestamps=without_timestamps)
    files: list[_ChunkedFile] = []
    owner: list[tuple[int, int]] = []  # per chunk fed to the batch: (file, chunk of the file)

    def chunk_sources():
        for audio in sources:
            f = _ChunkedFile(model, audio, vo, method, strict_audio, options.get("language"))
            files.append(f)
            for k, source in enumerate(f.sources()):
                owner.append((len(files) - 1, k))
                yield source
    for i, result in iter_transcriptions(model, chunk_sources(), batch_size=batch_size, **options):
        f, k = owner[i]
        if without_timestamps and _stopped_early(result, files[f].speech_seconds(k)):
            result = files[f].redecode(k, options)
        files[f].add(k, result)
    return [f.result() for f in files]


MIN_WORDS_PER_SECOND = 1.0  # speech runs at 2-3 words a second; a text-only decoding that gives less than this ...
MIN_SPEECH_SECONDS = 10.0  # ... for a chunk of this much speech or more stopped early


def _stopped_early(result: "TranscriptionResult", seconds: float) -> bool:
    """Whether a chunk decoded without timestamps probably ended before its speech did.  Without timestamp
    tokens tiny.en sometimes ends the text where the speaker changes: on the bench's 60-minute file one chunk
    of 30 s of speech gave 19 words, and 47 words were lost (1.2 points of WER).  With timestamps it went on."""
    return seconds >= MIN_SPEECH_SECONDS and len(result.text.split()) < MIN_WORDS_PER_SECOND * seconds


class _ChunkedFile:
    """One file of `transcribe_chunked`: its chunks (the VAD runs at construction), their samples read
    forward, and its results put in order and mapped back to the file as they come."""

    def __init__(self, model: "SpeechModel", audio, vo: VadOptions, method: str, strict: bool, language: str | None):
        from .transcribe import _warn_damage
        damage: list = []
        self.chunks = speech_chunks(find_speech(audio, vo, method, strict=strict, damage=damage))
        self.warnings = _warn_damage(damage)
        self.model, self.audio, self.pad, self.language = model, audio, vo.speech_pad_ms / 1000, language
        self.segments: list = []
        self.texts: list[str] = []
        self.done: dict[int, "TranscriptionResult"] = {}  # finished out of order, waiting for the chunks before them

    def sources(self):
        from .transcribe import WithOptions
        reader = _ChunkReader(self.audio)
        for k, chunk in enumerate(self.chunks):  # read forward, one chunk each time a row of the batch frees
            samples = reader.read_joined(chunk)
            if k == 0 and self.language is None and self.model.is_multilingual:
                self.language = self.model.detect_language(samples)[0]  # one language for the file, from its first chunk
            yield WithOptions(samples, {"language": self.language} if self.language else {})

    def speech_seconds(self, k: int) -> float:
        return sum(e - s for s, e in self.chunks[k]) / SAMPLE_RATE

    def redecode(self, k: int, options: dict) -> "TranscriptionResult":
        """Chunk k again, alone and with timestamps (`_stopped_early`): the model's segments go on past the
        place where the text-only decoding stopped."""
        from .transcribe import transcribe
        reader = _ChunkReader(self.audio)  # a second, short read of the file: rare
        samples = reader.read_joined(self.chunks[k])
        return transcribe(self.model, samples, **{**options, "without_timestamps": False,
                                                  **({"language": self.language} if self.language else {})})

    def add(self, k: int, result: "TranscriptionResult") -> None:
        self.done[k] = result
        while len(self.texts) in self.done:  # the chunks in file order
            result = self.done.pop(len(self.texts))
            _append_mapped(self.segments, result.segments, self.chunks[len(self.texts)], self.pad)
            self.texts.append(result.text)
            self.language = self.language or result.language

    def result(self) -> "TranscriptionResult":
        from .transcribe import TranscriptionResult
        return TranscriptionResult(text="".join(self.texts), segments=self.segments, language=self.language or "en",
                                   warnings=self.warnings)


SEGMENT_SLACK = 0.5  # s: how far tiny.en's timestamp tokens land from where speech starts or ends, at a joint


def _append_mapped(segments: list, chunk_segments: list, chunk: list[tuple[int, int]], pad: float) -> None:
    """Append a chunk's segments with their ids, seeks and times moved from the joined speech of the chunk's
    regions to their places in the file (`SpeechMap`).  A time within the VAD's `pad` seconds of a joint
    (plus SEGMENT_SLACK for the segments' timestamp tokens, which often put a segment's start at the end of
    the speech before it) snaps across it.  A time past the chunk's end (a last timestamp token may be) is
    the end."""
    joined = SpeechMap(chunk)
    last = chunk[-1][1] / SAMPLE_RATE

    def at(t: float, digits: int, is_end: bool, snap: float) -> float:
        return round(min(joined.original_time(t, is_end, snap), last), digits)
    for seg in chunk_segments:
        words = None if seg.words is None else [dict(w, start=at(w["start"], 2, False, pad), end=at(w["end"], 2, True, pad))
                                                for w in seg.words]
        seek = int(joined.original_time(seg.seek * HOP_LENGTH / SAMPLE_RATE) * SAMPLE_RATE) // HOP_LENGTH
        segments.append(replace(seg, id=len(segments), seek=seek, start=at(seg.start, 3, False, pad + SEGMENT_SLACK),
                                end=at(seg.end, 3, True, pad + SEGMENT_SLACK), words=words))
