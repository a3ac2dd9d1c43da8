"""Files only FFmpeg reads (through PyAV): containers and codecs built here from a shared clip with PyAV's
own encoders, in a temporary directory (no media file is kept in git), each transcribed to the wav's text."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from helpers import shared
from whisperkit.audio import load_audio
from whisperkit.errors import AudioError

av = pytest.importorskip("av", reason="PyAV is a runtime dependency of whisperkit")

# (file name, container, audio codec, encoder rate, video codec): what users have that libsndfile refuses
MEDIA = [
    ("memo.m4a", "ipod", "aac", 16000, None),            # a phone voice memo
    ("lecture.mp4", "mp4", "aac", 16000, "mpeg4"),       # a video: its first audio stream is read
    ("call.webm", "webm", "libopus", 48000, None),       # browser recordings
    ("show.mkv", "matroska", "mp3", 16000, None),
    ("podcast.aac", "adts", "aac", 16000, None),         # raw AAC
]


def _samples():
    x, rate = sf.read(shared("audio", "jfk_16k.wav"), dtype="float32")
    return x if x.ndim == 1 else x.mean(axis=1), rate


def _write(path, container, acodec, arate, vcodec, x, rate, audio=True):
    with av.open(str(path), "w", format=container) as out:
        a = out.add_stream(acodec, rate=arate, layout="mono") if audio else None
        if a is not None:
            a.bit_rate = 160_000  # a good encoder setting, as a user's file would have
        if vcodec:
            v = out.add_stream(vcodec, rate=10)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
            for i in range(int(len(x) / rate * 10)):
                img = np.full((48, 64, 3), (i * 7) % 255, np.uint8)
                for pkt in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(pkt)
            for pkt in v.encode():
                out.mux(pkt)
        if a is not None:
            pcm = av.AudioFrame.from_ndarray((x[None] * 32767).astype(np.int16), format="s16", layout="mono")
            pcm.sample_rate = rate
            to_codec = av.AudioResampler(format=a.codec_context.format.name, layout="mono", rate=arate,
                                         frame_size=a.codec_context.frame_size or None)
            for frame in to_codec.resample(pcm) + to_codec.resample(None):
                for pkt in a.encode(frame):
                    out.mux(pkt)
            for pkt in a.encode():
                out.mux(pkt)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    x, rate = _samples()
    return {name: _write(d / name, c, a, r, v, x, rate) for name, c, a, r, v in MEDIA}


@pytest.fixture(scope="module")
def model():
    from whisperkit import WhisperTiny
    return WhisperTiny()


@pytest.mark.parametrize("name", [m[0] for m in MEDIA])
def test_libsndfile_refuses_and_pyav_reads_it(media, name):
    with pytest.raises(Exception):
        sf.info(str(media[name]))  # the point: these are the files that needed FFmpeg
    y = load_audio(media[name])
    x, _ = _samples()
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x)) < 0.1 * 16000 + 2048  # codec priming and padding only
    assert 0.5 < float(np.abs(y).max()) <= 1.05  # the speech is there, scaled as the wav's


@pytest.fixture(scope="module")
def wav_text(model):
    # beam 5, the CLI's default; greedy decoding tips on the final period of this clip after a lossy codec
    return model.transcribe(str(shared("audio", "jfk_16k.wav")), beam_size=5, best_of=5).text


@pytest.mark.parametrize("name", [m[0] for m in MEDIA])
def test_transcribes_to_the_wav_text(media, model, wav_text, name):
    assert model.transcribe(str(media[name]), beam_size=5, best_of=5).text == wav_text


def test_a_video_without_sound_is_one_clear_error(tmp_path):
    x, rate = _samples()
    silent = _write(tmp_path / "screen.mp4", "mp4", None, None, "mpeg4", x[: rate * 2], rate, audio=False)
    with pytest.raises(AudioError, match=r"screen\.mp4 has no audio stream \(it holds 1 video\)"):
        load_audio(silent)


# ----------------------------------------------------------------------------- damaged files keep their readable part


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    d = tmp_path_factory.mktemp("damaged")
    data = shared("audio", "jfk.flac").read_bytes()
    truncated = d / "truncated.flac"
    truncated.write_bytes(data[:600_000])
    garbage = d / "garbage.flac"
    noise = np.random.default_rng(15).integers(0, 256, 30_000, dtype=np.uint8).tobytes()
    garbage.write_bytes(data[:300_000] + noise + data[330_000:])
    return {"truncated": truncated, "garbage": garbage}


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_a_damaged_flac_transcribes_its_readable_part_and_says_where(damaged, model, kind):
    from whisperkit.audio import AudioDamageWarning
    path = damaged[kind]
    got: list = []
    samples = load_audio(path, damage=got)
    assert len(got) == 1 and str(path) in got[0].message
    assert abs(got[0].seconds - samples.size / 16000) < 0.1  # the time named is what the decoders delivered
    assert 3.0 < samples.size / 16000 < 11.1
    with pytest.warns(AudioDamageWarning, match=r"is damaged .*libsndfile") as caught:
        result = model.transcribe(str(path), beam_size=5, best_of=5)
    assert len(caught) == 1  # once, although the file is read twice
    assert result.warnings == [got[0].message] and result.to_dict()["warnings"] == result.warnings
    assert [w.strip(",.").lower() for w in result.text.split()[:5]] == ["and", "so", "my", "fellow", "americans"]
    with pytest.raises(AudioError, match=r"decoding failed after \d+\.\d{3} s .*truncated or corrupt"):
        model.transcribe(str(path), strict_audio=True)


def test_a_clean_file_has_no_warnings_key(model):
    assert "warnings" not in model.transcribe(str(shared("audio", "jfk_16k.wav")), beam_size=5, best_of=5).to_dict()


def test_a_file_with_nothing_decodable_stays_an_error(tmp_path):
    head = tmp_path / "head.flac"
    head.write_bytes(shared("audio", "jfk.flac").read_bytes()[:9000])  # the header and a part of the first frame
    with pytest.raises(AudioError, match=r"head\.flac"):
        load_audio(head)


def test_bytes_and_file_objects_are_read_like_paths(model):
    import io
    path = shared("audio", "jfk.flac")
    data = path.read_bytes()
    want = load_audio(path)
    np.testing.assert_array_equal(load_audio(data), want)
    np.testing.assert_array_equal(load_audio(io.BytesIO(data)), want)
    with open(path, "rb") as f:
        assert model.transcribe(f, temperature=0.0).text == model.transcribe(str(path), temperature=0.0).text
    with open(path, "r", encoding="utf-8") as f, pytest.raises(AudioError, match=r"binary mode \('rb'\)"):
        load_audio(f)
    with pytest.raises(AudioError, match="file path, bytes, a binary file object or a NumPy array, got int"):
        load_audio(123)
