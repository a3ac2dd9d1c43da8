"""Long-form transcription: 30-second windows that advance by the last timestamp, each window
conditioned on the text before it, with temperature fallback -- openai-whisper's transcribe()."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from tqdm import tqdm

from .audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, pad_or_trim
from .decoding import DecodingOptions, DecodingResult, DecodingTask, detect_language

if TYPE_CHECKING:
    from .api import Whisper


@dataclass
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[dict] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["words"] is None:
            del d["words"]
        return d


@dataclass
class TranscriptionResult:
    text: str
    segments: list[Segment] = field(default_factory=list)
    language: str = "en"

    def to_dict(self) -> dict:
        """The JSON shape of openai-whisper's transcribe(): {"text", "segments", "language"}."""
        return {"text": self.text, "segments": [s.to_dict() for s in self.segments], "language": self.language}


def _decode_with_fallback(model: "Whisper", tokenizer, features: np.ndarray, temperatures: Sequence[float],
                          base: dict, compression_ratio_threshold, logprob_threshold, no_speech_threshold) -> DecodingResult:
    result = None
    for t in temperatures:
        kwargs = dict(base)
        if t > 0:
            kwargs.pop("beam_size", None)
            kwargs.pop("patience", None)
        else:
            kwargs.pop("best_of", None)
        result = DecodingTask(model.graph, tokenizer, DecodingOptions(**kwargs, temperature=t)).run(features)[0]
        needs_fallback = False
        if compression_ratio_threshold is not None and result.compression_ratio > compression_ratio_threshold:
            needs_fallback = True  # too repetitive
        if logprob_threshold is not None and result.avg_logprob < logprob_threshold:
            needs_fallback = True  # average log probability is too low
        if (no_speech_threshold is not None and result.no_speech_prob > no_speech_threshold
                and logprob_threshold is not None and result.avg_logprob < logprob_threshold):
            needs_fallback = False  # silence: nothing better will come from sampling
        if not needs_fallback:
            break
    return result


def transcribe(model: "Whisper", audio, *, verbose: bool | None = None,
               temperature: float | Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
               compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
               no_speech_threshold: float | None = 0.6, condition_on_previous_text: bool = True,
               initial_prompt: str | None = None, carry_initial_prompt: bool = False,
               clip_timestamps: str | Sequence[float] = "0", language: str | None = None, task: str = "transcribe",
               progress: bool | None = None, **decode_options: Any) -> TranscriptionResult:
    """openai-whisper's transcribe() with its option names and defaults.  `progress`: a tqdm bar over
    audio seconds on stderr; None shows it when stderr is a terminal and the audio is longer than a window."""
    mel = log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES)  # (n_mels, n_frames + 3000)
    content_frames = mel.shape[-1] - N_FRAMES

    if not model.is_multilingual:
        language, task = "en", "transcribe"
    elif language is None:
        features = model.embed_audio(pad_or_trim(mel, N_FRAMES)[None])
        language = detect_language(model.graph, model.tokenizer_for(language=None, task=task), features)[0][0]
    tokenizer = model.tokenizer_for(language=language, task=task)

    if isinstance(clip_timestamps, str):
        clip_timestamps = [float(ts) for ts in clip_timestamps.split(",") if ts.strip()]
    seek_points = [round(ts * FRAMES_PER_SECOND) for ts in clip_timestamps] or [0]
    if len(seek_points) % 2 == 1:
        seek_points.append(content_frames)
    seek_clips = list(zip(seek_points[::2], seek_points[1::2]))

    temperatures = [temperature] if isinstance(temperature, (int, float)) else list(temperature)
    base_options = {k: v for k, v in decode_options.items() if k != "fp16"}
    base_options.update(language=language, task=task)

    all_tokens: list[int] = []
    remaining_prompt_length = model.dims.n_text_ctx // 2 - 1
    initial_prompt_tokens: list[int] = []
    if initial_prompt is not None:
        initial_prompt_tokens = tokenizer.encode(" " + initial_prompt.strip())
        all_tokens.extend(initial_prompt_tokens)
        remaining_prompt_length -= len(initial_prompt_tokens)

    if progress is None:
        progress = sys.stderr.isatty() and content_frames > N_FRAMES and not verbose
    bar = tqdm(total=round(content_frames / FRAMES_PER_SECOND, 2), unit="s", unit_scale=False, disable=not progress,
               bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")
    try:
        return _transcribe_windows(model, mel, content_frames, seek_clips, tokenizer, temperatures, base_options,
                                   compression_ratio_threshold, logprob_threshold, no_speech_threshold,
                                   condition_on_previous_text, carry_initial_prompt, initial_prompt_tokens,
                                   all_tokens, remaining_prompt_length, language, verbose, bar)
    finally:
        bar.close()


def _transcribe_windows(model, mel, content_frames, seek_clips, tokenizer, temperatures, base_options,
                        compression_ratio_threshold, logprob_threshold, no_speech_threshold,
                        condition_on_previous_text, carry_initial_prompt, initial_prompt_tokens,
                        all_tokens, remaining_prompt_length, language, verbose, bar) -> TranscriptionResult:
    input_stride = N_FRAMES // model.dims.n_audio_ctx  # mel frames per output token: 2
    time_precision = input_stride * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp step: 0.02
    all_segments: list[Segment] = []
    prompt_reset_since = 0
    clip_idx = 0
    seek = seek_clips[clip_idx][0] if seek_clips else 0
    while clip_idx < len(seek_clips):
        previous_seek = seek
        seek_clip_start, seek_clip_end = seek_clips[clip_idx]
        if seek < seek_clip_start:
            seek = seek_clip_start
        if seek >= seek_clip_end:
            clip_idx += 1
            if clip_idx < len(seek_clips):
                seek = seek_clips[clip_idx][0]
            continue
        time_offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
        segment_size = min(N_FRAMES, content_frames - seek, seek_clip_end - seek)
        mel_segment = pad_or_trim(mel[:, seek:seek + segment_size], N_FRAMES)  # (n_mels, 3000), zero-padded
        segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE

        if carry_initial_prompt:
            nignored = max(len(initial_prompt_tokens), prompt_reset_since)
            remaining = all_tokens[nignored:][-remaining_prompt_length:]
            base_options["prompt"] = initial_prompt_tokens + remaining
        else:
            base_options["prompt"] = all_tokens[prompt_reset_since:]

        features = model.embed_audio(mel_segment[None])
        result = _decode_with_fallback(model, tokenizer, features, temperatures, base_options,
                                       compression_ratio_threshold, logprob_threshold, no_speech_threshold)
        tokens = np.asarray(result.tokens, np.int64)

        if no_speech_threshold is not None:
            should_skip = result.no_speech_prob > no_speech_threshold
            if logprob_threshold is not None and result.avg_logprob > logprob_threshold:
                should_skip = False  # confident text despite the no-speech probability
            if should_skip:
                seek += segment_size
                bar.update(round((min(content_frames, seek) - previous_seek) / FRAMES_PER_SECOND, 2))
                continue

        current: list[dict] = []

        def new_segment(start: float, end: float, toks: np.ndarray) -> dict:
            toks = [int(t) for t in toks]
            return dict(seek=seek, start=start, end=end, text=tokenizer.decode([t for t in toks if t < tokenizer.eot]),
                        tokens=toks, temperature=result.temperature, avg_logprob=result.avg_logprob,
                        compression_ratio=result.compression_ratio, no_speech_prob=result.no_speech_prob)

        is_ts = tokens >= tokenizer.timestamp_begin
        single_timestamp_ending = is_ts[-2:].tolist() == [False, True]
        consecutive = np.nonzero(is_ts[:-1] & is_ts[1:])[0] + 1
        if len(consecutive) > 0:  # the window holds at least one closed (timestamp, text, timestamp) segment
            slices = consecutive.tolist()
            if single_timestamp_ending:
                slices.append(len(tokens))
            last_slice = 0
            for current_slice in slices:
                sliced = tokens[last_slice:current_slice]
                start_pos = int(sliced[0]) - tokenizer.timestamp_begin
                end_pos = int(sliced[-1]) - tokenizer.timestamp_begin
                current.append(new_segment(time_offset + start_pos * time_precision, time_offset + end_pos * time_precision, sliced))
                last_slice = current_slice
            if single_timestamp_ending:
                seek += segment_size  # nothing was cut off mid-speech: move to the next window
            else:  # resume at the last complete timestamp
                seek += (int(tokens[last_slice - 1]) - tokenizer.timestamp_begin) * input_stride
        else:
            duration = segment_duration
            timestamps = tokens[is_ts]
            if len(timestamps) > 0 and int(timestamps[-1]) != tokenizer.timestamp_begin:
                duration = (int(timestamps[-1]) - tokenizer.timestamp_begin) * time_precision
            current.append(new_segment(time_offset, time_offset + duration, tokens))
            seek += segment_size

        for seg in current:  # an instantaneous or empty segment keeps its place but loses its text
            if seg["start"] == seg["end"] or seg["text"].strip() == "":
                seg["text"], seg["tokens"] = "", []

        for seg in current:
            all_segments.append(Segment(id=len(all_segments), **seg))
        all_tokens.extend(t for seg in current for t in seg["tokens"])
        if verbose:
            for seg in current:
                print(f"[{_fmt(seg['start'])} --> {_fmt(seg['end'])}] {seg['text']}")
        if not condition_on_previous_text or result.temperature > 0.5:
            prompt_reset_since = len(all_tokens)
        bar.update(round((min(content_frames, seek) - previous_seek) / FRAMES_PER_SECOND, 2))

    return TranscriptionResult(text=tokenizer.decode(all_tokens[len(initial_prompt_tokens):]),
                               segments=all_segments, language=language)


def _fmt(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:06.3f}"
