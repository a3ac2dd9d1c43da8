"""Rows of different prompt lengths in one batch: left-padded (the contract's decoder_step `pad`), each row
decodes what it decodes alone, on every backend that takes padded rows."""
import numpy as np
import pytest

from helpers import BUILTIN_BACKENDS, shared
from whisperkit import Whisper
from whisperkit.audio import SAMPLE_RATE as SR, load_audio
from whisperkit.backends.numpy_backend import NumpyBackend
from whisperkit.decoding import DecodingOptions, DecodingTask

#: prompts of 0, 11 and 23 tokens: initial token rows of 1, 13 and 25 (sot_prev, the prompt, sot, ...)
PROMPTS = [None, "And so my fellow Americans, ask not", "The birch canoe slid on the smooth planks. Glue the sheet "
           "to the dark blue background."]
OPTIONS = {"greedy": {}, "greedy_text_only": dict(without_timestamps=True), "beam5": dict(beam_size=5)}


@pytest.fixture(scope="module")
def windows(tiny_numpy):
    osr = load_audio(shared("audio", "osr_16k.wav"))
    jfk = load_audio(shared("audio", "jfk_16k.wav"))
    return np.concatenate([tiny_numpy._features(a) for a in (osr[:30 * SR], jfk, osr[30 * SR:60 * SR])])


# beam 5 on the reference takes 90 s here; the compiled backends run it, and the reference's padded path is run greedy
@pytest.mark.parametrize("backend, options", [(b, o) for b in ("numpy",) + BUILTIN_BACKENDS for o in OPTIONS
                                              if (b, o) != ("numpy", "beam5")])
def test_each_row_of_a_padded_batch_gets_its_tokens_alone(tiny_on, windows, backend, options):
    model = tiny_on(backend)
    assert model.graph.ops.padded_steps
    o, tokenizer = DecodingOptions(**OPTIONS[options]), model.tokenizer
    lengths = {DecodingTask(model.graph, tokenizer, o).initial_length(p) for p in PROMPTS}
    assert len(lengths) == 3
    alone = [DecodingTask(model.graph, tokenizer, o).run(windows[i:i + 1], prompts=[p])[0] for i, p in enumerate(PROMPTS)]
    together = DecodingTask(model.graph, tokenizer, o).run(windows, prompts=PROMPTS)
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert all(len(r.tokens) > 5 for r in alone)
    # the no-speech probability is read at each row's own sot, wherever the padding put it
    assert [r.no_speech_prob for r in together] == pytest.approx([r.no_speech_prob for r in alone], abs=1e-4)
    assert [r.avg_logprob for r in together] == pytest.approx([r.avg_logprob for r in alone], abs=1e-4)


def test_several_files_conditioned_on_their_own_text_share_one_decoding_run(tiny_numpy, monkeypatch):
    """transcribe_batch's sequential loop: each file's windows are prompted with its own previous text, so the
    prompts differ in length, and the windows still decode as one batch, with each file's text alone."""
    osr = load_audio(shared("audio", "osr_16k.wav"))
    jfk = load_audio(shared("audio", "jfk_16k.wav"))
    files = [osr, np.concatenate([jfk, osr[:25 * SR], jfk])]  # two windows each, different first texts
    runs = []
    real_run = DecodingTask.run

    def run(self, features, prompts=None):
        runs.append((features.shape[0], None if prompts is None else {self.initial_length(p) for p in prompts}))
        return real_run(self, features, prompts)
    monkeypatch.setattr(DecodingTask, "run", run)
    together = tiny_numpy.transcribe_batch(files, batch_size=2, temperature=0.0)
    assert any(n == 2 and lengths is not None and len(lengths) == 2 for n, lengths in runs)  # padded rows, one run
    monkeypatch.setattr(DecodingTask, "run", real_run)
    alone = [tiny_numpy.transcribe(f, temperature=0.0) for f in files]
    assert [[s.tokens for s in r.segments] for r in together] == [[s.tokens for s in r.segments] for r in alone]


class _NoPadding(NumpyBackend):
    """A third-party backend that does not take padded rows (the reference's kernels, another name)."""
    name = "no-padding"
    padded_steps = False


def test_a_backend_without_padded_steps_gets_batches_of_one_prompt_length(tiny_weights, windows):
    model = Whisper("tiny.en", backend=_NoPadding(), weights=tiny_weights)
    assert not model.graph.ops.padded_steps
    task = DecodingTask(model.graph, model.tokenizer, DecodingOptions())
    with pytest.raises(ValueError, match="different lengths need a backend that takes left-padded rows; no-padding"):
        task.run(windows, prompts=PROMPTS)
    same_length = ["one two", "three four"]
    assert len({task.initial_length(p) for p in same_length}) == 1
    assert len(task.run(windows[:2], prompts=same_length)) == 2
    # the batch of several files still works: their windows are grouped by prompt length
    osr = load_audio(shared("audio", "osr_16k.wav"))
    jfk = load_audio(shared("audio", "jfk_16k.wav"))
    files = [osr[:35 * SR], np.concatenate([jfk, osr[:25 * SR]])]
    together = model.transcribe_batch(files, batch_size=2, temperature=0.0)
    alone = [model.transcribe(f, temperature=0.0) for f in files]
    assert [r.text for r in together] == [r.text for r in alone]
