"""The public face: ``Whisper(name_or_path, backend=...)``, ``WhisperTiny`` and ``load_model``."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import weakref
from typing import Any

import numpy as np

from .audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
from .backend import Backend
from .contract import compute_type_name
from .decoding import DecodingOptions, DecodingResult, DecodingTask, detect_language
from .errors import ModelFileError
from .memory import keep_freed_memory
from .model import ModelDimensions, WhisperGraph
from .registry import get_registry
from .tokenizer import Tokenizer, get_tokenizer
from .transcribe import TranscriptionResult, transcribe, transcribe_batch
from .weights import LoadedWeights, resolve_model


class Whisper:
    """A Whisper model of any size on any backend.  Dimensions come from the weights.

    It is the `whisperkit.protocols.SpeechModel` that transcribe.py and timing.py work with.

    >>> model = Whisper("tiny.en")                   # backend="auto": the fastest usable backend here
    >>> model = Whisper("tiny.en", backend="numpy")  # the reference
    >>> model.transcribe("talk.flac").text
    """

    def __init__(self, name_or_path: str | os.PathLike = "tiny.en", backend: str | Backend = "auto",
                 *, compute_type: str = "float32", weights: LoadedWeights | None = None, download_root: str | None = None):
        """compute_type (faster-whisper's names): "float32" (also "default"), token-exact with
        openai-whisper; "int8" (also "int8_float32"): the linear layers' weights quantized to int8 as
        `whisperkit.contract` defines it, activations in float32."""
        self.compute_type = compute_type_name(compute_type)  # a bad name fails before anything loads
        keep_freed_memory()  # a window's large arrays reuse the last window's pages (whisperkit.memory)
        registry = get_registry()
        # A backend chosen by name loads (its library, its compiled kernels: Backend.load) on a thread of its
        # own while the weights are read and the tokenizer built, much of which runs outside the GIL.
        loading = _Background(registry.get, backend, self.compute_type) if isinstance(backend, str) else None
        try:
            given = weights
            self.weights = weights if weights is not None else resolve_model(name_or_path, download_root=download_root)
            self.name = self.weights.name
            if self.weights.tokenizer_json is None:  # before the weights are prepared on the backend
                raise ModelFileError(f"model {self.name} ({self.weights.source}) has no tokenizer.json beside its weights")
            self.dims: ModelDimensions = self.weights.dims
            self.tokenizer_for()
        finally:
            self.backend = loading.result() if loading is not None else backend
        self.ops = registry.ops(self.backend, self.compute_type)
        # Word timing binds the decoder layers as fine ops, rarely: it reads them again then (or takes the
        # caller's tensors) rather than holding a second copy of what the backend prepared.
        reread = ((lambda: given.tensors) if given is not None else
                  (lambda: resolve_model(name_or_path, download_root=download_root).tensors))
        self.graph = WhisperGraph(self.ops, self.dims, self.weights.tensors, reread, consume=given is None)
        # The backend holds the prepared weights now; the model keeps the facts, not a second copy of the tensors.
        self.weights = dataclasses.replace(self.weights, tensors={})
        self.alignment_heads = self.weights.alignment_heads
        self._lock = _backend_lock(self.backend)

    # ---- facts ------------------------------------------------------------------------------
    @property
    def is_multilingual(self) -> bool:
        return self.dims.is_multilingual

    @property
    def num_languages(self) -> int:
        return self.dims.num_languages

    @property
    def fallback_ops(self) -> set[str]:
        """Ops that run on the reference because the backend does not support them."""
        return set(self.ops.fallbacks)

    def tokenizer_for(self, language: str | None = None, task: str | None = None) -> Tokenizer:
        return _tokenizer(str(self.weights.tokenizer_json), self.is_multilingual, self.num_languages, language, task)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.tokenizer_for()

    # ---- the graph --------------------------------------------------------------------------
    def embed_audio(self, mel: np.ndarray) -> np.ndarray:
        """mel (batch, n_mels, 3000) -> audio features (batch, n_audio_ctx, n_audio_state)."""
        return self.graph.embed_audio(mel)

    def logits(self, tokens: np.ndarray, audio_features: np.ndarray) -> np.ndarray:
        """Decoder logits (batch, n_tokens, n_vocab) for whole token sequences (no cache reuse)."""
        tokens = np.atleast_2d(np.asarray(tokens, np.int64))
        cache = self.graph.new_cache(audio_features)
        return self.graph.decoder(tokens, cache, 0, range(tokens.shape[1]))

    def _features(self, audio_or_mel) -> np.ndarray:
        if isinstance(audio_or_mel, np.ndarray) and audio_or_mel.ndim >= 2:
            mel = audio_or_mel
        else:
            mel = log_mel_spectrogram(pad_or_trim_audio(audio_or_mel), self.dims.n_mels)
        mel = pad_or_trim(mel, N_FRAMES)
        return self.embed_audio(mel if mel.ndim == 3 else mel[None])

    # ---- tasks ------------------------------------------------------------------------------
    def detect_language(self, audio_or_mel) -> tuple[str, dict[str, float]]:
        """The most probable language of the first 30 s and the probability of every language."""
        if not self.is_multilingual:
            raise ValueError(f"model {self.name} is English-only: it has no language detection")
        with self._lock:
            codes, probs = detect_language(self.graph, self.tokenizer_for(), self._features(audio_or_mel))
        return codes[0], probs[0]

    def decode(self, audio_or_mel, options: DecodingOptions | None = None, **kwargs: Any) -> DecodingResult:
        """Decode one 30 s window (openai-whisper's `decode`): audio (path/array) or a log-mel."""
        options = options or DecodingOptions(**kwargs)
        with self._lock:
            self.graph.forget_audio()
            return self._decode(audio_or_mel, options)

    def _decode(self, audio_or_mel, options: DecodingOptions) -> DecodingResult:
        features = self._features(audio_or_mel)
        language = options.language
        if language is None and self.is_multilingual:
            language = detect_language(self.graph, self.tokenizer_for(), features)[0][0]
        tokenizer = self.tokenizer_for(language=language, task=options.task)
        return DecodingTask(self.graph, tokenizer, options).run(features)[0]

    def transcribe(self, audio, *, batch_size: int | None = None, **options: Any) -> TranscriptionResult:
        """Transcribe a path, bytes, a binary file object or a float32 16 kHz mono array; options as
        openai-whisper's transcribe(): the sequential loop, token-exact with openai-whisper.  With
        `batch_size`, the batched pipeline instead (`whisperkit.chunked`): the VAD's speech in chunks of at
        most 30 s, `batch_size` rows decoded together, no conditioning on the text before.

        A model may be shared between threads: each call keeps its own KV cache and decoding state;
        on a backend that is not `thread_safe` the calls take turns (one lock per backend instance)."""
        with self._lock:
            if batch_size is not None:
                from .chunked import transcribe_chunked
                return transcribe_chunked(self, [audio], batch_size=batch_size, **options)[0]
            return transcribe(self, audio, **options)

    def transcribe_batch(self, sources, batch_size: int = 8, *, chunked: bool = False,
                         **options: Any) -> list[TranscriptionResult]:
        """Transcribe several paths/arrays; results in the order given.  By default each file runs the
        sequential loop (token-exact with openai-whisper), up to `batch_size` files at once, their windows
        batched through the backend ops where their prompts have one length (`transcribe.transcribe_batch`).
        chunked=True: the batched pipeline of `transcribe(batch_size=...)` instead, its batches filled with
        the VAD chunks of one file after another (`whisperkit.chunked`)."""
        with self._lock:
            if chunked:
                from .chunked import transcribe_chunked
                return transcribe_chunked(self, list(sources), batch_size=batch_size, **options)
            return transcribe_batch(self, list(sources), batch_size=batch_size, **options)

    def __repr__(self) -> str:
        kind = "" if self.compute_type == "float32" else f", {self.compute_type}"
        return f"<Whisper {self.name} on {self.backend.name}{kind}>"


class _Background:
    """``fn(*args)`` on a thread; `result()` waits for it and returns its value or raises its exception."""

    def __init__(self, fn, *args):
        self._value = self._error = None

        def run():
            try:
                self._value = fn(*args)
            except BaseException as exc:  # handed to the caller of result()
                self._error = exc
        self._thread = threading.Thread(target=run, name="whisperkit-backend-load", daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


_LOCKS: "weakref.WeakKeyDictionary[Backend, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _backend_lock(backend: Backend):
    """One re-entrant lock per backend instance that is not thread-safe; a no-op context otherwise."""
    if getattr(backend, "thread_safe", False):
        return contextlib.nullcontext()
    with _LOCKS_GUARD:
        lock = _LOCKS.get(backend)
        if lock is None:
            lock = _LOCKS[backend] = threading.RLock()
        return lock


def pad_or_trim_audio(audio):
    from .audio import load_audio
    return pad_or_trim(load_audio(audio), N_SAMPLES)


@functools.lru_cache(maxsize=32)
def _tokenizer(path: str, multilingual: bool, num_languages: int, language, task) -> Tokenizer:
    return get_tokenizer(path, multilingual=multilingual, num_languages=num_languages, language=language, task=task)


class WhisperTiny(Whisper):
    """The bundled, offline default: Whisper tiny.en."""

    def __init__(self, backend: str | Backend = "auto", **kwargs: Any):
        super().__init__("tiny.en", backend=backend, **kwargs)


def load_model(name_or_path: str | os.PathLike = "tiny.en", backend: str | Backend = "auto", **kwargs: Any) -> Whisper:
    return Whisper(name_or_path, backend=backend, **kwargs)
