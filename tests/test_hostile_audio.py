"""Hostile and unusual audio files, each written here (soundfile or by hand), each with one defined outcome.

Decisions (see whisperkit.audio.iter_file_blocks):
* NaN or Inf samples, in an array or in a float file, are an AudioError naming the source and the
  first bad sample's position; they are not cleaned, because a damaged file's text cannot be trusted.
* A header's frame count is never trusted: a file is read in bounded blocks until libsndfile has no
  more, so a header claiming hours over a few bytes costs only what the file holds.
* A declared sample rate outside [MIN_FILE_RATE, MAX_FILE_RATE] is an AudioError (a 1 Hz header would
  otherwise turn kilobytes into gigabytes once resampled to 16 kHz).
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import soundfile
import soxr

from helpers import wav_bytes
from whisperkit import audio as A
from whisperkit.audio import SAMPLE_RATE, load_audio, log_mel_spectrogram
from whisperkit.errors import AudioError


def _sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


class _Peak:
    def __enter__(self):
        tracemalloc.start()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.bytes = tracemalloc.get_traced_memory()[1]
        self.seconds = time.perf_counter() - self.t
        tracemalloc.stop()
        return False


# ----------------------------------------------------------------------------- NaN / Inf


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_array(bad):
    x = np.zeros(16000, np.float32)
    x[1234] = bad
    with pytest.raises(AudioError, match=r"audio array contains NaN or Inf.*sample 1234"):
        load_audio(x)
    with pytest.raises(AudioError):
        log_mel_spectrogram(x)


def test_float64_array_beyond_float32_range():
    x = np.zeros(100)
    x[7] = 1e300  # finite in float64, inf in float32: refused, not silently turned into inf
    with pytest.raises(AudioError, match="sample 7"):
        load_audio(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_nan_inf_in_floatwav_bytes(tmp_path, bad, subtype):
    x = _sine(300, 1.0, 16000)
    x[8000] = bad  # at 0.5 s
    p = tmp_path / "damaged.wav"
    soundfile.write(str(p), x, 16000, subtype=subtype)
    assert not np.isfinite(soundfile.read(str(p))[0]).all()  # the file really holds it
    with pytest.raises(AudioError, match=r"damaged\.wav contains NaN or Inf samples \(first at 0\.500 s"):
        load_audio(p)


def test_nan_in_one_channel_of_six_at_44k(tmp_path):
    x = np.tile(_sine(300, 2.0, 44100)[:, None], (1, 6))
    x[66150, 4] = np.nan  # 1.5 s, fifth channel
    p = tmp_path / "six.wav"
    soundfile.write(str(p), x, 44100, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"six\.wav contains NaN or Inf samples \(first at 1\.500 s, frame 66150\)"):
        load_audio(p)


def test_huge_but_finite_float_samples_pass(tmp_path):
    """Float files may exceed [-1, 1]; finite values are the caller's signal, kept as they are."""
    x = np.array([0.0, 3e38, -3e38, 0.5] * 100, np.float32)
    p = tmp_path / "loud.wav"
    soundfile.write(str(p), np.stack([x, x], axis=1), 16000, subtype="FLOAT")  # the mean of 2 x 3e38 overflows float32
    out = load_audio(p)
    np.testing.assert_array_equal(out, x)


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("rate", [16000, 44100, 8000])
def test_tenth_of_a_second(tmp_path, rate):
    p = tmp_path / "short.wav"
    soundfile.write(str(p), _sine(440, 0.1, rate), rate, subtype="PCM_16")
    out = load_audio(p)
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.shape == (1600,) if rate == SAMPLE_RATE else abs(out.size - 1600) <= 1
    mel = log_mel_spectrogram(p)
    assert mel.shape == (80, out.size // 160) and np.isfinite(mel).all()


def test_header_claims_three_hours_no_data(tmp_path):
    p = tmp_path / "liar.wav"
    three_hours = 3 * 3600 * 48000 * 2 * 2
    p.write_bytes(wav_bytes(48000, 2, 16, 1, b"", data_len=three_hours))
    assert p.stat().st_size == 44
    with _Peak() as peak:
        with pytest.raises(AudioError, match=r"contains no samples.*liar\.wav"):
            load_audio(p)
    assert peak.bytes < 4 << 20, peak.bytes  # 3 h of stereo float32 would be 4 GB
    assert peak.seconds < 5


def test_header_claims_three_hours_holds_a_little(tmp_path):
    """Only what the file holds comes out, read in bounded blocks."""
    x = (_sine(440, 0.05, 16000) * 32767).astype("<i2")
    p = tmp_path / "liar.wav"
    p.write_bytes(wav_bytes(16000, 1, 16, 1, x.tobytes(), data_len=3 * 3600 * 16000 * 2))
    with _Peak() as peak:
        out = load_audio(p)
    np.testing.assert_array_equal(out, x.astype(np.float32) / 32768)
    assert peak.bytes < 16 << 20, peak.bytes
    assert peak.seconds < 5


@pytest.mark.parametrize("rate", [1, 999, 2_000_000, 0x7FFFFFFF])
def test_absurd_sample_rate(tmp_path, rate):
    p = tmp_path / "rate.wav"
    p.write_bytes(wav_bytes(rate, 1, 16, 1, b"\x01\x00" * 20000))
    with _Peak() as peak:
        with pytest.raises(AudioError, match=rf"rate\.wav: declares a sample rate of {rate} Hz"):
            load_audio(p)
    assert peak.bytes < 4 << 20


def test_lowest_accepted_rate(tmp_path):
    p = tmp_path / "rate.wav"
    soundfile.write(str(p), _sine(100, 1.0, A.MIN_FILE_RATE), A.MIN_FILE_RATE, subtype="PCM_16")
    out = load_audio(p)
    assert abs(out.size - SAMPLE_RATE) <= 1
    assert abs(_peak_hz(out) - 100) < 2


def test_blocks_equal_one_shot_read(tmp_path, monkeypatch):
    """Reading in blocks (made tiny here) gives exactly soundfile.read + one-shot soxr.resample."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.8, 0.8, (44100 * 2 + 17, 2)).astype(np.float32)
    p = tmp_path / "st.wav"
    soundfile.write(str(p), x, 44100, subtype="FLOAT")
    monkeypatch.setattr(A, "_BLOCK_VALUES", 2 * 1000)  # 1000 stereo frames per block: 89 blocks
    out = load_audio(p)
    data, _ = soundfile.read(str(p), dtype="float32", always_2d=True)
    ref = soxr.resample(data.mean(axis=1, dtype=np.float64).astype(np.float32), 44100, SAMPLE_RATE, quality="HQ")
    np.testing.assert_array_equal(out, ref)
    monkeypatch.setattr(A, "_BLOCK_VALUES", 2 * 44100)  # a block boundary exactly at 1 s
    np.testing.assert_array_equal(load_audio(p), ref)


# ----------------------------------------------------------------------------- sample formats


def test_8bit_unsignedwav_bytes(tmp_path):
    u8 = np.array([0, 64, 128, 192, 255] * 400, np.uint8)  # 8-bit WAV is unsigned, 128 = silence
    p = tmp_path / "u8.wav"
    p.write_bytes(wav_bytes(16000, 1, 8, 1, u8.tobytes()))
    assert soundfile.info(str(p)).subtype == "PCM_U8"
    out = load_audio(p)
    np.testing.assert_array_equal(out[:5], np.array([-1.0, -0.5, 0.0, 0.5, 127 / 128], np.float32))
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_32bit_floatwav_bytes(tmp_path):
    x = np.array([-1.0, -0.25, 0.0, 0.125, 0.999] * 320, np.float32)
    p = tmp_path / "f32.wav"
    p.write_bytes(wav_bytes(16000, 1, 32, 3, x.astype("<f4").tobytes()))
    assert soundfile.info(str(p)).subtype == "FLOAT"
    np.testing.assert_array_equal(load_audio(p), x)


@pytest.mark.parametrize("subtype, full", [("PCM_16", 2**15), ("PCM_24", 2**23), ("PCM_32", 2**31)])
def test_integer_pcm_scaled(tmp_path, subtype, full):
    x = np.array([-1.0, -0.5, 0.0, 0.5], np.float64)
    p = tmp_path / f"{subtype}.wav"
    soundfile.write(str(p), np.repeat(x, 100), 16000, subtype=subtype)
    out = load_audio(p)
    np.testing.assert_allclose(out[::100], x, atol=1.0 / full * 2)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_six_channels_averaged(tmp_path):
    levels = np.array([0.6, -0.3, 0.1, 0.2, -0.5, 0.3], np.float32)
    x = np.tile(levels, (1600, 1))
    x[:, 2] += _sine(440, 0.1, 16000)  # one channel also carries a tone
    p = tmp_path / "six.wav"
    soundfile.write(str(p), x, 16000, subtype="FLOAT")
    assert soundfile.info(str(p)).channels == 6
    out = load_audio(p)
    np.testing.assert_allclose(out, x.astype(np.float64).mean(axis=1), atol=1e-7)


# ----------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate", [8000, 48000])
def test_resampled_duration_and_pitch(tmp_path, rate):
    p = tmp_path / f"sine{rate}.wav"
    soundfile.write(str(p), _sine(440, 2.0, rate), rate, subtype="PCM_16")
    out = load_audio(p)
    assert abs(out.size - 2 * SAMPLE_RATE) <= 2  # duration kept
    assert abs(_peak_hz(out) - 440) < 1.0  # pitch kept
    mid = out[4000:-4000]  # away from the filter's edges
    assert abs(np.abs(mid).max() - 0.5) < 0.01  # amplitude kept


@pytest.mark.parametrize(
    "fmt, subtype, rate",
    [("OGG", "VORBIS", 44100), ("MP3", "MPEG_LAYER_III", 44100), ("OGG", "OPUS", 48000), ("FLAC", "PCM_16", 22050)],
)
def test_compressed_formats(tmp_path, fmt, subtype, rate):
    p = tmp_path / f"tone.{fmt.lower()}"
    try:
        soundfile.write(str(p), _sine(440, 1.5, rate), rate, format=fmt, subtype=subtype)
    except (soundfile.LibsndfileError, ValueError, TypeError) as exc:
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}: {exc}")
    out = load_audio(p)
    # lossy codecs add an encoder delay or padding of a few ms
    assert abs(out.size - 1.5 * SAMPLE_RATE) <= 0.06 * SAMPLE_RATE, out.size
    assert abs(_peak_hz(out) - 440) < 2.0
    assert np.isfinite(out).all() and np.abs(out).max() < 1.0


def test_truncated_flac_and_garbage_ogg(tmp_path):
    p = tmp_path / "t.flac"
    soundfile.write(str(p), _sine(440, 1.0, 16000), 16000, format="FLAC")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    # libsndfile's FLAC decoder loses sync inside the first block; FFmpeg decodes up to the cut, which is kept
    damage = []
    out = load_audio(p, damage=damage)
    assert 0.2 * SAMPLE_RATE < out.size < 0.9 * SAMPLE_RATE and abs(_peak_hz(out) - 440) < 2.0
    assert len(damage) == 1 and abs(damage[0].seconds - out.size / SAMPLE_RATE) < 0.1
    with pytest.raises(AudioError, match=r"t\.flac: decoding failed after 0\.\d+ s .*truncated or corrupt"):
        load_audio(p, strict=True)
    q = tmp_path / "g.ogg"
    q.write_bytes(b"OggS" + bytes(range(256)) * 4)
    with pytest.raises(AudioError, match=r"g\.ogg"):
        load_audio(q)
