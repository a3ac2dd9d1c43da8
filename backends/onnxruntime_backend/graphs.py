"""ONNX graphs of the contract's ops, built in code with `onnx.helper`.

Every graph has dynamic batch / sequence dimensions ("b", "n", ...).  Weights are never serialised into
the proto.  By default they are graph inputs (with their concrete shapes), and the backend binds them once
per weight set as OrtValues over the prepared numpy memory (IO binding): no weight is copied, and one
session serves every weight set of the same shape.

``encoder_layer`` and ``decoder_step`` instead make them constant initializers with external data
(`GraphBuilder.constant_weights`), handed to the session at its creation with
``SessionOptions.add_external_initializers`` (``add_initializer`` refuses an initializer whose data is not in
the proto).  Constants are what lets MLAS pre-pack every MatMul's B once: a bound B is packed again at every
call with M > 1, which made a 5-row beam step cost far more than a greedy one and costs the encoder's
1500-row GEMMs a few percent.  The price is a session (and ORT's packed copy of the weights) per weight set.

Imported lazily by the backend: needs `onnx`.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from whisperkit.backend import DecoderLayerWeights, DecoderStepWeights, EncoderLayerWeights, MlpWeights
from whisperkit.backends.numpy_backend import ERFC_COEFFS  # the reference's own coefficients
from whisperkit.contract import LAYER_NORM_EPS, int8_block, quantize_int8

OPSET = 20  # LayerNormalization needs >= 17; Gelu(approximate="none") needs 20
IR_VERSION = 10  # ONNX Runtime 1.17+ reads IR 10
F32 = TensorProto.FLOAT
F64 = TensorProto.DOUBLE
I64 = TensorProto.INT64


class GraphBuilder:
    """A tiny SSA helper: ``g.op("MatMul", a, b)`` returns the name of the new value."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.consts: list[onnx.TensorProto] = []
        self.weights: dict[str, np.ndarray] = {}  # name -> C-contiguous float32 array
        #: False: weights are graph inputs, bound once per weight set (one session serves every weight set of
        #: the same shape).  True: constant initializers given to the session at its creation (one session per
        #: weight set), which lets MLAS pre-pack every MatMul's B once instead of at each call.
        self.constant_weights = False
        self.rows_2d = False  # activations are (rows, features): constant linears become Gemm with the bias fused
        #: the session's thread pool spins between nodes and stops after each run (the decoder step's: backend.py)
        self.spin_pool = False
        #: compute_type int8: every linear is MatMulNBits on the contract's int8 weights (`linear_int8`)
        self.int8 = False
        self._bound: set[str] = set()
        self._n = 0
        self._prefix = ""

    def _fresh(self, hint: str) -> str:
        self._n += 1
        return f"{self._prefix}{hint}_{self._n}"

    def input(self, name: str, dims, elem=F32) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, dims))
        return name

    def output(self, value: str, name: str, dims, elem=F32) -> str:
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, elem, dims))
        return name

    def const(self, value, elem=F32, hint="c") -> str:
        arr = np.asarray(value, dtype={F32: np.float32, F64: np.float64, I64: np.int64}[elem])
        name = self._fresh(hint)
        self.consts.append(helper.make_tensor(name, elem, arr.shape, arr.ravel().tolist()))
        return name

    def weight(self, name: str, array: np.ndarray, bound: bool = False) -> str:
        """A weight (float32, C-contiguous: no copy when it already is): a constant when `constant_weights`
        and not `bound`, else a bound input."""
        self.weights[name] = np.ascontiguousarray(array, dtype=np.float32)
        if bound:
            self._bound.add(name)
        return name

    def packed(self, name: str, array: np.ndarray) -> str:
        """A constant weight kept in its own dtype (the uint8 blocks of MatMulNBits)."""
        self.weights[name] = np.ascontiguousarray(array)
        return name

    def bound_weights(self) -> dict[str, np.ndarray]:
        return {n: a for n, a in self.weights.items() if not self.constant_weights or n in self._bound}

    def constants(self) -> dict[str, np.ndarray]:
        return {n: a for n, a in self.weights.items() if self.constant_weights and n not in self._bound}

    def op(self, op_type: str, *inputs: str, n_out: int = 1, domain: str = "", **attrs):
        outs = [self._fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def branch(self, build, hint: str) -> onnx.GraphProto:
        """A subgraph for If: ``build(sub)`` adds nodes to a builder whose names cannot clash with this one's
        (outer values are used by name; its weights are this graph's) and returns the one value it outputs."""
        sub = GraphBuilder(self._fresh(hint))
        sub._prefix = sub.name + "."
        sub.weights, sub._bound, sub.constant_weights = self.weights, self._bound, self.constant_weights  # outer inputs
        sub.int8 = self.int8
        out = build(sub)
        return helper.make_graph(sub.nodes, sub.name, [], [helper.make_tensor_value_info(out, F32, None)], initializer=sub.consts)

    def key(self) -> tuple:
        """What identifies the session this graph needs: its name and every weight's name and shape."""
        return (self.name,) + tuple((n, a.shape) for n, a in self.weights.items())

    def model(self) -> onnx.ModelProto:
        winputs = [helper.make_tensor_value_info(n, F32, a.shape) for n, a in self.bound_weights().items()]
        graph = helper.make_graph(self.nodes, self.name, self.inputs + winputs, self.outputs,
                                  initializer=self.consts + [_external(n, a) for n, a in self.constants().items()])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="whisperkit")
        m.ir_version = IR_VERSION
        return m


def _external(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initializer whose data lives outside the proto; the session is given it with
    ``SessionOptions.add_external_initializers`` (the only way to hand ORT a constant without serialising it)."""
    t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape,
                    data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "whisperkit-weight"), ("offset", "0"), ("length", str(array.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


# ---- building blocks ------------------------------------------------------------------------------
def transpose_weight(weight) -> np.ndarray:
    """(n_out, n_in) -> C-contiguous float32 (n_in, n_out), in blocks of 256 rows: faster than one strided copy for
    the (51864, 384) token embedding, whose transpose is most of the load time.  A float16 weight is widened block
    by block in the same copy (0.05 s for the embedding, against 0.2-0.36 s widening it whole first: one 80 MB
    array less to write and fault in)."""
    weight = np.asarray(weight)
    if weight.dtype not in (np.float16, np.float32):
        weight = weight.astype(np.float32)
    out = np.empty(weight.shape[::-1], np.float32)
    for i in range(0, weight.shape[0], 256):
        out[:, i:i + 256] = weight[i:i + 256].T
    return out


def linear(g: GraphBuilder, x: str, weight: np.ndarray, bias, prefix: str, bound: bool = False) -> str:
    """x @ weight.T + bias with weight (n_out, n_in).

    Bound weights: MatMul against the weight transposed once here, at load time.  On the (51864, 384) logits
    projection at M == 1 that beat Gemm(transB=1) on the untransposed weight (MLAS's M == 1 kernel streams
    a (K, N) B as it is); for M > 1 MLAS packs a bound B at every call.
    Constant weights: FusedMatMul(transB=1) on the weight as given, no transpose: MLAS pre-packs B once at
    session creation from either layout (the same packed panels, so the same results as MatMul on the
    transpose), and the packed kernel is what makes a beam of 5 rows cost little more than one row.
    `bound` forces the first form in a graph of constants.  With `GraphBuilder.rows_2d` (2-d activations) a
    constant linear is one Gemm(transB=1) with the bias as C: added inside the GEMM, pre-packed alike."""
    if g.int8:
        return linear_int8(g, x, weight, bias, prefix)
    if g.constant_weights and not bound and g.rows_2d:
        inputs = [x, g.weight(prefix + ".w", weight)] + ([] if bias is None else [g.weight(prefix + ".b", bias)])
        return g.op("Gemm", *inputs, transB=1)
    if g.constant_weights and not bound:
        y = g.op("FusedMatMul", x, g.weight(prefix + ".w", weight), domain="com.microsoft", transB=1)
    else:
        y = g.op("MatMul", x, g.weight(prefix + ".wT", transpose_weight(weight), bound))
    if bias is not None:
        y = g.op("Add", y, g.weight(prefix + ".b", bias))
    return y


def layer_norm(g: GraphBuilder, x: str, weight, bias, prefix: str) -> str:
    return g.op("LayerNormalization", x, g.weight(prefix + ".g", weight), g.weight(prefix + ".b", bias),
                axis=-1, epsilon=LAYER_NORM_EPS)


def gelu_fast(g: GraphBuilder, x: str) -> str:
    """ONNX Gelu(approximate="none"): MLAS's vectorised float32 erf, x * (1 + erf(x / sqrt2)) / 2.  Absolute
    error <= 5e-7 (the float32 cancellation in 1 + erf for x < -3), i.e. torch's own float32 GELU's; within
    the conformance tolerance, and faster than `gelu_exact`."""
    return g.op("Gelu", x, approximate="none")


def gelu_exact(g: GraphBuilder, x: str) -> str:
    """The reference's gelu, evaluated the same way: float64, x * (1 - erfc(|x|/sqrt2)/2) for x >= 0 and
    x * erfc(|x|/sqrt2)/2 below, erfc by the Numerical Recipes polynomial.  Bit-equal to the reference
    (measured), at about the reference's speed: the fine `gelu` op with ``OnnxRuntimeBackend(exact_gelu=True)``."""
    xd = g.op("Cast", x, to=F64)
    one, half = g.const(1.0, F64), g.const(0.5, F64)
    z = g.op("Mul", g.op("Abs", xd), g.const(math.sqrt(0.5), F64))
    t = g.op("Reciprocal", g.op("Add", g.op("Mul", z, half), one))
    r = g.op("Mul", t, g.const(ERFC_COEFFS[-1], F64))
    for c in ERFC_COEFFS[-2:0:-1]:
        r = g.op("Mul", g.op("Add", r, g.const(c, F64)), t)
    r = g.op("Sub", g.op("Add", r, g.const(ERFC_COEFFS[0], F64)), g.op("Mul", z, z))
    half_erfc = g.op("Mul", g.op("Mul", g.op("Exp", r), t), half)
    phi = g.op("Where", g.op("Less", xd, g.const(0.0, F64)), half_erfc, g.op("Sub", one, half_erfc))
    return g.op("Cast", g.op("Mul", phi, xd), to=F32)


def split_heads(g: GraphBuilder, x: str, n_head: int, d_head: int, perm) -> str:
    """(b, n, n_head*d_head) -> transposed per `perm` from (b, n, n_head, d_head)."""
    shape = g.const([0, 0, n_head, d_head], I64)  # 0 copies the input's dim (allowzero=0)
    return g.op("Transpose", g.op("Reshape", x, shape), perm=perm)


def attention_probs(g: GraphBuilder, q: str, k: str, n_head: int, d_head: int, mask: str | None) -> str:
    qh = split_heads(g, q, n_head, d_head, [0, 2, 1, 3])  # (b, h, n_q, d_head)
    kt = split_heads(g, k, n_head, d_head, [0, 2, 3, 1])  # (b, h, d_head, n_kv)
    scores = g.op("Mul", g.op("MatMul", qh, kt), g.const(d_head ** -0.5))
    if mask is not None:
        scores = g.op("Add", scores, mask)  # (n_q, n_kv) additive mask: 0 or -inf
    return g.op("Softmax", scores, axis=-1)


def attention(g: GraphBuilder, q: str, k: str, v: str, n_head: int, d_head: int, mask: str | None,
              per_row: bool = False) -> str:
    """ORT's fused com.microsoft.MultiHeadAttention: takes q, k, v as (b, n, n_state) directly (no head
    transposes in the graph), scale 1/sqrt(d_head), the causal mask as an additive attention_bias.
    Faster than MatMul/Softmax/MatMul for the encoder's 1500x1500, and no slower at n_q = 1.
    mask: (n_q, n_kv), or with `per_row` (b or 1, n_q, n_kv), a mask per batch row (left-padded rows)."""
    inputs = [q, k, v]
    if mask is not None:
        axes = [1] if per_row else [0, 1]
        bias = g.op("Unsqueeze", mask, g.const(axes, I64))  # (1 or b, 1, n_q, n_kv), broadcast over heads
        inputs += ["", "", bias]  # bias, key_padding_mask unused
    return g.op("MultiHeadAttention", *inputs, domain="com.microsoft", num_heads=n_head, scale=d_head ** -0.5)


def attention_few_queries(g: GraphBuilder, q: str, keys, values, n_head: int, d_head: int, split: str | None = None) -> str:
    """Attention of a few queries against keys/values read where they are, in their (b, n_kv, n_state) layout.

    Every query is repeated once per head with the other heads' features zeroed, a block-diagonal
    (b, n_head * n_q, n_state) operand, so one MatMul gives every head's scores and one MatMul with V every
    head's outputs; the head's own features are kept by the same mask and a sum over heads (the zeros add
    exact zeros: the sums of per-head products).  K is the A operand of (n_kv, n_state) x (n_state,
    n_head * n_q), which MLAS streams in place (a transposed B would be repacked first).  This spends
    n_head times the FLOPs of per-head products but reads K and V once, where MultiHeadAttention first
    copies both into a heads-major layout: the better trade for one query per row or audio.
    keys/values: lists of blocks along n_kv (a cache prefix and the step's new row, never concatenated);
    with two blocks, `split` is the first block's length (an int64 (1,) value)."""
    n_state = n_head * d_head
    heads = np.zeros((n_head, 1, n_state), np.float32)
    for h in range(n_head):
        heads[h, 0, h * d_head:(h + 1) * d_head] = 1.0
    heads = g.const(heads)
    qb = g.op("Reshape", g.op("Mul", g.op("Unsqueeze", q, g.const([1], I64)), heads), g.const([0, -1, n_state], I64))
    qb_t = g.op("Transpose", qb, perm=[0, 2, 1])  # (b, n_state, n_head * n_q), small
    scores_t = [g.op("MatMul", k, qb_t) for k in keys]  # (b, n_kv_block, n_head * n_q)
    scores_t = scores_t[0] if len(keys) == 1 else g.op("Concat", *scores_t, axis=1)
    probs_t = g.op("Softmax", g.op("Mul", scores_t, g.const(d_head ** -0.5)), axis=1)
    if len(keys) == 1:
        parts = [probs_t]
    else:
        one = g.const([1], I64)
        parts = [g.op("Slice", probs_t, g.const([0], I64), split, one),
                 g.op("Slice", probs_t, split, g.const([np.iinfo(np.int64).max], I64), one)]
    outs = [g.op("FusedMatMul", p, v, domain="com.microsoft", transA=1) for p, v in zip(parts, values)]
    out = outs[0] if len(outs) == 1 else g.op("Add", *outs)  # (b, n_head * n_q, n_state)
    out = g.op("Mul", g.op("Reshape", out, g.const([0, n_head, -1, n_state], I64)), heads)
    return g.op("ReduceSum", out, g.const([1], I64), keepdims=0)  # (b, n_q, n_state)


def mlp(g: GraphBuilder, x: str, w: MlpWeights, prefix: str = "mlp") -> str:
    h = layer_norm(g, x, *w.ln, prefix + ".ln")
    h = gelu_fast(g, linear(g, h, *w.fc1, prefix + ".fc1"))
    return g.op("Add", x, linear(g, h, *w.fc2, prefix + ".fc2"))


def _qkv(g: GraphBuilder, h: str, w: EncoderLayerWeights | DecoderLayerWeights, n_state: int, prefix: str):
    qkv_w = np.asarray(w.qkv.weight, np.float32)
    qkv_b = np.asarray(w.qkv.bias, np.float32)
    # Three MatMuls rather than one + Split: each result lands where it is consumed (no Split copy).
    return [linear(g, h, qkv_w[i * n_state:(i + 1) * n_state], qkv_b[i * n_state:(i + 1) * n_state], f"{prefix}.{c}")
            for i, c in enumerate("qkv")]


def linear_int8(g: GraphBuilder, x: str, weight: np.ndarray, bias, prefix: str) -> str:
    """The contract's int8 linear as MatMulNBits: 8 bits, accuracy_level 4 (MLAS quantizes the activations
    per row and block of `block` inputs and takes int8 dot products; level 1, float32 activations, was
    12x slower than float32 here).  MatMulNBits scales blocks of `block` inputs of each output; the
    contract's one scale per output is every block's scale.  Its 8-bit weights are unsigned with a zero
    point of 128: W8 + 128."""
    q, scale = quantize_int8(weight)
    n_out, n_in = q.shape
    block = int8_block(n_in)
    blocks = (q.astype(np.int16) + 128).astype(np.uint8).reshape(n_out, n_in // block, block)
    y = g.op("MatMulNBits", x, g.packed(prefix + ".w8", blocks), g.weight(prefix + ".s8", np.repeat(scale, n_in // block)),
             domain="com.microsoft", K=n_in, N=n_out, bits=8, block_size=block, accuracy_level=4)
    if bias is not None:
        y = g.op("Add", y, g.weight(prefix + ".b", bias))
    return y


def _int8(g: GraphBuilder, int8: bool) -> GraphBuilder:
    """Set a builder for the int8 compute type: its weights constants (MatMulNBits packs them once)."""
    if int8:
        g.int8 = g.constant_weights = True
        g.name += "_int8"
    return g


# ---- one graph per op ---------------------------------------------------------------------------
def build_linear(weight, bias, int8: bool = False) -> GraphBuilder:
    g = _int8(GraphBuilder("linear" if bias is not None else "linear_nobias"), int8)
    x = g.input("x", None)  # any leading dims
    g.output(linear(g, x, weight, bias, "lin"), "y", None)
    return g


def build_conv1d(weight, bias, stride, padding) -> GraphBuilder:
    g = GraphBuilder(f"conv1d_s{int(stride)}_p{int(padding)}")
    c_out, c_in, k = np.shape(weight)
    x = g.input("x", ["b", c_in, "t"])
    y = g.op("Conv", x, g.weight("conv.w", weight), g.weight("conv.b", bias),
             kernel_shape=[k], strides=[int(stride)], pads=[int(padding), int(padding)])
    g.output(y, "y", ["b", c_out, "t_out"])
    return g


def build_encoder_stem(conv1_weight, conv1_bias, conv2_weight, conv2_bias, positional_embedding) -> GraphBuilder:
    """The contract's encoder_stem: Conv, Gelu, Conv (stride 2), Gelu, then the frames as rows and the positional
    embedding added, in one graph (no conv output crosses to NumPy, and the transpose is one pass of ORT's)."""
    g = GraphBuilder("encoder_stem")
    n_state, n_mels, _ = np.shape(conv1_weight)
    n_ctx = np.shape(positional_embedding)[0]
    x = g.input("mel", ["b", n_mels, "t"])
    for i, (w, b, stride) in enumerate(((conv1_weight, conv1_bias, 1), (conv2_weight, conv2_bias, 2)), 1):
        x = gelu_fast(g, g.op("Conv", x, g.weight(f"conv{i}.w", w), g.weight(f"conv{i}.b", b), kernel_shape=[3],
                              strides=[stride], pads=[1, 1]))
    x = g.op("Add", g.op("Transpose", x, perm=[0, 2, 1]), g.weight("positional_embedding", positional_embedding))
    g.output(x, "x", ["b", n_ctx, n_state])
    return g


def build_layer_norm(weight, bias) -> GraphBuilder:
    g = GraphBuilder("layer_norm")
    x = g.input("x", None)
    g.output(layer_norm(g, x, weight, bias, "ln"), "y", None)
    return g


def build_gelu(exact: bool) -> GraphBuilder:
    g = GraphBuilder("gelu_exact" if exact else "gelu")
    x = g.input("x", None)
    g.output(gelu_exact(g, x) if exact else gelu_fast(g, x), "y", None)
    return g


def build_log_softmax() -> GraphBuilder:
    """ONNX LogSoftmax over the last axis (MLAS's vectorised kernel): x - max - log(sum(exp(x - max)))."""
    g = GraphBuilder("log_softmax")
    x = g.input("x", None)
    g.output(g.op("LogSoftmax", x, axis=-1), "y", None)
    return g


def build_attention(n_head: int, d_state: int, causal: bool, weights_only: bool) -> GraphBuilder:
    g = GraphBuilder(f"{'attention_weights' if weights_only else 'attention'}_h{n_head}_d{d_state}{'_causal' if causal else ''}")
    d_head = d_state // n_head
    q = g.input("q", ["b", "n_q", d_state])
    k = g.input("k", ["b", "n_kv", d_state])
    mask = g.input("mask", ["n_q", "n_kv"]) if causal else None
    if weights_only:
        g.output(attention_probs(g, q, k, n_head, d_head, mask), "p", ["b", n_head, "n_q", "n_kv"])
    else:
        v = g.input("v", ["b", "n_kv", d_state])
        g.output(attention(g, q, k, v, n_head, d_head, mask), "y", ["b", "n_q", d_state])
    return g


def build_mlp_block(w: MlpWeights, int8: bool = False) -> GraphBuilder:
    g = _int8(GraphBuilder("mlp_block"), int8)
    n_state = np.shape(w.ln.weight)[0]
    g.output(mlp(g, g.input("x", ["b", "n", n_state]), w), "y", ["b", "n", n_state])
    return g


def build_encoder_layer(w: EncoderLayerWeights, int8: bool = False) -> GraphBuilder:
    """Constant (pre-packed) weights on (rows, features) activations, so that every linear is one Gemm with
    its bias added in the GEMM (no separate pass over the 1500 x n_out result); (b, n, d) only around
    MultiHeadAttention (Reshapes are views)."""
    n_state = np.shape(w.attn_ln.weight)[0]
    n_head = w.n_head
    g = _int8(GraphBuilder(f"encoder_layer_h{n_head}"), int8)
    g.constant_weights = g.rows_2d = True
    x3 = g.input("x", ["b", "n", n_state])
    shape3, rows = g.op("Shape", x3), g.const([-1, n_state], I64)
    x = g.op("Reshape", x3, rows)
    h = layer_norm(g, x, *w.attn_ln, "attn_ln")
    q, k, v = (g.op("Reshape", t, shape3) for t in _qkv(g, h, w, n_state, "attn"))
    a = g.op("Reshape", attention(g, q, k, v, n_head, n_state // n_head, None), rows)
    x = g.op("Add", x, linear(g, a, *w.out, "attn.out"))
    g.output(g.op("Reshape", mlp(g, x, w.mlp), shape3), "y", ["b", "n", n_state])
    return g


def _cross_shapes(g: GraphBuilder, cross_k: str, x: str, n_state: int):
    """Reshape targets around cross-attention: (b, n_q, d) -> (b_c, g * n_q, d), the rows of one audio as one
    block of queries against its one cross K/V row, and back to x's shape."""
    audio_rows = g.op("Slice", g.op("Shape", cross_k), g.const([0], I64), g.const([1], I64))
    return g.op("Concat", audio_rows, g.const([-1, n_state], I64), axis=0), g.op("Shape", x)


def attention_by_head(g: GraphBuilder, q: str, kt: str, vh: str, n_head: int, d_head: int) -> str:
    """Attention against keys and values laid out by head (`cross_by_head`), without a mask.
    q: (b_c, n, n_head * d_head); kt: (b_c, n_head, d_head, n_kv); vh: (b_c, n_head, n_kv, d_head).
    Each head is then a plain (n, d_head) x (d_head, n_kv) MatMul: for one query a GEMV over contiguous rows on
    every vector lane, where K in its (n_kv, n_state) rows needs the block-diagonal product of
    `attention_few_queries` (n_head times the FLOPs, a 6-wide B on 16 lanes) or MultiHeadAttention's copy of
    K and V into this layout at every call."""
    qh = split_heads(g, q, n_head, d_head, [0, 2, 1, 3])  # (b_c, n_head, n, d_head), small
    scores = g.op("MatMul", qh, kt)  # (b_c, n_head, n, n_kv)
    if not keys_scaled(d_head):
        scores = g.op("Mul", scores, g.const(d_head ** -0.5))
    out = g.op("MatMul", g.op("Softmax", scores, axis=-1), vh)  # (b_c, n_head, n, d_head)
    return g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), g.const([0, 0, n_head * d_head], I64))


def keys_scaled(d_head: int) -> bool:
    """Whether `cross_by_head` scales the keys by the attention's 1/sqrt(d_head): when that is a power of two (d_head
    64, every Whisper model), the scaling is exact wherever it is applied, and the step's scores are then a plain
    MatMul, for which MLAS takes its one-row path: a MatMul fused with the scale (ORT's MatMulScaleFusion) took the
    general one, ~196 us a layer's scores against ~100 (stop 42's session profile; one query row's scores, softmax
    and P.V 475 against 238 us, `ortscale.py`).  The two paths sum the products in different orders: the scores
    round differently, within the op's tolerance as before."""
    return math.frexp(d_head ** -0.5)[0] == 0.5


def cross_by_head(n_head: int, cross_k, cross_v):
    """The step graph's cross K/V layout (the contract's decoder_step `cross_layout`), made once per window:
    (n_layer, b_c, n_kv, n_head * d_head) -> K as (n_layer, b_c, n_head, d_head, n_kv) and V as
    (n_layer, b_c, n_head, n_kv, d_head), C-contiguous float32 copies."""
    n_layer, b_c, n_kv, n_state = np.shape(cross_k)
    d_head = n_state // n_head
    cross_k = np.asarray(cross_k, np.float32)
    kt = np.empty((n_layer, b_c, n_head, d_head, n_kv), np.float32)
    for i in range(n_layer):  # one head's (n_kv, d_head) block at a time: 2.1 ms for tiny's four layers, against
        for b in range(b_c):  # 3.7 for the one 5-d transpose (its innermost stride is a whole row)
            for h in range(n_head):
                kt[i, b, h] = cross_k[i, b, :, h * d_head:(h + 1) * d_head].T
    if keys_scaled(d_head):
        kt *= np.float32(d_head ** -0.5)  # a power of two: exact
    split = (n_layer, b_c, n_kv, n_head, d_head)
    vh = np.ascontiguousarray(np.asarray(cross_v, np.float32).reshape(split).transpose(0, 1, 3, 2, 4))
    return kt, vh


def decoder_layer(g: GraphBuilder, x: str, w: DecoderLayerWeights, k_past: str, v_past: str, cross_k: str,
                  cross_v: str, mask: str, shapes, prefix: str, step: tuple | None = None):
    """One decoder block; returns (y, k_new, v_new).  k_past/v_past: (b, offset, d), the filled cache prefix.
    step: (one_token, offset): a bool input, true for one new token per row, which takes `attention_few_queries`
    for self-attention (an If node), and the int64 offset; with `step`, the mask is (b or 1, n_q, n_kv), one per
    row (left-padded rows; one_token is then false), and cross_k, cross_v are laid out by head (`cross_by_head`)."""
    n_state = np.shape(w.attn_ln.weight)[0]
    n_head, d_head = w.n_head, n_state // w.n_head
    h = layer_norm(g, x, *w.attn_ln, prefix + "attn_ln")
    q, k_new, v_new = _qkv(g, h, w, n_state, prefix + "attn")

    def self_attention(b):
        k_all, v_all = b.op("Concat", k_past, k_new, axis=1), b.op("Concat", v_past, v_new, axis=1)
        return attention(b, q, k_all, v_all, n_head, d_head, mask, per_row=step is not None)

    if step is None:
        a = self_attention(g)
    else:  # one token sees every cached row: no mask, and no concatenated copy of the cache
        a = g.op("If", step[0], else_branch=g.branch(self_attention, "mha"), then_branch=g.branch(
            lambda b: attention_few_queries(b, q, [k_past, k_new], [v_past, v_new], n_head, d_head, step[1]), "one_token"))
    x = g.op("Add", x, linear(g, a, *w.out, prefix + "attn.out"))
    h = layer_norm(g, x, *w.cross_ln, prefix + "cross_ln")
    cq = g.op("Reshape", linear(g, h, *w.cross_q, prefix + "cross.q"), shapes[0])
    if step is None:
        a = attention(g, cq, cross_k, cross_v, n_head, d_head, None)
    else:  # cross_k, cross_v laid out by head (`cross_by_head`)
        a = attention_by_head(g, cq, cross_k, cross_v, n_head, d_head)
    a = g.op("Reshape", a, shapes[1])
    x = g.op("Add", x, linear(g, a, *w.cross_out, prefix + "cross.out"))
    return mlp(g, x, w.mlp, prefix + "mlp"), k_new, v_new


def build_decoder_layer(w: DecoderLayerWeights, int8: bool = False) -> GraphBuilder:
    """Inputs: x (b, n_q, d), the cache prefix k_past/v_past (b, offset, d), cross_k/cross_v (b_c, n_audio, d),
    mask (n_q, offset + n_q).  Outputs: y and this step's k_new/v_new (b, n_q, d), which the backend binds
    straight into the caller's cache rows [offset, offset + n_q) when that memory is contiguous."""
    n_state = np.shape(w.attn_ln.weight)[0]
    g = _int8(GraphBuilder(f"decoder_layer_h{w.n_head}"), int8)
    x = g.input("x", ["b", "n_q", n_state])
    k_past = g.input("k_past", ["b", "n_past", n_state])
    v_past = g.input("v_past", ["b", "n_past", n_state])
    cross_k = g.input("cross_k", ["b_c", "n_audio", n_state])  # one row per audio, shared by its b / b_c rows
    cross_v = g.input("cross_v", ["b_c", "n_audio", n_state])
    mask = g.input("mask", ["n_q", "n_kv"])
    y, k_new, v_new = decoder_layer(g, x, w, k_past, v_past, cross_k, cross_v, mask,
                                    _cross_shapes(g, cross_k, x, n_state), "")
    g.output(y, "y", ["b", "n_q", n_state])
    g.output(k_new, "k_new", ["b", "n_q", n_state])
    g.output(v_new, "v_new", ["b", "n_q", n_state])
    return g


def build_decoder_step(w: DecoderStepWeights, int8: bool = False) -> GraphBuilder:
    """A whole decoding step: every decoder layer, the final LayerNorm and the logits of the asked rows.

    Inputs: x (b, n_q, d); per layer i, ``k_past.i``/``v_past.i`` (b, offset, d), the filled cache prefix (for
    batch 1 the caller's cache rows themselves, bound by pointer), and ``cross_k.i``/``cross_v.i``, the window's
    cross K/V by head (`cross_by_head`: (b_c, n_head, d_head, n_audio) and (b_c, n_head, n_audio, d_head)); offset (1,) int64, the prefix length; mask (1 or b, n_q, offset + n_q), additive, read when
    one_token is false (several new tokens, or left-padded rows: the contract's `pad`);
    positions (n_pos,) int64, non-negative.  Outputs: logits (b, n_pos, n_vocab) and per layer this step's
    ``k_new.i``/``v_new.i`` (b, n_q, d), which the backend binds onto the cache rows [offset, offset + n_q)."""
    layer0 = w.layers[0]
    n_state = np.shape(layer0.attn_ln.weight)[0]
    n_vocab = np.shape(w.logits.weight)[0]
    g = _int8(GraphBuilder(f"decoder_step_l{len(w.layers)}_h{layer0.n_head}"), int8)
    g.constant_weights = g.spin_pool = True
    x = g.input("x", ["b", "n_q", n_state])
    offset = g.input("offset", [1], I64)
    mask = g.input("mask", ["b_mask", "n_q", "n_kv"])
    positions = g.input("positions", ["n_pos"], I64)
    step = (g.input("one_token", [], TensorProto.BOOL), offset)
    d_head = n_state // layer0.n_head
    shapes = None
    news = []
    for i, layer in enumerate(w.layers):
        k_past = g.input(f"k_past.{i}", ["b", "n_past", n_state])
        v_past = g.input(f"v_past.{i}", ["b", "n_past", n_state])
        cross_k = g.input(f"cross_k.{i}", ["b_c", layer.n_head, d_head, "n_audio"])
        cross_v = g.input(f"cross_v.{i}", ["b_c", layer.n_head, "n_audio", d_head])
        if shapes is None:
            shapes = _cross_shapes(g, cross_k, x, n_state)
        x, k_new, v_new = decoder_layer(g, x, layer, k_past, v_past, cross_k, cross_v, mask, shapes, f"l{i}.", step)
        news.append((k_new, v_new))
    h = layer_norm(g, g.op("Gather", x, positions, axis=1), *w.ln, "ln")
    # One row (a greedy step): MLAS's M == 1 kernel streaming the bound (n_state, n_vocab) transpose beats the
    # pre-packed panels; several rows (beams): the pre-packed constant.  Both are kept (twice the memory of
    # the largest weight) for the op that dominates a step.
    one_row = g.input("one_row", [], TensorProto.BOOL)
    int8, g.int8 = g.int8, False  # the logits stay float32 in every compute type (the contract)
    logits = g.op("If", one_row,
                  then_branch=g.branch(lambda b: linear(b, h, w.logits.weight, None, "logits", bound=True), "gemv"),
                  else_branch=g.branch(lambda b: linear(b, h, w.logits.weight, None, "logits"), "packed"))
    g.int8 = int8
    g.output(logits, "logits", ["b", "n_pos", n_vocab])
    for i, (k_new, v_new) in enumerate(news):
        g.output(k_new, f"k_new.{i}", ["b", "n_q", n_state])
        g.output(v_new, f"v_new.{i}", ["b", "n_q", n_state])
    return g
