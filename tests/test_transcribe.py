"""Whole transcriptions against openai-whisper's golden outputs (tokens and timestamps exactly)."""
import numpy as np
import pytest

from helpers import shared

CLIPS = ["jfk_16k.wav", "pv_en.wav", "osr_16k.wav"]


def assert_segments_equal(got, expected):
    assert [s.tokens for s in got] == [s["tokens"] for s in expected]
    # start/end are multiples of 0.02 s plus the window offset, computed by the same float formula
    assert [(round(s.start, 6), round(s.end, 6)) for s in got] == [(round(s["start"], 6), round(s["end"], 6)) for s in expected]
    assert [s.text for s in got] == [s["text"] for s in expected]


@pytest.mark.parametrize("clip", CLIPS)
def test_greedy_transcription_matches_openai_whisper(tiny_numpy, golden_tiny, clip):
    expected = golden_tiny["clips"][clip]["transcribe_greedy"]
    result = tiny_numpy.transcribe(str(shared("audio", clip)), temperature=0.0)
    assert_segments_equal(result.segments, expected["segments"])
    assert result.text == expected["text"]
    assert result.language == "en"
    for s, e in zip(result.segments, expected["segments"]):
        # float32 log-softmax sums over ~20-100 tokens: openai's and ours differ only in their rounding
        assert s.avg_logprob == pytest.approx(e["avg_logprob"], abs=2e-3)
        assert s.no_speech_prob == pytest.approx(e["no_speech_prob"], abs=2e-3)
        assert s.compression_ratio == pytest.approx(e["compression_ratio"], rel=1e-9)


@pytest.mark.parametrize("clip", CLIPS)
def test_first_window_without_timestamps(tiny_numpy, golden_tiny, clip):
    expected = golden_tiny["clips"][clip]["first_window_greedy_notimestamps"]
    result = tiny_numpy.decode(str(shared("audio", clip)), without_timestamps=True, language="en")
    assert result.tokens == expected["tokens"]
    assert result.text == expected["text"]
    assert result.avg_logprob == pytest.approx(expected["avg_logprob"], abs=2e-3)
    assert result.no_speech_prob == pytest.approx(expected["no_speech_prob"], abs=2e-3)


@pytest.mark.parametrize("variant, reference", [("jfk.flac", "jfk_16k.wav"), ("osr_8k.wav", "osr_16k.wav")])
def test_other_rates_and_channels_give_the_same_text(tiny_numpy, golden_tiny, variant, reference):
    result = tiny_numpy.transcribe(str(shared("audio", variant)), temperature=0.0)
    assert result.text == golden_tiny["clips"][reference]["transcribe_greedy"]["text"]


def test_array_input_equals_path_input(tiny_numpy):
    from whisperkit.audio import load_audio
    audio = load_audio(shared("audio", "pv_en.wav"))
    a = tiny_numpy.transcribe(audio, temperature=0.0)
    b = tiny_numpy.transcribe(str(shared("audio", "pv_en.wav")), temperature=0.0)
    assert a.to_dict() == b.to_dict()


def test_to_dict_has_openai_whisper_shape(tiny_numpy):
    d = tiny_numpy.transcribe(str(shared("audio", "jfk_16k.wav")), temperature=0.0).to_dict()
    assert set(d) == {"text", "segments", "language"}
    assert set(d["segments"][0]) == {"id", "seek", "start", "end", "text", "tokens", "temperature",
                                     "avg_logprob", "compression_ratio", "no_speech_prob"}


def test_progress_bar_only_when_asked(tiny_numpy, capsys):
    path = str(shared("audio", "jfk_16k.wav"))
    quiet = tiny_numpy.transcribe(path, temperature=0.0, progress=False)
    assert capsys.readouterr().err == ""
    shown = tiny_numpy.transcribe(path, temperature=0.0, progress=True)
    assert "11.0/11.0 s" in capsys.readouterr().err  # the bar over audio seconds, at its end
    assert shown.text == quiet.text
