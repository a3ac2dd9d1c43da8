"""Word-level timestamps from the cross-attention of the alignment heads, with openai-whisper's
semantics (whisper/timing.py): median filter, dynamic time warping, punctuation merging, and the
duration clamps of `add_word_timestamps`.

Where the attention weights come from
-------------------------------------
The graph runs one extra decoder pass over ``sot_sequence + <|notimestamps|> + text + <|endoftext|>``
(`TextDecoder.forward_with_cross_attention`), built from fine ops so that the cross-attention queries
of each layer are visible.  For every layer holding an alignment head it calls the contract op
``attention_weights(q, k, n_head) -> p (batch, n_head, n_q, n_audio_ctx)``: the softmax probabilities
that the backend's own ``attention`` uses.  A backend provides word timestamps simply by implementing
that op (and the fine ops: linear, layer_norm, attention, mlp_block); a backend that lacks
``attention_weights`` falls back to the NumPy reference through the dispatcher, per op, so word
timestamps work on every backend.

The alignment heads come from the model files (``alignment_heads`` in config.json /
generation_config.json) and default, as in Whisper, to every head of the upper half of the decoder
layers.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .audio import HOP_LENGTH, SAMPLE_RATE, TOKENS_PER_SECOND

if TYPE_CHECKING:
    from .protocols import AlignmentModel
    from .tokenizer import Tokenizer

PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


# ---- median filter and DTW -------------------------------------------------------------------
def median_filter(x: np.ndarray, filter_width: int) -> np.ndarray:
    """Median of a sliding window of `filter_width` (odd) along the last axis, with reflect padding
    (the edge value not repeated: [a b c] -> [c b a b c b a]); arrays no longer than the padding
    come back unchanged.  NaNs sort last, as torch.sort puts them."""
    if filter_width <= 0 or filter_width % 2 == 0:
        raise ValueError(f"filter_width must be a positive odd number, got {filter_width}")
    pad = filter_width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, filter_width, axis=-1)  # (..., T, width)
    return np.sort(windows, axis=-1)[..., pad]


def backtrace(trace: np.ndarray) -> np.ndarray:
    """The DTW path from trace (N+1, M+1) of moves (0 diagonal, 1 up, 2 left) back from the corner.
    Returns (2, path length): text indices then time indices, in order."""
    trace = trace.copy()
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        elif t == 2:
            j -= 1
        else:
            raise ValueError(f"unexpected DTW trace value {t} at ({i}, {j})")
    return np.array(path, dtype=np.int64)[::-1].T.reshape(2, -1)


def dtw(x: np.ndarray) -> np.ndarray:
    """Dynamic time warping over the cost matrix x (N, M); returns (2, path length) indices.

    cost[i, j] = x[i-1, j-1] + min(cost[i-1, j-1], cost[i-1, j], cost[i, j-1]) in float32 (openai
    accumulates in a float32 array), ties broken as openai does: diagonal only if strictly smallest,
    then up only if strictly smallest, else left.  Vectorised along anti-diagonals: the cells with
    i + j = d depend only on diagonals d-1 and d-2, so each diagonal is a handful of NumPy ops
    (N + M of them, ~1600 for a full window)."""
    x = np.asarray(x, np.float32)
    n, m = x.shape
    # skewed storage: D[d, i] = cost[i, d - i] for d = i + j
    D = np.full((n + m + 1, n + 1), np.inf, np.float32)
    T = np.full((n + m + 1, n + 1), -1, np.int8)
    D[0, 0] = 0.0
    rows = np.arange(n + 1)
    for d in range(2, n + m + 1):
        lo, hi = max(1, d - m), min(n, d - 1)
        if lo > hi:
            continue
        i = rows[lo:hi + 1]
        c0 = D[d - 2, lo - 1:hi]  # cost[i-1, j-1]
        c1 = D[d - 1, lo - 1:hi]  # cost[i-1, j]
        c2 = D[d - 1, lo:hi + 1]  # cost[i, j-1]
        diag = (c0 < c1) & (c0 < c2)
        up = ~diag & (c1 < c0) & (c1 < c2)
        c = np.where(diag, c0, np.where(up, c1, c2))
        D[d, lo:hi + 1] = x[i - 1, d - i - 1] + c
        T[d, lo:hi + 1] = np.where(diag, 0, np.where(up, 1, 2))
    # unskew the trace: trace[i, j] = T[i + j, i]
    ii, jj = np.meshgrid(np.arange(n + 1), np.arange(m + 1), indexing="ij")
    trace = T[ii + jj, ii]
    return backtrace(trace)


# ---- alignment ---------------------------------------------------------------------------------
def default_alignment_heads(n_text_layer: int, n_text_head: int) -> np.ndarray:
    """Whisper's default: every head of the upper half of the decoder layers, as (layer, head) rows."""
    return np.array([(l, h) for l in range(n_text_layer // 2, n_text_layer) for h in range(n_text_head)], np.int64)


def find_alignment(model: "AlignmentModel", tokenizer: "Tokenizer", text_tokens: Sequence[int], audio_features: np.ndarray,
                   num_frames: int, *, medfilt_width: int = 7, qk_scale: float = 1.0) -> list[WordTiming]:
    """Words of `text_tokens` with their start/end (seconds from the window start) and probability.

    audio_features: (1, n_audio_ctx, n_audio_state) of the window; num_frames: the mel frames of the
    window that hold audio (the rest is padding)."""
    text_tokens = [int(t) for t in text_tokens]
    if len(text_tokens) == 0:
        return []
    sot_len = len(tokenizer.sot_sequence)
    tokens = np.array([[*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]], np.int64)

    dims = model.dims
    heads = getattr(model, "alignment_heads", None)
    heads = default_alignment_heads(dims.n_text_layer, dims.n_text_head) if heads is None else np.asarray(heads)
    graph = model.graph
    cache = graph.new_cache(audio_features)
    logits, attn = graph.decoder.forward_with_cross_attention(tokens, cache, {int(l) for l, _ in heads})

    # probabilities of the text tokens, softmax over the text vocabulary (specials excluded)
    sampled = logits[0, sot_len:, :tokenizer.eot].astype(np.float32)
    sampled = np.exp(sampled - sampled.max(axis=-1, keepdims=True))
    sampled /= sampled.sum(axis=-1, keepdims=True)
    text_token_probs = sampled[np.arange(len(text_tokens)), text_tokens].astype(np.float64)

    weights = np.stack([attn[int(l)][0, int(h)] for l, h in heads])  # (heads, tokens, n_audio_ctx)
    # openai-whisper truncates the raw scaled QK scores to the audio's num_frames // 2 columns, then
    # softmaxes.  Our backend gives softmax over all n_audio_ctx columns; renormalising those
    # probabilities over the first num_frames // 2 columns is mathematically the same thing
    # (softmax(s)[:F] / sum(softmax(s)[:F]) == softmax(s[:F])); with qk_scale a, softmax(a s) is
    # proportional to p ** a.
    weights = weights[:, :, :num_frames // 2].astype(np.float32)
    if qk_scale != 1.0:
        weights = weights ** np.float32(qk_scale)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)  # biased, as torch.std_mean(unbiased=False)
    weights = (weights - mean) / std
    weights = median_filter(weights, medfilt_width)

    matrix = weights.mean(axis=0)[sot_len:-1]  # rows: <|notimestamps|> and the text tokens
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []  # only end-of-text
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    start_times = jump_times[word_boundaries[:-1]]
    end_times = jump_times[word_boundaries[1:]]
    probabilities = [float(np.mean(text_token_probs[i:j])) for i, j in zip(word_boundaries[:-1], word_boundaries[1:])]
    return [WordTiming(w, list(t), float(s), float(e), p)
            for w, t, s, e, p in zip(words, word_tokens, start_times, end_times, probabilities)]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """In place: a word that is only an opening mark (" (", ' "') joins the word after it; a closing
    mark (".", ",", "?") joins the word before it.  Merged-away entries keep their place, empty."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(*, segments: list[dict], model: "AlignmentModel", tokenizer: "Tokenizer", audio_features: np.ndarray,
                        num_frames: int, prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                        append_punctuations: str = APPEND_PUNCTUATIONS, last_speech_timestamp: float,
                        **kwargs) -> None:
    """Give each segment dict of one window its "words" [{word, start, end, probability}], and move
    the segment's start/end to its words unless a word is implausibly long (openai-whisper's rules)."""
    if len(segments) == 0:
        return
    text_tokens_per_segment = [[t for t in s["tokens"] if t < tokenizer.eot] for s in segments]
    text_tokens = list(itertools.chain.from_iterable(text_tokens_per_segment))
    alignment = find_alignment(model, tokenizer, text_tokens, audio_features, num_frames, **kwargs)
    word_durations = np.array([t.end - t.start for t in alignment])
    word_durations = word_durations[word_durations.nonzero()]
    median_duration = np.median(word_durations) if len(word_durations) > 0 else 0.0
    median_duration = min(0.7, float(median_duration))
    max_duration = median_duration * 2

    # words at sentence boundaries are no longer than twice the median word duration
    if len(word_durations) > 0:
        sentence_end_marks = ".。!！?？"
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in sentence_end_marks:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in sentence_end_marks:
                    alignment[i].start = alignment[i].end - max_duration

    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    time_offset = segments[0]["seek"] * HOP_LENGTH / SAMPLE_RATE
    word_index = 0
    for segment, seg_tokens in zip(segments, text_tokens_per_segment):
        saved_tokens = 0
        words: list[dict] = []
        while word_index < len(alignment) and saved_tokens < len(seg_tokens):
            timing = alignment[word_index]
            if timing.word:
                words.append(dict(word=timing.word, start=round(time_offset + timing.start, 2),
                                  end=round(time_offset + timing.end, 2), probability=timing.probability))
            saved_tokens += len(timing.tokens)
            word_index += 1

        if len(words) > 0:
            # the first and second word after a pause are no longer than twice the median duration
            if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (
                    words[0]["end"] - words[0]["start"] > max_duration
                    or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2)):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - max_duration)

            # prefer the segment's own start when the first word is too long
            if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
            else:
                segment["start"] = words[0]["start"]
            # and its own end when the last word is too long
            if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
            else:
                segment["end"] = words[-1]["end"]
            last_speech_timestamp = segment["end"]
        segment["words"] = words


def get_end(segments: list[dict]) -> float | None:
    return next((w["end"] for s in reversed(segments) for w in reversed(s.get("words") or [])),
                segments[-1]["end"] if segments else None)
