"""The Whisper graph, written once for every backend: every heavy op goes through the op contract."""
from __future__ import annotations

import mmap
from typing import Callable

import numpy as np

from .backend import DecoderLayerWeights, DecoderStepWeights, EncoderLayerWeights, MlpWeights, Ops, bind_group, weight_group
from .weights import layout
from .weights.layout import DECODER, ENCODER, ModelDimensions


# --------------------------------------------------------------------------- what a block computes
# openai-whisper's ResidualAttentionBlock.forward, written once.  The graph below dispatches the fused
# ops (encoder_layer, decoder_layer, mlp_block) to the backend; these functions are their reference
# (backends/numpy_backend.py runs them on weights bound as fine ops), and the word-timing pass runs
# decoder_block itself with a tap on the cross-attention.


def encoder_stem(mel, conv1, conv2, positional_embedding, gelu):
    """The encoder's input: conv1 (stride 1) and conv2 (stride 2), each with padding 1 and a GELU, then frames as rows."""
    x = gelu(conv1(mel))  # (batch, n_audio_state, n_frames)
    x = gelu(conv2(x))  # (batch, n_audio_state, n_audio_ctx)
    return np.ascontiguousarray(x.transpose(0, 2, 1)) + positional_embedding  # (batch, n_audio_ctx, n_audio_state)


def mlp_block(x, w: MlpWeights, gelu):
    return x + w.fc2(gelu(w.fc1(w.ln(x))))


def encoder_block(x, w: EncoderLayerWeights, attention):
    q, k, v = np.split(w.qkv(w.attn_ln(x)), 3, axis=-1)  # each (batch, n_ctx, n_state)
    x = x + w.out(attention(q, k, v, w.n_head))
    return w.mlp(x)


def decoder_block(x, w: DecoderLayerWeights, attention, k_cache, v_cache, cross_k, cross_v, offset, cross_tap=None,
                  pad=None):
    """Self-attention over the KV cache (this step's keys and values written into it at offset),
    cross-attention over the audio (cross_k, cross_v: one row per audio, see the contract), MLP.  ``cross_tap(q, k)``,
    if given, sees the cross-attention's queries and keys.  `pad`: left-padded rows (the contract's decoder_step)."""
    end = offset + x.shape[1]
    q, k, v = np.split(w.qkv(w.attn_ln(x)), 3, axis=-1)  # each (batch, n_q, n_state)
    k_cache[:, offset:end] = k
    v_cache[:, offset:end] = v
    if pad is None:
        a = attention(q, k_cache[:, :end], v_cache[:, :end], w.n_head, causal=True, offset=offset)
    else:
        a = padded_self_attention(attention, q, k_cache, v_cache, w.n_head, offset, pad)
    x = x + w.out(a)
    # The g = batch // batch_c rows of one audio (its beams) share its cross K/V: one block of queries.
    q = w.cross_q(w.cross_ln(x)).reshape(cross_k.shape[0], -1, x.shape[-1])  # (batch_c, g * n_q, n_state)
    if cross_tap is not None:
        cross_tap(q, cross_k)
    x = x + w.cross_out(attention(q, cross_k, cross_v, w.n_head).reshape(x.shape))
    return w.mlp(x)


def padded_self_attention(attention, q, k_cache, v_cache, n_head, offset, pad):
    """The self-attention of left-padded rows, from the contract's attention op: the rows with pad p, their
    real queries over the keys p .. (as if the row began there), their padding queries over the keys before."""
    n_q, end = q.shape[1], offset + q.shape[1]
    out = np.empty_like(q)  # (batch, n_q, n_state)
    for p in np.unique(pad):
        rows = np.flatnonzero(pad == p)
        first = min(max(int(p) - offset, 0), n_q)  # the first real query
        if first < n_q:
            out[rows, first:] = attention(q[rows, first:], k_cache[rows, p:end], v_cache[rows, p:end], n_head,
                                          causal=True, offset=offset + first - int(p))
        if first > 0:
            out[rows, :first] = attention(q[rows, :first], k_cache[rows, :offset + first], v_cache[rows, :offset + first],
                                          n_head, causal=True, offset=offset)
    return out


def decoder_step(x, w: DecoderStepWeights, k_cache, v_cache, cross_k, cross_v, offset, positions, pad=None):
    """Every decoder layer (`w.layers`: decoder_layer ops), then the final LayerNorm and the logits of
    the rows at `positions` (indices into the n_q new tokens).  Caches: (n_layer, batch, n_text_ctx, n_state).
    `pad`: left-padded rows, as the contract says."""
    more = {} if pad is None else {"pad": pad}
    for i, layer in enumerate(w.layers):
        x = layer(x, k_cache[i], v_cache[i], cross_k[i], cross_v[i], offset, **more)  # decoder_block
    x = np.ascontiguousarray(x[:, list(positions)])  # (batch, n_positions, n_state)
    return w.logits(w.ln(x))  # (batch, n_positions, n_vocab)


class AudioEncoder:
    def __init__(self, ops: Ops, dims: ModelDimensions, t: dict, consume: bool = False):
        """`consume` (`WhisperGraph`): the encoder's tensors leave `t` once prepared."""
        self.ops = ops
        stem = {f"{conv}_{k}": v for conv in ("conv1", "conv2") for k, v in layout.module_weights(t, ENCODER, conv).items()}
        self.stem = ops.bind("encoder_stem", **stem, positional_embedding=layout.param(t, ENCODER, "positional_embedding"))
        self.blocks = [ops.bind("encoder_layer", **layout.layer_kwargs(t, ENCODER, i, dims.n_audio_head))
                       for i in range(dims.n_audio_layer)]
        self.ln_post = ops.bind("layer_norm", **layout.module_weights(t, ENCODER, "ln_post"))
        if consume:  # what the backend copied (float32, int8) is then held once
            for name in [k for k in t if k.startswith(f"{ENCODER}.")]:
                del t[name]

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        x = self.stem(mel)  # (batch, n_audio_ctx, n_audio_state): encoder_stem
        for block in self.blocks:
            x = block(x)  # encoder_block, run by the backend's encoder_layer
        return self.ln_post(x)


class KVCache:
    """Self-attention keys and values of every decoder layer, preallocated for the whole context,
    plus the cross-attention keys and values of the current window.

    k, v: (n_layer, batch, n_text_ctx, n_text_state), one array each, so a whole decoding step
    (decoder_step) takes them in one argument; ``k[i]`` is layer i's cache.  cross_k, cross_v:
    (n_layer, batch // group, n_audio_ctx, n_text_state): `group` consecutive decoder rows (the beams,
    or best_of samples, of one audio) share one cross row, so a beam step reads the audio once, not once
    per beam."""

    def __init__(self, dims: ModelDimensions, batch: int, group: int = 1):
        shape = (dims.n_text_layer, batch, dims.n_text_ctx, dims.n_text_state)
        self.dims = dims
        self.k = untouched_zeros(shape)  # each row fills only the positions it decodes
        self.v = untouched_zeros(shape)
        self.cross = CrossKV()  # the window's cross K/V, set by TextDecoder.set_audio
        #: [None or (cross_k, cross_v, the backend's layout of them)]: the contract's decoder_step `cross_layout`,
        #: made with the K/V (TextDecoder._project), or at the first step over new arrays (`select`); one holder
        #: shared by every cache over the same arrays (`ungrouped`, set_audio's memo), so a window's layout is made once
        self.laid_out: list = [None]
        self.group = group
        #: the rows per audio of the decode this cache serves (`ungrouped` keeps its parent's): the contract's fold is
        #: chosen by it, so a beam search's common prompt computes what its rows would, bit for bit
        self.decode_group = group
        #: None, or int64 (batch,): row b's first pad[b] positions are left padding (prompts of different
        #: lengths in one batch; the contract's decoder_step `pad`).
        self.pad: np.ndarray | None = None
        #: int64 (batch, n_text_ctx): which computation wrote each row's position.  Rows holding the same id at a
        #: position hold the same keys and values there (one of them was copied from the other, or both from a
        #: common prompt), so `reorder` copies only from the first position where a moving row's ids differ.
        self.lineage = np.zeros((batch, dims.n_text_ctx), np.int64)
        self._next_id = 1
        self._fresh_from = 0  # positions from here on were written since `lineage` was last set

    @property
    def cross_k(self) -> np.ndarray | None:
        return self.cross.get()[0]

    @cross_k.setter
    def cross_k(self, a: np.ndarray | None) -> None:
        self.cross = CrossKV(a, self.cross.get()[1])

    @property
    def cross_v(self) -> np.ndarray | None:
        return self.cross.get()[1]

    @cross_v.setter
    def cross_v(self, a: np.ndarray | None) -> None:
        self.cross = CrossKV(self.cross.get()[0], a)

    def wrote(self, offset: int) -> None:
        """A step writes positions offset.. of every row (TextDecoder): each row its own values."""
        self._fresh_from = min(self._fresh_from, offset)

    def _stamp(self, filled: int) -> np.ndarray:
        """`lineage`, with a new id for each row and position written since it was last set."""
        lo = self._fresh_from
        if lo < filled:
            count = self.lineage.shape[0] * (filled - lo)
            self.lineage[:, lo:filled] = np.arange(self._next_id, self._next_id + count).reshape(-1, filled - lo)
            self._next_id += count
        self._fresh_from = self.lineage.shape[1]
        return self.lineage

    def reorder(self, index: np.ndarray, filled: int) -> None:
        """Select/reorder the batch rows (beam search): row i becomes old row index[i].  Beams only move
        within their own audio's group of rows, so the shared cross K/V stays as it is.  Of the rows that
        change, the self-attention cache is copied in place from the first of the `filled` positions where a
        row and its source differ (`lineage`: the prompt, and what beams decoded before they parted, stay)."""
        index = np.asarray(index)
        moved = np.flatnonzero(index != np.arange(len(index)))
        if moved.size:
            src = index[moved]
            lineage = self._stamp(filled)
            differ = np.flatnonzero((lineage[moved, :filled] != lineage[src, :filled]).any(axis=0))
            if differ.size:
                start = differ[0]
                for cache in (self.k, self.v):
                    cache[:, moved, start:filled] = cache[:, src, start:filled]  # the right side is a copy: rows may swap
            lineage[moved] = lineage[src]
            if self.pad is not None:
                self.pad = self.pad[index]

    def ungrouped(self) -> "KVCache":
        """A cache of one row per audio over the same cross K/V: what every row of a group computes alike (the
        prompt of beams that have not parted yet) runs there once, and `spread_from` copies it to the rows."""
        one = KVCache(self.dims, self.k.shape[1] // self.group)
        one.cross, one.laid_out = self.cross, self.laid_out  # the same holder: K/V made for one are made for both
        one.decode_group = self.decode_group
        one.pad = None if self.pad is None else self.pad[::self.group]
        return one

    def spread_from(self, one: "KVCache", filled: int) -> None:
        """The first `filled` positions of each row of `one` (from `ungrouped`) into every row of its group."""
        for j in range(self.group):
            self.k[:, j::self.group, :filled] = one.k[:, :, :filled]
            self.v[:, j::self.group, :filled] = one.v[:, :, :filled]
        n_audio = self.k.shape[1] // self.group  # the rows of an audio share one id per position
        ids = np.arange(self._next_id, self._next_id + n_audio * filled).reshape(n_audio, filled)
        self.lineage[:, :filled] = np.repeat(ids, self.group, axis=0)
        self._next_id += n_audio * filled
        self._fresh_from = self.lineage.shape[1]  # nothing past `filled` is written yet

    def select(self, rows: np.ndarray, filled: int | None = None) -> None:
        """Keep only these batch rows, in self-attention and cross-attention alike (rows leaving a batch).
        Only the `filled` positions of the self-attention caches are moved (default: all)."""
        rows = np.asarray(rows)
        if self.group > 1:  # rows leave one by one: give each row its own cross K/V first
            self.cross_k = np.repeat(self.cross_k, self.group, axis=1)
            self.cross_v = np.repeat(self.cross_v, self.group, axis=1)
            self.group = 1
        filled = self.k.shape[2] if filled is None else filled
        self.k, self.v = compact_rows(self.k, rows, filled), compact_rows(self.v, rows, filled)
        self.cross_k, self.cross_v = compact_rows(self.cross_k, rows), compact_rows(self.cross_v, rows)
        self.lineage = self.lineage[rows]
        if self.pad is not None:
            self.pad = self.pad[rows]


class CrossKV:
    """A window's cross-attention keys and values, (n_layer, batch_c, n_audio_ctx, n_text_state) each, shared by the
    caches over the window (`KVCache.ungrouped`, set_audio's memo).  They may be made at their first use (`make`):
    a backend that folds the K/V projection into its steps' cross-attention (the contract's decoder_step `audio`)
    takes `folded` instead, and a greedy window then never makes them (3.5 GFLOP a window on tiny)."""

    __slots__ = ("k", "v", "make", "_folded", "make_folded", "make_laid")

    def __init__(self, k=None, v=None, make: Callable | None = None, make_folded: Callable | None = None,
                 make_laid: Callable | None = None):
        self.k, self.v, self.make, self._folded, self.make_folded = k, v, make, None, make_folded
        self.make_laid = make_laid  # the backend's layout of the K/V from the features (the contract's fold `cross`)

    def get(self) -> tuple:
        if self.k is None and self.make is not None:
            self.k, self.v = self.make()
            self.make = None
        return self.k, self.v

    @property
    def foldable(self) -> bool:
        return self._folded is not None or self.make_folded is not None

    def folded(self):
        """The backend's layout of the features (the contract's `audio`), made at the first folded step: a beam
        search's window never makes it."""
        if self._folded is None and self.make_folded is not None:
            self._folded = self.make_folded()
            self.make_folded = None
        return self._folded


def untouched_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros on pages the kernel maps in at their first write (an anonymous mmap).  np.zeros is calloc:
    once glibc has raised its mmap threshold (it does after freeing a large block), calloc serves a large block
    from the heap and clears all of it, so a self-attention cache of which a transcription fills a few dozen of
    448 positions was resident in whole (26 MiB for 5 beams on tiny).  The array owns the mapping."""
    n = int(np.prod(shape, dtype=np.int64)) * 4
    if n == 0:
        return np.zeros(shape, np.float32)
    return np.frombuffer(mmap.mmap(-1, n), np.float32).reshape(shape)


def compact_rows(a: np.ndarray, rows: np.ndarray, filled: int | None = None) -> np.ndarray:
    """a[:, rows] as a C-contiguous array in a's own memory: the kept rows move forward in place, layer by layer
    ((n_layer, batch, ...) -> (n_layer, len(rows), ...)), so dropping rows allocates nothing.  Not a [:, rows]
    view: a slice before an index array is not C-contiguous, and the backends would then copy every cache at every
    step (2.7 s of 6.7 s of decoding, issue 17); not a new array: its pages would be faulted in again (cross K/V is
    18 MB a row on tiny).  Only the first `filled` positions along axis 2 are moved (the rest is never read
    before it is written).  `rows` must be increasing; `a` is no longer valid afterwards."""
    rows = np.asarray(rows)
    if not a.flags.c_contiguous or np.any(np.diff(rows) <= 0):
        return np.ascontiguousarray(a[:, rows])
    n_layer, batch, n = a.shape[0], a.shape[1], len(rows)
    flat = a.reshape(n_layer * batch, -1)  # a view: one row of one layer per line
    stop = flat.shape[1] if filled is None else filled * int(np.prod(a.shape[3:], dtype=np.int64))
    for layer in range(n_layer):
        for k, r in enumerate(rows):  # each destination comes at or before its source, and after every earlier one
            dst, src = layer * n + k, layer * batch + int(r)
            if dst != src:
                flat[dst, :stop] = flat[src, :stop]
    return flat[:n_layer * n].reshape((n_layer, n) + a.shape[2:])


class TextDecoder:
    def __init__(self, ops: Ops, dims: ModelDimensions, t: dict, reread: Callable[[], dict] | None = None,
                 consume: bool = False):
        """`reread()`, if given, gives the tensors again when the fine ops are first needed, so that the
        decoder layers' weights are not held twice (here and as the backend prepared them).  `consume`
        (`WhisperGraph`): the token embedding may leave `t` once the backend holds it its own way."""
        self.dims = dims
        self.token_embedding = layout.param(t, DECODER, "token_embedding.weight")  # (n_vocab, n_text_state)
        self.positional_embedding = layout.param(t, DECODER, "positional_embedding")  # (n_text_ctx, n_text_state)
        # float32 under every compute type (the contract): it runs once per window, not per token
        self.cross_kv = [ops.float32.bind("linear", **layout.module_weights(t, DECODER, "cross_attn.kv", i))
                         for i in range(dims.n_text_layer)]
        layer_kwargs = self._layer_kwargs(t)
        ln = layout.module_weights(t, DECODER, "ln")
        # all layers, the final LayerNorm and the logits (tied to the token embedding) as one op
        self.step = ops.bind("decoder_step", layers=tuple(layer_kwargs), ln_weight=ln["weight"],
                             ln_bias=ln["bias"], logits_weight=self.token_embedding)
        # a backend that keeps the embedding in a layout of its own gives its rows back (the contract's
        # decoder_step, `embedding_rows`): then the model holds no second copy (40 MB on tiny)
        self._embedding_rows = getattr(self.step.w, "embedding_rows", None)
        # a backend that wants the window's cross K/V in a layout of its own makes it once per window (the contract)
        self._cross_layout = getattr(self.step.w, "cross_layout", None)
        # a backend that computes few rows' cross-attention from the audio features, given the K/V projections
        # (the contract's decoder_step `audio_fold`): their windows make the K/V only for a step of more rows
        fold = getattr(self.step.w, "audio_fold", None)
        self._fold = fold([(kv["weight"], kv["bias"]) for kv in
                           (layout.module_weights(t, DECODER, "cross_attn.kv", i) for i in range(dims.n_text_layer))]) \
            if fold is not None else None
        # a backend that gives a step's final LayerNorm rows and the logits of a few columns, and the logits of such rows
        # apart (the contract's decoder_step `draft` and `head`): greedy decoding drafts tokens and verifies them together
        self.head = getattr(self.step.w, "head", None)
        if self._embedding_rows is not None:
            self.token_embedding = None
            if consume:
                t.pop(layout.module(DECODER, "token_embedding.weight")[0].canonical)
        self._reread = reread if reread is not None else (lambda: t)
        self.ops, self._fine, self._ln_weights, self._ln, self._logits = ops, None, ln, None, None
        self._cross_memo: tuple | None = None  # set_audio's last audio

    def embed(self, tokens: np.ndarray, at) -> np.ndarray:
        """Token plus positional embeddings (batch, n, n_text_state), float32: each stored value widened and one
        float32 sum, as openai-whisper's float32 model adds them (adding the float16 tables as they are rounded
        the sum to float16).  `at`: the positions, anything that indexes positional_embedding."""
        if self._embedding_rows is not None:  # the backend's rows, the positions' added in the same float32 sum
            return self._embedding_rows(tokens, self.positional_embedding[at])
        return self.token_embedding[tokens].astype(np.float32, copy=False) + self.positional_embedding[at]

    def _layer_kwargs(self, t: dict) -> list[dict]:
        return [layout.layer_kwargs(t, DECODER, i, self.dims.n_text_head) for i in range(self.dims.n_text_layer)]

    def _fine_blocks(self) -> list[DecoderLayerWeights]:
        """The decoder layers with their parts bound as fine ops, on first use (word timestamps need the
        cross-attention queries, which a fused decoder_layer keeps inside)."""
        if self._fine is None:
            kwargs = self._layer_kwargs(self._reread())
            self._fine = [bind_group(weight_group("decoder_layer", kw), self.ops) for kw in kwargs]
        return self._fine

    def forward_with_cross_attention(self, tokens: np.ndarray, cache: KVCache, layers: set[int]):
        """One pass over whole sequences (offset 0) that also returns the cross-attention probabilities
        of the given layers, each (batch, n_text_head, n_tokens, n_audio_ctx), from the backend's
        `attention_weights` op: `decoder_block` with a tap.  Returns (logits (batch, n_tokens, n_vocab),
        {layer: weights})."""
        ops, n = self.ops, tokens.shape[1]
        x = self.embed(tokens, slice(0, n))  # (batch, n, n_text_state)
        weights = {}
        for i, w in enumerate(self._fine_blocks()):
            tap = None
            if i in layers:
                def tap(q, k, i=i, n_head=w.n_head):
                    weights[i] = ops.attention_weights(q, k, n_head)
            x = decoder_block(x, w, ops.attention, cache.k[i], cache.v[i], cache.cross_k[i], cache.cross_v[i], 0, cross_tap=tap)
        if self._ln is None:
            self._ln = ops.bind("layer_norm", **self._ln_weights)
            emb = self.token_embedding if self.token_embedding is not None else \
                layout.param(self._reread(), DECODER, "token_embedding.weight")
            self._logits = ops.bind("linear", weight=emb, bias=None)
        return self._logits(self._ln(x)), weights

    def forget_audio(self) -> None:
        """Drop the cross K/V kept by set_audio (WhisperGraph.forget_audio)."""
        self._cross_memo = None

    def set_audio(self, cache: KVCache, audio_features: np.ndarray) -> None:
        """Compute the cross-attention keys and values of every layer once per window, and the backend's layout of
        them if it has one (the contract's decoder_step `cross_layout`).  One audio's are kept, with a
        copy of its features: decoding the very same features again (the temperature fallback's next attempt, the
        word timing pass, the first window after the language detection) takes them instead of computing them again
        (3.5 GFLOP a window on tiny, 9.4 on base)."""
        memo = self._cross_memo  # one read: another thread may replace it
        if memo is not None and memo[0].shape == audio_features.shape and np.array_equal(memo[0], audio_features):
            cache.cross, cache.laid_out = memo[1], memo[2]
            self._ready(cache)
            return
        self._cross_memo = None  # the last window's go before this one's are made
        if self._fold is not None:  # the K/V when a step first needs them, from a copy kept for then
            features = np.array(audio_features, np.float32, copy=True)
            laid_out, layout, direct = cache.laid_out, self._fold.layout, getattr(self._fold, "cross", None)
            cache.cross = CrossKV(make=lambda: self._project(features, laid_out), make_folded=lambda: layout(features),
                                  make_laid=(lambda: direct(features)) if direct and self._cross_layout else None)
            self._ready(cache)
        else:
            features = None
            cache.cross = CrossKV(*self._project(audio_features, cache.laid_out))
        if audio_features.shape[0] == 1:  # rows leaving a batch compact its cross K/V in place (KVCache.select);
            # one audio's rows never move, so its arrays stay as computed
            kept = features if features is not None else np.array(audio_features, np.float32, copy=True)
            self._cross_memo = (kept, cache.cross, cache.laid_out)

    def _ready(self, cache: KVCache) -> None:
        """What the cache's steps will read, made with the window rather than in a step: the features' layout when its
        steps fold (few rows per audio), else the K/V's layout (beams); what a later step needs besides is made then."""
        if self._fold is not None:
            if cache.decode_group <= self._fold.rows:
                cache.cross.folded()
            elif cache.cross.make_laid is not None:
                self._laid_from_features(cache)
            else:
                cache.cross.get()

    @staticmethod
    def _laid_from_features(cache: KVCache):
        """The backend's layout of the window's K/V, made straight from the features while no K/V arrays exist (the
        contract's fold `cross`); None when the K/V were made (a word-timing pass, rows leaving a batch)."""
        if cache.cross.k is not None or cache.cross.make_laid is None:
            return None
        if cache.laid_out[0] is None:
            cache.laid_out[0] = (None, None, cache.cross.make_laid())
        return cache.laid_out[0][2]

    def _project(self, features: np.ndarray, laid_out: list) -> tuple[np.ndarray, np.ndarray]:
        """The window's cross K/V, and the backend's layout of them into `laid_out` (the window's, not its first step's)."""
        n_layer, n = len(self.cross_kv), self.dims.n_text_state
        shape = (n_layer, features.shape[0], features.shape[1], n)
        k, v = np.empty(shape, np.float32), np.empty(shape, np.float32)
        for i, proj in enumerate(self.cross_kv):
            kv = proj(features)  # (batch, n_audio_ctx, 2 * n_text_state)
            k[i], v[i] = kv[..., :n], kv[..., n:]
        if self._cross_layout is not None:
            laid_out[0] = (k, v, self._cross_layout(k, v))
        return k, v

    def __call__(self, tokens: np.ndarray, cache: KVCache, offset: int, logit_positions=None, draft=None) -> np.ndarray:
        """tokens: (batch, n_q) at positions offset..offset+n_q-1.  Returns logits (batch, len(positions), n_vocab)
        for the positions asked (indices into the n_q new tokens; default: the last one).  draft: (columns, hidden),
        given only when `head` is not None: the contract's decoder_step `draft` (the logits of those columns, the others
        -inf or computed; the final LayerNorm's rows written into hidden)."""
        n_q = tokens.shape[1]
        if offset + n_q > self.dims.n_text_ctx:
            raise ValueError(f"decoder context overflow: {offset + n_q} tokens > n_text_ctx {self.dims.n_text_ctx}")
        positions = (-1,) if logit_positions is None else tuple(int(p) for p in logit_positions)
        cache.wrote(offset)
        at, more = slice(offset, offset + n_q), {}
        if cache.pad is not None and cache.pad.any():  # left-padded rows (DecodingTask checked Ops.padded_steps)
            pad = np.ascontiguousarray(cache.pad, np.int64)
            at = np.arange(offset, offset + n_q)[None, :]
            at = np.where(at >= pad[:, None], at - pad[:, None], at)  # a row's real tokens count from its pad: (batch, n_q)
            more = {"pad": pad}
        x = self.embed(tokens, at)  # (batch, n_q, n_text_state)
        if draft is not None:
            more["draft"] = draft
        if cache.cross.foldable and cache.decode_group * n_q <= self._fold.rows:  # an audio's query rows: few
            return self.step(x, cache.k, cache.v, None, None, offset, positions, audio=cache.cross.folded(), **more)
        laid = self._laid_from_features(cache)
        if laid is not None:  # a layout made from the features: no K/V arrays (3.5 GFLOP to make them, 18 MB on tiny)
            return self.step(x, cache.k, cache.v, None, None, offset, positions, cross=laid, **more)
        cross_k, cross_v = cache.cross.get()  # made first: making them lays them out
        if self._cross_layout is not None:
            laid = cache.laid_out[0]  # identity, not equality: KVCache replaces its cross arrays, never rewrites them
            if laid is None or laid[0] is not cross_k or laid[1] is not cross_v:
                laid = (cross_k, cross_v, self._cross_layout(cross_k, cross_v))
                cache.laid_out[0] = laid
            more["cross"] = laid[2]
        return self.step(x, cache.k, cache.v, cross_k, cross_v, offset, positions, **more)  # decoder_step


class WhisperGraph:
    """Encoder + decoder bound to one dispatcher.  Weights are prepared once, here; `reread` as in
    `TextDecoder`."""

    def __init__(self, ops: Ops, dims: ModelDimensions, tensors: dict, reread: Callable[[], dict] | None = None,
                 consume: bool = False):
        """`consume`: the caller owns `tensors` and drops it afterwards, so a tensor the backend holds in a
        layout of its own may leave the dict as soon as it is prepared (with `reread` to read it again)."""
        self.ops = ops
        self.dims = dims
        # The decoder first: with `consume`, a backend that repacks the token embedding (40 MB on tiny) lets the
        # original go before the encoder's weights are prepared (float32 copies of float16 ones on numba), so
        # the peak of loading holds one copy of each (docs/bench-results.md, issue 14).
        consume = consume and reread is not None
        self.decoder = TextDecoder(ops, dims, tensors, reread, consume)
        self.encoder = AudioEncoder(ops, dims, tensors, consume)

    def embed_audio(self, mel: np.ndarray) -> np.ndarray:
        """mel: (batch, n_mels, 3000) -> audio features (batch, n_audio_ctx, n_audio_state)."""
        mel = np.asarray(mel, np.float32)
        if mel.ndim == 2:
            mel = mel[None]
        expected = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.shape[1:] != expected:
            raise ValueError(f"mel must have shape (batch, {expected[0]}, {expected[1]}), got {mel.shape}")
        return self.encoder(mel)

    def forget_audio(self) -> None:
        """Drop the cross K/V that set_audio keeps: a transcription starts without another's (the memo serves the same
        features decoded again within one; a second transcription of the same file computes them as a new file's)."""
        self.decoder.forget_audio()

    def new_cache(self, audio_features: np.ndarray, group: int = 1) -> KVCache:
        """A cache for `group` decoder rows per audio (beams or best_of samples), sharing its cross K/V."""
        cache = KVCache(self.dims, audio_features.shape[0] * group, group)
        self.decoder.set_audio(cache, audio_features)
        return cache
