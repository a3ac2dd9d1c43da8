"""Whisper's tokenizer, from a model directory's HF ``tokenizer.json``.

The byte-level BPE ranks come from ``model.vocab`` of tokenizer.json (GPT-2's printable-unicode
spelling of bytes, mapped back to raw bytes). The special tokens are not read from the file: they
are laid out after the regular vocabulary exactly as openai-whisper lays them out, so that token ids
agree with the model's embedding table.

Transcribing turns ids into text and never text into ids (unless a prompt, prefix or hotwords are
given), so a `Tokenizer` holds a `Vocabulary` (the bytes of each id) and builds tiktoken's ``Encoding``
(the BPE) on its first ``encode``: the Encoding's Rust tables and the ranks dict it keeps were a tenth
of a cold command's memory (docs/bench-results.md).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import string
from array import array
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .errors import TokenizerError
from .languages import LANGUAGES, TO_LANGUAGE_CODE, normalize_language

# GPT-2's pre-tokenisation regex
PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# languages written without spaces between words: words are split on unicode boundaries
_NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}

N_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>


def special_token_names(num_languages: int) -> List[str]:
    """The special tokens in openai-whisper's order; their ids follow the regular vocabulary."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{lang}|>" for lang in list(LANGUAGES.keys())[:num_languages]],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)],
    ]


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> Dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable bytes map to themselves, the other 68
    bytes map to code points 256, 257, ... in increasing byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _load_ranks(path: Path) -> Dict[bytes, int]:
    """{token bytes: rank} for the regular (non-added) tokens of an HF tokenizer.json."""
    if not path.exists():
        raise TokenizerError(f"tokenizer file not found: {path}")
    if path.is_dir():
        raise TokenizerError(f"tokenizer path is a directory, expected tokenizer.json: {path}")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"tokenizer file {path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise TokenizerError(f"cannot read tokenizer file {path}: {exc}") from None

    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise TokenizerError(f"tokenizer file {path} has no 'model' object (not an HF tokenizer.json)")
    if model.get("type", "BPE") != "BPE":
        raise TokenizerError(f"tokenizer file {path}: model type is {model.get('type')!r}, expected 'BPE'")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError(f"tokenizer file {path} has no 'model.vocab' mapping")

    added = set()
    added_tokens = data.get("added_tokens") or []
    if not isinstance(added_tokens, list):
        raise TokenizerError(f"tokenizer file {path}: 'added_tokens' is not a list")
    for entry in added_tokens:
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            added.add(entry["content"])

    u2b = _unicode_to_byte()
    # str.translate + latin-1 give the bytes in C, not per character; the code points below 256 outside the
    # alphabet (raw space, control bytes) become one that latin-1 refuses, so they still fail
    to_latin1: Dict[int, object] = {c: "\uffff" for c in range(256)}
    to_latin1.update({ord(ch): b for ch, b in u2b.items()})
    ranks: Dict[bytes, int] = {}
    for token, rank in vocab.items():
        if token in added:
            continue
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise TokenizerError(f"tokenizer file {path}: vocab id of {token!r} is {rank!r}, not an integer")
        try:
            raw = token.translate(to_latin1).encode("latin-1")
        except UnicodeEncodeError:
            bad = next(ch for ch in token if ch not in u2b)
            raise TokenizerError(
                f"tokenizer file {path}: vocab token {token!r} has character {bad!r} "
                "outside GPT-2's byte-level alphabet"
            ) from None
        if raw in ranks:
            raise TokenizerError(
                f"tokenizer file {path}: vocab tokens with ids {ranks[raw]} and {rank} decode to the same bytes"
            )
        ranks[raw] = rank

    ids = sorted(ranks.values())
    if ids != list(range(len(ids))):
        missing = next((i for i, v in enumerate(ids) if i != v), len(ids))
        raise TokenizerError(
            f"tokenizer file {path}: regular vocab ids are not contiguous from 0 "
            f"({len(ids)} tokens; first gap at id {missing})"
        )
    return ranks


def build_encoding(ranks: Dict[bytes, int], num_languages: int, name: str = "whisper") -> "tiktoken.Encoding":
    """A tiktoken Encoding over ``ranks`` with Whisper's special tokens appended."""
    import tiktoken  # here: transcribing never encodes text (module doc)

    n_vocab = len(ranks)
    special_tokens: Dict[str, int] = {}
    for token in special_token_names(num_languages):
        special_tokens[token] = n_vocab
        n_vocab += 1
    return tiktoken.Encoding(
        name=name,
        explicit_n_vocab=n_vocab,
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=special_tokens,
    )


_RANKS_MAGIC = b"whisperkit-ranks-2\n"


def _ranks_cache_file(path: Path) -> Path | None:
    """Where the vocabulary of this tokenizer.json (this path, size and modification time) is cached."""
    root = os.environ.get("WHISPERKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "whisperkit")
    try:
        st = path.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    return Path(root) / "tokenizers" / f"{key}.ranks"


#: How many id lists `_encoded_facts` gives, each cached after the vocabulary.
_N_FACTS = 2


def _encoded_facts(encode: Callable[[str], List[int]]) -> Tuple[Tuple[int, ...], ...]:
    """What decoding needs of the BPE, found once per tokenizer.json and cached with its vocabulary: the
    non-speech tokens (`_non_speech_tokens`) and the tokens of a blank (" ", `SuppressBlank`)."""
    return _non_speech_tokens(encode), tuple(encode(" "))


def _read_vocab_cache(cache: Path) -> Tuple[Sequence[int], bytes, Tuple[Tuple[int, ...], ...]] | None:
    """The cached vocabulary: the magic line, the count n, one byte of length per token, the tokens' bytes in
    rank order, then each of `_encoded_facts` as its count and its ids (4 bytes each).  Returns (lengths, the
    tokens' bytes, the facts); anything that does not add up gives None (the tokenizer.json is read instead,
    and the cache rewritten)."""
    try:
        data = cache.read_bytes()
    except OSError:
        return None
    head = len(_RANKS_MAGIC) + 4
    if not data.startswith(_RANKS_MAGIC) or len(data) < head:
        return None
    n = int.from_bytes(data[len(_RANKS_MAGIC):head], "little")
    lengths = data[head:head + n]
    stop = head + n + sum(lengths)
    if len(lengths) != n or 0 in lengths:
        return None
    facts, at = [], stop
    for _ in range(_N_FACTS):
        m = int.from_bytes(data[at:at + 4], "little")
        ids = data[at + 4:at + 4 + 4 * m]
        if len(ids) != 4 * m:
            return None
        facts.append(tuple(array("I", ids)))
        at += 4 + 4 * m
    if at != len(data) or any(i >= n for ids in facts for i in ids):
        return None
    return lengths, data[head + n:stop], tuple(facts)


def _write_vocab_cache(cache: Path, lengths: Sequence[int], blob: bytes, facts: Sequence[Sequence[int]]) -> None:
    """What `_read_vocab_cache` reads back; a token of 256 bytes or more (one length byte each) is not cached."""
    if any(not 0 < n < 256 for n in lengths):
        return
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_bytes(_RANKS_MAGIC + len(lengths).to_bytes(4, "little") + bytes(lengths) + blob
                        + b"".join(len(ids).to_bytes(4, "little") + array("I", ids).tobytes() for ids in facts))
        os.replace(tmp, cache)  # whole or not at all
    except OSError:  # a read-only home: no cache, the JSON is read each time
        pass


def _read_or_cache(path: Path) -> Tuple[Sequence[int], bytes, Tuple[Tuple[int, ...], ...]]:
    """(lengths, tokens' bytes, `_encoded_facts`) of a tokenizer.json, through its cache file: parsing the whole
    tokenizer.json (its merges too) is the slowest step of building a tokenizer, ~60 ms of a cold start, and
    the facts need the BPE; the cache holds only the vocabulary and the facts."""
    cache = _ranks_cache_file(path)
    got = _read_vocab_cache(cache) if cache is not None else None
    if got is not None:
        return got
    ranks = _load_ranks(path)
    facts = _encoded_facts(build_encoding(ranks, 0).encode)
    tokens = sorted(ranks, key=ranks.__getitem__)
    lengths, blob = [len(t) for t in tokens], b"".join(tokens)
    if cache is not None:
        _write_vocab_cache(cache, lengths, blob, facts)
    return lengths, blob, facts


def _cached_ranks(path: Path) -> Dict[bytes, int]:
    """{token bytes: rank} of a tokenizer.json, through the cache (`_read_or_cache`)."""
    lengths, blob, _ = _read_or_cache(path)
    ends = list(itertools.accumulate(lengths, initial=0))
    ranks = {blob[a:b]: i for i, (a, b) in enumerate(zip(ends, ends[1:]))}
    if len(ranks) != len(lengths):
        raise TokenizerError(f"tokenizer file {path}: two vocab tokens decode to the same bytes")
    return ranks


def _non_speech_tokens(encode: Callable[[str], List[int]]) -> Tuple[int, ...]:
    """Tokens of speaker tags and non-speech annotations ("♪♪♪", "(", "[", ...) to suppress,
    while keeping bare single punctuation like ",". Same definition as openai-whisper."""
    symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
    symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()

    # symbols that may be a single token or multiple tokens depending on the tokenizer;
    # in case they're multiple tokens, suppress the first token, which is safe because these
    # are between U+2640 and U+267F (miscellaneous symbols) and not valid single characters
    miscellaneous = set("♩♪♫♬♭♮♯")
    assert all(0x2640 <= ord(c) <= 0x267F for c in miscellaneous)

    # allow hyphens "-" and single quotes "'" between words, but not at the beginning of a word
    result = {encode(" -")[0], encode(" '")[0]}
    for symbol in symbols + sorted(miscellaneous):
        for tokens in (encode(symbol), encode(" " + symbol)):
            if len(tokens) == 1 or symbol in miscellaneous:
                result.add(tokens[0])
    return tuple(sorted(result))


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """What decoding needs of a tokenizer, with no BPE: the bytes of every id (the regular tokens in rank
    order, then Whisper's special tokens) and the non-speech tokens."""

    path: str
    blob: bytes  # every token's bytes, in id order
    ends: array  # token i is blob[ends[i]:ends[i + 1]]
    special: Dict[str, int]
    non_speech: Tuple[int, ...]  # `_non_speech_tokens`
    blank: Tuple[int, ...]  # the tokens of " "

    @property
    def n_vocab(self) -> int:
        return len(self.ends) - 1

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        ids = [int(t) for t in ids]
        if ids and not 0 <= min(ids) <= max(ids) < self.n_vocab:
            bad = next(t for t in ids if not 0 <= t < self.n_vocab)
            raise ValueError(f"token id {bad} is outside the vocabulary of {self.path} (0..{self.n_vocab - 1})")
        blob, ends = self.blob, self.ends
        return b"".join([blob[ends[t]:ends[t + 1]] for t in ids])


@functools.lru_cache(maxsize=None)
def _vocabulary_cached(path: str, num_languages: int) -> Vocabulary:
    lengths, blob, (non_speech, blank) = _read_or_cache(Path(path))
    names = special_token_names(num_languages)
    specials = [name.encode() for name in names]
    ends = array("Q", itertools.accumulate(itertools.chain(lengths, map(len, specials)), initial=0))
    n = len(lengths)
    return Vocabulary(path=path, blob=blob + b"".join(specials), ends=ends, special={name: n + i for i, name in enumerate(names)},
                      non_speech=non_speech, blank=blank)


def _resolved(tokenizer_json: Union[str, os.PathLike]) -> str:
    path = Path(tokenizer_json)
    try:
        path = path.resolve()
    except OSError:
        pass
    return str(path)


def get_vocabulary(tokenizer_json: Union[str, os.PathLike], num_languages: int = 99) -> Vocabulary:
    """The (cached) `Vocabulary` of a model's tokenizer.json."""
    return _vocabulary_cached(_resolved(tokenizer_json), int(num_languages))


@functools.lru_cache(maxsize=None)
def _encoding_cached(path: str, num_languages: int) -> "tiktoken.Encoding":
    ranks = _cached_ranks(Path(path))
    return build_encoding(ranks, num_languages, name=f"whisper-{Path(path).parent.name}-{num_languages}")


def get_encoding(tokenizer_json: Union[str, os.PathLike], num_languages: int = 99) -> "tiktoken.Encoding":
    """The (cached) tiktoken Encoding for a model's tokenizer.json."""
    return _encoding_cached(_resolved(tokenizer_json), int(num_languages))


@dataclass
class Tokenizer:
    """Whisper's special tokens, decoding and encoding (mirrors openai-whisper's ``Tokenizer``); the tiktoken
    Encoding is built on the first ``encode`` (module doc)."""

    vocab: Vocabulary
    num_languages: int
    language: Optional[str] = None
    task: Optional[str] = None
    multilingual: bool = True
    sot_sequence: Tuple[int, ...] = ()
    special_tokens: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.special_tokens.update(self.vocab.special)

        sot: int = self.special_tokens["<|startoftranscript|>"]
        translate: int = self.special_tokens["<|translate|>"]
        transcribe: int = self.special_tokens["<|transcribe|>"]

        langs = tuple(LANGUAGES.keys())[: self.num_languages]
        sot_sequence = [sot]
        if self.multilingual:
            if self.language is not None:
                sot_sequence.append(sot + 1 + langs.index(self.language))
            if self.task is not None:
                sot_sequence.append(transcribe if self.task == "transcribe" else translate)
        self.sot_sequence = tuple(sot_sequence)

    @cached_property
    def encoding(self) -> "tiktoken.Encoding":
        """tiktoken's Encoding of this vocabulary (the BPE), built when first needed."""
        return get_encoding(self.vocab.path, self.num_languages)

    # ---- text <-> ids -------------------------------------------------------------------------
    def encode(self, text: str, **kwargs) -> List[int]:
        if not kwargs and "<|" not in text:
            # tiktoken's default check for special-token text compiles one regex of every special token
            # (0.2 s, the slowest step of a cold start); text that cannot hold one skips it, same tokens.
            return self.encoding.encode(text, disallowed_special=())
        return self.encoding.encode(text, **kwargs)

    def decode(self, token_ids: Sequence[int], errors: str = "replace") -> str:
        """The text of the ids below the timestamp tokens (as tiktoken's decode: invalid UTF-8 replaced)."""
        return self.vocab.decode_bytes([t for t in token_ids if t < self.timestamp_begin]).decode("utf-8", errors)

    def decode_with_timestamps(self, token_ids: Sequence[int], errors: str = "replace") -> str:
        """Decode including timestamp tokens, rendered like ``<|1.08|>``."""
        return self.vocab.decode_bytes(token_ids).decode("utf-8", errors)

    # ---- special tokens ------------------------------------------------------------------------
    @cached_property
    def eot(self) -> int:
        return self.special_tokens["<|endoftext|>"]

    @cached_property
    def transcribe(self) -> int:
        return self.special_tokens["<|transcribe|>"]

    @cached_property
    def translate(self) -> int:
        return self.special_tokens["<|translate|>"]

    @cached_property
    def sot(self) -> int:
        return self.special_tokens["<|startoftranscript|>"]

    @cached_property
    def sot_lm(self) -> int:
        return self.special_tokens["<|startoflm|>"]

    @cached_property
    def sot_prev(self) -> int:
        return self.special_tokens["<|startofprev|>"]

    @cached_property
    def no_speech(self) -> int:
        return self.special_tokens["<|nospeech|>"]

    @cached_property
    def no_timestamps(self) -> int:
        return self.special_tokens["<|notimestamps|>"]

    @cached_property
    def timestamp_begin(self) -> int:
        return self.special_tokens["<|0.00|>"]

    @cached_property
    def language_token(self) -> int:
        """The token id of this tokenizer's language."""
        if self.language is None:
            raise ValueError("This tokenizer does not have language token configured")
        return self.to_language_token(self.language)

    def to_language_token(self, language: str) -> int:
        token = self.special_tokens.get(f"<|{language}|>")
        if token is not None:
            return token
        raise KeyError(f"Language {language} not found in tokenizer.")

    @cached_property
    def all_language_tokens(self) -> Tuple[int, ...]:
        result = [
            token_id for token, token_id in self.special_tokens.items() if token.strip("<|>") in LANGUAGES
        ]
        result.sort()
        return tuple(result)[: self.num_languages]

    @cached_property
    def all_language_codes(self) -> Tuple[str, ...]:
        return tuple(self.decode([t]).strip("<|>") for t in self.all_language_tokens)

    @cached_property
    def sot_sequence_including_notimestamps(self) -> Tuple[int, ...]:
        return tuple(list(self.sot_sequence) + [self.no_timestamps])

    @property
    def non_speech_tokens(self) -> Tuple[int, ...]:
        """Tokens of speaker tags and non-speech annotations ("♪♪♪", "(", "[", ...) to suppress,
        while keeping bare single punctuation like ",". Same definition as openai-whisper
        (`_non_speech_tokens`), found once per tokenizer.json and cached with its vocabulary."""
        return self.vocab.non_speech

    # ---- words ---------------------------------------------------------------------------------
    def split_to_word_tokens(self, tokens: List[int]) -> Tuple[List[str], List[List[int]]]:
        if self.language in _NO_SPACE_LANGUAGES:
            # these languages don't typically use spaces, so it is difficult to split words
            # without morpheme analysis; here each complete unicode character is a "word"
            return self.split_tokens_on_unicode(tokens)
        return self.split_tokens_on_spaces(tokens)

    def split_tokens_on_unicode(self, tokens: List[int]) -> Tuple[List[str], List[List[int]]]:
        decoded_full = self.decode_with_timestamps(tokens)
        replacement_char = "\ufffd"

        words: List[str] = []
        word_tokens: List[List[int]] = []
        current_tokens: List[int] = []
        unicode_offset = 0

        for token in tokens:
            current_tokens.append(token)
            decoded = self.decode_with_timestamps(current_tokens)
            if (
                replacement_char not in decoded
                or decoded_full[unicode_offset + decoded.index(replacement_char)] == replacement_char
            ):
                words.append(decoded)
                word_tokens.append(current_tokens)
                current_tokens = []
                unicode_offset += len(decoded)

        return words, word_tokens

    def split_tokens_on_spaces(self, tokens: List[int]) -> Tuple[List[str], List[List[int]]]:
        subwords, subword_tokens_list = self.split_tokens_on_unicode(tokens)
        words: List[str] = []
        word_tokens: List[List[int]] = []

        for subword, subword_tokens in zip(subwords, subword_tokens_list):
            special = subword_tokens[0] >= self.eot
            with_space = subword.startswith(" ")
            punctuation = subword.strip() in string.punctuation
            if special or with_space or punctuation or len(words) == 0:
                words.append(subword)
                word_tokens.append(subword_tokens)
            else:
                words[-1] = words[-1] + subword
                word_tokens[-1].extend(subword_tokens)

        return words, word_tokens


def get_tokenizer(
    tokenizer_json: Union[str, os.PathLike],
    multilingual: bool,
    num_languages: int = 99,
    language: Optional[str] = None,
    task: Optional[str] = None,
) -> Tokenizer:
    """The Whisper tokenizer of a model, from its tokenizer.json.

    Multilingual models default to language "en" and task "transcribe" (as openai-whisper does);
    English-only models always use "en" / "transcribe" and their sot_sequence is just
    (<|startoftranscript|>,).
    """
    language = normalize_language(language)
    if task is not None and task not in ("transcribe", "translate"):
        raise ValueError(f"Unsupported task: {task!r}; expected 'transcribe' or 'translate'")
    if multilingual:
        language = language or "en"
        task = task or "transcribe"
        if language not in tuple(LANGUAGES)[:num_languages]:
            raise ValueError(
                f"Unsupported language: {language!r} is not among this model's {num_languages} languages"
            )
    else:
        language = "en"
        task = "transcribe"
    return Tokenizer(
        vocab=get_vocabulary(tokenizer_json, num_languages),
        num_languages=num_languages,
        language=language,
        task=task,
        multilingual=bool(multilingual),
    )


__all__ = [
    "LANGUAGES",
    "TO_LANGUAGE_CODE",
    "PAT_STR",
    "Tokenizer",
    "build_encoding",
    "get_encoding",
    "get_vocabulary",
    "Vocabulary",
    "get_tokenizer",
    "normalize_language",
    "special_token_names",
]
