"""`OnnxRuntimeBackend`: every op of the contract as a small ONNX graph run by ONNX Runtime's CPU kernels.

Design
------
* Graphs are built in code (`graphs.py`, `onnx.helper`), with dynamic batch / sequence dimensions.
* Weights are never serialised into a model.  The fine ops and decoder_layer take them as graph *inputs*
  (linear weights transposed once to (n_in, n_out)), bound once per weight set by pointer as OrtValues
  over that numpy memory: one session serves every weight set of the same shape.  ``encoder_layer`` and
  ``decoder_step`` take them as *constants* handed to a session of their own, which MLAS pre-packs once
  (`graphs.py` says why and how).
* ``decoder_step`` is one graph for a whole decoding step (every layer, the final LayerNorm, the logits of
  the asked rows): one ``run_with_iobinding`` per step.  With batch 1 each layer's filled cache prefix is
  bound by pointer as an input and the step's new k/v rows as outputs onto the cache rows after it: read
  and written in place.  A batch's rows are strided by n_ctx: its prefix is copied out, its new rows copied
  in with one assignment.  Cross K/V are bound per
  layer, one row per audio, laid out by head once per window (the contract's `cross_layout`,
  `graphs.cross_by_head`): each head's keys are then one contiguous (d_head, n_audio) block, and a query's
  scores a GEMV on every vector lane.  The rows of an audio (its beams) are one block of queries, so a beam
  step reads them once.  If nodes pick, per call, the kernels for one new token per row and one logits row
  (`graphs.build_decoder_step`).
* Sessions are created lazily at their first run (loading a model is cheap; an op never used never costs a
  session); each weight set keeps its own runner (IO binding) in the prepared ``w``.  Weightless ops
  (gelu, attention) keep one runner per (op, n_head, n_state, causal) on the backend.
* Every call goes through IO binding: inputs are bound by pointer (copied only when not C-contiguous),
  outputs are preallocated numpy arrays bound by pointer, so ORT writes the result where we return it;
  a runner rebinds only what moved since its last call.  ``decoder_layer`` binds its k/v outputs straight
  onto the caller's cache rows [offset, offset+n_q) whenever those rows are contiguous (batch 1, C-ordered
  cache): the KV cache is written in place with no copy at all.
* ``top_k`` and ``logsumexp`` are left to the NumPy reference: a session run per decode step cost more than the
  reference's whole op (stop 37, inside a transcription, median per call): ONNX's TopK on a beam step's 5 rows
  of 51864 took 170 us against the reference's 120-155 (isolated: 127 against 118), and a ReduceMax, Exp,
  ReduceSum, Log graph over the timestamp rule's 1501 columns 54-60 us against 18 (16 isolated; on one thread,
  no faster).  numba's and pythran's kernels take 17-20 and 5-8 us.
* Threads follow `whisperkit.threads.get_num_threads()`; `set_num_threads(n)` makes every session
  rebuild lazily at its next call.  Loading the backend makes NumPy's idle BLAS workers sleep at once
  (`whisperkit.threads.short_blas_spin`): one left spinning by the log-mel's GEMM held a core while the
  encoder ran.

float16 weights
---------------
The shipped checkpoints' weights are float16 values (`whisperkit.backend.exact_float16`), but this backend
keeps them as float32: ONNX Runtime's CPU provider has no kernel that reads float16 and computes in float32.
MatMul/Gemm need one element type for both operands (a float16 MatMul rounds its result to float16: a
different result, not allowed), MatMulNBits and the other contrib GEMMs quantize, and MLAS's half-precision
GEMM outputs float16.  The one exact path is a Cast node widening a float16 weight in the graph at every
step, and it is a net loss (measured, ORT 1.32, one core): Cast float16 -> float32 runs at ~4.5 G elements/s
on an L2-resident block (0.18 ms for a 384x2048 block, which a float32 GEMV reads in about the same time) and
~1 G elements/s streaming, so widening tiny.en's 28 M step weights alone costs more than reading them as
float32; the (51864, 384) logits weight as float16 blocks of 1024-4096 rows widened into L2 and multiplied
took 7.7-9.7 ms against 2.8 ms for the float32 MatMul (two threads).
"""
from __future__ import annotations

import collections
import importlib.metadata
import importlib.util
import logging
import threading
from types import SimpleNamespace

import numpy as np

from whisperkit.backend import AttentionPair, Backend, check_kv_step, check_stem, check_step, f32c, weight_group, weight_matrices
from whisperkit.contract import INT8_OPS
from whisperkit.errors import BackendError
from whisperkit.threads import get_num_threads, short_blas_spin

log = logging.getLogger(__name__)

_F32 = np.float32


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# Session settings, chosen by A/B runs interleaved in one process on a shared 2-core machine (figures in
# docs/bench-results.md):
#   * ORT_ENABLE_EXTENDED (the class attribute `graph_optimization`): fuses LayerNorm, MatMul+Add and
#     Gelu(+bias) like ALL, without ALL's NCHWc layout transform, which wraps our 1-d Conv in reorders and
#     made conv1 and conv2 slower; encoder layer and decoder step equal within noise.  BASIC (no fusions)
#     was not faster anywhere.
#   * intra_op spinning off (`allow_spinning`): on 2 shared cores a spinning pool of the session just run
#     steals a core from the next one; transcription was much slower with spinning on.  Except the decoder
#     step's one session (`_Session.spin`): it runs about a hundred times a window, each run some sixty
#     nodes, and its pool asleep was woken for each of them.  It stops spinning at the end of each run
#     (`session.force_spinning_stop`): left spinning, it burnt ~40 ms of a core after the last step, taken
#     from the next window's encoder (docs/bench-results.md, stop 36).
#   * intra_op threads = whisperkit.threads.get_num_threads(); inter_op 1 and sequential execution: our
#     graphs are chains, a parallel executor only adds scheduling.


class _Session:
    """One lazily created InferenceSession for one graph structure; rebuilt when the thread count changes."""

    __slots__ = ("backend", "model_bytes", "constants", "sess", "threads", "generation", "spin")

    def __init__(self, backend: "OnnxRuntimeBackend", builder):
        self.backend = backend
        self.model_bytes = builder.model().SerializeToString()  # small: weights are inputs or external data
        self.constants = builder.constants()  # name -> array, handed to ORT at each session creation
        self.spin = builder.spin_pool  # the decoder step's: the one session that spins (module comment)
        self.sess = None
        self.threads = 0
        self.generation = 0

    def get(self):
        threads = self.backend.num_threads()
        if self.sess is None or threads != self.threads:
            with self.backend._lock:
                if self.sess is None or threads != self.threads:
                    self._create(threads)
        return self.sess

    def _create(self, threads: int) -> None:
        ort = self.backend._ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.backend.graph_optimization)
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        spin = self.backend.allow_spinning or self.spin
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:
            so.add_session_config_entry("session.force_spinning_stop", "1")
        so.log_severity_level = 3
        if self.constants:  # ORT copies (and pre-packs) them at creation
            so.add_external_initializers(list(self.constants), [ort.OrtValue.ortvalue_from_numpy(a) for a in self.constants.values()])
        self.sess = ort.InferenceSession(self.model_bytes, so, providers=["CPUExecutionProvider"])
        self.threads = threads
        self.generation += 1


class _Runner:
    """One weight set of a graph: its IO binding with the weights bound once, as OrtValues over the
    prepared numpy arrays; each call binds only the activations (by pointer) and the outputs."""

    __slots__ = ("session", "weights", "binding", "generation", "_vals", "_lock", "_bound")

    def __init__(self, session: _Session, weights: dict):
        self.session = session
        self.weights = weights  # name -> C-contiguous float32 array, kept alive here
        self.binding = None
        self.generation = -1
        self._bound: dict = {}  # name -> (pointer, shape, dtype) as last bound: a decode step rebinds only what moved
        # The binding is shared state: two Python threads running the same op (two transcriptions sharing
        # the backend's gelu/attention runners) must not interleave bind and run.  Uncontended, it is cheap.
        self._lock = threading.Lock()

    def __call__(self, inputs: dict, outputs: dict) -> None:
        with self._lock:
            self._run(inputs, outputs)

    def _run(self, inputs: dict, outputs: dict) -> None:
        s = self.session
        sess = s.get()
        if self.generation != s.generation:
            ort = s.backend._ort()
            b = sess.io_binding()
            self._vals = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.weights.values()]  # no copy
            for name, val in zip(self.weights, self._vals):
                b.bind_ortvalue_input(name, val)
            self.binding, self.generation, self._bound = b, s.generation, {}
        b, last = self.binding, self._bound
        for bind, arrays in ((b.bind_input, inputs), (b.bind_output, outputs)):
            for name, a in arrays.items():
                key = (a.ctypes.data, a.shape, a.dtype)
                if last.get(name) != key:
                    bind(name, "cpu", 0, a.dtype, a.shape, key[0])
                    last[name] = key
        sess.run_with_iobinding(b)


_BOOL = (np.array(False), np.array(True))  # the step graph's flags, bound once (same pointer every call)


def _causal_mask(n_q: int, n_kv: int, offset: int) -> np.ndarray:
    """(n_q, n_kv) additive mask: query i (absolute position offset + i) sees key j iff j <= offset + i."""
    return np.where(np.arange(n_kv)[None, :] > offset + np.arange(n_q)[:, None], _F32(-np.inf), _F32(0.0)).astype(_F32)


def _padded_mask(n_q: int, n_kv: int, offset: int, pad: np.ndarray) -> np.ndarray:
    """(b, n_q, n_kv) additive mask of left-padded rows (the contract's decoder_step `pad`): query i of row r
    (position c = offset + i) sees key j iff j <= c, and j >= pad[r] when c >= pad[r]."""
    c = offset + np.arange(n_q)[None, :, None]  # (1, n_q, 1)
    j = np.arange(n_kv)[None, None, :]
    p = pad[:, None, None]
    seen = (j <= c) & ((c < p) | (j >= p))
    return np.where(seen, _F32(0.0), _F32(-np.inf)).astype(_F32)


class OnnxRuntimeBackend(AttentionPair, Backend):
    name = "onnxruntime"
    shared_cross_kv = True  # decoder_layer takes one cross K/V row per audio (the contract)
    padded_steps = True  # decoder_step takes left-padded rows (the contract's `pad`), through its per-row mask
    thread_safe = True  # outputs are allocated per call; each session runner has its own lock
    # the distribution's version without importing it (the registry reads it for every backend); replaced by
    # onnxruntime.__version__ at the first op.  The CPU kernels are the same in the GPU/OpenVINO builds.
    version = next(filter(None, map(_dist_version, ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"))), "missing")
    description = "ONNX Runtime CPU kernels (MLAS) on ONNX graphs built in code; fused layer graphs"
    graph_optimization = "ORT_ENABLE_EXTENDED"
    allow_spinning = False
    #: second for `auto`: behind numba warm and cold (docs/bench-results.md, issues 14 and 15); and the most memory
    #: of the three
    auto_rank = 30
    compute_types = ("float32", "int8")  # int8: MatMulNBits on the contract's weights (graphs.linear_int8)

    def __init__(self, exact_gelu: bool = False):
        #: exact_gelu: the fine gelu op bit-equal to the reference (float64 erfc graph, about the reference's
        #: speed) instead of ORT's float32 Gelu kernel (faster, within the conformance tolerance).
        self.exact_gelu = bool(exact_gelu)
        self._threads: int | None = None
        self._lock = threading.Lock()  # session (re)creation
        self._sessions: dict[tuple, _Session] = {}  # graph key -> shared session (created ahead, by _prebuild)
        self._pending: collections.deque = collections.deque()  # sessions _prebuild has still to create
        self._pending_lock = threading.Lock()  # not _lock: preparing an op must not wait for a session being created
        self._builder: threading.Thread | None = None
        self._weightless: dict[tuple, _Runner] = {}
        self._mods = None
        self._int8 = False  # set by prepare() while an op of contract.INT8_OPS is prepared for int8

    # ---- availability, threads -------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        # find_spec, not import: building the registry must not pay onnxruntime's import for users of
        # other backends.  The real import happens at the first op and raises BackendError.
        missing = []
        for m in ("onnxruntime", "onnx"):
            try:
                found = importlib.util.find_spec(m) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(m)
        if missing:
            return (f"{' and '.join(missing)} cannot be imported (not installed); "
                    "install with: pip install 'whisperkit[onnxruntime]'")
        return None

    def load(self) -> None:
        self._ort()
        short_blas_spin()  # NumPy's GEMMs (the log-mel's) leave no BLAS worker spinning while ORT's threads run

    def _ort(self):
        if self._mods is None:
            try:
                import onnxruntime as ort

                from . import graphs
            except ImportError as exc:
                raise BackendError(f"backend onnxruntime: cannot import its libraries: {exc}") from exc
            self._mods = (ort, graphs)
            type(self).version = ort.__version__
        return self._mods[0]

    def _graphs(self):
        self._ort()
        return self._mods[1]

    def num_threads(self) -> int:
        return self._threads or get_num_threads()

    def set_num_threads(self, n: int) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of threads must be a positive integer, got {n!r}")
        self._threads = n  # every _Runner sees the change at its next call and rebuilds its session

    def _runner(self, builder) -> _Runner:
        """A runner for this weight set over the session shared by every weight set of the same graph."""
        key = builder.key()
        if builder.constant_weights:  # constants belong to the session: one session per weight set
            key += (len(self._sessions),)
        sess = self._sessions.get(key)
        if sess is None:
            sess = self._sessions[key] = _Session(self, builder)
            self._prebuild(sess)
        return _Runner(sess, builder.bound_weights())

    def _prebuild(self, sess: _Session) -> None:
        """Create `sess` ahead of its first run, on one background thread that takes the sessions in the order they
        were prepared.  Creating one (graph optimisation, pre-packing the constant weights) releases the GIL: the
        model's ten took 0.34 s, paid in the first transcription, and now overlap the rest of the model's
        preparation (a session asked for first is created by its caller, under the same lock)."""
        with self._pending_lock:
            self._pending.append(sess)
            if self._builder is not None and self._builder.is_alive():
                return
            self._builder = threading.Thread(target=self._build_pending, name="whisperkit-ort-sessions", daemon=True)
            self._builder.start()

    def _build_pending(self) -> None:
        while True:
            with self._pending_lock:
                if not self._pending:
                    self._builder = None
                    return
                sess = self._pending.popleft()
            try:
                sess.get()
            except Exception as exc:  # noqa: BLE001  (its first run creates it again and raises there)
                log.debug("onnxruntime: creating a session ahead of its first run failed: %s", exc)

    def _weightless_runner(self, key: tuple, build) -> _Runner:
        r = self._weightless.get(key)
        if r is None:
            r = self._weightless[key] = self._runner(build())
        return r

    def supports_compute(self, op, compute_type, **args):
        # MatMulNBits blocks are 16 to 128 inputs: every weight matrix's width must be a multiple of 16
        return compute_type in self.compute_types and all(w.shape[1] % 16 == 0 for w in weight_matrices(args))

    def prepare(self, op, weights, ops):
        # int8: the graphs of the ops in contract.INT8_OPS run their linears as MatMulNBits (graphs.linear_int8)
        self._int8 = ops.compute_type == "int8" and op in INT8_OPS
        try:
            return super().prepare(op, weights, ops)
        finally:
            self._int8 = False

    # ---- fine ops ----------------------------------------------------------------------------------
    def prepare_linear(self, weight, bias=None):
        weight = np.asarray(weight, _F32)
        if weight.ndim != 2:
            raise ValueError(f"linear: weight must be (n_out, n_in), got shape {weight.shape}")
        g = self._graphs().build_linear(weight, bias, self._int8)  # transposes the weight once, here
        return SimpleNamespace(n_out=weight.shape[0], n_in=weight.shape[1], run=self._runner(g))

    def linear(self, x, w):
        if x.shape[-1] != w.n_in:
            raise ValueError(f"linear: x has {x.shape[-1]} features, weight expects {w.n_in}")
        x = f32c(x)
        y = np.empty(x.shape[:-1] + (w.n_out,), _F32)
        w.run({"x": x}, {"y": y})
        return y

    def prepare_conv1d(self, weight, bias, stride, padding):
        weight = np.asarray(weight, _F32)
        stride, padding = int(stride), int(padding)
        g = self._graphs().build_conv1d(weight, bias, stride, padding)
        c_out, c_in, k = weight.shape
        return SimpleNamespace(c_out=c_out, c_in=c_in, k=k, stride=stride, padding=padding, run=self._runner(g))

    def conv1d(self, x, w):
        b, c_in, t = x.shape
        if c_in != w.c_in:
            raise ValueError(f"conv1d: x has {c_in} channels, weight expects {w.c_in}")
        y = np.empty((b, w.c_out, (t + 2 * w.padding - w.k) // w.stride + 1), _F32)
        w.run({"x": f32c(x)}, {"y": y})
        return y

    def prepare_layer_norm(self, weight, bias):
        g = self._graphs().build_layer_norm(weight, bias)
        return SimpleNamespace(n=np.shape(weight)[0], run=self._runner(g))

    def layer_norm(self, x, w):
        x = f32c(x)
        y = np.empty_like(x)
        w.run({"x": x}, {"y": y})
        return y

    def gelu(self, x):
        x = f32c(x)
        y = np.empty_like(x)
        self._weightless_runner(("gelu", self.exact_gelu), lambda: self._graphs().build_gelu(self.exact_gelu))({"x": x}, {"y": y})
        return y

    def log_softmax(self, x):
        x = f32c(x)
        y = np.empty_like(x)
        if x.size:
            self._weightless_runner(("log_softmax",), lambda: self._graphs().build_log_softmax())({"x": x}, {"y": y})
        return y

    def _attention(self, q, k, v, n_head, causal, offset, weights_only):
        q, k = f32c(q), f32c(k)
        b, n_q, d = q.shape
        n_kv = k.shape[1]
        key = ("attention_weights" if weights_only else "attention", n_head, d, causal)
        run = self._weightless_runner(key, lambda: self._graphs().build_attention(n_head, d, causal, weights_only))
        inputs = {"q": q, "k": k}
        if not weights_only:
            inputs["v"] = f32c(v)
        if causal:
            inputs["mask"] = _causal_mask(n_q, n_kv, int(offset))
        if weights_only:
            out = np.empty((b, n_head, n_q, n_kv), _F32)
            run(inputs, {"p": out})
        else:
            out = np.empty((b, n_q, d), _F32)
            run(inputs, {"y": out})
        return out

    # ---- coarse ops: one graph each --------------------------------------------------------------
    # (whole graphs: the dispatcher's fine ops are not needed)
    def prepare_mlp_block(self, **w):
        g = self._graphs().build_mlp_block(weight_group("mlp_block", w), self._int8)
        return SimpleNamespace(run=self._runner(g))

    def mlp_block(self, x, w):
        x = f32c(x)
        y = np.empty_like(x)
        w.run({"x": x}, {"y": y})
        return y

    def prepare_encoder_stem(self, conv1_weight, conv1_bias, conv2_weight, conv2_bias, positional_embedding):
        g = self._graphs().build_encoder_stem(conv1_weight, conv1_bias, conv2_weight, conv2_bias, positional_embedding)
        n_state, n_mels, _ = np.shape(conv1_weight)
        return SimpleNamespace(run=self._runner(g), n_mels=n_mels, n_state=n_state, n_ctx=np.shape(positional_embedding)[0])

    def encoder_stem(self, mel, w):
        mel = check_stem(mel, w.n_mels, w.n_ctx)
        x = np.empty((mel.shape[0], w.n_ctx, w.n_state), _F32)
        w.run({"mel": f32c(mel)}, {"x": x})
        return x

    def prepare_encoder_layer(self, **w):
        g = self._graphs().build_encoder_layer(weight_group("encoder_layer", w), self._int8)  # constants: a session per layer
        return SimpleNamespace(run=self._runner(g))

    def encoder_layer(self, x, w):
        x = f32c(x)
        y = np.empty_like(x)
        w.run({"x": x}, {"y": y})
        return y

    def prepare_decoder_layer(self, **w):
        group = weight_group("decoder_layer", w)
        g = self._graphs().build_decoder_layer(group, self._int8)
        return SimpleNamespace(n_state=np.shape(group.attn_ln.weight)[0], run=self._runner(g))

    def decoder_layer(self, x, w, k_cache, v_cache, cross_k, cross_v, offset):
        x = f32c(x)
        b, n_q, d = x.shape
        offset = check_kv_step(k_cache, v_cache, offset, n_q)
        end = offset + n_q
        inputs = {"x": x, "k_past": f32c(k_cache[:, :offset]), "v_past": f32c(v_cache[:, :offset]),
                  "cross_k": f32c(cross_k), "cross_v": f32c(cross_v), "mask": _causal_mask(n_q, end, offset)}
        y = np.empty_like(x)
        outputs = {"y": y}
        # Bind the new k/v rows straight onto the cache when they are one contiguous float32 block.
        copy_back = []
        for name, cache in (("k_new", k_cache), ("v_new", v_cache)):
            rows = cache[:, offset:end]
            if rows.dtype == _F32 and rows.flags.c_contiguous and cache.flags.writeable:
                outputs[name] = rows
            else:
                tmp = np.empty((b, n_q, d), _F32)
                outputs[name] = tmp
                copy_back.append((rows, tmp))
        w.run(inputs, outputs)
        for rows, tmp in copy_back:
            rows[...] = tmp
        return y

    def prepare_decoder_step(self, **w):
        group = weight_group("decoder_step", w)
        g = self._graphs().build_decoder_step(group, self._int8)
        n = len(group.layers)
        names = {kind: [(f"{a}.{i}", f"{b}.{i}") for i in range(n)]
                 for kind, a, b in (("k", "k_past", "k_new"), ("v", "v_past", "v_new"), ("cross", "cross_k", "cross_v"))}
        n_head = group.layers[0].n_head
        return SimpleNamespace(n_layer=n, n_state=np.shape(group.ln.weight)[0], n_vocab=np.shape(group.logits.weight)[0],
                               names=names, run=self._runner(g),
                               cross_layout=lambda k, v: self._graphs().cross_by_head(n_head, k, v))

    def decoder_step(self, x, w, k_cache, v_cache, cross_k, cross_v, offset, positions, pad=None, cross=None):
        x = f32c(x)
        b, n_q, d = x.shape
        offset, pos = check_step(k_cache, v_cache, w.n_layer, offset, n_q, positions)
        end = offset + n_q
        pos = np.array(pos, np.int64)
        if pad is not None and np.any(pad):  # left-padded rows: a mask per row, read by the multi-token branch
            one_token, mask = False, _padded_mask(n_q, end, offset, np.asarray(pad, np.int64))
        else:  # one token sees every cached row: its mask is all zeros (and only the multi-token branch reads it)
            one_token = n_q == 1
            mask = np.zeros((1, 1, end), _F32) if n_q == 1 else _causal_mask(n_q, end, offset)[None]
        inputs = {"x": x, "offset": np.array([offset], np.int64), "mask": mask, "positions": pos,
                  "one_token": _BOOL[one_token], "one_row": _BOOL[b * pos.size == 1]}
        logits = np.empty((b, pos.size, w.n_vocab), _F32)
        outputs = {"logits": logits}
        # Batch 1: each layer's filled prefix and this step's rows are contiguous blocks of a C-ordered float32
        # cache, bound by pointer (read and written in place).  Otherwise the prefix is copied out (a batch's
        # rows are strided by n_ctx) and the new rows are written to a scratch array, copied in with one
        # assignment.
        copy_back = []
        for name, cache in (("k", k_cache), ("v", v_cache)):
            direct = cache.dtype == _F32 and cache.flags.c_contiguous and cache.flags.writeable and b == 1
            tmp = None if direct else np.empty((w.n_layer, b, n_q, d), _F32)
            for i, (past_name, new_name) in enumerate(w.names[name]):
                inputs[past_name] = cache[i, :, :offset] if direct else f32c(cache[i, :, :offset])
                outputs[new_name] = cache[i, :, offset:end] if direct else tmp[i]
            if tmp is not None:
                copy_back.append((cache, tmp))
        # the window's cross K/V by head (the contract's `cross_layout`): laid out here when the caller has not
        kt, vh = cross if cross is not None else w.cross_layout(cross_k, cross_v)
        for i, (k_name, v_name) in enumerate(w.names["cross"]):
            inputs[k_name], inputs[v_name] = kt[i], vh[i]
        w.run(inputs, outputs)
        for cache, tmp in copy_back:
            cache[:, :, offset:end] = tmp
        return logits
