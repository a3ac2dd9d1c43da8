"""Output writers (txt, vtt, srt, tsv, json, all) on jfk, each checked against its format, the line
options, and the CLI writing them to --output_dir."""
import json
import re
import subprocess

import pytest

from helpers import EXE, assert_one_clear_error, shared
from whisperkit.writers import OUTPUT_FORMATS, format_timestamp, get_writer

SRT_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2}),(\d{3}) --> (\d{2}):(\d{2}):(\d{2}),(\d{3})$")
VTT_TIME = re.compile(r"^(?:(\d{2}):)?(\d{2}):(\d{2})\.(\d{3}) --> (?:(\d{2}):)?(\d{2}):(\d{2})\.(\d{3})$")


def _seconds(h, m, s, ms):
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


@pytest.fixture(scope="module")
def jfk_words(tiny_numpy):
    return tiny_numpy.transcribe(str(shared("audio", "jfk_16k.wav")), temperature=0.0, word_timestamps=True)


@pytest.fixture(scope="module")
def jfk_plain(tiny_numpy):
    return tiny_numpy.transcribe(str(shared("audio", "jfk_16k.wav")), temperature=0.0)


def write(fmt, result, tmp_path, **kwargs):
    path = get_writer(fmt, tmp_path)(result, "/some/where/jfk_16k.wav", **kwargs)
    assert path == str(tmp_path / f"jfk_16k.{fmt}")
    return (tmp_path / f"jfk_16k.{fmt}").read_text(encoding="utf-8")


def srt_cues(text):
    """[(index, start, end, text lines)] of an SRT file, checking its block syntax."""
    blocks = text.split("\n\n")
    assert blocks[-1] == "", "an SRT file ends with a blank line"
    cues = []
    for n, block in enumerate(blocks[:-1], start=1):
        lines = block.split("\n")
        assert lines[0] == str(n)
        m = SRT_TIME.match(lines[1])
        assert m, lines[1]
        g = m.groups()
        cues.append((n, _seconds(*g[:4]), _seconds(*g[4:]), lines[2:]))
    return cues


def vtt_cues(text):
    assert text.startswith("WEBVTT\n\n")
    blocks = text[len("WEBVTT\n\n"):].split("\n\n")
    assert blocks[-1] == ""
    cues = []
    for block in blocks[:-1]:
        lines = block.split("\n")
        m = VTT_TIME.match(lines[0])
        assert m, lines[0]
        g = m.groups()
        cues.append((_seconds(*g[:4]), _seconds(*g[4:]), lines[1:]))
    return cues


@pytest.mark.parametrize("which", ["plain", "words"])
def test_srt_one_cue_per_segment(jfk_plain, jfk_words, tmp_path, which):
    result = jfk_plain if which == "plain" else jfk_words
    cues = srt_cues(write("srt", result, tmp_path))
    assert len(cues) == len(result.segments)
    for (_, start, end, lines), seg in zip(cues, result.segments):
        assert start == pytest.approx(seg.start, abs=5e-4) and end == pytest.approx(seg.end, abs=5e-4)
        assert lines == [seg.text.strip()]
    assert "00:00:00,000 --> 00:00:07,740" in write("srt", jfk_plain, tmp_path)  # hours always, comma


def test_vtt_one_cue_per_segment(jfk_plain, tmp_path):
    text = write("vtt", jfk_plain, tmp_path)
    cues = vtt_cues(text)
    assert [(round(s, 3), round(e, 3), l) for s, e, l in cues] == \
        [(round(s.start, 3), round(s.end, 3), [s.text.strip()]) for s in jfk_plain.segments]
    assert "\n00:00.000 --> 00:07.740\n" in text  # no hours under an hour, dot


def test_tsv_columns(jfk_plain, tmp_path):
    rows = write("tsv", jfk_plain, tmp_path).rstrip("\n").split("\n")
    assert rows[0] == "start\tend\ttext"
    assert len(rows) == len(jfk_plain.segments) + 1
    for row, seg in zip(rows[1:], jfk_plain.segments):
        start, end, text = row.split("\t")
        assert (int(start), int(end), text) == (round(1000 * seg.start), round(1000 * seg.end), seg.text.strip())


def test_txt_lines(jfk_plain, tmp_path):
    assert write("txt", jfk_plain, tmp_path) == "".join(s.text.strip() + "\n" for s in jfk_plain.segments)


def test_json_schema(jfk_words, tmp_path):
    data = json.loads(write("json", jfk_words, tmp_path))
    assert set(data) == {"text", "segments", "language"}
    assert data["text"] == jfk_words.text and data["language"] == "en"
    types = dict(id=int, seek=int, start=float, end=float, text=str, tokens=list, temperature=float,
                 avg_logprob=float, compression_ratio=float, no_speech_prob=float, words=list)
    for i, seg in enumerate(data["segments"]):
        assert set(seg) == set(types)
        assert seg["id"] == i
        for k, t in types.items():
            assert isinstance(seg[k], (int, float) if t is float else t), (k, seg[k])
        assert all(isinstance(tok, int) for tok in seg["tokens"])
        for w in seg["words"]:
            assert set(w) == {"word", "start", "end", "probability"}
            assert isinstance(w["word"], str) and 0 <= w["probability"] <= 1 and w["start"] <= w["end"]
    assert data == json.loads(json.dumps(jfk_words.to_dict()))


def test_all_writes_every_format(jfk_plain, tmp_path):
    paths = get_writer("all", tmp_path)(jfk_plain, "jfk_16k.flac")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"jfk_16k.{f}" for f in OUTPUT_FORMATS if f != "all")
    assert len(paths) == 5
    with pytest.raises(ValueError, match="unknown output format 'doc'"):
        get_writer("doc", tmp_path)


@pytest.mark.parametrize("width, count", [(20, None), (20, 2), (42, 1)])
def test_max_line_width_and_count(jfk_words, tmp_path, width, count):
    cues = srt_cues(write("srt", jfk_words, tmp_path, max_line_width=width, max_line_count=count))
    all_words = [w["word"].strip() for s in jfk_words.segments for w in s.words]
    lines = [line for cue in cues for line in cue[3]]
    assert all(len(line) <= width for line in lines), lines
    assert " ".join(lines).split() == all_words  # every word once, in order
    if count is None:  # segments are kept: one cue per segment, split into lines
        assert len(cues) == len(jfk_words.segments)
    else:  # cues of at most `count` lines, broken anywhere
        assert all(len(cue[3]) <= count for cue in cues)
        assert len(cues) > len(jfk_words.segments)
    starts = [c[1] for c in cues]
    assert starts == sorted(starts)


def test_max_words_per_line(jfk_words, tmp_path):
    cues = srt_cues(write("srt", jfk_words, tmp_path, max_words_per_line=4))
    # each segment's words in chunks of 4, one cue per chunk
    expected = [" ".join(w["word"].strip() for w in s.words[i:i + 4]) for s in jfk_words.segments
                for i in range(0, len(s.words), 4)]
    assert [cue[3] for cue in cues] == [[line] for line in expected]


def test_highlight_words(jfk_words, tmp_path):
    cues = vtt_cues(write("vtt", jfk_words, tmp_path, highlight_words=True))
    words = [w for s in jfk_words.segments for w in s.words]
    underlined = [c for c in cues if "<u>" in c[2][0]]
    assert len(underlined) == len(words)  # one cue per word (plus gap fillers, none here: words are contiguous)
    for (start, end, lines), w in zip(underlined, words):
        text = "\n".join(lines)
        assert text.count("<u>") == 1 and f"<u>{w['word'].strip()}</u>" in text
        assert start == pytest.approx(w["start"], abs=5e-4) and end == pytest.approx(w["end"], abs=5e-4)
    assert all("<u>" in c[2][0] or c[0] != c[1] for c in cues)


def test_format_timestamp():
    assert format_timestamp(7.74) == "00:07.740"
    assert format_timestamp(7.74, always_include_hours=True, decimal_marker=",") == "00:00:07,740"
    assert format_timestamp(3725.0004) == "01:02:05.000"
    assert format_timestamp(59.9996) == "01:00.000"  # rounded to the millisecond, carried
    with pytest.raises(ValueError):
        format_timestamp(-1.0)


# ---- the CLI writes them ------------------------------------------------------------------------------
def test_cli_writes_outputs_to_output_dir(golden_tiny, tmp_path):
    """openai-whisper's defaults (beam 5, best_of 5) with word timestamps and line options."""
    out = tmp_path / "out"
    proc = subprocess.run([EXE, "transcribe", str(shared("audio", "jfk_16k.wav")), "--word_timestamps", "True",
                           "--max_line_width", "30", "--max_line_count", "2", "-o", str(out), "--json"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"jfk_16k.{e}" for e in ("json", "srt", "tsv", "txt", "vtt")]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    printed = json.loads(proc.stdout)
    written = json.loads((out / "jfk_16k.json").read_text())
    assert printed == written
    assert written["text"] == golden_tiny["clips"]["jfk_16k.wav"]["transcribe_beam5"]["text"]
    assert all(s["words"] for s in written["segments"])
    cues = srt_cues((out / "jfk_16k.srt").read_text())
    assert all(len(line) <= 30 for cue in cues for line in cue[3]) and all(len(c[3]) <= 2 for c in cues)


def test_cli_quiet_greedy_writes_one_format(golden_tiny, tmp_path):
    proc = subprocess.run([EXE, "transcribe", str(shared("audio", "jfk_16k.wav")), "--beam_size", "None",
                           "--best_of", "None", "--verbose", "False", "-f", "tsv", "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["jfk_16k.tsv"]
    rows = (tmp_path / "jfk_16k.tsv").read_text().splitlines()
    expected = golden_tiny["clips"]["jfk_16k.wav"]["transcribe_greedy"]["segments"]
    assert rows[1:] == [f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t{s['text'].strip()}" for s in expected]


@pytest.mark.parametrize("option, value", [("--highlight_words", "True"), ("--max_line_width", "20")])
def test_cli_word_options_need_word_timestamps(tmp_path, option, value):
    proc = subprocess.run([EXE, "transcribe", str(shared("audio", "jfk_16k.wav")), option, value],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert_one_clear_error(proc, f"{option} requires --word_timestamps True")
    assert list(tmp_path.iterdir()) == []
