"""The graph on the NumPy reference against openai-whisper's own numbers (../shared/golden)."""
import numpy as np
import pytest

from helpers import shared

# openai-whisper ran in float32 on PyTorch; we run float32 on NumPy's BLAS.  Summation order
# differs, so the encoder output (values up to ~10) and the logits (up to ~30) differ in the last
# bits, well inside the bound of 1e-3.
GOLDEN_ATOL = 1e-3


def test_encoder_output_matches_openai_whisper(tiny_numpy):
    mel = np.load(shared("golden", "jfk_mel.npy"))
    features = tiny_numpy.embed_audio(mel[None])
    expected = np.load(shared("golden", "jfk_encoder_out.npy"))
    assert features.shape == (1,) + expected.shape and features.dtype == np.float32
    assert np.abs(features[0] - expected).max() <= GOLDEN_ATOL


def test_logits_after_sot_match_openai_whisper(tiny_numpy):
    mel = np.load(shared("golden", "jfk_mel.npy"))
    features = tiny_numpy.embed_audio(mel[None])
    logits = tiny_numpy.logits([[tiny_numpy.tokenizer.sot]], features)
    expected = np.load(shared("golden", "jfk_logits_after_sot.npy"))
    assert logits.shape == (1, 1, expected.shape[0]) and logits.dtype == np.float32
    assert np.abs(logits[0, 0] - expected).max() <= GOLDEN_ATOL


def test_kv_cache_step_equals_full_recompute(tiny_numpy):
    """Feeding tokens one at a time through the cache gives the logits of one full pass."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((1, 1500, 384)).astype(np.float32)
    tokens = np.array([[50257, 50362, 843, 523, 616, 5891]])
    full = tiny_numpy.logits(tokens, features)  # (1, 6, n_vocab), no cache reuse
    g = tiny_numpy.graph
    cache = g.new_cache(features)
    stepped = [g.decoder(tokens[:, :2], cache, 0, [0, 1])]
    for i in range(2, tokens.shape[1]):
        stepped.append(g.decoder(tokens[:, i:i + 1], cache, i))
    stepped = np.concatenate(stepped, axis=1)
    np.testing.assert_allclose(stepped, full, atol=1e-4)  # same math, different GEMM shapes


def test_beams_share_cross_kv_and_a_backend_may_decline(tiny_numpy):
    """A cache for 3 beams of one audio keeps one cross K/V row, its steps equal 3 separate audios'
    (the old layout), and a backend with shared_cross_kv False receives one cross row per decoder row."""
    from whisperkit.backend import Ops
    from whisperkit.backends.numpy_backend import NumpyBackend
    from whisperkit.model import WhisperGraph

    rng = np.random.default_rng(1)
    features = rng.standard_normal((1, 1500, 384)).astype(np.float32)
    tokens = np.array([[50257, 50362], [50257, 843], [50257, 523]])
    g = tiny_numpy.graph
    shared_cache = g.new_cache(features, group=3)
    assert shared_cache.cross_k[0].shape[0] == 1 and shared_cache.k[0].shape[0] == 3
    separate = g.new_cache(np.repeat(features, 3, axis=0))
    assert separate.cross_k[0].shape[0] == 3
    a, b = g.decoder(tokens, shared_cache, 0, [0, 1]), g.decoder(tokens, separate, 0, [0, 1])
    assert a.shape == b.shape == (3, 2, g.dims.n_vocab)
    assert np.abs(a - b).max() <= 1e-4  # the same math; only the grouping of the cross-attention GEMMs differs

    seen = []

    class PerRow(NumpyBackend):
        name = "per-row"
        shared_cross_kv = False

        def decoder_layer(self, x, w, k_cache, v_cache, cross_k, cross_v, offset):
            seen.append((x.shape[0], cross_k.shape[0]))
            return super().decoder_layer(x, w, k_cache, v_cache, cross_k, cross_v, offset)

    from whisperkit.weights import resolve_model
    per_row = WhisperGraph(Ops(PerRow(), NumpyBackend()), g.dims, resolve_model("tiny.en").tensors)
    c = per_row.new_cache(features, group=3)
    out = per_row.decoder(tokens, c, 0, [0, 1])
    assert seen and all(s == (3, 3) for s in seen)
    assert np.abs(out - a).max() <= 1e-4


def test_kv_cache_reorder_moves_only_the_filled_prefix_of_rows_that_change():
    """Beam search's reorder: row i takes old row index[i] over the filled positions (rows may swap and
    repeat); positions past `filled` stay as they were."""
    from types import SimpleNamespace

    from whisperkit.model import KVCache

    c = KVCache(SimpleNamespace(n_text_layer=2, n_text_ctx=8, n_text_state=3), batch=5, group=5)
    rng = np.random.default_rng(0)
    c.k[:], c.v[:] = rng.standard_normal(c.k.shape), rng.standard_normal(c.v.shape)
    k0, v0 = c.k.copy(), c.v.copy()
    index = np.array([1, 0, 0, 3, 2])
    c.reorder(index, 5)
    np.testing.assert_array_equal(c.k[:, :, :5], k0[:, index, :5])
    np.testing.assert_array_equal(c.v[:, :, :5], v0[:, index, :5])
    np.testing.assert_array_equal(c.k[:, :, 5:], k0[:, :, 5:])
    np.testing.assert_array_equal(c.v[:, :, 5:], v0[:, :, 5:])


def test_kv_cache_reorder_copies_from_where_rows_part_and_gives_the_full_copy():
    """A beam search's prompt (spread_from) and the steps its beams shared are not copied again when rows move: the
    caches after random steps and reorders are those of copying every filled position, and a prompt position
    changed behind the cache's back stays changed."""
    from types import SimpleNamespace

    from whisperkit.model import KVCache

    dims = SimpleNamespace(n_text_layer=2, n_text_ctx=40, n_text_state=3)
    rng = np.random.default_rng(1)
    for trial in range(20):
        c, one = KVCache(dims, batch=6, group=3), KVCache(dims, batch=2)
        one.k[:, :, :4], one.v[:, :, :4] = rng.standard_normal((2, 2, 4, 3)), rng.standard_normal((2, 2, 4, 3))
        c.spread_from(one, 4)  # two audios' prompts of 4 tokens, three beams each
        full_k, full_v = c.k.copy(), c.v.copy()
        for filled in range(5, 30):
            c.wrote(filled - 1)  # a step writes one position of every row
            c.k[:, :, filled - 1] = full_k[:, :, filled - 1] = rng.standard_normal((2, 6, 3))
            c.v[:, :, filled - 1] = full_v[:, :, filled - 1] = rng.standard_normal((2, 6, 3))
            # beams move within their audio's rows, often to the best one
            index = np.concatenate([a * 3 + rng.choice(3, 3, p=[0.6, 0.3, 0.1]) for a in range(2)])
            c.reorder(index, filled)
            full_k[:, :, :filled], full_v[:, :, :filled] = full_k[:, index, :filled], full_v[:, index, :filled]
            np.testing.assert_array_equal(c.k, full_k, err_msg=f"trial {trial}, {filled} filled")
            np.testing.assert_array_equal(c.v, full_v, err_msg=f"trial {trial}, {filled} filled")
    c.k[:, 0, 2] = 7.0  # behind the cache's back: the prompt is known to be equal in every row of an audio
    c.reorder(np.array([0, 0, 0, 3, 4, 5]), 29)
    assert (c.k[:, 0, 2] == 7.0).all() and (c.k[:, 1:3, 2] != 7.0).all()


def test_kv_cache_select_keeps_the_caches_c_contiguous():
    """Rows leaving a batch must not leave caches a backend has to copy at every later step."""
    from whisperkit.model import KVCache
    from whisperkit.weights.layout import ModelDimensions
    dims = ModelDimensions(n_mels=80, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=1,
                           n_vocab=10, n_text_ctx=5, n_text_state=8, n_text_head=2, n_text_layer=2)
    c = KVCache(dims, batch=4)
    c.k[:] = np.arange(c.k.size, dtype=np.float32).reshape(c.k.shape)
    c.cross_k = np.arange(2 * 4 * 6 * 8, dtype=np.float32).reshape(2, 4, 6, 8)
    c.cross_v = c.cross_k + 1
    want_k, want_cross = c.k[:, [0, 2]].copy(), c.cross_k[:, [0, 2]].copy()
    before = (c.k, c.v, c.cross_k, c.cross_v)
    c.select(np.array([0, 2]))
    for a, old in zip((c.k, c.v, c.cross_k, c.cross_v), before):
        assert a.flags.c_contiguous and a.shape[1] == 2
        assert np.shares_memory(a, old)  # moved within its own memory: dropping rows allocates nothing
    np.testing.assert_array_equal(c.k, want_k)
    np.testing.assert_array_equal(c.cross_k, want_cross)
    c.select(np.array([1]), filled=3)  # only the filled positions are moved (the decoder writes the rest first)
    np.testing.assert_array_equal(c.k[:, :, :3], want_k[:, [1], :3])
    np.testing.assert_array_equal(c.cross_k, want_cross[:, [1]])
    assert c.k.flags.c_contiguous and c.k.shape == (2, 1, 5, 8)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_kv_cache_pages_appear_only_where_written():
    """The self-attention caches of 5 beams on tiny (2 x 13 MiB) take memory only for the positions written,
    also after a large free has raised glibc's mmap threshold (then np.zeros clears, and so touches, it all)."""
    import os
    from whisperkit.model import KVCache, ModelDimensions
    if not os.path.exists("/proc/self/status"):
        import pytest
        pytest.skip("needs Linux's /proc to read the resident set")
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                           n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)
    big = np.ones(40 << 18, np.float32)  # 40 MiB, freed: glibc's mmap threshold rises to its size
    del big
    before = _rss_kib()
    cache = KVCache(dims, batch=5, group=5)
    cache.k[:, :, :20] = 1.0  # 20 decoded positions of every row and layer
    cache.v[:, :, :20] = 1.0
    grown = _rss_kib() - before
    full = (cache.k.nbytes + cache.v.nbytes) // 1024
    assert full > 26_000 and grown < full // 4, f"cache of {full} KiB made the process grow by {grown} KiB"
    assert cache.k.flags.c_contiguous and cache.k.flags.writeable and cache.k.dtype == np.float32
    assert not cache.k[:, :, 20:].any()


def test_token_embeddings_are_summed_in_float32(tiny_numpy, tiny_weights):
    """openai-whisper's float32 model adds the widened tables in float32; adding the stored float16 tables as
    they are would round every sum to float16."""
    emb = tiny_weights.tensors["decoder.token_embedding.weight"]
    pos = tiny_weights.tensors["decoder.positional_embedding"]
    assert emb.dtype == pos.dtype == np.float16  # the shipped checkpoint
    tokens = np.array([[50257, 50362, 843, 523, 616, 5891]])
    got = tiny_numpy.graph.decoder.embed(tokens, slice(0, 6))
    want = emb[tokens].astype(np.float32) + pos[:6].astype(np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert not np.array_equal(got, (emb[tokens] + pos[:6]).astype(np.float32))


def test_cross_kv_of_the_same_audio_is_computed_once(tiny_numpy):
    """The cross K/V of one audio are kept with a copy of its features: the same features again (another object
    with the same values: the fallback's next attempt, word timing, the window after the language detection) take
    them as they are; features changed in place, or a batch of several audios, are computed anew."""
    graph = tiny_numpy.graph
    rng = np.random.default_rng(11)
    feats = rng.standard_normal((1, 1500, 384)).astype(np.float32)
    first = graph.new_cache(feats)
    again = graph.new_cache(feats.copy())
    assert again.cross_k is first.cross_k and again.cross_v is first.cross_v
    fresh = first.cross_k.copy()
    feats[0, 7, 3] += 1.0  # the same object, other values
    changed = graph.new_cache(feats)
    assert changed.cross_k is not first.cross_k
    assert not np.array_equal(changed.cross_k, fresh)
    np.testing.assert_array_equal(first.cross_k, fresh)  # the kept arrays were not written over
    two = np.concatenate([feats, feats])
    a, b = graph.new_cache(two), graph.new_cache(two)
    assert a.cross_k is not b.cross_k  # a batch's rows may be compacted in place: never kept
    np.testing.assert_array_equal(a.cross_k, b.cross_k)
    # the reference's GEMMs are OpenBLAS's, whose rounding may depend on the number of rows
    np.testing.assert_allclose(a.cross_k[:, :1], changed.cross_k, rtol=1e-5, atol=1e-5)


def test_cross_kv_are_kept_within_a_call_not_across_calls(tiny_on):
    """set_audio keeps one audio's cross K/V: the same features decoded again within a call (the fallback's next
    attempt, word timing) take them, but each transcription computes its own, as a new file's would be (a bench
    repeating one clip must not time the kept ones).  numba folds the K/V projection into a greedy step's
    cross-attention (the contract's decoder_step `audio_fold`): the K/V are made only when a step needs them."""
    model = tiny_on("numba")
    decoder = model.graph.decoder
    assert decoder._fold is not None
    calls, laid = [], []
    first, direct = decoder.cross_kv[0], decoder._fold.cross
    decoder.cross_kv[0] = lambda x: calls.append(x.shape) or first(x)
    decoder._fold.cross = lambda x: laid.append(x.shape) or direct(x)
    try:
        feats = np.random.default_rng(3).standard_normal((1, 1500, 384)).astype(np.float32)
        model.graph.forget_audio()
        a, b = model.graph.new_cache(feats), model.graph.new_cache(feats.copy())
        assert a.cross is b.cross and not calls  # equal features: one window state, its K/V not made yet
        assert a.cross_k is b.cross_k and len(calls) == 1  # made once, at the first use
        model.graph.new_cache(feats + 1).cross_k
        assert len(calls) == 2
        calls.clear()
        for _ in range(2):
            model.transcribe(shared("audio", "jfk_16k.wav"), temperature=0.0)
        assert not calls  # greedy: every step folds, the window never makes its K/V
        assert not laid
        for _ in range(2):
            model.transcribe(shared("audio", "jfk_16k.wav"), temperature=0.0, beam_size=5)
        # 5 beams read the K/V's layout, made from the features (the fold's `cross`): jfk is one window, one
        # computation per transcription, and no K/V arrays
        assert len(laid) == 2 and not calls
    finally:
        decoder.cross_kv[0], decoder._fold.cross = first, direct


def test_a_long_prompt_lays_out_the_cross_kv_once_from_the_features(tiny_on):
    """A greedy window's prompt of more rows than the fold takes (a later window, prompted with the text before it)
    reads the K/V's layout: it is made at that step, once, from the features (the fold's `cross`), and no K/V arrays are
    made; the one-token steps after it fold.  Once something makes the K/V (a word-timing pass), they are laid out
    with them."""
    model = tiny_on("numba")
    decoder = model.graph.decoder
    layout, direct, calls, laid = decoder._cross_layout, decoder._fold.cross, [], []
    decoder._cross_layout = lambda k, v: calls.append(k.shape) or layout(k, v)
    decoder._fold.cross = lambda x: laid.append(x.shape) or direct(x)
    try:
        model.graph.forget_audio()
        cache = model.graph.new_cache(np.random.default_rng(4).standard_normal((1, 1500, 384)).astype(np.float32))
        prompt = np.arange(decoder._fold.rows + 6)[None, :] + 1000
        decoder(prompt, cache, 0)
        assert len(laid) == 1 and not calls and cache.cross.k is None
        decoder(np.array([[1000]]), cache, prompt.shape[1])
        assert len(laid) == 1 and not calls
        cache.cross.get()  # the K/V made: laid out with them, and the steps take that layout
        assert len(calls) == 1
        decoder(prompt[:, :2], cache, 0)
        assert len(calls) == 1 and len(laid) == 1
    finally:
        decoder._cross_layout, decoder._fold.cross = layout, direct


@pytest.mark.parametrize("shape", [(1, 1500, 384), (2, 1500, 384), (1, 100, 384), (1, 7, 384)])
def test_the_cross_layout_from_the_features_is_the_kv_layout_bit_for_bit(tiny_on, shape):
    """numba's fold `cross` makes the K/V's layout from the features with the linear's own products (W_k's rows and the
    features' swapped in each FMA, the same sums in the same order): what laying out the projected K/V gives, bit for
    bit, so a beam search decodes as it did with the K/V (keys past the window's end are zeros in both)."""
    decoder = tiny_on("numba").graph.decoder
    feats = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    want = decoder._cross_layout(*decoder._project(feats, [None]))
    got = decoder._fold.cross(feats)
    assert got.n_keys == want.n_keys == shape[1]
    for a, b in ((got.k, want.k), (got.v, want.v)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
