"""Batched transcription of one long file (`whisperkit.chunked`): the VAD's speech in chunks of at most
30 s, decoded several rows at a time, timestamps mapped back to the file."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import shared
from whisperkit.audio import SAMPLE_RATE as SR, load_audio
from whisperkit.chunked import _ChunkReader, batched_vad_options, speech_chunks
from whisperkit.vad import VadOptions, find_speech

VAD = dict(vad_method="energy")  # the filter every install has; the chunking is the same with Silero


def test_speech_chunks_pack_regions_into_30_s_of_speech_and_cut_longer_ones():
    s = SR
    assert speech_chunks([(0, 5 * s), (8 * s, 20 * s), (25 * s, 40 * s)]) == [[(0, 5 * s), (8 * s, 20 * s)], [(25 * s, 40 * s)]]
    assert speech_chunks([(0, 70 * s)]) == [[(0, 30 * s)], [(30 * s, 60 * s)], [(60 * s, 70 * s)]]
    assert speech_chunks([(0, 20 * s), (21 * s, 56 * s)]) == [[(0, 20 * s), (21 * s, 31 * s)], [(31 * s, 56 * s)]]
    assert speech_chunks([]) == []
    regions = [(i * 7 * s, i * 7 * s + 3 * s) for i in range(20)]  # 3 s of speech, then 4 s of pause
    chunks = speech_chunks(regions)
    assert chunks == [regions[:10], regions[10:]]  # 30 s of speech each, the pauses left out


@pytest.fixture(scope="module")
def long_audio():
    """jfk, 40 s of silence, osr, 5 s of silence, pv_en, 10 s of silence, jfk: 63 s of speech, three chunks of
    different lengths."""
    jfk = load_audio(shared("audio", "jfk_16k.wav"))
    parts = [jfk, np.zeros(40 * SR, np.float32), load_audio(shared("audio", "osr_16k.wav")), np.zeros(5 * SR, np.float32),
             load_audio(shared("audio", "pv_en.wav")), np.zeros(10 * SR, np.float32), jfk]
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def model():
    from whisperkit import WhisperTiny
    return WhisperTiny()


@pytest.mark.parametrize("batch_size, without_timestamps", [(1, True), (4, True), (4, False)])
def test_each_chunk_gets_the_tokens_it_gets_alone(model, long_audio, batch_size, without_timestamps):
    chunks = speech_chunks(find_speech(long_audio, batched_vad_options(None), "energy"))
    lengths = [sum(e - s for s, e in chunk) for chunk in chunks]
    assert len(chunks) >= 3 and len(set(lengths)) == len(chunks)  # rows that finish at different steps
    result = model.transcribe(long_audio, batch_size=batch_size, temperature=0.0, without_timestamps=without_timestamps, **VAD)
    alone = [model.transcribe(np.concatenate([long_audio[s:e] for s, e in chunk]), temperature=0.0,
                              condition_on_previous_text=False, without_timestamps=without_timestamps) for chunk in chunks]
    assert len(result.segments) == (len(chunks) if without_timestamps else sum(len(r.segments) for r in alone))
    assert [t for r in alone for seg in r.segments for t in seg.tokens] == [t for seg in result.segments for t in seg.tokens]
    assert result.text == "".join(r.text for r in alone)
    starts = [seg.start for seg in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= len(long_audio) / SR + 0.01
    if without_timestamps:  # a segment per chunk, from its first region's start to its last one's end
        spans = [(c[0][0] / SR, c[-1][1] / SR) for c in chunks]
        assert np.allclose([(seg.start, seg.end) for seg in result.segments], spans, atol=0.01)  # 10 ms mel frames
    else:  # the osr clip starts at 11 + 40 s in the file, not at 11 s of its chunk's joined speech
        osr = next(seg for seg in result.segments if "ring" in seg.text.lower())
        assert osr.start >= 51.0 - 0.5


def test_word_timestamps_in_batched_mode_are_file_times(model, long_audio):
    result = model.transcribe(long_audio, batch_size=4, temperature=0.0, word_timestamps=True, **VAD)
    words = [w for seg in result.segments for w in seg.words]
    assert words and all(seg.start - 0.01 <= w["start"] <= w["end"] <= seg.end + 0.01
                         for seg in result.segments for w in seg.words)
    ring = next(w for w in words if "ring" in w["word"].lower())
    assert 51.0 < ring["start"] < 56.0


def test_an_all_silent_file_gives_an_empty_result(model):
    result = model.transcribe(np.zeros(60 * SR, np.float32), batch_size=8, **VAD)
    assert result.text == "" and result.segments == []


def test_options_that_batched_mode_fixes_are_refused(model, long_audio):
    with pytest.raises(ValueError, match="condition_on_previous_text cannot be set in batched mode"):
        model.transcribe(long_audio, batch_size=4, condition_on_previous_text=True, **VAD)


def test_the_chunk_reader_reads_forward_spans_of_a_file():
    path = shared("audio", "osr_16k.wav")
    x = load_audio(path)
    reader = _ChunkReader(path)
    for s, e in [(100, 5000), (4000, 300_000), (300_000, 300_001), (400_000, len(x) + 999)]:
        np.testing.assert_array_equal(reader.read(s, e), x[s:min(e, len(x))])


def test_beam_search_in_batched_mode_gives_each_chunk_its_tokens_alone(model, long_audio):
    chunks = speech_chunks(find_speech(long_audio, batched_vad_options(None), "energy"))
    result = model.transcribe(long_audio, batch_size=3, temperature=0.0, beam_size=5, **VAD)
    alone = [model.transcribe(np.concatenate([long_audio[s:e] for s, e in chunk]), temperature=0.0, beam_size=5,
                              condition_on_previous_text=False, without_timestamps=True) for chunk in chunks]
    assert [seg.tokens for seg in result.segments] == [seg.tokens for r in alone for seg in r.segments]


def test_several_files_fill_the_batch_with_their_chunks(model, long_audio):
    """transcribe_batch(chunked=True): the chunks of one file after another share the batches; each file's
    result is the one it gets alone in batched mode."""
    files = [long_audio, long_audio[: 30 * SR], np.zeros(5 * SR, np.float32)]  # the last one has no speech
    together = model.transcribe_batch(files, batch_size=4, chunked=True, temperature=0.0, **VAD)
    alone = [model.transcribe(f, batch_size=4, temperature=0.0, **VAD) for f in files]
    assert [r.to_dict() for r in together] == [r.to_dict() for r in alone]
    assert together[0].text and together[1].text and together[2].text == ""


def test_the_cli_batch_size_runs_the_batched_pipeline_on_every_file(tmp_path, model):
    from whisperkit.cli import main
    files = [str(shared("audio", "jfk_16k.wav")), str(shared("audio", "pv_en.wav"))]
    assert main(["transcribe", *files, "--batch_size", "2", "--vad_method", "energy", "--beam_size", "None",
                 "--output_dir", str(tmp_path), "-f", "txt", "--verbose", "False"]) == 0
    for f in files:
        want = model.transcribe(f, batch_size=2, vad_method="energy").text.strip()
        assert (tmp_path / (f.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".txt")).read_text().strip() == want


def test_a_text_only_chunk_that_stopped_early_is_decoded_again_with_timestamps(model, long_audio, monkeypatch):
    """A chunk whose text-only decoding gives fewer than a word a second of its speech is decoded again with
    timestamps; its segments then come from that decoding."""
    import whisperkit.chunked as chunked
    from whisperkit.transcribe import TranscriptionResult
    assert chunked._stopped_early(TranscriptionResult(text=" one two"), 30.0)
    assert not chunked._stopped_early(TranscriptionResult(text=" one two"), 5.0)  # too little speech to tell
    assert not chunked._stopped_early(TranscriptionResult(text=" w" * 40), 30.0)
    normal = model.transcribe(long_audio, batch_size=4, temperature=0.0, **VAD)
    monkeypatch.setattr(chunked, "MIN_WORDS_PER_SECOND", 100.0)  # every chunk of 10 s or more looks cut short
    again = model.transcribe(long_audio, batch_size=4, temperature=0.0, **VAD)
    assert len(again.segments) > len(normal.segments)  # the long chunks came back in the model's own segments
    assert again.text.split()[:5] == normal.text.split()[:5]
