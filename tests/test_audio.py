"""Audio loading, mel filterbank and log-mel spectrogram against openai-whisper's outputs."""

import numpy as np
import pytest
import soundfile

from whisperkit.audio import (
    CHUNK_LENGTH,
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    N_SAMPLES_PER_TOKEN,
    SAMPLE_RATE,
    TOKENS_PER_SECOND,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
    pad_or_trim,
)
from helpers import SHARED
from whisperkit.errors import AudioError

AUDIO = SHARED / "audio"
GOLDEN = SHARED / "golden"
ASSETS = SHARED / "fixtures" / "openai-assets"


def test_constants():
    assert (SAMPLE_RATE, N_FFT, HOP_LENGTH, CHUNK_LENGTH) == (16000, 400, 160, 30)
    assert (N_SAMPLES, N_FRAMES, N_SAMPLES_PER_TOKEN) == (480000, 3000, 320)
    assert (FRAMES_PER_SECOND, TOKENS_PER_SECOND) == (100, 50)


# ---------------------------------------------------------------- mel filterbank


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_openai_assets(n_mels):
    ref = np.load(ASSETS / "mel_filters.npz")[f"mel_{n_mels}"]
    ours = mel_filters(n_mels)
    assert ours.shape == ref.shape == (n_mels, 201)
    assert ours.dtype == np.float32
    # the same construction as openai-whisper's, for both 80 and 128 bands
    assert np.abs(ours - ref).max() <= 1e-6


def test_mel_filters_cached():
    assert mel_filters(80) is mel_filters(80)


# ---------------------------------------------------------------- log-mel


def test_log_mel_matches_golden_jfk():
    audio = load_audio(AUDIO / "jfk_16k.wav")
    mel = log_mel_spectrogram(audio, padding=N_SAMPLES)[:, :N_FRAMES]
    golden = np.load(GOLDEN / "jfk_mel.npy")
    assert mel.shape == golden.shape == (80, 3000)
    assert mel.dtype == np.float32
    # openai-whisper's (torch fp32) is the same math with float32 sums in another order
    assert np.abs(mel - golden).max() <= 1e-4


def test_log_mel_blocks_match_one_transform_and_bound_memory(monkeypatch):
    """The STFT runs by blocks of frames: the same bits as one transform of all frames, and a 30 s window's
    temporaries stay small (the whole float64 transform peaked at ~33 MiB)."""
    import tracemalloc
    import whisperkit.audio as A
    audio = load_audio(AUDIO / "jfk_16k.wav")
    blocked = log_mel_spectrogram(audio, padding=N_SAMPLES)
    monkeypatch.setattr(A, "_STFT_BLOCK", 1 << 30)  # one block: the transform of every frame at once
    whole = log_mel_spectrogram(audio, padding=N_SAMPLES)
    monkeypatch.undo()
    assert blocked.shape == whole.shape and np.array_equal(blocked.view(np.uint32), whole.view(np.uint32))
    tracemalloc.start()
    try:
        log_mel_spectrogram(audio, padding=N_SAMPLES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"log_mel_spectrogram of {audio.size / 16000 + 30:.0f} s peaked at {peak >> 20} MiB"


def test_log_mel_accepts_path_and_frame_count():
    path = AUDIO / "jfk_16k.wav"
    from_path = log_mel_spectrogram(path)
    from_array = log_mel_spectrogram(load_audio(path))
    np.testing.assert_array_equal(from_path, from_array)
    n = load_audio(path).shape[0]
    assert from_path.shape == (80, n // HOP_LENGTH)  # centred STFT has n//hop + 1, last dropped


def test_log_mel_128_and_range():
    audio = load_audio(AUDIO / "pv_en.wav")
    mel = log_mel_spectrogram(audio, n_mels=128)
    assert mel.shape[0] == 128
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # 8 dB-decades clamp, divided by 4


def test_log_mel_silence_and_short_input():
    mel = log_mel_spectrogram(np.zeros(N_SAMPLES, dtype=np.float32))
    assert mel.shape == (80, N_FRAMES)
    assert np.all(np.isfinite(mel))
    short = log_mel_spectrogram(np.zeros(100, dtype=np.float32))
    assert short.shape[0] == 80 and short.shape[1] <= 1 and np.all(np.isfinite(short))


# ---------------------------------------------------------------- pad_or_trim


def test_pad_or_trim():
    x = np.arange(10, dtype=np.float32)
    assert pad_or_trim(x, 5).tolist() == [0, 1, 2, 3, 4]
    padded = pad_or_trim(x, 12)
    assert padded.shape == (12,) and padded[10:].tolist() == [0, 0]
    m = np.ones((80, 100), dtype=np.float32)
    assert pad_or_trim(m, N_FRAMES).shape == (80, N_FRAMES)
    assert pad_or_trim(m, 50, axis=0).shape == (50, 100)
    assert pad_or_trim(np.ones(N_SAMPLES + 5)).shape == (N_SAMPLES,)


# ---------------------------------------------------------------- loading


def test_load_wav_16k():
    audio = load_audio(AUDIO / "jfk_16k.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.shape[0] == 176000
    assert -1.0 <= audio.min() and audio.max() <= 1.0


def test_load_flac_44k_stereo():
    info = soundfile.info(str(AUDIO / "jfk.flac"))
    assert info.samplerate == 44100 and info.channels == 2
    audio = load_audio(str(AUDIO / "jfk.flac"))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] / SAMPLE_RATE - info.frames / info.samplerate) < 0.01
    assert abs(audio.shape[0] / SAMPLE_RATE - 11.0) < 0.05
    # the downmixed, resampled flac is the same signal as the provided 16 kHz wav
    ref = load_audio(AUDIO / "jfk_16k.wav")
    n = min(len(ref), len(audio))
    assert np.corrcoef(ref[:n], audio[:n])[0, 1] > 0.99


def test_load_8k_resampled():
    info = soundfile.info(str(AUDIO / "osr_8k.wav"))
    assert info.samplerate == 8000
    audio = load_audio(AUDIO / "osr_8k.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] - 2 * info.frames) <= 2
    assert abs(audio.shape[0] / SAMPLE_RATE - 35.5) < 0.1


def test_load_array_passthrough():
    x = np.linspace(-1, 1, 1000)
    out = load_audio(x)
    assert out.dtype == np.float32 and out.shape == (1000,)
    np.testing.assert_allclose(out, x, atol=1e-7)


def test_load_array_rejects_2d():
    with pytest.raises(AudioError, match="1-D"):
        load_audio(np.zeros((2, 100), dtype=np.float32))


def test_load_array_rejects_bad_dtype():
    with pytest.raises(AudioError, match="dtype"):
        load_audio(np.array(["a", "b"]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_load_array_rejects_non_finite(bad):
    x = np.zeros(100, dtype=np.float32)
    x[3] = bad
    with pytest.raises(AudioError, match="NaN or Inf"):
        load_audio(x)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found.*nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_directory(tmp_path):
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty \(0 bytes\).*empty.wav"):
        load_audio(p)


def test_not_audio(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio at all\n" * 20)
    with pytest.raises(AudioError, match=r"notes.wav is not a readable audio file \(libsndfile: "):
        load_audio(p)


def test_zero_samples(tmp_path):
    p = tmp_path / "nothing.wav"
    soundfile.write(str(p), np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    assert p.stat().st_size > 0
    with pytest.raises(AudioError, match="contains no samples.*nothing.wav"):
        load_audio(p)


def test_not_a_path_or_array():
    with pytest.raises(AudioError, match="a file path, bytes, a binary file object or a NumPy array, got int"):
        load_audio(12345)
