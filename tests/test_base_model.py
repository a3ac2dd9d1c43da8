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


@pytest.fixture(scope="module")
def base_numba():
    from whisperkit import load_model
    return load_model("base", backend="numba")


@pytest.mark.parametrize("clip, reused", [("osr_16k.wav", True), ("pv_en.wav", False)])
def test_language_detection_encodes_the_first_window_once(base_numba, clip, reused):
    """The language detection encodes the first 30 s of the padded log-mel.  When the first window's log-mel is the
    same (audio of 30 s or more), its encoder output is reused, not computed again; a shorter first window is
    zero-padded (openai-whisper's two paddings), so it is encoded again.  The text is the same either way as with the
    language given."""
    graph = base_numba.graph
    encoder, calls = graph.encoder, []

    def counted(mel):
        calls.append(mel.shape[0])
        return encoder(mel)

    path = str(shared("audio", clip))
    graph.encoder = counted
    try:
        detected = base_numba.transcribe(path, temperature=0.0)
        n_detected = sum(calls)
        calls.clear()
        given = base_numba.transcribe(path, temperature=0.0, language="en")
        n_given = sum(calls)
    finally:
        graph.encoder = encoder
    assert detected.language == "en"
    assert [s.tokens for s in detected.segments] == [s.tokens for s in given.segments]
    assert n_given >= 1
    assert n_detected == n_given + (0 if reused else 1)
