"""The multilingual base model (from the base-model extra) with the language given."""
import pytest

from helpers import shared


@pytest.fixture(scope="module")
def base_numpy():
    from whisperkit import load_model
    return load_model("base", backend="numpy")


@pytest.mark.parametrize("clip, language", [("pv_en.wav", "en"), ("pv_de.wav", "de")])
def test_base_greedy_text_with_language_given(base_numpy, golden_base, clip, language):
    expected = golden_base["clips"][clip]["transcribe_greedy"]
    result = base_numpy.transcribe(str(shared("audio", clip)), language=language, temperature=0.0)
    assert result.text == expected["text"]
    assert [s.tokens for s in result.segments] == [s["tokens"] for s in expected["segments"]]
    assert result.language == language
