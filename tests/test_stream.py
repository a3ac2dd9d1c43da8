"""Streaming log-mel windows equal the whole-file computation (openai-whisper's clamp at max - 8 kept)."""
import numpy as np
import pytest
import soundfile as sf

from helpers import shared
from whisperkit.audio import N_SAMPLES, load_audio, log_mel_spectrogram
from whisperkit.stream import StreamingMel


def whole_file(source):
    return log_mel_spectrogram(load_audio(source), padding=N_SAMPLES)


@pytest.mark.parametrize("clip", ["jfk_16k.wav", "osr_16k.wav", "osr_8k.wav", "jfk.flac"])
def test_windows_equal_whole_file_mel(clip):
    path = shared("audio", clip)
    full = whole_file(path)
    s = StreamingMel(path)
    assert s.content_frames == full.shape[-1] - 3000
    for seek in [0, 777, 1500, 2999, 3001, s.content_frames - 1]:  # forward, as transcribe() seeks
        if 0 <= seek < s.content_frames:
            n = min(3000, s.content_frames - seek)
            # the same float64 frames, filterbank and clamp: identical
            np.testing.assert_array_equal(s.window(seek, n), full[:, seek:seek + n])


def test_going_back_restarts_reading_and_stays_correct():
    path = shared("audio", "osr_16k.wav")
    full, s = whole_file(path), StreamingMel(path)
    s.window(3000, 554)
    np.testing.assert_array_equal(s.window(10, 3000), full[:, 10:3010])


def test_the_clamp_uses_the_whole_files_maximum(tmp_path):
    """A loud burst late in the file lowers the floor of the first window, as in openai-whisper."""
    rng = np.random.default_rng(1)
    quiet = 1e-4 * rng.standard_normal(16000 * 40).astype(np.float32)
    quiet[16000 * 35:16000 * 36] = 0.5 * rng.standard_normal(16000).astype(np.float32)
    path = tmp_path / "burst.wav"
    sf.write(path, quiet, 16000, subtype="FLOAT")
    full, s = whole_file(path), StreamingMel(path)
    np.testing.assert_array_equal(s.window(0, 3000), full[:, :3000])
    assert full[:, :3000].min() == pytest.approx((s.log_max - 8.0 + 4.0) / 4.0, abs=1e-5)


@pytest.mark.parametrize("n", [1, 150, 201, 400, 16000])
def test_short_arrays(n):
    a = (0.1 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    s, full = StreamingMel(a), whole_file(a)
    assert s.content_frames == full.shape[-1] - 3000
    np.testing.assert_array_equal(s.window(0, 3000), full[:, :3000])


def test_the_first_window_comes_from_pass_one_and_silence_is_not_transformed(monkeypatch):
    """The first window's frames are those pass 1 computed, and frames past the audio's end (zeros only) get
    log10(1e-10) without a transform: only frames that touch a sample are computed, and the windows stay equal
    to the whole-file computation."""
    import whisperkit.stream as st
    path = shared("audio", "jfk_16k.wav")
    full = whole_file(path)
    s = StreamingMel(path)
    computed = []
    real = st._log10_mel
    monkeypatch.setattr(st, "_log10_mel", lambda padded, n, f: computed.append(n) or real(padded, n, f))
    np.testing.assert_array_equal(s.window(0, 3000), full[:, :3000])
    assert computed == []
    live = (s.n_samples + 200 + 159) // 160  # frames whose 400 samples reach into the audio
    np.testing.assert_array_equal(s.window(500, 3000), full[:, 500:3500])
    assert computed == [live - 500] and live - 500 < 3000
