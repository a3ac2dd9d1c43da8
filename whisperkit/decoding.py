"""Decoding one 30-second window, cut at small seams so strategies and filters compose:

* `Inference`      -- runs the decoder with its KV cache, feeding only the tokens it has not seen;
* `LogitFilter`s   -- suppress tokens and enforce the timestamp grammar, in place on the logits;
* `TokenDecoder`   -- picks the next tokens (greedy / sampling, beam search: whisperkit.token_decoders);
* `SequenceRanker` -- picks the final sequence among candidates;
* `DecodingTask._speculate` -- greedy decoding of one row a few drafted tokens at a time, verified together, where
  the backend's decoder_step offers `draft` and `head` (the contract): the plain loop's tokens, in fewer passes over
  the logits weight.

The rules are openai-whisper's (whisper/decoding.py), so that tokens match it one for one.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np

from .audio import CHUNK_LENGTH
from .token_decoders import BeamSearchDecoder, GreedyDecoder, TokenDecoder, log_softmax, logsumexp

if TYPE_CHECKING:
    from .model import KVCache, WhisperGraph
    from .tokenizer import Tokenizer


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


@dataclass(frozen=True)
class DecodingOptions:
    task: str = "transcribe"
    language: str | None = None
    temperature: float = 0.0
    sample_len: int | None = None  # maximum number of tokens to sample
    best_of: int | None = None  # independent samples when temperature > 0
    beam_size: int | None = None  # beams when temperature == 0
    patience: float | None = None
    length_penalty: float | None = None
    prompt: str | list[int] | None = None  # text or tokens of the previous context
    prefix: str | list[int] | None = None  # text or tokens to start the current window with
    suppress_tokens: str | Sequence[int] | None = "-1"  # "-1": the non-speech symbols
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    seed: int | None = 0  # sampling seed, so a run with temperature > 0 can be repeated


@dataclass
class DecodingResult:
    audio_features: np.ndarray | None
    language: str
    language_probs: dict[str, float] | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    avg_logprob: float = np.nan
    no_speech_prob: float = np.nan
    temperature: float = np.nan
    compression_ratio: float = np.nan


#: Steps a speculative greedy round drafts (`DecodingTask._speculate`); below 2, greedy decoding steps one token at a
#: time.  A round costs its steps' layers and one pass over the logits weight for all of them; a longer one throws
#: away more drafts after a miss (2 to 6 measured: docs/bench-results.md, issue 14, stop 43).
SPECULATE = 4
#: The text ids of the draft vocabulary: the first ones (`DecodingTask._draft_columns`).  More ids miss fewer tokens
#: and cost every draft step their share of the logits weight (4096 to 16384 measured, the same place).
DRAFT_TEXT = 12288
_NO_COLUMNS = np.empty(0, np.int64)  # a draft step whose logits are not read


@functools.lru_cache(maxsize=4)
def _draft_columns(n_vocab: int, eot: int, n_text: int) -> np.ndarray:
    """The vocabulary a draft step computes the logits of: the n_text first ids (BPE ranks: the most common pieces
    come first) and every id from end-of-text on (the special tokens and the timestamps).  One array per vocabulary,
    so that a backend converts it once."""
    columns = np.concatenate([np.arange(min(n_text, eot)), np.arange(eot, n_vocab)]).astype(np.int64)
    columns.flags.writeable = False
    return columns


class Inference:
    """The decoder with a KV cache for one window.  Feeds only the tokens not yet in the cache."""

    def __init__(self, graph: "WhisperGraph", audio_features: np.ndarray, group: int = 1):
        self.graph = graph
        self.cache: "KVCache" = graph.new_cache(audio_features, group)  # `group` rows per audio share its cross K/V
        self.offset = 0  # tokens already in the cache

    def logits(self, tokens: np.ndarray, positions: Sequence[int] | None = None) -> np.ndarray:
        """tokens: (batch, n) with the first `offset` already seen.  Returns logits (batch, n_pos, n_vocab)
        at `positions` (absolute indices into tokens; default: the last)."""
        new = tokens[:, self.offset:]
        rel = None if positions is None else [p - self.offset if p >= 0 else p for p in positions]
        out = self.graph.decoder(new, self.cache, self.offset, rel)
        self.offset = tokens.shape[1]
        return out

    def logits_per_audio(self, tokens: np.ndarray, positions: Sequence[int] | None = None) -> np.ndarray:
        """`logits` when the rows of each group (the beams or best_of samples of one audio) hold the same tokens, as
        they do before the first sampled one: the decoder runs once per audio, not once per row (5 times the
        prompt's rows at beam 5), and its caches and logits are copied to the rows of the group."""
        g = self.cache.group
        if g == 1:
            return self.logits(tokens, positions)
        one = self.cache.ungrouped()
        rel = None if positions is None else [p - self.offset if p >= 0 else p for p in positions]
        out = self.graph.decoder(tokens[::g, self.offset:], one, self.offset, rel)  # (n_audio, n_pos, n_vocab)
        self.offset = tokens.shape[1]
        self.cache.spread_from(one, self.offset)
        return np.repeat(out, g, axis=0)

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if list(source_indices) != list(range(len(source_indices))):
            self.cache.reorder(np.asarray(source_indices), self.offset)


# ---- logit filters ------------------------------------------------------------------------
class LogitFilter:
    #: After apply(): the log_softmax of the logits when the filter computed it and left the logits as they
    #: were from that point on, so the token decoder need not compute it again; else None.
    logprobs: np.ndarray | None = None

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        """Edit logits (batch, n_vocab) in place given the tokens so far (batch, n)."""
        raise NotImplementedError


class SuppressBlank(LogitFilter):
    """At the first sampled position, forbid a blank (a lone space) and end-of-text."""

    def __init__(self, tokenizer: "Tokenizer", sample_begin: int):
        self.ids = list(tokenizer.vocab.blank) + [tokenizer.eot]  # encode(" "), cached: transcribing builds no BPE
        self.sample_begin = sample_begin

    def apply(self, logits, tokens):
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.ids] = -np.inf


class SuppressTokens(LogitFilter):
    def __init__(self, suppress_tokens: Sequence[int]):
        self.ids = np.asarray(list(suppress_tokens), np.int64)  # an index array once, not a list converted per step

    def apply(self, logits, tokens):
        logits[:, self.ids] = -np.inf


class ApplyTimestampRules(LogitFilter):
    """Timestamps come in pairs (except right before end-of-text), never go backwards, the first token
    is a timestamp no later than max_initial_timestamp, and when the timestamps together are more
    probable than any text token, a timestamp is forced."""

    def __init__(self, tokenizer: "Tokenizer", sample_begin: int, max_initial_timestamp_index: int | None,
                 log_softmax: Callable[[np.ndarray], np.ndarray] = log_softmax,
                 logsumexp: Callable[[np.ndarray], np.ndarray] = logsumexp):
        self.tokenizer = tokenizer
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index
        self.log_softmax, self.logsumexp = log_softmax, logsumexp

    def apply(self, logits, tokens):
        tb, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        if self.tokenizer.no_timestamps is not None:
            logits[:, self.tokenizer.no_timestamps] = -np.inf
        for k, seq in enumerate(tokens[:, self.sample_begin:].tolist()):  # Python ints: a beam step has 5 short rows
            last_was_timestamp = len(seq) >= 1 and seq[-1] >= tb
            penultimate_was_timestamp = len(seq) < 2 or seq[-2] >= tb
            if last_was_timestamp:
                if penultimate_was_timestamp:  # a pair just closed: text must follow
                    logits[k, tb:] = -np.inf
                else:  # an opening timestamp: it cannot be followed by text
                    logits[k, :eot] = -np.inf
            latest = next((t for t in reversed(seq) if t >= tb), None)
            if latest is not None:
                # no going backwards; after a closed pair, no zero-length segment either
                last = latest if (last_was_timestamp and not penultimate_was_timestamp) else latest + 1
                logits[k, tb:last] = -np.inf
        if tokens.shape[1] == self.sample_begin:
            logits[:, :tb] = -np.inf  # the first sampled token is a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, tb + self.max_initial_timestamp_index + 1:] = -np.inf
        logprobs = self.log_softmax(logits)
        self.logprobs = logprobs
        forced = timestamps_outweigh_text(logprobs, tb, self.logsumexp)
        if forced.any():
            logits[forced, :tb] = -np.inf
            self.logprobs = None  # the logits changed after they were computed


def timestamps_outweigh_text(logprobs: np.ndarray, tb: int,
                             logsumexp: Callable[[np.ndarray], np.ndarray] = logsumexp) -> np.ndarray:
    """Per row (bool): the timestamps together (their logsumexp) are more probable than the best text token.
    A row with every timestamp suppressed (logsumexp -inf) is never forced."""
    return logsumexp(logprobs[:, tb:]) > logprobs[:, :tb].max(axis=1)


# ---- ranking ------------------------------------------------------------------------------
class SequenceRanker:
    def rank(self, tokens: list[list[np.ndarray]], sum_logprobs: list[list[float]]) -> list[int]:
        raise NotImplementedError


class MaximumLikelihoodRanker(SequenceRanker):
    """Highest sum logprob normalised by length: plain length when length_penalty is None, else the
    Google NMT penalty ((5 + length) / 6) ** length_penalty."""

    def __init__(self, length_penalty: float | None):
        self.length_penalty = length_penalty

    def rank(self, tokens, sum_logprobs):
        def scores(logprobs, lengths):
            out = []
            for logprob, length in zip(logprobs, lengths):
                penalty = length if self.length_penalty is None else ((5 + length) / 6) ** self.length_penalty
                out.append(logprob / penalty)
            return out
        lengths = [[len(t) for t in s] for s in tokens]
        return [int(np.argmax(scores(p, l))) for p, l in zip(sum_logprobs, lengths)]


# ---- one window -----------------------------------------------------------------------------
def detect_language(graph: "WhisperGraph", tokenizer: "Tokenizer", audio_features: np.ndarray):
    """Returns (language codes (batch,), probabilities: list of {code: p}) from the logits after <|startoftranscript|>."""
    if not tokenizer.all_language_tokens or not getattr(tokenizer, "multilingual", True):
        raise ValueError("this model has no language tokens: it cannot detect the language")
    cache = graph.new_cache(audio_features)
    tokens = np.full((audio_features.shape[0], 1), tokenizer.sot, dtype=np.int64)
    logits = graph.decoder(tokens, cache, 0)[:, 0].astype(np.float32)  # (batch, n_vocab)
    lang_tokens = np.asarray(tokenizer.all_language_tokens)
    lang_logits = logits[:, lang_tokens]
    probs = np.exp(log_softmax(lang_logits))
    codes = tokenizer.all_language_codes
    best = [codes[i] for i in probs.argmax(axis=-1)]
    return best, [dict(zip(codes, map(float, p))) for p in probs]


class PickRules(NamedTuple):
    """What a backend's greedy_pick and beam_pick (`whisperkit.contract.GREEDY_PICK`, `BEAM_PICK`) apply: decoding's
    own logit filters as data.  blank: SuppressBlank's ids (empty without it); suppress: SuppressTokens' (empty without
    it); timestamps: ApplyTimestampRules on; no_timestamps and max_initial: -1 for none."""
    sample_begin: int
    blank: np.ndarray
    suppress: np.ndarray
    timestamps: bool
    no_timestamps: int
    timestamp_begin: int
    eot: int
    max_initial: int


class DecodingTask:
    def __init__(self, graph: "WhisperGraph", tokenizer: "Tokenizer", options: DecodingOptions):
        self.graph = graph
        self.tokenizer = tokenizer
        self.options = options = self._verify_options(options)
        self.n_ctx = graph.dims.n_text_ctx
        self.sample_len = options.sample_len or self.n_ctx // 2
        self.n_group = options.beam_size or options.best_of or 1
        self.sot_sequence = tokenizer.sot_sequence_including_notimestamps if options.without_timestamps else tokenizer.sot_sequence
        self.initial_tokens = self._initial_tokens()
        self.sample_begin = len(self.initial_tokens)
        self.sot_index = self.initial_tokens.index(tokenizer.sot)
        rng = np.random.default_rng(options.seed)
        if options.beam_size is not None:
            self.decoder: TokenDecoder = BeamSearchDecoder(options.beam_size, tokenizer.eot, options.patience,
                                                           graph.ops.log_softmax, graph.ops.top_k)
        else:
            self.decoder = GreedyDecoder(options.temperature, tokenizer.eot, rng, graph.ops.log_softmax)
        self.ranker = MaximumLikelihoodRanker(options.length_penalty)
        self.logit_filters = self._logit_filters()

    def _logit_filters(self) -> list[LogitFilter]:
        """The filters, for sampling from position self.sample_begin on."""
        options, tokenizer = self.options, self.tokenizer
        filters: list[LogitFilter] = []
        if options.suppress_blank:
            filters.append(SuppressBlank(tokenizer, self.sample_begin))
        if options.suppress_tokens:
            filters.append(SuppressTokens(self._suppress_tokens()))
        if not options.without_timestamps:
            precision = CHUNK_LENGTH / self.graph.dims.n_audio_ctx  # 0.02 s per timestamp step
            max_index = None
            if options.max_initial_timestamp:
                max_index = round(options.max_initial_timestamp / precision)
            filters.append(ApplyTimestampRules(tokenizer, self.sample_begin, max_index, self.graph.ops.log_softmax,
                                               self.graph.ops.logsumexp))
        return filters

    def _pick(self) -> Callable | None:
        """The backend's greedy_pick or beam_pick bound to this task's filters and token decoder
        (`whisperkit.contract.GREEDY_PICK`, `BEAM_PICK`): `pick(logits, tokens)` returns what the token decoder's
        `take` appends.  None: the filters and the token decoder run as they are.  Only at temperature 0, with
        decoding's own filters, and only when the ops whose values the pick reproduces run on that backend:
        log_softmax and logsumexp, and top_k for beam search."""
        ops = self.graph.ops
        beam = type(self.decoder) is BeamSearchDecoder
        if not beam and (type(self.decoder) is not GreedyDecoder or self.decoder.temperature != 0):
            return None
        pick = getattr(ops.backend, "beam_pick" if beam else "greedy_pick", None)
        reproduced = ("log_softmax", "logsumexp", "top_k") if beam else ("log_softmax", "logsumexp")
        if pick is None or any(getattr(getattr(ops, op), "__self__", None) is not ops.backend for op in reproduced):
            return None
        kinds = [type(f) for f in self.logit_filters]
        if kinds != [k for k in (SuppressBlank, SuppressTokens, ApplyTimestampRules) if k in kinds]:
            return None
        by_kind = {type(f): f for f in self.logit_filters}
        ids = lambda kind: np.asarray(getattr(by_kind.get(kind), "ids", ()), np.int64)  # noqa: E731
        rules_of = by_kind.get(ApplyTimestampRules)
        tk = self.tokenizer
        rules = PickRules(
            sample_begin=self.sample_begin, blank=ids(SuppressBlank), suppress=ids(SuppressTokens),
            timestamps=rules_of is not None, no_timestamps=-1 if tk.no_timestamps is None else tk.no_timestamps,
            timestamp_begin=tk.timestamp_begin, eot=tk.eot,
            max_initial=-1 if rules_of is None or rules_of.max_initial_timestamp_index is None
            else rules_of.max_initial_timestamp_index)
        if beam:
            k = self.decoder.beam_size + 1  # BeamSearchDecoder's candidates per row
            return lambda logits, tokens: pick(logits, tokens, rules, k)
        return lambda logits, tokens: pick(logits, tokens, rules)

    def _filtered_pick(self) -> Callable:
        """What the loop does without a backend's pick, as one `pick(logits, tokens)` for `take`: the filters in place,
        then GreedyDecoder's choice (given the last filter's log_softmax, as `update` is)."""
        filters, decoder = self.logit_filters, self.decoder

        def pick(logits, tokens):
            for f in filters:
                f.apply(logits, tokens)
            return decoder.choose(logits, filters[-1].logprobs if filters else None)
        return pick

    @staticmethod
    def _verify_options(o: DecodingOptions) -> DecodingOptions:
        if o.beam_size is not None and o.best_of is not None:
            raise ValueError("beam_size and best_of can't be given together")
        if o.temperature == 0 and o.best_of is not None:
            raise ValueError("best_of with greedy sampling (temperature 0) is not compatible")
        if o.patience is not None and o.beam_size is None:
            raise ValueError("patience requires beam_size to be given")
        if o.length_penalty is not None and not (0 <= o.length_penalty <= 1):
            raise ValueError("length_penalty (alpha) should be a value between 0 and 1")
        if o.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {o.task!r}")
        return o

    def _initial_tokens(self, prompt=None) -> list[int]:
        """sot_prev + prompt + sot sequence + prefix; `prompt` overrides options.prompt when given."""
        tokens = list(self.sot_sequence)
        if prefix := self.options.prefix:
            prefix_tokens = self.tokenizer.encode(" " + prefix.strip()) if isinstance(prefix, str) else list(prefix)
            if self.sample_len is not None:
                prefix_tokens = prefix_tokens[-(self.n_ctx // 2 - self.sample_len):] if self.n_ctx // 2 - self.sample_len > 0 else []
            tokens = tokens + prefix_tokens
        if prompt is None:
            prompt = self.options.prompt
        if prompt:
            prompt_tokens = self.tokenizer.encode(" " + prompt.strip()) if isinstance(prompt, str) else list(prompt)
            tokens = [self.tokenizer.sot_prev] + prompt_tokens[-(self.n_ctx // 2 - 1):] + tokens
        return tokens

    def _suppress_tokens(self) -> list[int]:
        st = self.options.suppress_tokens
        if isinstance(st, str):
            st = [int(t) for t in st.split(",") if t.strip()]
        st = list(st)
        n_vocab = self.graph.dims.n_vocab
        bad = [t for t in st if not -1 <= t < n_vocab]  # -1: the non-speech symbols
        if bad:
            raise ValueError(f"suppress_tokens: token {bad[0]} is outside the vocabulary (0..{n_vocab - 1}, or -1 for "
                             f"the non-speech symbols)")
        if -1 in st:
            st = [t for t in st if t >= 0] + list(self.tokenizer.non_speech_tokens)
        t = self.tokenizer
        st += [t.transcribe, t.translate, t.sot, t.sot_prev, t.sot_lm]
        if t.no_speech is not None:
            st.append(t.no_speech)  # no-speech probability is read, but the token is never sampled
        return sorted(set(st))

    def initial_length(self, prompt=None) -> int:
        """Length of the initial tokens for this prompt: audios batched in one run must agree on it, unless the
        backend takes left-padded rows (`Ops.padded_steps`)."""
        return len(self._initial_tokens(prompt))

    def _padded_prompts(self, prompts: Sequence, n_audio: int) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
        """One prompt per audio -> (initial tokens (n_audio, P), left padding per row or None, the position
        of each row's sot).  Rows shorter than the longest are left-padded: their padding is never attended to
        (the contract's decoder_step `pad`), so each row decodes as it would alone."""
        rows = [self._initial_tokens(p) for p in prompts]
        if len(rows) != n_audio:
            raise ValueError(f"batched decoding: {len(rows)} prompts for {n_audio} audios")
        longest = max(len(r) for r in rows)
        pad = np.asarray([longest - len(r) for r in rows], np.int64)
        if pad.any() and not self.graph.ops.padded_steps:
            raise ValueError(f"batched prompts of different lengths need a backend that takes left-padded rows; "
                             f"{self.graph.ops.backend.name} does not (Backend.padded_steps)")
        tokens = np.asarray([[self.tokenizer.eot] * int(p) + r for p, r in zip(pad, rows)], np.int64)  # eot: never read
        sot = [int(p) + r.index(self.tokenizer.sot) for p, r in zip(pad, rows)]
        return tokens, (pad if pad.any() else None), sot

    def run(self, audio_features: np.ndarray, prompts: Sequence | None = None) -> list[DecodingResult]:
        """audio_features: (n_audio, n_audio_ctx, n_audio_state) -> one result per audio.  `prompts`:
        one prompt per audio (overriding options.prompt); prompts of different lengths are left-padded to
        the longest, and sampling then stops, for every row, where the longest row reaches the context's end."""
        n_audio = audio_features.shape[0]
        self.decoder.reset()
        pad, sot_rows = None, [self.sot_index] * n_audio
        if prompts is None:
            tokens = np.tile(np.asarray(self.initial_tokens, np.int64), (n_audio, 1))
        else:
            tokens, pad, sot_rows = self._padded_prompts(prompts, n_audio)
        if tokens.shape[1] != self.sample_begin:  # sampling starts after the (padded) prompts
            self.sample_begin = tokens.shape[1]
            self.logit_filters = self._logit_filters()
        pick = self._pick()
        language = self.tokenizer.language or "en"
        if self.n_group > 1:
            tokens = np.repeat(tokens, self.n_group, axis=0)
        inference = Inference(self.graph, audio_features, self.n_group)
        if pad is not None:
            inference.cache.pad = np.repeat(pad, self.n_group)
        sot_at = sorted(set(sot_rows))  # the logit positions of the first step: every row's sot, then the last
        sot_column = np.repeat([sot_at.index(s) for s in sot_rows], self.n_group)  # per decoder row
        sum_logprobs = np.zeros(tokens.shape[0], np.float32)
        no_speech_probs = [np.nan] * n_audio
        # (a greedy pick is taken at temperature 0 only: `_pick`, `_filtered_pick`)
        speculate = (SPECULATE > 1 and isinstance(self.decoder, GreedyDecoder) and self.decoder.temperature == 0
                     and self.graph.decoder.head is not None and tokens.shape[0] == 1 and pad is None)
        # Greedy/sampled rows are independent: rows that have ended (eot) leave the batch and their rows
        # of the KV cache are dropped, so a batch costs its open rows, not its longest row times its
        # size.  The tokens are those of the full computation (finished rows only ever append eot).
        independent_rows = isinstance(self.decoder, GreedyDecoder)
        active = np.arange(tokens.shape[0])  # rows still open, in cache order
        for i in range(self.sample_len):
            open_tokens = tokens if len(active) == tokens.shape[0] else tokens[active]
            if i == 0:
                logits = inference.logits_per_audio(open_tokens, sot_at + [tokens.shape[1] - 1])  # rows of a group alike
                if self.tokenizer.no_speech is not None:
                    at_sot = logits[np.arange(len(logits)), sot_column]  # (rows, n_vocab)
                    probs_at_sot = np.exp(log_softmax(at_sot))
                    no_speech_probs = probs_at_sot[::self.n_group, self.tokenizer.no_speech].tolist()
                logits = np.ascontiguousarray(logits[:, -1])
            else:
                logits = inference.logits(open_tokens)[:, -1]
            if pick is not None:  # the filters and the token choice in one backend call
                picked = pick(logits, open_tokens)
                update = lambda rows, s: self.decoder.take(rows, picked, s)  # noqa: E731
            else:
                for f in self.logit_filters:
                    f.apply(logits, open_tokens)
                logprobs = self.logit_filters[-1].logprobs if self.logit_filters else None  # only the last filter's stay valid
                update = lambda rows, s: self.decoder.update(rows, logits, s, logprobs)  # noqa: E731
            if open_tokens is tokens:
                tokens, completed = update(tokens, sum_logprobs)
            else:
                open_logprobs = sum_logprobs[active]
                updated, _ = update(open_tokens, open_logprobs)
                sum_logprobs[active] = open_logprobs
                column = np.full(tokens.shape[0], self.tokenizer.eot, np.int64)
                column[active] = updated[:, -1]
                tokens = np.concatenate([tokens, column[:, None]], axis=-1)
                completed = bool((column == self.tokenizer.eot).all())
            if self.decoder.source_indices is not None:
                inference.rearrange_kv_cache(self.decoder.source_indices)
            if completed or tokens.shape[-1] > self.n_ctx:
                break
            if i == 0 and speculate:  # the rest of the window drafted and verified a few tokens at a time
                tokens = self._speculate(inference, tokens, sum_logprobs, pick or self._filtered_pick(),
                                         self.sample_len - 1)
                break
            if independent_rows and len(active) > 1:  # (one open row that had ended would have completed)
                still_open = tokens[active, -1] != self.tokenizer.eot
                # Dropping rows copies the open rows' caches, cross K/V included (18 MB a row on tiny); a
                # finished row that stays costs its share of each later step.  Drop them a quarter at a time.
                if (~still_open).sum() * 4 >= len(active):
                    inference.cache.select(np.flatnonzero(still_open), inference.offset)
                    active = active[still_open]
        tokens, sum_lp = self.decoder.finalize(tokens, sum_logprobs)
        return self._results(audio_features, language, tokens, sum_lp, no_speech_probs, n_audio)

    def _speculate(self, inference: Inference, tokens: np.ndarray, sum_logprobs: np.ndarray, pick: Callable,
                   budget: int) -> np.ndarray:
        """Greedy decoding of one row, from its second token on, a round at a time: SPECULATE one-token steps that
        compute the logits of the draft vocabulary only (`_draft_columns`), each feeding the next with its pick there
        (the draft), then the full logits of their final LayerNorm rows in one pass over the logits weight (the
        contract's decoder_step `head`).  The tokens are picked from those full logits in order, as the plain loop picks
        them, while each one equals the draft the next step was fed; the first that differs ends the round, and the
        cache rows after it are written over by the next.  A step's layers are the plain step's, and `head` gives each
        row the bits the step's own logits would, so the tokens and log-probabilities are the plain loop's.
        Returns the tokens, at most `budget` more, stopping where the plain loop stops."""
        decoder, eot, n_state = self.graph.decoder, self.tokenizer.eot, self.graph.dims.n_text_state
        columns = _draft_columns(self.graph.dims.n_vocab, self.tokenizer.eot, DRAFT_TEXT)
        hidden = np.empty((SPECULATE, n_state), np.float32)
        while budget > 0:
            offset, seq, drafts = inference.offset, tokens, []
            k = min(SPECULATE, budget, self.n_ctx - offset)  # the plain loop's last step is at position n_ctx - 1
            for j in range(k):  # a step per draft; the last one's logits are never read: it asks for none
                last = j == k - 1
                logits = decoder(seq[:, -1:], inference.cache, offset + j, None,
                                 draft=(_NO_COLUMNS if last else columns, hidden[j:j + 1]))
                if last:
                    break
                d = pick(np.ascontiguousarray(logits[:, -1]), seq)[0]  # the draft's token
                drafts.append(int(d[0]))
                seq = np.concatenate([seq, d[:, None]], axis=-1)
                if d[0] == eot:  # nothing follows end-of-text
                    k = j + 1
                    break
            full = decoder.head(hidden[:k])  # (k, n_vocab): the logits the plain steps would have computed
            for j in range(k):
                tokens, completed = self.decoder.take(tokens, pick(full[j:j + 1], tokens), sum_logprobs)
                budget -= 1
                if completed or tokens.shape[-1] > self.n_ctx:
                    return tokens
                if budget == 0 or j == len(drafts) or tokens[0, -1] != drafts[j]:
                    break  # the next step was fed another token: its row and those after it are the next round's
            inference.offset = tokens.shape[1] - 1
        return tokens

    def _results(self, audio_features, language, tokens, sum_lp, no_speech_probs, n_audio) -> list[DecodingResult]:
        eot = self.tokenizer.eot
        if isinstance(tokens, np.ndarray):  # greedy: (n_audio * n_group, n) -> candidates per audio
            tokens = [list(tokens[i * self.n_group:(i + 1) * self.n_group]) for i in range(n_audio)]
            sum_lp = [sum_lp[i * self.n_group:(i + 1) * self.n_group] for i in range(n_audio)]
        candidates = [[np.asarray(t)[self.sample_begin:] for t in s] for s in tokens]
        candidates = [[t[:int(np.nonzero(t == eot)[0][0])] if (t == eot).any() else t for t in s] for s in candidates]
        selected = self.ranker.rank(candidates, sum_lp)
        results = []
        for a in range(n_audio):
            toks = [int(t) for t in candidates[a][selected[a]]]
            text = self.tokenizer.decode(toks).strip()
            lp = float(sum_lp[a][selected[a]])
            results.append(DecodingResult(
                audio_features=audio_features[a], language=language, tokens=toks, text=text,
                avg_logprob=lp / (len(toks) + 1), no_speech_prob=float(no_speech_probs[a]),
                temperature=self.options.temperature, compression_ratio=compression_ratio(text)))
        return results


def decode(graph: "WhisperGraph", tokenizer: "Tokenizer", audio_features: np.ndarray,
           options: DecodingOptions = DecodingOptions()) -> list[DecodingResult]:
    return DecodingTask(graph, tokenizer, options).run(audio_features)


__all__ = ["DecodingOptions", "DecodingResult", "DecodingTask", "decode", "detect_language"]
