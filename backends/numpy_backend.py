"""The NumPy reference backend: the executable specification of every op in the contract.

Plain and readable first, float32, fast only where NumPy makes it free (BLAS matmuls, no Python
loops over tokens or heads).  Every other backend is measured against these functions.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from whisperkit import model
from whisperkit.backend import Backend, DecoderStepWeights, Ops, bind_group, check_stem, hookimpl, weight_group
from whisperkit.contract import LAYER_NORM_EPS, int8_block, quantize_int8, quantize_rows_int8
from whisperkit.token_decoders import log_softmax, logsumexp, top_k

# Coefficients of the erfc approximation of Numerical Recipes (2nd ed., sec. 6.2, "erfcc"),
# fractional error below 1.2e-7 for every argument >= 0 -- i.e. within about one float32 ulp.
ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
         0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def erfc_nonneg(z: np.ndarray) -> np.ndarray:
    """erfc(z) for float64 z >= 0 with relative error < 1.2e-7.  Overwrites z."""
    t = 0.5 * z
    t += 1.0
    np.reciprocal(t, out=t)
    r = t * ERFC_COEFFS[-1]
    for c in ERFC_COEFFS[-2:0:-1]:  # Horner's rule, in place to keep the temporaries few
        r += c
        r *= t
    r += ERFC_COEFFS[0]
    z *= z
    r -= z
    np.exp(r, out=r)
    r *= t
    return r


def _split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    b, n, d = x.shape
    return x.reshape(b, n, n_head, d // n_head).transpose(0, 2, 1, 3)  # (batch, n_head, n, d_head)


class NumpyBackend(Backend):
    name = "numpy"
    version = np.__version__
    description = "reference: NumPy with its BLAS"
    auto_rank = 0  # the slowest, and always there: what `auto` falls back to
    compute_types = ("float32", "int8")  # the reference defines every compute type
    thread_safe = True  # every op allocates its own outputs; nothing is shared between calls
    padded_steps = True
    shared_cross_kv = True

    # ---- fine ops -------------------------------------------------------------------------
    def prepare_linear(self, weight, bias=None):
        return SimpleNamespace(weight=np.asarray(weight, np.float32), bias=None if bias is None else np.asarray(bias, np.float32))

    def prepare_linear_int8(self, weight, bias=None):
        q, scale = quantize_int8(weight)  # the contract's scheme: held as int8, one scale per output channel
        return SimpleNamespace(weight=None, q=q, scale=scale, block=int8_block(q.shape[1]),
                               bias=None if bias is None else np.asarray(bias, np.float32))

    def linear_int8(self, x, w):
        """The contract's int8 linear.  Each block's dot product of integers in [-127, 127] is below 2**24
        (128 * 127 * 127), so float32 products and sums (BLAS) give it exactly."""
        n_out, n_in = w.q.shape
        x8, xs = quantize_rows_int8(np.asarray(x, np.float32).reshape(-1, n_in), w.block)  # (rows, blocks, B), (rows, blocks)
        w8 = w.q.astype(np.float32).reshape(n_out, -1, w.block)  # widened for this call only
        y = np.zeros((x8.shape[0], n_out), np.float32)
        for b in range(x8.shape[1]):
            y += np.matmul(x8[:, b], w8[:, b].T) * xs[:, b, None]
        y *= w.scale
        if w.bias is not None:
            y += w.bias
        return y.reshape(np.shape(x)[:-1] + (n_out,))

    def linear(self, x, w):
        if w.weight is None:
            return self.linear_int8(x, w)
        y = np.matmul(x, w.weight.T)  # (..., n_out)
        if w.bias is not None:
            y += w.bias
        return y

    def prepare_conv1d(self, weight, bias, stride, padding):
        return SimpleNamespace(weight=np.asarray(weight, np.float32), bias=np.asarray(bias, np.float32), stride=int(stride), padding=int(padding))

    def conv1d(self, x, w):
        c_out, c_in, k = w.weight.shape
        b, _, t = x.shape
        xp = np.pad(x, ((0, 0), (0, 0), (w.padding, w.padding)))  # (batch, c_in, t + 2 * padding)
        t_out = (t + 2 * w.padding - k) // w.stride + 1
        y = np.zeros((b, c_out, t_out), np.float32)
        for tap in range(k):  # one GEMM per kernel tap
            y += np.matmul(w.weight[:, :, tap], xp[:, :, tap: tap + w.stride * (t_out - 1) + 1: w.stride])
        y += w.bias[:, None]
        return y

    def prepare_layer_norm(self, weight, bias):
        return SimpleNamespace(weight=np.asarray(weight, np.float32), bias=np.asarray(bias, np.float32))

    def layer_norm(self, x, w):
        mean = x.mean(axis=-1, keepdims=True)
        xc = x - mean
        var = np.mean(xc * xc, axis=-1, keepdims=True)
        return (xc / np.sqrt(var + np.float32(LAYER_NORM_EPS))) * w.weight + w.bias

    def log_softmax(self, x):
        return log_softmax(x)

    def logsumexp(self, x):
        return logsumexp(x)

    def top_k(self, x, k):
        return top_k(np.asarray(x, np.float32), int(k))

    def gelu(self, x):
        # 0.5 * x * (1 + erf(x / sqrt 2)) = x * (1 - erfc(x / sqrt 2) / 2) for x >= 0, x * erfc(|x| / sqrt 2) / 2 below:
        # written with erfc so the negative tail keeps its relative precision.
        x64 = np.asarray(x, np.float64).reshape(-1)  # 1-D, so 0-d inputs work with the in-place steps
        half_erfc = erfc_nonneg(np.abs(x64) * np.sqrt(0.5))
        half_erfc *= 0.5
        np.subtract(1.0, half_erfc, out=half_erfc, where=x64 >= 0)
        half_erfc *= x64
        return half_erfc.astype(np.float32).reshape(np.shape(x))

    def attention_weights(self, q, k, n_head, causal=False, offset=0):
        d_head = q.shape[-1] // n_head
        scores = np.matmul(_split_heads(q, n_head), _split_heads(k, n_head).transpose(0, 1, 3, 2))  # (batch, n_head, n_q, n_kv)
        scores *= np.float32(d_head ** -0.5)
        if causal:
            n_q, n_kv = scores.shape[-2:]
            scores[..., np.triu(np.ones((n_q, n_kv), bool), k=offset + 1)] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        return scores

    def attention(self, q, k, v, n_head, causal=False, offset=0):
        b, n_q, d = q.shape
        p = self.attention_weights(q, k, n_head, causal, offset)  # (batch, n_head, n_q, n_kv)
        out = np.matmul(p, _split_heads(v, n_head))  # (batch, n_head, n_q, d_head)
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(b, n_q, d)

    # ---- coarse ops: the graph's block functions (whisperkit.model) on fine ops bound through the dispatcher
    def prepare(self, op, weights, ops):
        if op == "linear" and ops.compute_type == "int8":
            return self.prepare_linear_int8(**weights)
        if op == "decoder_step":  # each layer bound as decoder_layer, so a backend's own decoder_layer runs them
            float32 = ops if ops.compute_type == "float32" else Ops(ops.backend, ops.reference)  # the logits: float32 always
            return DecoderStepWeights(tuple(ops.bind("decoder_layer", **layer) for layer in weights["layers"]),
                                      ops.bind("layer_norm", weight=weights["ln_weight"], bias=weights["ln_bias"]),
                                      float32.bind("linear", weight=weights["logits_weight"], bias=None))
        if op == "encoder_stem":
            return SimpleNamespace(conv1=ops.bind("conv1d", weight=weights["conv1_weight"], bias=weights["conv1_bias"], stride=1,
                                                  padding=1),
                                   conv2=ops.bind("conv1d", weight=weights["conv2_weight"], bias=weights["conv2_bias"], stride=2,
                                                  padding=1),
                                   positional_embedding=np.asarray(weights["positional_embedding"], np.float32), ops=ops,
                                   n_mels=np.shape(weights["conv1_weight"])[1])
        if op in ("mlp_block", "encoder_layer", "decoder_layer"):
            return SimpleNamespace(block=bind_group(weight_group(op, weights), ops), ops=ops)
        return super().prepare(op, weights, ops)

    def encoder_stem(self, mel, w):
        mel = check_stem(mel, w.n_mels, w.positional_embedding.shape[0])
        return model.encoder_stem(mel.astype(np.float32, copy=False), w.conv1, w.conv2, w.positional_embedding, w.ops.gelu)

    def mlp_block(self, x, w):
        return model.mlp_block(x, w.block, w.ops.gelu)

    def encoder_layer(self, x, w):
        return model.encoder_block(x, w.block, w.ops.attention)

    def decoder_layer(self, x, w, k_cache, v_cache, cross_k, cross_v, offset, pad=None):
        return model.decoder_block(x, w.block, w.ops.attention, k_cache, v_cache, cross_k, cross_v, offset, pad=pad)

    def decoder_step(self, x, w, k_cache, v_cache, cross_k, cross_v, offset, positions, pad=None):
        return model.decoder_step(x, w, k_cache, v_cache, cross_k, cross_v, offset, positions, pad)


@hookimpl
def whisperkit_backends():
    return [NumpyBackend()]
