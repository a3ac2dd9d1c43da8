"""Token decoders: given the logits of the next position, pick the next token of every sequence.

* `GreedyDecoder`     -- argmax at temperature 0, else one sample from softmax(logits / temperature);
* `BeamSearchDecoder` -- beam search as openai-whisper does it: every beam proposes its
  beam_size + 1 best continuations, the best beam_size unfinished ones go on (their rows of the KV
  cache are reordered to follow), and finished ones are collected until there are
  round(beam_size * patience) of them per audio.

`log_softmax`, `logsumexp` and `top_k` live here too: the reference's (the contract's ops,
`whisperkit.backends.numpy_backend`), and the defaults of the decoders; the decode loop hands them its
backend's (`Ops.log_softmax`, `Ops.top_k`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis, each step in float32: (x - max) - log(sum(exp(x - max))); -inf stays -inf."""
    x = np.asarray(x, np.float32)
    shifted = x - np.max(x, axis=-1, keepdims=True)
    shifted -= np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return shifted


def logsumexp(x: np.ndarray) -> np.ndarray:
    """max + log(sum(exp(x - max))) over the last axis, each step in float32; a row of only -inf gives -inf."""
    x = np.asarray(x, np.float32)
    m = np.max(x, axis=-1)
    finite = np.isfinite(m)
    shift = np.where(finite, m, np.float32(0))  # an all -inf row: exp(-inf - 0) = 0, log(0) = -inf
    with np.errstate(divide="ignore"):
        return np.asarray(shift + np.log(np.sum(np.exp(x - shift[..., None]), axis=-1)), np.float32)  # 1-D x: 0-d


def top_k(x: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Indices of the k largest values of each row of x (rows, n), largest first (ties: lower index first).

    Exact, and cheaper than a partition of every row: seen as (n // chunk, chunk), each of a row's chunk
    columns has a maximum, a distinct element of the row, so the k-th largest of those maxima is a lower bound
    of the row's k-th largest value; only the elements at or above it (few, for logits) are sorted.  The
    maxima and bounds of all rows come from one call each (a max over the column axis is NumPy's vectorised
    reduction; over the chunk axis it took 2.5 times longer)."""
    rows, n = x.shape
    out = np.empty((rows, k), np.int64)
    whole = n - n % chunk
    bounded = whole >= chunk >= k  # a whole chunk, and at least k column maxima
    if bounded:
        maxima = x[:, :whole].reshape(rows, -1, chunk).max(axis=1)  # (rows, chunk)
        bounds = np.partition(maxima, -k, axis=1)[:, -k]
    for r in range(rows):
        row = x[r]
        cand = np.flatnonzero(row >= bounds[r]) if bounded else np.arange(n)
        order = np.lexsort((cand, -row[cand]))[:k]
        out[r] = cand[order]
    return out


# ---- the interface, and greedy ----------------------------------------------------------------
class TokenDecoder:
    #: After update(): for each new row, the row it continues (beam search reorders the KV cache
    #: with it); None when rows never move.
    source_indices: list[int] | None = None

    def reset(self) -> None:
        """Called before each window."""

    def update(self, tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray,
               logprobs: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """Append the next token to every sequence; return (tokens, completed).  `logprobs`, when given, is
        the log_softmax of these very logits, already computed (by a logit filter)."""
        raise NotImplementedError

    def take(self, tokens: np.ndarray, picked: tuple, sum_logprobs: np.ndarray) -> tuple[np.ndarray, bool]:
        """`update`, with the choice already made by a backend's pick (`whisperkit.contract.GREEDY_PICK`, `BEAM_PICK`)
        on these very logits: `picked` is what it returned."""
        raise NotImplementedError

    def finalize(self, tokens: np.ndarray, sum_logprobs: np.ndarray):
        """Return candidate sequences per audio (list of lists of token arrays) and their sum logprobs."""
        raise NotImplementedError


class GreedyDecoder(TokenDecoder):
    """Argmax at temperature 0, else one sample from softmax(logits / temperature)."""

    def __init__(self, temperature: float, eot: int, rng: np.random.Generator,
                 log_softmax: Callable[[np.ndarray], np.ndarray] = log_softmax):
        self.temperature, self.eot, self.rng, self.log_softmax = temperature, eot, rng, log_softmax

    def update(self, tokens, logits, sum_logprobs, logprobs=None):
        return self.append(tokens, *self.choose(logits, logprobs), sum_logprobs)

    def choose(self, logits, logprobs=None):
        """The next token of every row of the (filtered) logits and its log-probability; `logprobs` as in `update`."""
        if self.temperature == 0:
            next_tokens = logits.argmax(axis=-1)
        else:  # Gumbel-max: argmax(logits / T + Gumbel noise) samples softmax(logits / T)
            noise = self.rng.gumbel(size=logits.shape).astype(np.float32)
            next_tokens = (logits / np.float32(self.temperature) + noise).argmax(axis=-1)
        logprobs = self.log_softmax(logits) if logprobs is None else logprobs
        return next_tokens, logprobs[np.arange(logits.shape[0]), next_tokens]  # the chosen tokens' log-probabilities

    def take(self, tokens, picked, sum_logprobs):
        return self.append(tokens, *picked, sum_logprobs)  # greedy_pick's (next tokens, their log-probabilities)

    def append(self, tokens, next_tokens, current, sum_logprobs):
        """`update` once the tokens are chosen (next_tokens, with their log-probabilities `current`; a backend's
        greedy_pick chooses them in one call): rows that ended stay ended and add nothing to sum_logprobs."""
        ended = tokens[:, -1] == self.eot
        if ended.any():  # (few NumPy calls when none has: between two steps each costs several microseconds)
            current = current * ~ended
            next_tokens[ended] = self.eot
        sum_logprobs += current
        tokens = np.concatenate([tokens, next_tokens[:, None]], axis=-1)
        return tokens, bool((next_tokens == self.eot).all())

    def finalize(self, tokens, sum_logprobs):
        tokens = np.pad(tokens, ((0, 0), (0, 1)), constant_values=self.eot)  # make sure each ends with eot
        return tokens, sum_logprobs.tolist()


# ---- beam search ----------------------------------------------------------------------------
class BeamSearchDecoder(TokenDecoder):
    def __init__(self, beam_size: int, eot: int, patience: float | None = None,
                 log_softmax: Callable[[np.ndarray], np.ndarray] = log_softmax,
                 top_k: Callable[[np.ndarray, int], np.ndarray] = top_k):
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        self.beam_size = beam_size
        self.eot = eot
        self.patience = patience or 1.0
        self.max_candidates = round(beam_size * self.patience)
        if self.max_candidates <= 0:
            raise ValueError(f"patience {patience} leaves no candidates for beam_size {beam_size}")
        self.finished: list[dict[tuple, float]] | None = None
        self.source_indices = None
        self.log_softmax, self.top_k = log_softmax, top_k

    def reset(self) -> None:
        self.finished = None
        self.source_indices = None

    def update(self, tokens, logits, sum_logprobs, logprobs=None):
        logprobs = self.log_softmax(logits) if logprobs is None else logprobs
        top = self.top_k(logprobs, self.beam_size + 1)  # the k best tokens of each row, best first
        return self.select(tokens, top, np.take_along_axis(logprobs, top, axis=-1), sum_logprobs)

    def take(self, tokens, picked, sum_logprobs):
        return self.select(tokens, *picked, sum_logprobs)  # beam_pick's (top tokens, their log-probabilities)

    def select(self, tokens, top, top_logprobs, sum_logprobs):
        """`update` from each row's beam_size + 1 best tokens, best first (top, (rows, k)), and their
        log-probabilities."""
        if tokens.shape[0] % self.beam_size != 0:
            raise ValueError(f"{tokens.shape[0]} rows is not a multiple of beam_size {self.beam_size}")
        n_audio = tokens.shape[0] // self.beam_size
        if self.finished is None:
            self.finished = [{} for _ in range(n_audio)]
        # each candidate's score, a float32 sum as openai-whisper's, taken out to Python floats in one call
        cand_scores = (np.asarray(sum_logprobs, np.float32)[:, None] + top_logprobs).tolist()
        top_tokens = top.tolist()
        # A candidate is its row's prefix plus a token.  Rows with the same tokens (the beams before they part)
        # propose the same sequences, which count once: a candidate is keyed by (the first row holding its prefix,
        # token), and a full sequence is built only for the finished ones.
        first_row: dict[bytes, int] = {}
        prefix_of = [first_row.setdefault(row.tobytes(), r) for r, row in enumerate(tokens)]

        next_rows, next_last, newly_finished = [], [], []
        for i in range(n_audio):
            scores: dict[tuple[int, int], float] = {}
            source: dict[tuple[int, int], int] = {}
            for j in range(self.beam_size):
                row = i * self.beam_size + j
                for token, score in zip(top_tokens[row], cand_scores[row]):
                    key = (prefix_of[row], token)
                    scores[key] = score
                    source[key] = row
            finished: dict[tuple, float] = {}
            saved = 0
            for key in sorted(scores, key=scores.get, reverse=True):
                if key[1] == self.eot:
                    finished[tuple(tokens[key[0]].tolist()) + (self.eot,)] = scores[key]
                else:
                    sum_logprobs[len(next_rows)] = scores[key]
                    next_rows.append(source[key])
                    next_last.append(key[1])
                    saved += 1
                    if saved == self.beam_size:
                        break
            newly_finished.append(finished)

        self.source_indices = next_rows
        for previous, new in zip(self.finished, newly_finished):
            for seq in sorted(new, key=new.get, reverse=True):
                if len(previous) >= self.max_candidates:
                    break
                previous[seq] = new[seq]
        completed = all(len(s) >= self.max_candidates for s in self.finished)
        tokens = np.concatenate([tokens[next_rows], np.asarray(next_last, tokens.dtype)[:, None]], axis=-1)
        return tokens, completed

    def finalize(self, tokens, sum_logprobs):
        n_audio = tokens.shape[0] // self.beam_size
        tokens = tokens.reshape(n_audio, self.beam_size, -1)
        lp = np.asarray(sum_logprobs).reshape(n_audio, self.beam_size)
        for i, sequences in enumerate(self.finished):
            if len(sequences) < self.beam_size:  # not enough finished: take the best unfinished too
                for j in np.argsort(lp[i])[::-1]:
                    sequences[tuple(int(t) for t in tokens[i, j]) + (self.eot,)] = float(lp[i, j])
                    if len(sequences) >= self.beam_size:
                        break
        return ([[np.asarray(s) for s in seqs] for seqs in self.finished],
                [list(seqs.values()) for seqs in self.finished])
