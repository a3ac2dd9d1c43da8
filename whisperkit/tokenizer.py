"""Whisper's tokenizer: a tiktoken ``Encoding`` built from a model directory's HF ``tokenizer.json``.

The byte-level BPE ranks come from ``model.vocab`` of tokenizer.json (GPT-2's printable-unicode
spelling of bytes, mapped back to raw bytes). The special tokens are not read from the file: they
are laid out after the regular vocabulary exactly as openai-whisper lays them out, so that token ids
agree with the model's embedding table.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import string
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import tiktoken

from .errors import TokenizerError

LANGUAGES = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "mi": "maori",
    "ml": "malayalam",
    "cy": "welsh",
    "sk": "slovak",
    "te": "telugu",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "az": "azerbaijani",
    "sl": "slovenian",
    "kn": "kannada",
    "et": "estonian",
    "mk": "macedonian",
    "br": "breton",
    "eu": "basque",
    "is": "icelandic",
    "hy": "armenian",
    "ne": "nepali",
    "mn": "mongolian",
    "bs": "bosnian",
    "kk": "kazakh",
    "sq": "albanian",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "pa": "punjabi",
    "si": "sinhala",
    "km": "khmer",
    "sn": "shona",
    "yo": "yoruba",
    "so": "somali",
    "af": "afrikaans",
    "oc": "occitan",
    "ka": "georgian",
    "be": "belarusian",
    "tg": "tajik",
    "sd": "sindhi",
    "gu": "gujarati",
    "am": "amharic",
    "yi": "yiddish",
    "lo": "lao",
    "uz": "uzbek",
    "fo": "faroese",
    "ht": "haitian creole",
    "ps": "pashto",
    "tk": "turkmen",
    "nn": "nynorsk",
    "mt": "maltese",
    "sa": "sanskrit",
    "lb": "luxembourgish",
    "my": "myanmar",
    "bo": "tibetan",
    "tl": "tagalog",
    "mg": "malagasy",
    "as": "assamese",
    "tt": "tatar",
    "haw": "hawaiian",
    "ln": "lingala",
    "ha": "hausa",
    "ba": "bashkir",
    "jw": "javanese",
    "su": "sundanese",
    "yue": "cantonese",
}

# language name (and common aliases) -> code
TO_LANGUAGE_CODE = {
    **{language: code for code, language in LANGUAGES.items()},
    "burmese": "my",
    "valencian": "ca",
    "flemish": "nl",
    "haitian": "ht",
    "letzeburgesch": "lb",
    "pushto": "ps",
    "panjabi": "pa",
    "moldavian": "ro",
    "moldovan": "ro",
    "sinhalese": "si",
    "castilian": "es",
    "mandarin": "zh",
}

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


def build_encoding(ranks: Dict[bytes, int], num_languages: int, name: str = "whisper") -> tiktoken.Encoding:
    """A tiktoken Encoding over ``ranks`` with Whisper's special tokens appended."""
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


_RANKS_MAGIC = b"whisperkit-ranks-1\n"


def _ranks_cache_file(path: Path) -> Path | None:
    """Where the ranks of this tokenizer.json (this path, size and modification time) are cached."""
    root = os.environ.get("WHISPERKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "whisperkit")
    try:
        st = path.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    return Path(root) / "tokenizers" / f"{key}.ranks"


def _read_ranks_cache(cache: Path) -> Dict[bytes, int] | None:
    """The cached ranks: the magic line, the count, one byte of length per token, then the tokens' bytes,
    in rank order.  Anything that does not add up is ignored (the tokenizer.json is read instead)."""
    try:
        data = cache.read_bytes()
    except OSError:
        return None
    head = len(_RANKS_MAGIC) + 4
    if not data.startswith(_RANKS_MAGIC) or len(data) < head:
        return None
    n = int.from_bytes(data[len(_RANKS_MAGIC):head], "little")
    lengths = data[head:head + n]
    ends = list(itertools.accumulate(lengths, initial=head + n))
    if len(lengths) != n or ends[-1] != len(data) or 0 in lengths:
        return None
    ranks = {data[a:b]: i for i, (a, b) in enumerate(zip(ends, ends[1:]))}
    return ranks if len(ranks) == n else None


def _write_ranks_cache(cache: Path, ranks: Dict[bytes, int]) -> None:
    tokens = sorted(ranks, key=ranks.__getitem__)
    if any(not 0 < len(t) < 256 for t in tokens):
        return
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_bytes(_RANKS_MAGIC + len(tokens).to_bytes(4, "little") + bytes(map(len, tokens)) + b"".join(tokens))
        os.replace(tmp, cache)  # whole or not at all
    except OSError:  # a read-only home: no cache, the JSON is read each time
        pass


def _cached_ranks(path: Path) -> Dict[bytes, int]:
    """`_load_ranks`, through a cache file: parsing the whole tokenizer.json (its merges too) is the
    slowest step of building a tokenizer, ~60 ms of a cold start; the cache holds only the vocabulary."""
    cache = _ranks_cache_file(path)
    ranks = _read_ranks_cache(cache) if cache is not None else None
    if ranks is None:
        ranks = _load_ranks(path)
        if cache is not None:
            _write_ranks_cache(cache, ranks)
    return ranks


@functools.lru_cache(maxsize=None)
def _encoding_cached(path: str, num_languages: int) -> tiktoken.Encoding:
    ranks = _cached_ranks(Path(path))
    return build_encoding(ranks, num_languages, name=f"whisper-{Path(path).parent.name}-{num_languages}")


def get_encoding(tokenizer_json: Union[str, os.PathLike], num_languages: int = 99) -> tiktoken.Encoding:
    """The (cached) tiktoken Encoding for a model's tokenizer.json."""
    path = Path(tokenizer_json)
    try:
        path = path.resolve()
    except OSError:
        pass
    return _encoding_cached(str(path), int(num_languages))


@dataclass
class Tokenizer:
    """A thin wrapper around a tiktoken Encoding giving access to Whisper's special tokens
    (mirrors openai-whisper's ``Tokenizer``)."""

    encoding: tiktoken.Encoding
    num_languages: int
    language: Optional[str] = None
    task: Optional[str] = None
    multilingual: bool = True
    sot_sequence: Tuple[int, ...] = ()
    special_tokens: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        for special in self.encoding.special_tokens_set:
            self.special_tokens[special] = self.encoding.encode_single_token(special)

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

    # ---- text <-> ids -------------------------------------------------------------------------
    def encode(self, text: str, **kwargs) -> List[int]:
        if not kwargs and "<|" not in text:
            # tiktoken's default check for special-token text compiles one regex of every special token
            # (0.2 s, the slowest step of a cold start); text that cannot hold one skips it, same tokens.
            return self.encoding.encode(text, disallowed_special=())
        return self.encoding.encode(text, **kwargs)

    def decode(self, token_ids: Sequence[int], **kwargs) -> str:
        token_ids = [int(t) for t in token_ids if t < self.timestamp_begin]
        return self.encoding.decode(token_ids, **kwargs)

    def decode_with_timestamps(self, token_ids: Sequence[int], **kwargs) -> str:
        """Decode including timestamp tokens, rendered like ``<|1.08|>``."""
        return self.encoding.decode([int(t) for t in token_ids], **kwargs)

    # ---- special tokens ------------------------------------------------------------------------
    @cached_property
    def eot(self) -> int:
        return self.encoding.eot_token

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

    @cached_property
    def non_speech_tokens(self) -> Tuple[int, ...]:
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
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

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


def normalize_language(language: Optional[str]) -> Optional[str]:
    """A language code from a code, a name or an alias ("English", "castilian", "yue" ...)."""
    if language is None:
        return None
    lang = str(language).strip().lower()
    if lang in LANGUAGES:
        return lang
    if lang in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[lang]
    raise ValueError(
        f"Unsupported language: {language!r}; use a code or name from whisperkit.tokenizer.LANGUAGES"
    )


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
    encoding = get_encoding(tokenizer_json, num_languages)
    return Tokenizer(
        encoding=encoding,
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
    "get_tokenizer",
    "normalize_language",
    "special_token_names",
]
