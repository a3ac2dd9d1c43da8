"""Long-form transcription: 30-second windows that advance by the last timestamp, each window
conditioned on the text before it, with temperature fallback -- openai-whisper's transcribe().

One transcription is a generator (`_transcription`) that asks for encoder and decoder work with
`EmbedRequest` and `DecodeRequest` and is sent the answers; `transcribe` answers one generator's
requests, `transcribe_batch` answers several generators' requests in shared backend calls."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE, pad_or_trim
from .decoding import DecodingOptions, DecodingResult, DecodingTask, detect_language
from .stream import StreamingMel
from .timing import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS, add_word_timestamps, get_end
from .vad import VadOptions
from .writers import format_timestamp

# openai-whisper's transcribe(): these marks are not words when scoring a possible hallucination
PUNCTUATION = PREPEND_PUNCTUATIONS + APPEND_PUNCTUATIONS

if TYPE_CHECKING:
    from .protocols import SpeechModel
    from .tokenizer import Tokenizer


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
    warnings: list[str] = field(default_factory=list)  # e.g. a damaged file of which only a part was read

    def to_dict(self) -> dict:
        """The JSON shape of openai-whisper's transcribe(): {"text", "segments", "language"}, plus
        "warnings" when there are any."""
        d = {"text": self.text, "segments": [s.to_dict() for s in self.segments], "language": self.language}
        if self.warnings:
            d["warnings"] = list(self.warnings)
        return d


@dataclass(frozen=True)
class TranscriptionOptions:
    """The options of one transcription once read (see `_transcription` for their meaning).

    `decode` holds the decoding options every window starts from (language and task settled); each
    window adds its prompt, and each temperature tried its temperature."""
    decode: DecodingOptions
    temperatures: tuple[float, ...]
    compression_ratio_threshold: float | None
    logprob_threshold: float | None
    no_speech_threshold: float | None
    condition_on_previous_text: bool
    initial_prompt: str | None
    carry_initial_prompt: bool
    clip_timestamps: tuple[float, ...]
    word_timestamps: bool
    prepend_punctuations: str
    append_punctuations: str
    hallucination_silence_threshold: float | None
    skip_silent_windows: bool
    verbose: bool | None


# ---- what a transcription asks for ----------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EmbedRequest:
    """Encode one window; answered with its audio features (1, n_audio_ctx, n_audio_state)."""
    mel: np.ndarray  # (n_mels, 3000)


@dataclass(frozen=True, eq=False)
class DecodeRequest:
    """Decode one window with these options; answered with its DecodingResult."""
    features: np.ndarray  # (1, n_audio_ctx, n_audio_state)
    options: DecodingOptions
    tokenizer: "Tokenizer"


def _decode_with_fallback(features: np.ndarray, tokenizer: "Tokenizer", options: TranscriptionOptions,
                          decode: DecodingOptions):
    """Generator: yields a DecodeRequest for each temperature tried and is sent the DecodingResult;
    returns the result kept, as openai-whisper's decode_with_fallback.  `decode`: the window's options."""
    result = None
    for t in options.temperatures:
        if t > 0:  # sampling: no beams
            attempt = replace(decode, temperature=t, beam_size=None, patience=None)
        else:
            attempt = replace(decode, temperature=t, best_of=None)
        result = yield DecodeRequest(features, attempt, tokenizer)
        needs_fallback = False
        if options.compression_ratio_threshold is not None and result.compression_ratio > options.compression_ratio_threshold:
            needs_fallback = True  # too repetitive
        if options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold:
            needs_fallback = True  # average log probability is too low
        if (options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold
                and options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold):
            needs_fallback = False  # silence: nothing better will come from sampling
        if not needs_fallback:
            break
    return result


def transcribe(model: "SpeechModel", audio, **options: Any) -> TranscriptionResult:
    """openai-whisper's transcribe() with its option names and defaults (see `_transcription`): the
    sequential loop, token-exact with openai-whisper.  (`whisperkit.chunked` is the batched one.)"""
    model.graph.forget_audio()
    return _drive(model, _transcription(model, audio, **options))


def transcribe_batch(model: "SpeechModel", sources: Sequence, batch_size: int = 8, **options: Any) -> list[TranscriptionResult]:
    """Transcribe several files (or arrays) together: up to `batch_size` of them advance in lockstep,
    their windows encoded as one batch and decoded as one batch wherever their decoding options agree
    (prompts of different lengths are left-padded; on a backend without `padded_steps`, only windows whose
    prompts have one length share a batch).  Results come back in the order of `sources`.  With temperature > 0 the
    random draws differ from one-at-a-time runs; at temperature 0 the tokens are the same."""
    results: list[TranscriptionResult | None] = [None] * len(sources)
    for i, result in iter_transcriptions(model, sources, batch_size, **options):
        results[i] = result
    return results  # type: ignore[return-value]


@dataclass(frozen=True)
class WithOptions:
    """A source of `iter_transcriptions` with options of its own (over the shared ones)."""
    audio: Any
    options: dict


def iter_transcriptions(model: "SpeechModel", sources: Iterable, batch_size: int = 8, **options: Any):
    """`transcribe_batch` as a generator of (index into sources, result), each as soon as it is done.
    `sources` is read lazily, one more source each time a row of the batch frees, so a long stream of
    sources (the chunks of a file, `whisperkit.chunked`) keeps the batch full and is never held whole."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model.graph.forget_audio()
    options.setdefault("progress", False)
    queue = enumerate(sources)
    active: dict[int, tuple] = {}  # index -> (generator, pending request)
    while True:
        while len(active) < batch_size:
            i, src = next(queue, (None, None))
            if i is None:
                break
            gen = (_transcription(model, src.audio, **{**options, **src.options}) if isinstance(src, WithOptions)
                   else _transcription(model, src, **options))
            try:
                active[i] = (gen, next(gen))
            except StopIteration as stop:
                yield i, stop.value
        if not active:
            return
        answers = _serve(model, {i: req for i, (_, req) in active.items()})
        for i, answer in answers.items():
            gen = active[i][0]
            try:
                active[i] = (gen, gen.send(answer))
            except StopIteration as stop:
                del active[i]
                yield i, stop.value


def _drive(model: "SpeechModel", gen) -> TranscriptionResult:
    """Run one transcription generator, answering its requests one at a time."""
    try:
        request = next(gen)
        while True:
            request = gen.send(_serve(model, {0: request})[0])
    except StopIteration as stop:
        return stop.value


def _serve(model: "SpeechModel", requests: dict[int, EmbedRequest | DecodeRequest]) -> dict:
    """Answer the requests, batching the ones that can share a backend call: every EmbedRequest in
    one encoder call, and DecodeRequests in one decoding run per (tokenizer, options but the prompt), and
    per initial length too when the backend cannot decode left-padded rows (`Ops.padded_steps`)."""
    answers: dict[int, np.ndarray | DecodingResult] = {}
    embeds = [i for i, r in requests.items() if isinstance(r, EmbedRequest)]
    if embeds:
        features = model.embed_audio(np.stack([requests[i].mel for i in embeds]))  # (batch, n_audio_ctx, n_audio_state)
        for k, i in enumerate(embeds):
            answers[i] = features[k:k + 1]
    groups: dict[tuple, list[int]] = {}
    padded = model.graph.ops.padded_steps
    for i, r in requests.items():
        if isinstance(r, DecodeRequest):
            key = (id(r.tokenizer), replace(r.options, prompt=None, suppress_tokens=_hashable(r.options.suppress_tokens)))
            if not padded:
                key += (DecodingTask(model.graph, r.tokenizer, replace(r.options, prompt=None)).initial_length(r.options.prompt),)
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        first: DecodeRequest = requests[members[0]]  # type: ignore[assignment]
        task = DecodingTask(model.graph, first.tokenizer, first.options)
        if len(members) > 1:
            features = np.concatenate([requests[i].features for i in members])
            results = task.run(features, prompts=[requests[i].options.prompt for i in members])
        else:  # one audio: its features as they are, not a copy
            results = task.run(first.features)
        answers.update(zip(members, results))
    return answers


def _hashable(x):
    return tuple(x) if isinstance(x, list) else x


def _transcription(model: "SpeechModel", audio, **options: Any):
    """`_transcribe_source` of a path or array; bytes and binary file objects are first copied into a
    temporary file (`audio.as_file`), removed when the transcription ends."""
    from .audio import as_file
    with as_file(audio) as source:
        return (yield from _transcribe_source(model, source, **options))


def _transcribe_source(model: "SpeechModel", audio, *, verbose: bool | None = None,
                   temperature: float | Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                   compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
                   no_speech_threshold: float | None = 0.6, condition_on_previous_text: bool = True,
                   initial_prompt: str | None = None, carry_initial_prompt: bool = False,
                   clip_timestamps: str | Sequence[float] = "0", language: str | None = None, task: str = "transcribe",
                   word_timestamps: bool = False, prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                   append_punctuations: str = APPEND_PUNCTUATIONS, hallucination_silence_threshold: float | None = None,
                   progress: bool | None = None, vad_filter: bool = False, vad_options: VadOptions | dict | None = None,
                   vad_parameters: VadOptions | dict | None = None, vad_method: str = "auto",
                   skip_silent_windows: bool = True, strict_audio: bool = False, **decode_options: Any):
    """Generator of one transcription: yields EmbedRequest and DecodeRequest, is sent their answers,
    and returns the TranscriptionResult.

    Options are openai-whisper's transcribe() options with its defaults, plus:
    progress: a tqdm bar over audio seconds on stderr; None shows it when stderr is a terminal and the
    audio is longer than a window.
    word_timestamps: give each segment its `words` [{word, start, end, probability}] from the
    cross-attention of the alignment heads and DTW (whisperkit.timing), and refine the segments'
    start/end and the seek with them; prepend/append_punctuations: the marks merged into the next /
    previous word.  hallucination_silence_threshold (seconds, needs word_timestamps): when a segment
    looks like a hallucination (improbable, very short or very long words), skip the silence
    before it that is longer than this, as openai-whisper does.
    vad_filter: transcribe only the speech regions found by `whisperkit.vad` (joined together), with
    every timestamp mapped back to the original audio; vad_parameters (or vad_options): a VadOptions or
    its fields, faster-whisper's names; vad_method: "silero", "energy" or "auto" (Silero when installed).
    strict_audio: a file whose decoding fails part-way is an AudioError; by default its readable part is
    transcribed, with an AudioDamageWarning and the same message in the result's `warnings`.
    skip_silent_windows (default True, a departure from openai-whisper): a window whose log-mel is
    flat at the floor (digital silence, or everything 80 dB below the loudest sound) is skipped
    without decoding; openai-whisper decodes it and tiny.en then often invents " you".

    The audio is never held whole: the log-mel is computed per window from the file (two streaming
    passes, `whisperkit.stream.StreamingMel`); with vad_filter, one more pass finds the speech, and the
    log-mel's passes read only its regions."""
    speech_map = None
    damage: list = []
    if vad_filter:
        from .vad import SpeechMap, SpeechOnly, find_speech, resolve_method
        vad_parameters = vad_parameters if vad_parameters is not None else vad_options
        vo = vad_parameters if isinstance(vad_parameters, VadOptions) else VadOptions(**(vad_parameters or {}))
        regions = find_speech(audio, vo, resolve_method(vad_method), strict=strict_audio, damage=damage)  # streamed
        if not regions:
            return TranscriptionResult(text="", segments=[], language=language or "en", warnings=_warn_damage(damage))
        speech_map = SpeechMap(regions)
        audio = SpeechOnly(audio, regions)  # read again, region by region, by the streaming log-mel
    mel = StreamingMel(audio, model.dims.n_mels, strict=strict_audio)
    damage += mel.damage
    warned = _warn_damage(damage)

    if not model.dims.is_multilingual:
        language, task = "en", "transcribe"
    detected = None  # the detection's (log-mel, features), which a first window with the same log-mel takes
    if model.dims.is_multilingual and language is None:
        first = mel.window(0, N_FRAMES)  # openai: pad_or_trim of the padded whole-file mel
        detected = (first, (yield EmbedRequest(first)))
        language = detect_language(model.graph, model.tokenizer_for(language=None, task=task), detected[1])[0][0]
    tokenizer = model.tokenizer_for(language=language, task=task)

    if isinstance(clip_timestamps, str):
        clip_timestamps = [float(ts) for ts in clip_timestamps.split(",") if ts.strip()]
    decode = {k: v for k, v in decode_options.items() if k != "fp16"}
    decode.update(language=language, task=task)
    options = TranscriptionOptions(
        decode=DecodingOptions(**decode),
        temperatures=(temperature,) if isinstance(temperature, (int, float)) else tuple(temperature),
        compression_ratio_threshold=compression_ratio_threshold, logprob_threshold=logprob_threshold,
        no_speech_threshold=no_speech_threshold, condition_on_previous_text=condition_on_previous_text,
        initial_prompt=initial_prompt, carry_initial_prompt=carry_initial_prompt,
        clip_timestamps=tuple(clip_timestamps), word_timestamps=word_timestamps,
        prepend_punctuations=prepend_punctuations, append_punctuations=append_punctuations,
        hallucination_silence_threshold=hallucination_silence_threshold,
        skip_silent_windows=skip_silent_windows, verbose=verbose)

    if word_timestamps and task == "translate":
        import warnings
        warnings.warn("Word-level timestamps on translations may not be reliable.", stacklevel=2)

    content_frames = mel.content_frames
    if progress is None:
        progress = sys.stderr.isatty() and content_frames > N_FRAMES and not verbose
    if progress:
        from tqdm import tqdm  # here: without a bar, tqdm is not imported (its memory counts in a cold command)
        bar = tqdm(total=round(content_frames / FRAMES_PER_SECOND, 2), unit="s", unit_scale=False,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")
    else:
        bar = _NoBar()
    try:
        result = yield from _transcribe_windows(model, mel, tokenizer, language, options, bar, detected)
    finally:
        bar.close()
    if speech_map is not None:
        _map_times(result, speech_map)
    result.warnings = warned
    return result


def _warn_damage(damage: list) -> list[str]:
    """A damaged file's reports, warned once (an AudioDamageWarning each) and returned as messages."""
    import warnings

    from .audio import AudioDamageWarning
    for d in damage:
        warnings.warn(AudioDamageWarning(d.message), stacklevel=4)
    return [d.message for d in damage]


def _map_times(result: TranscriptionResult, speech_map) -> None:
    """Move every timestamp from the joined speech back to the original audio."""
    for seg in result.segments:
        seg.start, seg.end = speech_map.original_time(seg.start), speech_map.original_time(seg.end, is_end=True)
        for w in seg.words or []:
            w["start"], w["end"] = speech_map.original_time(w["start"]), speech_map.original_time(w["end"], is_end=True)


@dataclass(frozen=True)
class _Window:
    """Where one 30 s window lies: from frame `seek`, `size` frames of audio (the rest is padding)."""
    seek: int
    size: int

    @property
    def time_offset(self) -> float:
        return float(self.seek * HOP_LENGTH / SAMPLE_RATE)

    @property
    def duration(self) -> float:
        return self.size * HOP_LENGTH / SAMPLE_RATE

    @property
    def end_time(self) -> float:  # where a full window would end
        return float((self.seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE)


class _NoBar:
    """The progress bar when none is shown."""

    def update(self, n: float) -> None: ...

    def close(self) -> None: ...


def _advance(bar, content_frames: int, previous_seek: int, seek: int) -> None:
    """Move the progress bar by the audio seconds from previous_seek to seek (frames)."""
    bar.update(round((min(content_frames, seek) - previous_seek) / FRAMES_PER_SECOND, 2))


def _seek_clips(clip_timestamps: Sequence[float], content_frames: int) -> list[tuple[int, int]]:
    """(start, end) frames of the clips to transcribe; an odd last start runs to the end of the audio."""
    seek_points = [round(ts * FRAMES_PER_SECOND) for ts in clip_timestamps] or [0]
    if len(seek_points) % 2 == 1:
        seek_points.append(content_frames)
    return list(zip(seek_points[::2], seek_points[1::2]))


def _transcribe_windows(model: "SpeechModel", mel: StreamingMel, tokenizer: "Tokenizer", language: str,
                        options: TranscriptionOptions, bar, detected: tuple[np.ndarray, np.ndarray] | None = None):
    content_frames = mel.content_frames
    content_duration = float(content_frames * HOP_LENGTH / SAMPLE_RATE)
    # digital silence, or the clamp floor
    silent_level = max(-1.5, (mel.log_max - 8.0 + 4.0) / 4.0) + 1e-6 if options.skip_silent_windows else None
    seek_clips = _seek_clips(options.clip_timestamps, content_frames)
    input_stride = N_FRAMES // model.dims.n_audio_ctx  # mel frames per output token: 2
    time_precision = input_stride * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp step: 0.02

    all_tokens: list[int] = []
    remaining_prompt_length = model.dims.n_text_ctx // 2 - 1
    initial_prompt_tokens: list[int] = []
    if options.initial_prompt is not None:
        initial_prompt_tokens = tokenizer.encode(" " + options.initial_prompt.strip())
        all_tokens.extend(initial_prompt_tokens)
        remaining_prompt_length -= len(initial_prompt_tokens)

    all_segments: list[Segment] = []
    prompt_reset_since = 0
    last_speech_timestamp = 0.0
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
        window = _Window(seek, min(N_FRAMES, content_frames - seek, seek_clip_end - seek))
        time_offset, segment_size = window.time_offset, window.size
        mel_segment = pad_or_trim(mel.window(seek, segment_size), N_FRAMES)  # (n_mels, 3000), zero-padded
        if silent_level is not None and mel_segment[:, :segment_size].max() <= silent_level:
            seek += segment_size  # nothing but silence: nothing to decode
            _advance(bar, content_frames, previous_seek, seek)
            continue

        if options.carry_initial_prompt:
            nignored = max(len(initial_prompt_tokens), prompt_reset_since)
            remaining = all_tokens[nignored:][-remaining_prompt_length:]
            prompt = initial_prompt_tokens + remaining
        else:
            prompt = all_tokens[prompt_reset_since:]

        if detected is not None and np.array_equal(detected[0], mel_segment):
            features = detected[1]  # audio of 30 s or more (a shorter window is zero-padded, as openai-whisper's)
        else:
            features = yield EmbedRequest(mel_segment)
        detected = None  # only the first window can be the detection's
        result = yield from _decode_with_fallback(features, tokenizer, options, replace(options.decode, prompt=prompt))
        tokens = np.asarray(result.tokens, np.int64)

        if options.no_speech_threshold is not None:
            should_skip = result.no_speech_prob > options.no_speech_threshold
            if options.logprob_threshold is not None and result.avg_logprob > options.logprob_threshold:
                should_skip = False  # confident text despite the no-speech probability
            if should_skip:
                seek += segment_size
                _advance(bar, content_frames, previous_seek, seek)
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
            duration = window.duration
            timestamps = tokens[is_ts]
            if len(timestamps) > 0 and int(timestamps[-1]) != tokenizer.timestamp_begin:
                duration = (int(timestamps[-1]) - tokenizer.timestamp_begin) * time_precision
            current.append(new_segment(time_offset, time_offset + duration, tokens))
            seek += segment_size

        if options.word_timestamps:
            add_word_timestamps(segments=current, model=model, tokenizer=tokenizer, audio_features=features,
                                num_frames=segment_size, prepend_punctuations=options.prepend_punctuations,
                                append_punctuations=options.append_punctuations,
                                last_speech_timestamp=last_speech_timestamp)
            if not single_timestamp_ending:  # resume right after the last word instead
                last_word_end = get_end(current)
                if last_word_end is not None and last_word_end > time_offset:
                    seek = round(last_word_end * FRAMES_PER_SECOND)
            if options.hallucination_silence_threshold is not None:
                seek, current, skip_window = _skip_hallucination_silence(
                    current, options.hallucination_silence_threshold, window, single_timestamp_ending, seek,
                    last_speech_timestamp, content_frames, content_duration)
                if skip_window:  # the window starts with a hallucination after a long silence: redo it later
                    _advance(bar, content_frames, previous_seek, seek)
                    continue
            last_word_end = get_end(current)
            if last_word_end is not None:
                last_speech_timestamp = last_word_end

        for seg in current:  # an instantaneous or empty segment keeps its place but loses its text
            if seg["start"] == seg["end"] or seg["text"].strip() == "":
                seg["text"], seg["tokens"], seg["words"] = "", [], []

        for seg in current:
            all_segments.append(Segment(id=len(all_segments), **seg))
        all_tokens.extend(t for seg in current for t in seg["tokens"])
        if options.verbose:
            for seg in current:
                print(f"[{format_timestamp(seg['start'])} --> {format_timestamp(seg['end'])}] {seg['text']}")
        if not options.condition_on_previous_text or result.temperature > 0.5:
            prompt_reset_since = len(all_tokens)
        _advance(bar, content_frames, previous_seek, seek)

    return TranscriptionResult(text=tokenizer.decode(all_tokens[len(initial_prompt_tokens):]),
                               segments=all_segments, language=language)


# ---- hallucination_silence_threshold (openai-whisper's transcribe) ----------------------------
def _word_anomaly_score(word: dict) -> float:
    """How implausible a word is: improbable (< 0.15), very short (< 0.133 s) or very long (> 2 s)."""
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_segment_anomaly(segment: dict | None) -> bool:
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in PUNCTUATION][:8]
    score = sum(_word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_words_segment(segments: list[dict]) -> dict | None:
    return next((s for s in segments if s["words"]), None)


def _skip_hallucination_silence(current: list[dict], threshold: float, window: _Window, single_timestamp_ending: bool,
                                seek: int, last_speech_timestamp: float, content_frames: int, content_duration: float):
    """Returns (seek, segments kept, skip the whole window)."""
    previous_seek, segment_size = window.seek, window.size
    time_offset, segment_duration, window_end_time = window.time_offset, window.duration, window.end_time
    if not single_timestamp_ending:
        last_word_end = get_end(current)
        if last_word_end is not None and last_word_end > time_offset:
            remaining_duration = window_end_time - last_word_end
            if remaining_duration > threshold:
                seek = round(last_word_end * FRAMES_PER_SECOND)
            else:
                seek = previous_seek + segment_size

    # the first segment might be a hallucination: skip the silence before it
    first_segment = _next_words_segment(current)
    if first_segment is not None and _is_segment_anomaly(first_segment):
        gap = first_segment["start"] - time_offset
        if gap > threshold:
            return previous_seek + round(gap * FRAMES_PER_SECOND), current, True

    # skip the silence before any possible hallucination surrounded by silence or more hallucinations
    hal_last_end = last_speech_timestamp
    for si in range(len(current)):
        segment = current[si]
        if not segment["words"]:
            continue
        if _is_segment_anomaly(segment):
            next_segment = _next_words_segment(current[si + 1:])
            hal_next_start = next_segment["words"][0]["start"] if next_segment is not None else time_offset + segment_duration
            silence_before = (segment["start"] - hal_last_end > threshold or segment["start"] < threshold
                              or segment["start"] - time_offset < 2.0)
            silence_after = (hal_next_start - segment["end"] > threshold or _is_segment_anomaly(next_segment)
                             or window_end_time - segment["end"] < 2.0)
            if silence_before and silence_after:
                seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                if content_duration - segment["end"] < threshold:
                    seek = content_frames
                current = current[:si]
                break
        hal_last_end = segment["end"]
    return seek, current, False
