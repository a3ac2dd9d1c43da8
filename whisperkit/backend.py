"""The base class every kernel backend derives from, and the dispatcher that binds ops to backends."""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple

import numpy as np

from .contract import API_VERSION, INT8_OPS, OPS, compute_type_name
from .hookspecs import hookimpl  # noqa: F401  (built-in backends import it from here)

log = logging.getLogger("whisperkit")



class Backend:
    """A kernel backend: implements any subset of the ops in `whisperkit.contract.OPS`.

    An op is implemented by a method of the op's name taking the arguments of the contract, e.g.
    ``def gelu(self, x)`` or ``def linear(self, x, w)``.  Weighted ops may define
    ``prepare_<op>(self, **weights)``, called once at load time; its result is the ``w`` handed to
    the op at run time.  Without it, ``w`` is a namespace holding the weights as given.
    """

    name: str = ""
    version: str = "0"
    api_version: int = API_VERSION
    description: str = ""
    #: True when the ops may run from several threads at once (no shared scratch state).  When
    #: False, whisperkit serialises the models that use this backend instance with one lock.
    thread_safe: bool = False
    #: True when decoder_layer takes cross K/V with one row per group of decoder rows (see the contract);
    #: when False, the dispatcher repeats them to one row per decoder row before the call.
    shared_cross_kv: bool = False

    #: True when decoder_step takes the `pad` keyword of the contract: rows of different prompt lengths,
    #: left-padded, decoded in one batch.
    padded_steps: bool = False

    #: Where ``backend="auto"`` puts this backend: the usable backend with the highest rank is picked;
    #: None: never picked by auto.  Built-ins declare theirs from the bench's measurements (README).
    auto_rank: float | None = None
    #: The compute types (`whisperkit.contract.COMPUTE_TYPES`) this backend implements.  For "int8", its
    #: ops in `contract.INT8_OPS` get the int8 scheme of the contract; `supports_compute` refines per op.
    compute_types: tuple[str, ...] = ("float32",)
    #: Optional: a greedy step's logit filters and arg-max in one call, `greedy_pick(logits, tokens, rules)`
    #: (`whisperkit.contract.GREEDY_PICK`); None: the decode loop runs its filters and GreedyDecoder.
    greedy_pick: Callable | None = None
    #: Optional: a beam step's logit filters, log_softmax and top_k in one call, `beam_pick(logits, tokens, rules, k)`
    #: (`whisperkit.contract.BEAM_PICK`); None: the decode loop runs its filters and BeamSearchDecoder's ops.
    beam_pick: Callable | None = None

    def unavailable_reason(self) -> str | None:
        """None when usable on this machine, else a sentence saying why not (missing library...).
        Cheap: it runs for every registered backend when the registry is listed or `auto` chooses."""
        return None

    def load(self) -> None:
        """Import what the kernels need (the library, the compiled module), once, when this backend is
        chosen by name or by `auto`; raise with the reason when it cannot (a failed import or compile)."""

    def implemented_ops(self) -> tuple[str, ...]:
        return tuple(op for op in OPS if callable(getattr(self, op, None)))

    def supports(self, op: str, **args: Any) -> bool:
        """Whether this backend runs `op` for these load-time arguments (weights, n_head...).

        Called at bind time; False sends that op (for this weight set) to the reference."""
        return op in self.implemented_ops()

    def supports_compute(self, op: str, compute_type: str, **args: Any) -> bool:
        """Whether this backend runs `op` in `compute_type` (for ops that int8 quantizes); False sends it
        to the reference's path for that type."""
        return compute_type in self.compute_types

    def prepare(self, op: str, weights: dict[str, Any], ops: "Ops") -> Any:
        """Turn load-time weights into what `op` receives as ``w``.  `ops` is the dispatcher, for backends
        whose coarse ops are compositions of other ops; `ops.compute_type` is the compute type to prepare
        for (int8: quantize the weight matrices of `contract.INT8_OPS` as the contract says)."""
        fn = getattr(self, "prepare_" + op, None)
        return fn(**weights) if fn is not None else SimpleNamespace(**weights)

    def set_num_threads(self, n: int) -> None:
        """Limit the backend's own thread pools to `n` threads (BLAS, OpenMP, Numba, ORT...)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.version}>"


class BoundOp:
    """An op with its prepared weights: ``bound(x, *rest)`` runs ``impl(x, w, *rest)``."""

    __slots__ = ("op", "fn", "w", "backend_name")

    def __init__(self, op: str, fn: Callable, w: Any, backend_name: str):
        self.op, self.fn, self.w, self.backend_name = op, fn, w, backend_name

    def __call__(self, x, *args, **kwargs):
        return self.fn(x, self.w, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.op} on {self.backend_name}>"


class Ops:
    """Dispatches each op to the backend under use, or to the reference where it does not support it.

    Weighted ops are bound once (`bind`); weightless ops (`gelu`, `log_softmax`, `attention`, `attention_weights`)
    are plain methods chosen at construction.  Every fallback is logged once and kept in `fallbacks`.
    """

    def __init__(self, backend: Backend, reference: Backend, compute_type: str = "float32"):
        self.backend = backend
        self.reference = reference
        self.compute_type = compute_type_name(compute_type)
        self.fallbacks: set[str] = set()
        self.bound_to: dict[str, Backend] = {}  # op -> the backend its last binding runs on
        for op, spec in OPS.items():
            if not spec.weights:
                impl = self._choose(op)
                setattr(self, op, getattr(impl, op))

    def _choose(self, op: str, **args: Any) -> Backend:
        quantized = self.compute_type != "float32" and op in INT8_OPS
        if self.backend is not self.reference and self.backend.supports(op, **args) and \
                (not quantized or self.backend.supports_compute(op, self.compute_type, **args)):
            return self.backend
        name = f"{op}[{self.compute_type}]" if quantized else op
        if self.backend is not self.reference and name not in self.fallbacks:
            self.fallbacks.add(name)
            log.info("backend %s: op %s falls back to the reference", self.backend.name, name)
        return self.reference

    @property
    def float32(self) -> "Ops":
        """This dispatcher in float32 (itself when it is): it binds what the contract keeps float32 under every
        compute type (the decoder's cross-attention K/V projection)."""
        if self.compute_type == "float32":
            return self
        if getattr(self, "_float32", None) is None:
            self._float32 = Ops(self.backend, self.reference, "float32")
            self._float32.fallbacks = self.fallbacks  # one report of what runs on the reference
        return self._float32

    @property
    def padded_steps(self) -> bool:
        """Whether the bound decoder_step takes `pad` (the contract): the backend's, when it says so; the
        reference's, when its layers (decoder_layer) run on the reference too."""
        step = self.bound_to.get("decoder_step", self.backend)
        if step is not self.reference:
            return step.padded_steps
        return self.bound_to.get("decoder_layer", self.reference) is self.reference

    def bind(self, op: str, **weights: Any) -> BoundOp:
        if op not in OPS:
            raise KeyError(f"unknown op {op!r}; the contract has {sorted(OPS)}")
        impl = self._choose(op, **weights)
        self.bound_to[op] = impl
        fn = getattr(impl, op)
        if op == "decoder_layer" and not impl.shared_cross_kv:
            fn = _with_cross_per_row(fn)
        return BoundOp(op, fn, impl.prepare(op, weights, self), impl.name)


def _with_cross_per_row(decoder_layer: Callable) -> Callable:
    """decoder_layer for a backend that wants one cross K/V row per decoder row."""
    def call(x, w, k_cache, v_cache, cross_k, cross_v, offset, **pad):
        g = x.shape[0] // cross_k.shape[0]
        if g > 1:
            cross_k, cross_v = np.repeat(cross_k, g, axis=0), np.repeat(cross_v, g, axis=0)
        return decoder_layer(x, w, k_cache, v_cache, cross_k, cross_v, offset, **pad)
    return call


# --------------------------------------------------------------------------- typed weight groups


class Linear(NamedTuple):
    """A linear layer's (or a conv's) weight and bias."""

    weight: Any
    bias: Any


class Norm(NamedTuple):
    """A LayerNorm's weight and bias."""

    weight: Any
    bias: Any


class MlpWeights(NamedTuple):
    ln: Norm
    fc1: Linear
    fc2: Linear

    def kwargs(self) -> dict:
        """The keyword arguments of ``mlp_block``."""
        return {f"{k}_{p}": getattr(getattr(self, k), p) for k in self._fields for p in ("weight", "bias")}


class EncoderLayerWeights(NamedTuple):
    n_head: int
    attn_ln: Norm
    qkv: Linear
    out: Linear
    mlp: MlpWeights


class DecoderLayerWeights(NamedTuple):
    n_head: int
    attn_ln: Norm
    qkv: Linear
    out: Linear
    cross_ln: Norm
    cross_q: Linear
    cross_out: Linear
    mlp: MlpWeights


class DecoderStepWeights(NamedTuple):
    layers: tuple  # one DecoderLayerWeights per decoder layer
    ln: Norm
    logits: Linear  # the token embedding (n_vocab, n_state); bias None


def weight_group(op: str, weights: dict[str, Any]):
    """The weights of a coarse op (the keyword arguments `prepare_<op>` receives) as one typed group:
    `MlpWeights`, `EncoderLayerWeights`, `DecoderLayerWeights` or `DecoderStepWeights`, fields named as
    in the contract."""
    w = weights
    if op == "decoder_step":
        return DecoderStepWeights(tuple(weight_group("decoder_layer", layer) for layer in w["layers"]),
                                  Norm(w["ln_weight"], w["ln_bias"]), Linear(w["logits_weight"], None))

    def pair(kind, name):
        return kind(w[f"{name}_weight"], w[f"{name}_bias"])

    if op == "mlp_block":
        return MlpWeights(pair(Norm, "ln"), pair(Linear, "fc1"), pair(Linear, "fc2"))
    mlp = MlpWeights(pair(Norm, "mlp_ln"), pair(Linear, "fc1"), pair(Linear, "fc2"))
    attn = (int(w["n_head"]), pair(Norm, "attn_ln"), pair(Linear, "qkv"), pair(Linear, "out"))
    if op == "encoder_layer":
        return EncoderLayerWeights(*attn, mlp)
    if op == "decoder_layer":
        return DecoderLayerWeights(*attn, pair(Norm, "cross_ln"), pair(Linear, "cross_q"), pair(Linear, "cross_out"), mlp)
    raise KeyError(f"{op!r} has no weight group; groups are for mlp_block, encoder_layer, decoder_layer and decoder_step")


def map_group(group, norm: Callable, linear: Callable, mlp: Callable | None = None):
    """The same group with each `Norm` replaced by ``norm(weight, bias)``, each `Linear` by
    ``linear(weight, bias)``, and the MLP by ``mlp(MlpWeights)`` (default: mapped part by part)."""
    def one(v):
        if isinstance(v, Norm):
            return norm(*v)
        if isinstance(v, Linear):
            return linear(*v)
        if isinstance(v, MlpWeights):
            return mlp(v) if mlp is not None else MlpWeights(*map(one, v))
        return v

    return type(group)(*map(one, group))


def group_arrays(group) -> tuple:
    """Every array of a group, in the contract's order (weight, bias of each part; n_head left out)."""
    out: list = []
    for v in group:
        if isinstance(v, MlpWeights):
            out.extend(group_arrays(v))
        elif isinstance(v, (Norm, Linear)):
            out.extend(v)
    return tuple(out)


# --------------------------------------------------------------------------- helpers backends share


def check_kv_step(k_cache, v_cache, offset: int, n_q: int, axis: int = 1) -> int:
    """The decoder's bound (decoder_layer; decoder_step with axis 2, on its (n_layer, batch, n_text_ctx, n_state)
    caches): positions offset .. offset + n_q - 1 must lie inside both caches along `axis`.  Returns offset as an
    int; a step outside gets one clear error instead of a broadcast failure deep inside."""
    offset = int(offset)
    size = min(k_cache.shape[axis], v_cache.shape[axis])
    if offset < 0 or offset + n_q > size:
        raise ValueError(f"decoder step: positions {offset}..{offset + n_q - 1} outside the KV cache of {size}")
    return offset


def check_stem(mel, n_mels: int, n_ctx: int) -> np.ndarray:
    """encoder_stem's input checked once for every backend: (batch, n_mels, n_frames) with (n_frames - 1) // 2 + 1 ==
    n_ctx, the positional embedding's rows (2 n_ctx frames: Whisper's 3000).  Returns mel as an array."""
    mel = np.asarray(mel)
    if mel.ndim != 3 or mel.shape[1] != n_mels or (mel.shape[2] - 1) // 2 + 1 != n_ctx:
        raise ValueError(f"encoder_stem: mel must be (batch, {n_mels}, {2 * n_ctx}) for a positional embedding of {n_ctx} "
                         f"rows; got shape {mel.shape}")
    return mel


def check_step(k_cache, v_cache, n_layer: int, offset: int, n_q: int, positions) -> tuple[int, list[int]]:
    """decoder_step's arguments checked once for every backend: caches of n_layer layers, positions offset ..
    offset + n_q - 1 inside them, and each logit position inside the n_q new tokens.  Returns (offset as an
    int, the positions counted from the start)."""
    if k_cache.shape[0] != n_layer or v_cache.shape[0] != n_layer:
        raise ValueError(f"decoder_step: caches hold {k_cache.shape[0]} layers, the model has {n_layer}")
    offset = check_kv_step(k_cache, v_cache, offset, n_q, axis=2)  # on the shapes: no view of a layer, once a step
    pos = [int(p) for p in positions]
    for p in pos:
        if not -n_q <= p < n_q:
            raise ValueError(f"decoder_step: position {p} outside the {n_q} new tokens")
    return offset, [p % n_q for p in pos]


def draft_blocks(memos: dict, draft, n_vocab: int, block: int, rows: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The contract's decoder_step `draft` = (columns, hidden) checked, for a kernel that computes logits by blocks of
    `block` columns: the sorted blocks that hold the columns, and hidden ((rows, n) float32 C).  The blocks are made
    once per columns array (a decode loop gives the same one to every step) and kept in `memos`, the prepared step's:
    id -> (columns, blocks), the object kept so that its id stays its own."""
    columns, hidden = draft
    memo = memos.get(id(columns))
    if memo is None:
        cols = np.asarray(columns)
        if cols.ndim != 1 or cols.dtype.kind not in "iu" or (cols.size and (cols.min() < 0 or cols.max() >= n_vocab)):
            raise ValueError(f"decoder_step: draft columns must be a 1-d integer array of ids in 0..{n_vocab - 1}")
        if len(memos) >= 8:  # a decode loop has one or two: more are other loops' old ones
            memos.clear()
        memo = memos[id(columns)] = (columns, np.unique(cols.astype(np.int64) // block))
    if not (isinstance(hidden, np.ndarray) and hidden.dtype == np.float32 and hidden.flags.c_contiguous
            and hidden.shape == (rows, n)):
        got = (getattr(hidden, "shape", None), getattr(hidden, "dtype", None))
        raise ValueError(f"decoder_step: draft hidden must be a C-contiguous float32 ({rows}, {n}) array; got {got}")
    return memo[1], hidden


def weight_matrices(weights: dict):
    """Every 2-d array among the weights of an op (the layers' of decoder_step too): what a backend checks when
    its kernels take only some widths (int8's blocks of 16)."""
    for v in weights.values():
        if isinstance(v, (list, tuple)):
            for item in v:
                if isinstance(item, dict):
                    yield from weight_matrices(item)
        elif np.ndim(v) == 2:
            yield np.asarray(v)


def exact_float16(a) -> np.ndarray | None:
    """``a`` as a C-contiguous float16 array when widening that back to float32 gives ``a`` bit for bit
    (the weights of the shipped fp16 checkpoints), else None.  Checked once, at prepare: a backend that
    stores such a weight as float16 and widens it in its kernels computes exactly what it would from
    the float32 array, with half the bytes to read."""
    a = np.asarray(a)
    if a.dtype == np.float16:
        return np.ascontiguousarray(a)
    if a.dtype != np.float32:
        return None
    h = a.astype(np.float16)
    with np.errstate(invalid="ignore"):
        same = np.array_equal(h.astype(np.float32).view(np.uint32), a.view(np.uint32)) if a.flags.c_contiguous \
            else np.array_equal(h.astype(np.float32), a, equal_nan=True)
    return np.ascontiguousarray(h) if same else None


def f32c(a) -> np.ndarray:
    """``a`` as a C-contiguous float32 array (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def rows_f32(x) -> np.ndarray:
    """(..., n) -> C-contiguous float32 (rows, n); a view when ``x`` already is C-contiguous float32."""
    x = np.asarray(x)
    return f32c(x).reshape(-1, x.shape[-1])


def f32c_group(group):
    """A weight group with every array C-contiguous float32."""
    return map_group(group, lambda w, b: Norm(f32c(w), f32c(b)), lambda w, b: Linear(f32c(w), f32c(b)))


class AttentionPair:
    """`attention` and `attention_weights` for a backend that runs both on one ``_attention`` kernel
    (``v`` is None and ``want_weights`` True for the weights).  The shared argument checks are here."""

    def _attention(self, q, k, v, n_head, causal, offset, want_weights):
        raise NotImplementedError

    def _checked(self, q, k, v, n_head, causal, offset, want_weights):
        d = np.shape(q)[-1]
        if d % n_head:
            raise ValueError(f"attention: n_state {d} is not a multiple of n_head {n_head}")
        return self._attention(q, k, v, n_head, bool(causal), int(offset), want_weights)

    def attention(self, q, k, v, n_head, causal=False, offset=0):
        return self._checked(q, k, v, n_head, causal, offset, False)

    def attention_weights(self, q, k, n_head, causal=False, offset=0):
        return self._checked(q, k, None, n_head, causal, offset, True)


def bind_group(group, ops: "Ops"):
    """A weight group whose parts are bound on the dispatcher: norms as layer_norm, linears as linear,
    the MLP as mlp_block (the reference's compositions run on these)."""
    return map_group(group, lambda w, b: ops.bind("layer_norm", weight=w, bias=b),
                     lambda w, b: ops.bind("linear", weight=w, bias=b),
                     lambda m: ops.bind("mlp_block", **m.kwargs()))

