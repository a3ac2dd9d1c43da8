"""The Whisper graph, written once for every backend: every heavy op goes through the op contract."""
from __future__ import annotations

import numpy as np

from .backend import Ops
from .weights.layout import ModelDimensions


def _layer_weights(t: dict, prefix: str, n_head: int, cross: bool) -> dict:
    """The contract's keyword arguments of encoder_layer / decoder_layer for one block."""
    w = dict(
        n_head=n_head,
        attn_ln_weight=t[f"{prefix}.attn_ln.weight"], attn_ln_bias=t[f"{prefix}.attn_ln.bias"],
        qkv_weight=t[f"{prefix}.attn.qkv.weight"], qkv_bias=t[f"{prefix}.attn.qkv.bias"],
        out_weight=t[f"{prefix}.attn.out.weight"], out_bias=t[f"{prefix}.attn.out.bias"],
        mlp_ln_weight=t[f"{prefix}.mlp_ln.weight"], mlp_ln_bias=t[f"{prefix}.mlp_ln.bias"],
        fc1_weight=t[f"{prefix}.mlp.fc1.weight"], fc1_bias=t[f"{prefix}.mlp.fc1.bias"],
        fc2_weight=t[f"{prefix}.mlp.fc2.weight"], fc2_bias=t[f"{prefix}.mlp.fc2.bias"],
    )
    if cross:
        w.update(
            cross_ln_weight=t[f"{prefix}.cross_attn_ln.weight"], cross_ln_bias=t[f"{prefix}.cross_attn_ln.bias"],
            cross_q_weight=t[f"{prefix}.cross_attn.query.weight"], cross_q_bias=t[f"{prefix}.cross_attn.query.bias"],
            cross_out_weight=t[f"{prefix}.cross_attn.out.weight"], cross_out_bias=t[f"{prefix}.cross_attn.out.bias"],
        )
    return w


class AudioEncoder:
    def __init__(self, ops: Ops, dims: ModelDimensions, t: dict):
        self.ops = ops
        self.conv1 = ops.bind("conv1d", weight=t["encoder.conv1.weight"], bias=t["encoder.conv1.bias"], stride=1, padding=1)
        self.conv2 = ops.bind("conv1d", weight=t["encoder.conv2.weight"], bias=t["encoder.conv2.bias"], stride=2, padding=1)
        self.positional_embedding = t["encoder.positional_embedding"]  # (n_audio_ctx, n_audio_state)
        self.blocks = [ops.bind("encoder_layer", **_layer_weights(t, f"encoder.blocks.{i}", dims.n_audio_head, cross=False))
                       for i in range(dims.n_audio_layer)]
        self.ln_post = ops.bind("layer_norm", weight=t["encoder.ln_post.weight"], bias=t["encoder.ln_post.bias"])

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        x = self.ops.gelu(self.conv1(mel))  # (batch, n_audio_state, n_frames)
        x = self.ops.gelu(self.conv2(x))  # (batch, n_audio_state, n_audio_ctx)
        x = x.transpose(0, 2, 1) + self.positional_embedding  # (batch, n_audio_ctx, n_audio_state)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class KVCache:
    """Self-attention keys and values of every decoder layer, preallocated for the whole context,
    plus the cross-attention keys and values of the current window."""

    def __init__(self, dims: ModelDimensions, batch: int):
        shape = (batch, dims.n_text_ctx, dims.n_text_state)
        self.k = [np.zeros(shape, np.float32) for _ in range(dims.n_text_layer)]
        self.v = [np.zeros(shape, np.float32) for _ in range(dims.n_text_layer)]
        self.cross: list[tuple[np.ndarray, np.ndarray]] = []  # per layer (k, v): (batch, n_audio_ctx, n_text_state)

    def reorder(self, index: np.ndarray) -> None:
        """Select/reorder the batch rows (beam search): row i becomes old row index[i].  Beams only move
        within their own audio's group of rows, and those rows share one cross-attention K/V, so the
        cross cache is left alone."""
        self.k = [k[index] for k in self.k]
        self.v = [v[index] for v in self.v]


    def select(self, rows: np.ndarray) -> None:
        """Keep only these batch rows, in self-attention and cross-attention alike (rows leaving a batch)."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.cross = [(k[rows], v[rows]) for k, v in self.cross]


class TextDecoder:
    def __init__(self, ops: Ops, dims: ModelDimensions, t: dict):
        self.dims = dims
        self.token_embedding = t["decoder.token_embedding.weight"]  # (n_vocab, n_text_state)
        self.positional_embedding = t["decoder.positional_embedding"]  # (n_text_ctx, n_text_state)
        self.cross_kv = [ops.bind("linear", weight=t[f"decoder.blocks.{i}.cross_attn.kv.weight"], bias=t[f"decoder.blocks.{i}.cross_attn.kv.bias"])
                         for i in range(dims.n_text_layer)]
        self.blocks = [ops.bind("decoder_layer", **_layer_weights(t, f"decoder.blocks.{i}", dims.n_text_head, cross=True))
                       for i in range(dims.n_text_layer)]
        self.ln = ops.bind("layer_norm", weight=t["decoder.ln.weight"], bias=t["decoder.ln.bias"])
        self.logits_proj = ops.bind("linear", weight=self.token_embedding, bias=None)
        self.ops, self._tensors, self._fine = ops, t, None

    def _fine_ops(self):
        """The decoder layers as fine ops, bound on first use (word timestamps need the cross-attention
        queries, which a fused decoder_layer keeps inside)."""
        if self._fine is None:
            ops, t = self.ops, self._tensors
            self._fine = []
            for i in range(self.dims.n_text_layer):
                p = f"decoder.blocks.{i}"
                lin = lambda n: ops.bind("linear", weight=t[f"{p}.{n}.weight"], bias=t[f"{p}.{n}.bias"])  # noqa: E731
                ln = lambda n: ops.bind("layer_norm", weight=t[f"{p}.{n}.weight"], bias=t[f"{p}.{n}.bias"])  # noqa: E731
                self._fine.append(dict(
                    attn_ln=ln("attn_ln"), qkv=lin("attn.qkv"), out=lin("attn.out"), cross_ln=ln("cross_attn_ln"),
                    cross_q=lin("cross_attn.query"), cross_out=lin("cross_attn.out"),
                    mlp=ops.bind("mlp_block", ln_weight=t[f"{p}.mlp_ln.weight"], ln_bias=t[f"{p}.mlp_ln.bias"],
                                 fc1_weight=t[f"{p}.mlp.fc1.weight"], fc1_bias=t[f"{p}.mlp.fc1.bias"],
                                 fc2_weight=t[f"{p}.mlp.fc2.weight"], fc2_bias=t[f"{p}.mlp.fc2.bias"])))
        return self._fine

    def forward_with_cross_attention(self, tokens: np.ndarray, cache: KVCache, layers: set[int]):
        """One pass over whole sequences (offset 0) that also returns the cross-attention probabilities
        of the given layers, each (batch, n_text_head, n_tokens, n_audio_ctx), from the backend's
        `attention_weights` op.  Returns (logits (batch, n_tokens, n_vocab), {layer: weights})."""
        ops, n_head, n = self.ops, self.dims.n_text_head, tokens.shape[1]
        x = (self.token_embedding[tokens] + self.positional_embedding[:n]).astype(np.float32)  # (batch, n, n_text_state)
        weights = {}
        for i, f in enumerate(self._fine_ops()):
            q, k, v = np.split(f["qkv"](f["attn_ln"](x)), 3, axis=-1)
            x = x + f["out"](ops.attention(q, k, v, n_head, causal=True, offset=0))
            cq = f["cross_q"](f["cross_ln"](x))  # (batch, n, n_text_state)
            ck, cv = cache.cross[i]
            if i in layers:
                weights[i] = ops.attention_weights(cq, ck, n_head)
            x = x + f["cross_out"](ops.attention(cq, ck, cv, n_head))
            x = f["mlp"](x)
        return self.logits_proj(self.ln(x)), weights

    def set_audio(self, cache: KVCache, audio_features: np.ndarray) -> None:
        """Compute the cross-attention keys and values of every layer once per window."""
        cache.cross = []
        for proj in self.cross_kv:
            kv = proj(audio_features)  # (batch, n_audio_ctx, 2 * n_text_state)
            k, v = np.split(kv, 2, axis=-1)
            cache.cross.append((np.ascontiguousarray(k), np.ascontiguousarray(v)))

    def __call__(self, tokens: np.ndarray, cache: KVCache, offset: int, logit_positions=None) -> np.ndarray:
        """tokens: (batch, n_q) at positions offset..offset+n_q-1.  Returns logits (batch, len(positions), n_vocab)
        for the positions asked (indices into the n_q new tokens; default: the last one)."""
        n_q = tokens.shape[1]
        if offset + n_q > self.dims.n_text_ctx:
            raise ValueError(f"decoder context overflow: {offset + n_q} tokens > n_text_ctx {self.dims.n_text_ctx}")
        x = self.token_embedding[tokens] + self.positional_embedding[offset:offset + n_q]  # (batch, n_q, n_text_state)
        x = x.astype(np.float32, copy=False)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.k[i], cache.v[i], cache.cross[i][0], cache.cross[i][1], offset)
        positions = [-1] if logit_positions is None else list(logit_positions)
        x = self.ln(np.ascontiguousarray(x[:, positions]))  # (batch, n_positions, n_text_state)
        return self.logits_proj(x)  # (batch, n_positions, n_vocab)


class WhisperGraph:
    """Encoder + decoder bound to one dispatcher.  Weights are prepared once, here."""

    def __init__(self, ops: Ops, dims: ModelDimensions, tensors: dict):
        self.ops = ops
        self.dims = dims
        self.encoder = AudioEncoder(ops, dims, tensors)
        self.decoder = TextDecoder(ops, dims, tensors)

    def embed_audio(self, mel: np.ndarray) -> np.ndarray:
        """mel: (batch, n_mels, 3000) -> audio features (batch, n_audio_ctx, n_audio_state)."""
        mel = np.asarray(mel, np.float32)
        if mel.ndim == 2:
            mel = mel[None]
        expected = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.shape[1:] != expected:
            raise ValueError(f"mel must have shape (batch, {expected[0]}, {expected[1]}), got {mel.shape}")
        return self.encoder(mel)

    def new_cache(self, audio_features: np.ndarray) -> KVCache:
        cache = KVCache(self.dims, audio_features.shape[0])
        self.decoder.set_audio(cache, audio_features)
        return cache
