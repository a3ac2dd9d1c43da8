"""The op contract: every heavy op of the Whisper graph, written down once.

A backend implements any subset of these ops; the dispatcher (`whisperkit.backend.Ops`) runs the
rest on the NumPy reference (`whisperkit.backends.numpy_backend`), which *is* the specification:
where this text and the reference disagree, the reference is right and this text is a bug.  The
coarse ops' reference is the block math of the graph (`whisperkit.model.encoder_stem`, `encoder_block`,
`decoder_block`, `mlp_block`); `whisperkit.backend.weight_group` hands a backend their weights as
one typed group.

Conventions shared by every op
------------------------------
* Arrays are NumPy ``float32``.  Inputs may have any strides (sliced, transposed, Fortran-ordered);
  an op never writes into its inputs unless the op says so (``decoder_layer`` writes its KV cache).
  Outputs are new arrays, C-contiguous, ``float32``.
* Activations are ``(batch, n_ctx, n_state)``; ``conv1d`` works on ``(batch, channels, time)``.
* Ops with weights are used in two steps.  At model load time the dispatcher calls
  ``backend.prepare(op, weights)`` once per weight set; the backend may re-layout, pack, cast or bind
  the arrays and returns any object it likes.  At run time the op receives that object as ``w``.
  Weights are never converted per call.
* A backend may store a weight as float16 when widening it back gives the float32 array it was handed,
  bit for bit (`whisperkit.backend.exact_float16` checks this once, at prepare).  The shipped
  checkpoints are float16, so their weights qualify: products computed in float32 from the widened
  values are the same, and no tolerance changes.  A weight float16 cannot hold stays float32.
* Coarse ops (``coarse=True``) fuse several fine ops; their reference is a composition of fine ops
  through the dispatcher, so a backend that implements only fine ops still accelerates them.

Compute types (`COMPUTE_TYPES`, faster-whisper's names)
-------------------------------------------------------
* ``float32``, the default: the ops as written below.
* ``int8``, as CTranslate2's int8 on a CPU with VNNI: the weight matrices of ``linear`` (so every layer of
  the encoder and the decoder; not the logits, below) are quantized once, at prepare, per output channel and
  symmetrically (`quantize_int8`): ``scale[o] = max_i |W[o, i]| / 127`` (1 for a zero row),
  ``W8 = clip(rint(W / scale[o]), -127, 127)`` as int8.  Activations are quantized at each call, per row
  and per block of ``B = int8_block(n_in)`` inputs (128 when it divides n_in; the whole row when not even
  16 does), the same way
  (`quantize_rows_int8`).  ``linear(x)[r, o] = sum_b xs[r, b] * scale[o] * (x8[r, b] . W8[o, b]) + bias[o]``:
  each block's dot product is an exact integer, the scaling and the sum over blocks are float32.
  Biases, LayerNorms, the convolutions, attention and the embeddings stay float32 (as stored), and so does
  the logits projection of ``decoder_step`` (the token embedding, tied): quantizing it too cost 1.1 points of
  word error rate on the labelled English set (docs/bench-results.md), against 0.2 for all the rest.  The model
  also binds the decoder's cross-attention K/V projection in float32 (`Ops.float32`): it runs once per 30-s
  window, not per token, so int8 would save no decoding time, while its rounding reached the cross-attention
  of every step (the measured cost is in docs/bench-results.md).  A backend
  declares the compute types it implements (``Backend.compute_types``); an op it does not run in int8
  runs on the reference's int8 path, never in float32.

The table `OPS` below is what the registry, the conformance suite and the bench read.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Bumped when an op's signature or semantics change; a backend declaring another value is refused.
API_VERSION = 1

#: LayerNorm epsilon used by Whisper (PyTorch's default).
LAYER_NORM_EPS = 1e-5

#: The compute types, faster-whisper's names (see the module doc).
COMPUTE_TYPES = ("float32", "int8")
#: What the other names faster-whisper accepts mean here (on a CPU).
COMPUTE_TYPE_ALIASES = {"default": "float32", "auto": "float32", "int8_float32": "int8"}
#: The ops whose weights int8 quantizes: linear, and the coarse ops made of linears.
INT8_OPS = ("linear", "mlp_block", "encoder_layer", "decoder_layer", "decoder_step")


def compute_type_name(name: str) -> str:
    """A compute type given by the user -> one of COMPUTE_TYPES, or ValueError naming the choices."""
    canonical = COMPUTE_TYPE_ALIASES.get(name, name)
    if canonical not in COMPUTE_TYPES:
        choices = ", ".join(list(COMPUTE_TYPES) + list(COMPUTE_TYPE_ALIASES))
        raise ValueError(f"compute_type must be one of {choices}; got {name!r}")
    return canonical


def quantize_int8(weight):
    """The int8 scheme's weights (module doc): (out, in) -> (int8 (out, in), float32 scale (out,))."""
    import numpy as np
    w = np.asarray(weight, np.float32)
    peak = np.abs(w).max(axis=1)
    scale = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)  # rint: round half to even
    return q, scale


def int8_block(n_in: int) -> int:
    """Inputs per activation scale in int8 (module doc): the largest of 128, 64, 32, 16 dividing n_in, or
    n_in itself (one scale per row) when none does."""
    return next((b for b in (128, 64, 32, 16) if n_in % b == 0), n_in)


def quantize_rows_int8(x, block: int):
    """The int8 scheme's activations: (rows, n_in) float32 -> (x8 (rows, n_in // block, block) as float32
    integers in [-127, 127], scales (rows, n_in // block) float32)."""
    import numpy as np
    xb = np.asarray(x, np.float32).reshape(x.shape[0], -1, block)
    peak = np.abs(xb).max(axis=2)
    scale = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
    return np.clip(np.rint(xb / scale[..., None]), -127, 127), scale


@dataclass(frozen=True)
class OpSpec:
    name: str
    signature: str
    weights: tuple[str, ...]  # keyword arguments of prepare(); empty for weightless ops
    coarse: bool
    semantics: str


OPS: dict[str, OpSpec] = {}


def _op(name, signature, weights, semantics, coarse=False):
    OPS[name] = OpSpec(name, signature, tuple(weights), coarse, semantics.strip())


_op(
    "linear",
    "linear(x, w) -> y",
    ("weight", "bias"),
    """
    x: (..., n_in).  weight: (n_out, n_in) as stored in the checkpoints, bias: (n_out,) or None.
    y: (..., n_out) = x @ weight.T + bias.
    """,
)
_op(
    "conv1d",
    "conv1d(x, w) -> y",
    ("weight", "bias", "stride", "padding"),
    """
    x: (batch, c_in, t).  weight: (c_out, c_in, k), bias: (c_out,), stride and padding: int.
    y: (batch, c_out, (t + 2*padding - k) // stride + 1), the cross-correlation of PyTorch's Conv1d
    with `padding` zeros on both ends of the time axis.
    """,
)
_op(
    "layer_norm",
    "layer_norm(x, w) -> y",
    ("weight", "bias"),
    """
    x: (..., n).  weight, bias: (n,).  Over the last axis:
    y = (x - mean) / sqrt(var + 1e-5) * weight + bias, var the biased variance (as torch).
    """,
)
_op(
    "gelu",
    "gelu(x) -> y",
    (),
    """
    Elementwise, any shape: y = 0.5 * x * (1 + erf(x / sqrt(2))), the exact erf form of PyTorch's
    nn.GELU() -- not the tanh approximation.  Must not overflow for |x| up to 3e38.
    """,
)
_op(
    "log_softmax",
    "log_softmax(x) -> y",
    (),
    """
    x: (..., n), -inf allowed (the logit filters' suppressed tokens), at least one finite value per row.  Over
    the last axis: y = (x - max) - log(sum(exp(x - max))), each step in float32; -inf stays -inf.  The decode
    loop's logit filters and token decoders take every log-probability from it, once per step: for
    tiny.en, rows of 51864 (one per beam or file).
    """,
)
_op(
    "logsumexp",
    "logsumexp(x) -> y",
    (),
    """
    x: (..., n), n >= 1, -inf allowed.  Over the last axis: y = max + log(sum(exp(x - max))), each step in
    float32; a row of only -inf gives -inf.  y: (...,).  The timestamp rule's total log-probability of the
    timestamp tokens, once per step: for tiny.en, rows of 1501 (one per beam or file).
    """,
)
_op(
    "top_k",
    "top_k(x, k) -> indices",
    (),
    """
    x: (rows, n) float32, -inf allowed, no NaN; 1 <= k <= n.  indices: (rows, k) int64, the columns of each row's
    k largest values, largest first; equal values: the lower column first (the first k of a stable descending
    sort).  Exact: a backend returns the reference's indices.  Beam search takes each beam's beam_size + 1 best
    log-probabilities from it, once per step: for tiny.en, 5 rows of 51864 at beam 5.
    """,
)
_op(
    "attention",
    "attention(q, k, v, n_head, causal=False, offset=0) -> out",
    (),
    """
    q: (batch, n_q, n_state); k, v: (batch, n_kv, n_state); n_state = n_head * d_head.
    Per head h (columns h*d_head:(h+1)*d_head):  out_h = softmax(q_h @ k_h.T / sqrt(d_head) + mask) @ v_h
    with a numerically stable softmax (no overflow for any finite scores).
    causal=False: no mask.  causal=True: query i sits at absolute position offset + i and sees key j
    only if j <= offset + i (the decoder's self-attention over a KV cache holding offset + n_q keys).
    out: (batch, n_q, n_state), heads concatenated in order.
    """,
)
_op(
    "attention_weights",
    "attention_weights(q, k, n_head, causal=False, offset=0) -> p",
    (),
    """
    The softmax probabilities of `attention`: p: (batch, n_head, n_q, n_kv), each row summing to 1.
    Used for word-level timestamps (cross-attention of the alignment heads).
    """,
)
_op(
    "mlp_block",
    "mlp_block(x, w) -> y",
    ("ln_weight", "ln_bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"),
    """
    Residual MLP of a Whisper block.  x: (batch, n_ctx, n_state); fc1: (4*n_state, n_state); fc2: (n_state, 4*n_state).
    y = x + linear(gelu(linear(layer_norm(x, ln), fc1)), fc2).
    """,
    coarse=True,
)
_op(
    "encoder_stem",
    "encoder_stem(mel, w) -> x",
    ("conv1_weight", "conv1_bias", "conv2_weight", "conv2_bias", "positional_embedding"),
    """
    The encoder's input: two convolutions with GELU, then time as the row axis and the positional embedding added.
    mel: (batch, n_mels, n_frames).  conv1_weight: (n_state, n_mels, 3), conv2_weight: (n_state, n_state, 3), biases
    (n_state,).  positional_embedding: (n_ctx, n_state), n_ctx = (n_frames - 1) // 2 + 1 (1500 for Whisper's 3000).
    h = gelu(conv1d(mel, conv1, stride=1, padding=1))          # (batch, n_state, n_frames)
    h = gelu(conv1d(h, conv2, stride=2, padding=1))            # (batch, n_state, n_ctx)
    x = h.transpose(0, 2, 1) + positional_embedding             # (batch, n_ctx, n_state)
    """,
    coarse=True,
)
_op(
    "encoder_layer",
    "encoder_layer(x, w) -> y",
    ("n_head", "attn_ln_weight", "attn_ln_bias", "qkv_weight", "qkv_bias", "out_weight", "out_bias",
     "mlp_ln_weight", "mlp_ln_bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"),
    """
    One encoder block.  x: (batch, n_ctx, n_state); qkv_weight: (3*n_state, n_state), Q, K, V stacked.
    h = layer_norm(x, attn_ln); q, k, v = split(linear(h, qkv), 3, axis=-1)
    x = x + linear(attention(q, k, v, n_head), out)
    y = mlp_block(x, mlp_ln, fc1, fc2)
    """,
    coarse=True,
)
_op(
    "decoder_layer",
    "decoder_layer(x, w, k_cache, v_cache, cross_k, cross_v, offset) -> y",
    ("n_head", "attn_ln_weight", "attn_ln_bias", "qkv_weight", "qkv_bias", "out_weight", "out_bias",
     "cross_ln_weight", "cross_ln_bias", "cross_q_weight", "cross_q_bias", "cross_out_weight", "cross_out_bias",
     "mlp_ln_weight", "mlp_ln_bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"),
    """
    One decoder block step over n_q new tokens at positions offset .. offset + n_q - 1.
    x: (batch, n_q, n_state).  k_cache, v_cache: (batch, n_text_ctx, n_state), written IN PLACE at
    [:, offset:offset + n_q].  cross_k, cross_v: (batch_c, n_audio_ctx, n_state), computed once per window,
    where batch_c divides batch: the g = batch // batch_c consecutive rows of one audio (its beams) share
    one cross row, i.e. row r attends to cross row r // g.  A backend that sets
    ``Backend.shared_cross_kv = False`` receives them repeated to batch rows by the dispatcher.
    h = layer_norm(x, attn_ln); q, k, v = split(linear(h, qkv), 3, axis=-1)
    k_cache[:, offset:offset+n_q] = k;  v_cache[:, offset:offset+n_q] = v
    x = x + linear(attention(q, k_cache[:, :offset+n_q], v_cache[:, :offset+n_q], n_head, causal=True, offset=offset), out)
    x = x + linear(attention(linear(layer_norm(x, cross_ln), cross_q), cross_k, cross_v, n_head), cross_out)
    y = mlp_block(x, mlp_ln, fc1, fc2)
    pad (keyword, given only by a backend that sets ``Backend.padded_steps``): see decoder_step.
    """,
    coarse=True,
)

_op(
    "decoder_step",
    "decoder_step(x, w, k_cache, v_cache, cross_k, cross_v, offset, positions) -> logits",
    ("layers", "ln_weight", "ln_bias", "logits_weight"),
    """
    One whole decoding step: every decoder layer, the final LayerNorm and the logits, in one call.
    layers: one dict per decoder layer, each holding decoder_layer's weights (n_head, attn_ln_weight, ...).
    ln_weight, ln_bias: (n_state,), the decoder's final LayerNorm.  logits_weight: (n_vocab, n_state), the
    token embedding (Whisper ties the two).
    x: (batch, n_q, n_state), the embedded tokens at positions offset .. offset + n_q - 1.
    k_cache, v_cache: (n_layer, batch, n_text_ctx, n_state), C-contiguous float32 (as `KVCache` makes
    them), written IN PLACE at [:, :, offset:offset + n_q].  cross_k, cross_v: (n_layer, batch_c,
    n_audio_ctx, n_state), shared by the rows of one audio as in decoder_layer (always: there is no
    per-row variant of this op).  positions: a tuple of indices into the n_q new tokens (negative ones
    count from the end) whose logits are wanted.
    for i, layer in enumerate(layers): x = decoder_layer(x, layer, k_cache[i], v_cache[i], cross_k[i], cross_v[i], offset)
    logits = linear(layer_norm(x[:, positions], ln), logits_weight)      # (batch, len(positions), n_vocab)
    pad (keyword): rows of different prompt lengths in one batch, left-padded.  None (no padding), or int64
    (batch,): row b's first pad[b] cache positions hold padding.  Its query at position c >= pad[b] sees the
    keys pad[b] <= j <= c only, so the row computes what it would alone (the caller gives its tokens the
    positional embeddings 0, 1, ... from pad[b] on); a padding query (c < pad[b]) sees the keys j <= c, and
    its output is never read.  Only a backend that sets ``Backend.padded_steps = True`` is given `pad`;
    for the others, rows of different prompt lengths are decoded in separate batches.
    cross (keyword): the prepared object may offer ``cross_layout(cross_k, cross_v) -> object``, the window's
    cross K/V in a layout of the backend's own (say, by head).  A caller that has it calls it once per window,
    on the arrays it then passes, and gives what it returned as ``cross=`` to every step over those very arrays
    (the model keeps it beside its cache, `KVCache.laid_out`); the backend may then read only `cross`.  A
    backend that offers it takes ``cross=None`` (it lays the arrays out itself), and is given `cross` by no
    caller that lacks it.
    audio (keyword): the prepared object may offer ``audio_fold(cross_kv) -> fold or None``, cross_kv holding
    every layer's cross-attention K/V projection as (weight (2 n_state, n_audio_state), bias (2 n_state,)), the
    keys' rows first.  A fold has ``rows`` and ``layout(audio_features) -> object``.  A caller that has one may
    leave a window's cross K/V unmade: it calls `layout` once per window on the audio features (batch_c,
    n_audio_ctx, n_audio_state), and gives what it returned as ``audio=``, with cross_k = cross_v = None, to a
    step whose query rows per audio (batch // batch_c * n_q) are at most `rows`.  The backend then computes the
    cross-attention from the features and the projections; the result is what the K/V split(linear(audio_features,
    cross_kv)) would give, within this op's tolerance.  A fold may also offer ``cross(audio_features) -> object``:
    what ``cross_layout`` returns for those K/V, bit for bit, made without them.  A caller that has both may then give
    a step of more rows (beams) ``cross=`` that object, with cross_k = cross_v = None, and make the K/V only if
    something else needs them.
    draft (keyword): the prepared object may offer ``head(h) -> logits``: linear(h, logits_weight) (rows, n_vocab) of
    final-LayerNormed rows h (rows, n_state), each row bit for bit what this op returns for the step that made it,
    whatever the other rows.  A caller that has it may give ``draft=(columns, hidden)``: columns, a 1-d int64 array of
    vocabulary ids (empty: no logits are read); hidden, a C-contiguous float32 (batch * len(positions), n_state)
    array.  The backend writes layer_norm(x[:, positions], ln) into hidden, bit for bit the rows its logits come from,
    and returns logits whose columns `columns` are this op's and whose others are -inf or this op's.  Greedy
    decoding drafts tokens from a few columns and takes them from `head` (`decoding.DecodingTask._speculate`).
    """,
    coarse=True,
)

#: The optional `Backend.greedy_pick(logits, tokens, rules) -> (next_tokens, logprobs)`: one call for what a greedy
#: (temperature 0) decoding step does after the decoder, when its logit filters are decoding's own.  logits: (rows,
#: n_vocab) float32, masked in place; tokens: (rows, n) int64, the sequences so far; rules: `decoding.PickRules`
#: (sample_begin, the blank and suppressed token ids, whether timestamps are on, no_timestamps, timestamp_begin, eot,
#: max_initial_timestamp_index or -1).  Returns the int64 arg-max of each row after SuppressBlank, SuppressTokens and
#: ApplyTimestampRules, and its float32 log-probability: the very values those filters and GreedyDecoder compute with
#: this backend's own log_softmax and logsumexp ops (the decode loop takes it only when both run on the backend).
GREEDY_PICK = "greedy_pick"

#: The optional `Backend.beam_pick(logits, tokens, rules, k) -> (top, logprobs)`: one call for what a beam-search
#: step does after the decoder, when its logit filters are decoding's own.  logits, tokens and rules as greedy_pick's;
#: k: the candidates per row (beam_size + 1).  Returns, per row, the columns of the k largest log-probabilities
#: after SuppressBlank, SuppressTokens and ApplyTimestampRules, largest first and ties by lower column (int64, (rows,
#: k)), and those log-probabilities (float32, (rows, k)): what BeamSearchDecoder takes from this backend's own
#: log_softmax and top_k (the decode loop takes beam_pick only when those ops and logsumexp run on the backend).
BEAM_PICK = "beam_pick"

FINE_OPS = tuple(name for name, spec in OPS.items() if not spec.coarse)
COARSE_OPS = tuple(name for name, spec in OPS.items() if spec.coarse)
