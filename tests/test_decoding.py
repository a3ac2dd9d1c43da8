"""Beam search, temperature fallback, language detection and translation against openai-whisper."""
import numpy as np
import pytest

from helpers import shared
from whisperkit.registry import get_registry

CLIPS = ["jfk_16k.wav", "pv_en.wav", "osr_16k.wav"]
BACKENDS = [n for n, i in get_registry().infos.items() if i.usable]  # every one is float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", CLIPS)
def test_beam5_transcription_matches_openai_whisper(tiny_on, golden_tiny, clip, backend):
    expected = golden_tiny["clips"][clip]["transcribe_beam5"]
    result = tiny_on(backend).transcribe(str(shared("audio", clip)), temperature=0.0, beam_size=5, best_of=5)
    assert [s.tokens for s in result.segments] == [s["tokens"] for s in expected["segments"]]
    assert [(round(s.start, 6), round(s.end, 6)) for s in result.segments] == \
        [(round(s["start"], 6), round(s["end"], 6)) for s in expected["segments"]]
    assert result.text == expected["text"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", CLIPS)
def test_beam5_first_window_without_timestamps(tiny_on, golden_tiny, clip, backend):
    expected = golden_tiny["clips"][clip]["first_window_beam5_notimestamps"]
    result = tiny_on(backend).decode(str(shared("audio", clip)), without_timestamps=True, beam_size=5)
    assert result.tokens == expected["tokens"]
    assert result.avg_logprob == pytest.approx(expected["avg_logprob"], abs=2e-3)


def test_fallback_records_the_temperature_that_was_kept(tiny_numpy):
    """A compression-ratio threshold no text can meet makes every attempt fail, so each window ends
    at the last temperature; the thresholds that never trigger keep temperature 0."""
    path = str(shared("audio", "jfk_16k.wav"))
    forced = tiny_numpy.transcribe(path, temperature=(0.0, 0.4, 0.8), compression_ratio_threshold=0.01, seed=3)
    assert forced.segments and all(s.temperature == 0.8 for s in forced.segments)
    again = tiny_numpy.transcribe(path, temperature=(0.0, 0.4, 0.8), compression_ratio_threshold=0.01, seed=3)
    assert again.to_dict() == forced.to_dict()  # sampling is seeded: a run can be repeated
    calm = tiny_numpy.transcribe(path, temperature=(0.0, 0.4, 0.8))
    assert all(s.temperature == 0.0 for s in calm.segments)


def test_english_only_model_refuses_language_detection(tiny_numpy):
    with pytest.raises(ValueError, match="English-only"):
        tiny_numpy.detect_language(str(shared("audio", "jfk_16k.wav")))


@pytest.fixture(scope="module")
def base_numpy():
    from whisperkit import load_model
    return load_model("base", backend="numpy")


@pytest.mark.parametrize("clip", ["pv_en.wav", "pv_de.wav", "pv_es.wav", "pv_fr.wav"])
def test_detect_language_top5(base_numpy, golden_base, clip):
    expected = golden_base["clips"][clip]["detect_language_top5"]
    code, probs = base_numpy.detect_language(str(shared("audio", clip)))
    top5 = sorted(probs.items(), key=lambda kv: -kv[1])[:5]
    assert code == expected[0][0]
    assert [c for c, _ in top5] == [c for c, _ in expected]
    np.testing.assert_allclose([p for _, p in top5], [p for _, p in expected], atol=1e-3)


@pytest.mark.parametrize("clip", ["pv_de.wav", "pv_es.wav", "pv_fr.wav"])
def test_multilingual_transcribe_and_translate(base_numpy, golden_base, clip):
    g = golden_base["clips"][clip]
    result = base_numpy.transcribe(str(shared("audio", clip)), temperature=0.0)  # language detected
    assert result.language == g["transcribe_greedy"]["language"]
    assert result.text == g["transcribe_greedy"]["text"]
    translated = base_numpy.transcribe(str(shared("audio", clip)), temperature=0.0, task="translate")
    assert translated.text == g["translate_greedy"]["text"]
    assert [s.tokens for s in translated.segments] == [s["tokens"] for s in g["translate_greedy"]["segments"]]


@pytest.mark.parametrize("seed", range(6))
def test_top_k_equals_a_full_sort(seed):
    """The beam's top-k (a chunk-maxima bound, then a sort of the few above it) against a sort of every row:
    rows with ties, with -inf (suppressed tokens), widths that leave a ragged tail, and k near the width."""
    from whisperkit.token_decoders import top_k
    rng = np.random.default_rng(seed)
    for n, k in [(51864, 6), (1000, 6), (300, 2), (5, 5), (257, 3)]:
        x = rng.standard_normal((4, n)).astype(np.float32)
        x[1, rng.integers(0, n, n // 2)] = -np.inf
        x[2] = np.round(x[2])  # many ties
        x[3, :] = -np.inf
        x[3, n - 1] = 0.0  # the best token in the tail
        want = np.stack([np.lexsort((np.arange(n), -row))[:k] for row in x])
        np.testing.assert_array_equal(top_k(x, k), want)


@pytest.mark.parametrize("seed", range(4))
def test_timestamp_rule_sums_every_row_as_alone(seed):
    """The timestamp rule's test for all rows at once (`timestamps_outweigh_text`) against the same float32 formula
    row by row: the same decision on every row, with rows whose timestamps are all suppressed (-inf), rows with
    every text token suppressed, and rows near the boundary (the timestamps' mass equal to the best text token)."""
    from whisperkit.decoding import timestamps_outweigh_text
    rng = np.random.default_rng(seed)
    tb, n = 50363, 51864
    x = (rng.standard_normal((7, n)) * 3).astype(np.float32)
    x[:, tb:] += np.float32(rng.uniform(-4, 6))
    x[1, tb:] = -np.inf
    x[2, :tb] = -np.inf
    for r in (3, 4):  # the timestamps' logsumexp placed on the best text token, give or take one ulp
        ts = x[r, tb:]
        lse = ts.max() + np.log(np.sum(np.exp(ts - ts.max())))
        x[r, :tb] -= x[r, :tb].max() - lse + np.float32(r - 3) * np.spacing(lse)
    want = []
    for row in x:
        ts = row[tb:]
        m = ts.max()
        lse = m + np.log(np.sum(np.exp(ts - m))) if np.isfinite(m) else -np.inf
        want.append(lse > row[:tb].max())
    got = timestamps_outweigh_text(x, tb)
    assert got.dtype == bool and got.shape == (7,)
    assert got.tolist() == want
    assert not got[1] and got[2] and not got[3] and got[4]  # the rows at the boundary fall on either side


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_beams_prompt_runs_once_per_audio(tiny_on, backend):
    """Before the first sampled token the 5 beams of an audio hold the same tokens: the prompt runs once per
    audio (Inference.logits_per_audio), and every row's caches and logits equal those of running it per row."""
    from whisperkit.decoding import Inference
    model = tiny_on(backend)
    feats = np.random.default_rng(5).standard_normal((2, 1500, 384)).astype(np.float32)
    tokens = np.repeat(np.array([[50361, 1002, 318, 50257], [50361, 40, 716, 50257]]), 5, axis=0)  # sot_prev, 2 words, sot
    once, each = Inference(model.graph, feats, 5), Inference(model.graph, feats, 5)
    got, want = once.logits_per_audio(tokens, [3]), each.logits(tokens, [3])
    assert got.shape == want.shape == (10, 1, 51864)
    assert once.offset == each.offset == 4
    # the compiled backends' rows do not depend on the other rows: the same bits.  The reference's GEMMs are
    # OpenBLAS's, whose rounding depends on the number of rows (measured: 2e-7 of the logits' scale).
    rtol = 0 if backend != "numpy" else 1e-5
    for a, b in ((got, want), (once.cache.k[:, :, :4], each.cache.k[:, :, :4]), (once.cache.v[:, :, :4], each.cache.v[:, :, :4])):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("beam_size", [None, 5])
def test_decoding_takes_log_probabilities_from_the_backend(tiny_on, beam_size):
    """Every log-probability of the decode loop (the timestamp rule, the greedy and the beam decoder) comes from the
    backend's log_softmax op, once per step, over the whole vocabulary of every open row."""
    model = tiny_on("numba")
    ops = model.graph.ops
    assert ops.log_softmax.__self__ is ops.backend and "log_softmax" not in ops.fallbacks  # numba's own
    seen = []
    backend_op = ops.log_softmax

    def spy(x):
        seen.append(x.shape)
        return backend_op(x)

    ops.log_softmax = spy
    try:
        result = model.transcribe(shared("audio", "jfk_16k.wav"), beam_size=beam_size, temperature=0.0)
    finally:
        ops.log_softmax = backend_op
    rows = beam_size or 1
    assert len(seen) >= sum(len(seg.tokens) for seg in result.segments)  # at least one call per sampled token
    assert all(s == (rows, 51864) for s in seen), set(seen)


def test_beam_search_takes_top_k_and_logsumexp_from_the_backend(tiny_on):
    """The beam's k best tokens (top_k) and the timestamp rule's log-sum-exp come from the backend's ops, once
    per step: top_k over the 5 beams' whole vocabulary for beam_size + 1, logsumexp over their timestamp columns."""
    model = tiny_on("numba")
    ops = model.graph.ops
    for op in ("top_k", "logsumexp"):
        assert getattr(ops, op).__self__ is ops.backend and op not in ops.fallbacks  # numba's own
    seen = {"top_k": [], "logsumexp": []}
    originals = {op: getattr(ops, op) for op in seen}
    ops.top_k = lambda x, k: seen["top_k"].append((x.shape, k)) or originals["top_k"](x, k)
    ops.logsumexp = lambda x: seen["logsumexp"].append(x.shape) or originals["logsumexp"](x)
    try:
        result = model.transcribe(shared("audio", "jfk_16k.wav"), beam_size=5, temperature=0.0)
    finally:
        for op, fn in originals.items():
            setattr(ops, op, fn)
    tokens = sum(len(seg.tokens) for seg in result.segments)
    tb = model.tokenizer.timestamp_begin
    assert len(seen["top_k"]) >= tokens and len(seen["logsumexp"]) >= tokens
    assert set(seen["top_k"]) == {((5, 51864), 6)}
    assert set(seen["logsumexp"]) == {(5, 51864 - tb)}


def test_the_picks_only_where_they_reproduce_the_filters(tiny_on):
    """The decode loop takes the backend's greedy_pick (`whisperkit.contract.GREEDY_PICK`) for greedy decoding at
    temperature 0, and its beam_pick (`BEAM_PICK`) for beam search, with decoding's own filters and the backend's own
    log_softmax and logsumexp (and top_k, for beams); else its filters and token decoder run (sampling, a backend
    without the slot, an op that is not the backend's)."""
    from whisperkit.decoding import DecodingOptions, DecodingTask
    numba_model, numpy_model = tiny_on("numba"), tiny_on("numpy")
    task = lambda model, **kw: DecodingTask(model.graph, model.tokenizer, DecodingOptions(**kw))  # noqa: E731
    def picked(t):  # the shape of what its pick returns for 2 rows: greedy_pick's (2,), beam_pick's (2, beam + 1)
        tokens = np.tile(t.initial_tokens, (2, 1)).astype(np.int64)
        return np.shape(t._pick()(np.zeros((2, numba_model.dims.n_vocab), np.float32), tokens)[0])
    assert picked(task(numba_model)) == (2,)
    assert picked(task(numba_model, without_timestamps=True, suppress_tokens="")) == (2,)
    assert picked(task(numba_model, beam_size=5)) == (2, 6)
    assert picked(task(numba_model, beam_size=3, without_timestamps=True)) == (2, 4)
    assert task(numba_model, temperature=0.4)._pick() is None
    assert task(numba_model, temperature=0.4, best_of=3)._pick() is None
    assert task(numpy_model)._pick() is None and task(numpy_model, beam_size=5)._pick() is None
    ops = numba_model.graph.ops
    for op, options in (("logsumexp", {}), ("logsumexp", {"beam_size": 5}), ("top_k", {"beam_size": 5})):
        own = getattr(ops, op)
        setattr(ops, op, lambda *a, own=own: own(*a))
        try:
            assert task(numba_model, **options)._pick() is None, (op, options)
        finally:
            setattr(ops, op, own)
    own = ops.top_k
    ops.top_k = lambda *a: own(*a)
    try:
        assert task(numba_model)._pick() is not None  # top_k is not one greedy_pick reproduces
    finally:
        ops.top_k = own


@pytest.mark.parametrize("beam_size", [None, 5], ids=["greedy", "beam5"])
def test_a_transcription_with_the_picks_is_the_one_without(tiny_on, monkeypatch, beam_size):
    """numba's greedy_pick and beam_pick change how a step's token is chosen, not what is chosen: osr (two windows,
    the second prompted) transcribed with them and with the decode loop's filters and token decoders (the slot
    hidden on the backend) gives the same tokens, timestamps and average log-probabilities, bit for bit."""
    model = tiny_on("numba")
    backend = model.graph.ops.backend
    slot = "beam_pick" if beam_size else "greedy_pick"
    calls = []
    real = getattr(type(backend), slot)
    monkeypatch.setattr(type(backend), slot, lambda self, *a: calls.append(1) or real(self, *a))
    picked = model.transcribe(shared("audio", "osr_16k.wav"), beam_size=beam_size)
    taken = len(calls)
    assert taken > 100  # every step of both windows took it
    monkeypatch.setattr(backend, slot, None, raising=False)  # the instance hides the slot: the loop runs its filters
    plain = model.transcribe(shared("audio", "osr_16k.wav"), beam_size=beam_size)
    assert len(calls) == taken and len(picked.segments) == len(plain.segments) > 1
    for a, b in zip(picked.segments, plain.segments):
        assert (a.tokens, a.start, a.end, a.avg_logprob) == (b.tokens, b.start, b.end, b.avg_logprob)


@pytest.mark.parametrize("suppress", ["99999", "-1,51864", "-2"])
def test_suppress_tokens_outside_the_vocabulary_is_one_clear_error(tiny_on, suppress):
    """A suppressed token id outside the vocabulary is refused when the decoding starts, naming the option (it used to
    index the logits: NumPy raised from deep inside, or counted a negative id from the end)."""
    from whisperkit.decoding import DecodingOptions, DecodingTask
    model = tiny_on("numba")
    with pytest.raises(ValueError, match="suppress_tokens: token -?[0-9]+ is outside the vocabulary"):
        DecodingTask(model.graph, model.tokenizer, DecodingOptions(suppress_tokens=suppress))


@pytest.mark.parametrize("backend", ["numba", "pythran"])
def test_speculative_greedy_is_the_plain_loop(tiny_on, monkeypatch, backend):
    """Greedy decoding on a backend whose decoder_step offers `draft` and `head` (numba, with its greedy_pick; pythran,
    whose drafts are picked by the loop's own filters and GreedyDecoder) drafts a few tokens and verifies them together
    (`decoding.SPECULATE`): osr (two windows, the second prompted) and jfk transcribed so, with rounds of 2, 3 and 4
    steps, give the plain loop's tokens, timestamps and average log-probabilities, bit for bit; and so does one window
    cut at every sample_len from 1 to 9 (the round cut where the plain loop stops)."""
    from whisperkit import decoding
    model = tiny_on(backend)
    assert model.graph.decoder.head is not None
    heads = []
    real = model.graph.decoder.head
    monkeypatch.setattr(model.graph.decoder, "head", lambda h: heads.append(h.shape[0]) or real(h))
    results = {}
    for rounds in (0, 3, 2, 4):
        monkeypatch.setattr(decoding, "SPECULATE", rounds)
        heads.clear()
        results[rounds] = [model.transcribe(shared("audio", clip)) for clip in ("osr_16k.wav", "jfk_16k.wav")]
        assert (len(heads) > 10 and max(heads) == rounds) if rounds else not heads  # the rounds ran, or none did
    for rounds in (3, 2, 4):
        for got, want in zip(results[rounds], results[0]):
            assert len(got.segments) == len(want.segments) > 0
            for a, b in zip(got.segments, want.segments):
                assert (a.tokens, a.start, a.end, a.avg_logprob) == (b.tokens, b.start, b.end, b.avg_logprob)
    for n in range(1, 10):
        monkeypatch.setattr(decoding, "SPECULATE", 0)
        want = model.decode(shared("audio", "jfk_16k.wav"), temperature=0.0, sample_len=n)
        monkeypatch.setattr(decoding, "SPECULATE", 3)
        got = model.decode(shared("audio", "jfk_16k.wav"), temperature=0.0, sample_len=n)
        assert (got.tokens, got.avg_logprob) == (want.tokens, want.avg_logprob), n
        assert len(got.tokens) <= n


def test_speculation_is_greedy_at_temperature_0_on_one_row_only(tiny_on, monkeypatch):
    """Beam search, sampling and a backend without `head` (numpy) decode as before: no head call."""
    model = tiny_on("numba")
    calls = []
    real = model.graph.decoder.head
    monkeypatch.setattr(model.graph.decoder, "head", lambda h: calls.append(1) or real(h))
    model.decode(shared("audio", "jfk_16k.wav"), beam_size=5)
    model.decode(shared("audio", "jfk_16k.wav"), temperature=0.5, best_of=2)
    model.decode(shared("audio", "jfk_16k.wav"), temperature=0.5)
    assert calls == []
    model.decode(shared("audio", "jfk_16k.wav"), temperature=0.0)
    assert calls
    assert tiny_on("numpy").graph.decoder.head is None


def test_draft_problem_finds_a_head_that_is_not_the_step(tiny_on, monkeypatch):
    """The conformance check of decoder_step's draft and head (`checks.draft_problem`) fails a head whose logits are
    one ulp off in one column, and a draft that computes none of its columns."""
    from whisperkit.conformance.checks import draft_problem
    model = tiny_on("numba")
    clip = shared("audio", "jfk_16k.wav")
    assert draft_problem(model, str(clip)) is None
    real = model.graph.decoder.head

    def off_by_one_ulp(h):
        out = real(h)
        out[:, 220] = np.nextafter(out[:, 220], np.float32(np.inf))
        return out
    monkeypatch.setattr(model.graph.decoder, "head", off_by_one_ulp)
    assert "head" in draft_problem(model, str(clip))
    monkeypatch.setattr(model.graph.decoder, "head", real)
    step = model.graph.decoder.step
    fn = step.fn
    monkeypatch.setattr(step, "fn", lambda *a, draft=None, **k: fn(*a, **k) if draft is None else
                        fn(*a, draft=(np.empty(0, np.int64), draft[1]), **k))
    assert "own columns" in draft_problem(model, str(clip))


def test_a_bad_draft_is_one_clear_error(tiny_on):
    from whisperkit.decoding import DecodingOptions, DecodingTask
    model = tiny_on("numba")
    dec = model.graph.decoder
    features = model.graph.embed_audio(np.zeros((80, 3000), np.float32))
    cache = model.graph.new_cache(features)
    prompt = np.asarray([DecodingTask(model.graph, model.tokenizer, DecodingOptions()).initial_tokens], np.int64)
    n = model.dims.n_text_state
    with pytest.raises(ValueError, match="draft columns must be a 1-d integer array"):
        dec(prompt, cache, 0, None, draft=(np.asarray([model.dims.n_vocab]), np.empty((1, n), np.float32)))
    with pytest.raises(ValueError, match=r"draft hidden must be a C-contiguous float32 \(1, 384\) array"):
        dec(prompt, cache, 0, None, draft=(np.arange(10), np.empty((2, n), np.float32)))
    with pytest.raises(ValueError, match=r"head: rows must be \(rows, 384\)"):
        dec.head(np.zeros((1, 10), np.float32))
