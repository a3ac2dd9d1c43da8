"""Word-level timestamps against openai-whisper's golden words, on every usable backend, and the
pieces (median filter, DTW, punctuation merging, hallucination scoring) against direct definitions."""
import json

import numpy as np
import pytest

from helpers import shared
from whisperkit.registry import get_registry
from whisperkit.timing import (WordTiming, default_alignment_heads, dtw, median_filter, merge_punctuations,
                               PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
from whisperkit.transcribe import _is_segment_anomaly, _word_anomaly_score

CLIPS = ["jfk_16k.wav", "pv_en.wav", "osr_16k.wav"]
BACKENDS = [n for n in get_registry().names() if get_registry().infos[n].usable]

# The bound: every word's start and end within 0.1 s (5 DTW steps of 20 ms).  On the
# reference backend the words come out identical; other backends' float32 rounding may move a
# DTW path by a step.
TIME_TOL = 0.1
# Word probabilities are means of float32 softmax probabilities over the 51,864-token vocabulary:
# ours and openai-whisper's (PyTorch) differ by float32 rounding; 1e-3 leaves room for other backends' kernels.
PROB_TOL = 1e-3


@pytest.fixture(scope="module")
def golden_words() -> dict:
    return json.loads(shared("golden", "tiny.en.words.json").read_text())


@pytest.fixture(scope="module", params=BACKENDS)
def tiny_golden_heads(request):
    """tiny.en with Whisper's default alignment heads (every head of the upper half of the decoder).

    The golden words were made by openai-whisper loading the model from a checkpoint file, for which
    it uses that default rather than its built-in tiny.en head list (the one the model files carry):
    with the default heads our words equal the golden ones exactly; with the model files' heads they
    equal what openai-whisper gives with its built-in list."""
    from whisperkit import WhisperTiny
    model = WhisperTiny(backend=request.param)
    model.alignment_heads = None
    return model


@pytest.mark.parametrize("clip", CLIPS)
def test_words_match_openai_whisper(tiny_golden_heads, golden_words, clip):
    expected = golden_words["clips"][clip]
    result = tiny_golden_heads.transcribe(str(shared("audio", clip)), temperature=0.0, word_timestamps=True)
    assert [s.text for s in result.segments] == [e["text"] for e in expected]
    for seg, exp in zip(result.segments, expected):
        # the segment's start/end are moved to its first/last word
        assert seg.start == pytest.approx(exp["start"], abs=TIME_TOL)
        assert seg.end == pytest.approx(exp["end"], abs=TIME_TOL)
        assert [w["word"] for w in seg.words] == [w["word"] for w in exp["words"]]
        for w, ew in zip(seg.words, exp["words"]):
            assert set(w) == {"word", "start", "end", "probability"}
            assert w["start"] == pytest.approx(ew["start"], abs=TIME_TOL), (w, ew)
            assert w["end"] == pytest.approx(ew["end"], abs=TIME_TOL), (w, ew)
            assert w["probability"] == pytest.approx(ew["probability"], abs=PROB_TOL), (w, ew)
            assert w["start"] <= w["end"]
    d = result.to_dict()
    assert all("words" in s for s in d["segments"])
    json.dumps(d)  # plain Python types only


def test_model_files_alignment_heads_are_used(tiny_numpy):
    assert tiny_numpy.alignment_heads is not None
    heads = {tuple(map(int, h)) for h in tiny_numpy.alignment_heads}
    assert heads and all(0 <= l < 4 and 0 <= h < 6 for l, h in heads)
    default = {tuple(map(int, h)) for h in default_alignment_heads(4, 6)}
    assert default == {(l, h) for l in (2, 3) for h in range(6)}


def test_hallucination_silence_threshold_keeps_clean_speech(tiny_numpy):
    """jfk is clean speech: no segment looks like a hallucination, so the threshold changes nothing."""
    path = str(shared("audio", "jfk_16k.wav"))
    plain = tiny_numpy.transcribe(path, temperature=0.0, word_timestamps=True)
    guarded = tiny_numpy.transcribe(path, temperature=0.0, word_timestamps=True, hallucination_silence_threshold=1.0)
    assert [s.text for s in guarded.segments] == [s.text for s in plain.segments]
    assert [s.words for s in guarded.segments] == [s.words for s in plain.segments]


def test_hallucination_silence_threshold_skips_babble(tiny_numpy):
    """Reversed speech between silences makes tiny.en hallucinate; with the threshold those windows
    are skipped past (openai-whisper gives the same segments, checked when this was written),
    while the real speech after them is kept."""
    from whisperkit.audio import SAMPLE_RATE, load_audio
    jfk, pv = load_audio(str(shared("audio", "jfk_16k.wav"))), load_audio(str(shared("audio", "pv_en.wav")))
    silence = lambda s: np.zeros(int(s * SAMPLE_RATE), np.float32)  # noqa: E731
    t = np.arange(15 * SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.05 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0)
    babble = np.concatenate([pv[::-1], 0.3 * jfk[::-1], 0.5 * pv[::-1]])
    audio = np.concatenate([silence(6), babble, silence(9), jfk, tone, pv]).astype(np.float32)
    plain = tiny_numpy.transcribe(audio, temperature=0.0, word_timestamps=True)
    guarded = tiny_numpy.transcribe(audio, temperature=0.0, word_timestamps=True, hallucination_silence_threshold=1.0)
    speech_start = (6 + len(babble) / SAMPLE_RATE + 9) - 0.5
    before = lambda r: [s for s in r.segments if s.text and s.end <= speech_start]  # noqa: E731
    assert len(before(guarded)) < len(before(plain))
    assert "ask not what your country can do for you" in guarded.text
    assert "apostle of the middle classes" in guarded.text
    ends = [s.end for s in guarded.segments]
    assert ends == sorted(ends)


# ---- the pieces ---------------------------------------------------------------------------------
def _dtw_by_definition(x):
    """DTW written straight from its definition, cell by cell, with openai's tie-breaking."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, np.float32)
    trace = -np.ones((n + 1, m + 1), np.int64)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = np.float32(x[i - 1, j - 1]) + c
            trace[i, j] = t
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        i, j = (i - 1, j - 1) if t == 0 else (i - 1, j) if t == 1 else (i, j - 1)
    return np.array(path[::-1]).T


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 4), (7, 23), (20, 60)])
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_dtw_matches_its_definition(shape, kind):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) if kind == "normal" else rng.integers(0, 3, shape)  # small integers: many ties
    x = x.astype(np.float32)
    got = dtw(x)
    np.testing.assert_array_equal(got, _dtw_by_definition(x))
    assert got[0, 0] == 0 and got[1, 0] == 0 and got[0, -1] == shape[0] - 1 and got[1, -1] == shape[1] - 1


def test_median_filter_reflect_padding():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 30)).astype(np.float32)
    got = median_filter(x, 7)
    padded = np.concatenate([x[..., 3:0:-1], x, x[..., -2:-5:-1]], axis=-1)  # reflect, edge not repeated
    expected = np.stack([np.median(padded[..., t:t + 7], axis=-1) for t in range(30)], axis=-1)
    np.testing.assert_array_equal(got, expected)
    short = x[..., :3]
    assert median_filter(short, 7) is short  # no longer than the padding: unchanged
    with pytest.raises(ValueError):
        median_filter(x, 4)


def test_merge_punctuations():
    words = [" \"", "Hello", ",", " world", ".", "\"", " (", "yes", ")"]
    alignment = [WordTiming(w, [i], float(i), float(i + 1), 1.0) for i, w in enumerate(words)]
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    assert [a.word for a in alignment if a.word] == [" \"Hello,", " world.\"", " (yes)"]
    assert [a.tokens for a in alignment if a.word] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # merged-away entries keep their place, emptied, so that token counts still add up per segment
    assert len(alignment) == len(words) and sum(len(a.tokens) for a in alignment) == len(words)


def test_anomaly_scores():
    ok = dict(word=" fine", start=1.0, end=1.4, probability=0.9)
    assert _word_anomaly_score(ok) == 0.0
    assert _word_anomaly_score(dict(ok, probability=0.1)) == 1.0
    assert _word_anomaly_score(dict(ok, end=1.0)) == pytest.approx(0.133 * 15)
    assert _word_anomaly_score(dict(ok, end=4.0)) == pytest.approx(1.0)
    assert not _is_segment_anomaly(dict(words=[ok, ok, ok]))
    assert _is_segment_anomaly(dict(words=[dict(ok, probability=0.05), dict(ok, word=".", probability=0.0)]))
    assert not _is_segment_anomaly(None) and not _is_segment_anomaly(dict(words=[]))
