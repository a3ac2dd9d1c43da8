"""The Pythran backend: float32 kernels written as Pythran modules, compiled ahead of time at install.

`setup.py` compiles ``src/_kernels.py`` and ``src/_step.py`` into the extensions ``_kernels`` and
``_step`` of this package (OpenMP, no CBLAS) when the project is installed; nothing is compiled at run
time.  GEMMs (linear, the im2col GEMM of conv1d, the two GEMMs of encoder attention, the layers of a
prompt) run on NumPy's BLAS, near the machine's peak; the Pythran kernels do the rest: LayerNorm, GELU
(fused with fc1's bias), bias/residual epilogues, im2col, a stable row softmax, fully fused attention
for few query rows, and a decoding step of few rows (greedy, beams) in ONE call (``_step``): every
layer, the final LayerNorm and the logits, with GEMV-style projections that read each weight row once
for all rows.  The encoder's attention gives whole heads to threads of its own (`_HeadPool`), each on a
one-thread BLAS, rather than splitting every small GEMM between the cores.

Float16 weights: Pythran has no float16 type, so the step kernel cannot use the CPU's F16C/AVX-512
conversion (vcvtph2ps).  It stores the matrices of an fp16 checkpoint as their 16-bit patterns and
widens them exactly with integer vector code (a bit shuffle, plus a side list for zeros and subnormals),
bit-identical to the float32 kernel.  That widening costs four vector instructions per 16 weights where
vcvtph2ps costs one: a greedy step's GEMVs are bound by the core here, not by memory.

Greedy decoding speculates here as on numba (the contract's decoder_step `draft` and `head`, float16 steps only): a
draft step computes the logits of the blocks holding the draft vocabulary (27 % of tiny's), and `head` the full logits
of a round's rows in one pass over the logits weight, which the widening, not memory, bounds (`_step.head16`: 1.6-1.9
ms for one row, 3.0-3.3 for four).  A one-row step's logits and head's come from the same row-by-row kernel
(`_mv16_blocks`, each row alone), so they are the same bits; steps of more rows (beams) keep their faster multi-row kernels, whose sums
may round otherwise, so a draft is one row.  pythran has no greedy_pick: the decode loop picks the drafts with its own
filters and GreedyDecoder.

encoder_stem is left to the reference, whose composition runs this backend's own conv1d and gelu: 12.8-13.0 ms a tiny
window.  Fusing the stem bought onnxruntime 0.3 ms of its 10.2 (one graph against its conv1d and gelu ops); numba's
stem gained 3 ms only by running both convolutions on its packed-weight tiles, which Pythran does not have
(`stemtime.py`, docs/bench-results.md, issue 14).

int8 (`compute_type="int8"`, every op of contract.INT8_OPS): the matrices are quantized at prepare as the contract
says and held only in int8.  A decoding step runs ``_step.step8``: the layers' GEMVs multiply int8 by int8 into exact
int32 block sums (GCC vectorises the loops; Pythran gives no access to VNNI's vpdpbusd), and the logits stay float32
as float16 bits.  Linears of many rows (the encoder, cross K/V, prompts) quantize and dequantize their activations
(``_kernels.int8_rows_dequant``) and run one float32 GEMM on NumPy's BLAS against the weight dequantized for that
call: int8's values, at BLAS speed, without a float32 copy of the weights.  Its float32 sums round differently from
the reference's exact integer blocks, which conformance's int8 tolerances allow.  The point of pythran's int8 is
memory: no JIT runtime, one int8 copy of the weights (docs/bench-results.md).
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.machinery
import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np

from whisperkit.backend import (Backend, check_kv_step, check_step, draft_blocks, exact_float16, f32c, hookimpl, map_group,
                                rows_f32, weight_group)
from whisperkit.contract import INT8_OPS, LAYER_NORM_EPS, int8_block, quantize_int8
from whisperkit.model import padded_self_attention
from whisperkit.threads import get_num_threads, numpy_openblas, short_blas_spin


class _Compiled:
    """One of the modules Pythran compiled at install, imported at its first use (`PythranBackend.load`, or the
    first attribute read), not with the plugin: the registry imports every plugin to list it, and loading the
    extensions loads libgomp with the setting below, which would then hold for every OpenMP user of the process
    (Numba's threading layer among them: with OMP_WAIT_POLICY=PASSIVE, each of the ~33 parallel regions of its
    decode step waits for a sleeping thread, and its osr greedy run took 0.72 s against 0.57 s)."""

    def __init__(self, name: str):
        self.name = name
        self.module = None

    def load(self):
        if self.module is None:
            if _IMPORT_ERROR is not None:
                raise ImportError(_IMPORT_ERROR)
            # libgomp reads these when it loads.  Its default (spin about 3 ms before sleeping) makes OpenMP's
            # workers and NumPy's OpenBLAS workers fight over the cores at every switch between a GEMM and a
            # kernel, which made encoder attention in 128-row blocks many times slower.  Never spinning
            # (PASSIVE alone) costs a sleep and a wake-up in each of the ~33 parallel regions of a decode step,
            # which follow each other within microseconds: a spin of about 30 us (3000 spins, libgomp's
            # estimate being 100 000 a millisecond) bridges those gaps and is over before a GEMM gets going.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            os.environ.setdefault("GOMP_SPINCOUNT", "3000")
            self.module = importlib.import_module(f"{__name__}.{self.name}")
            if hasattr(self.module, "set_threads"):  # OpenMP's team size: the process's thread setting
                self.module.set_threads(int(get_num_threads()))
        return self.module

    def __getattr__(self, attr):
        return getattr(self.load(), attr)


def _missing() -> str | None:
    """Why the compiled modules cannot be used, found without importing them (None: they are there)."""
    for name in ("_kernels", "_step"):
        try:
            spec = importlib.util.find_spec(f"{__name__}.{name}")
            if spec is None or not str(spec.origin).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                raise ImportError(f"{name} is not a compiled extension ({spec.origin if spec else 'not found'})")
        except ImportError as exc:  # the build could not compile the kernels
            return (f"compiled kernels not found ({exc}): the build could not compile them "
                    "(no C++ compiler or no pythran at build time?) -- reinstall with a compiler: "
                    "pip install -e '.[pythran]' (see setup.py's warning in the build log)")
    return None


_IMPORT_ERROR = _missing()
K, S = _Compiled("_kernels"), _Compiled("_step")  # noqa: N816

#: Query rows at or below which attention runs the fully fused per-row kernel; above, two GEMMs
#: around the in-place softmax kernel (the encoder's 1500 x 1500).
ROWS_FUSED_MAX = 32
#: Query rows per block in the GEMM path: keeps a block of scores (512 x 1500 floats) in L2.
BLOCK_ROWS = 512
#: decoder_step runs the whole-step kernel (GEMV-style projections) up to this many rows (batch * n_q);
#: above (long prompts), layer by layer with the GEMMs on NumPy's BLAS, whose sgemm is slow for few rows.
STEP_ROWS_MAX = 64
#: Logits per work item of the step kernel (`_step.BLK`): a draft step computes the blocks that hold its columns.
DRAFT_BLOCK = 32
#: An int8 linear of up to this many rows runs the int8 kernel (`_step.linear8`: exact int32 block sums); above
#: (the encoder, prompts, cross K/V), one float32 GEMM on NumPy's BLAS of the activations quantized and
#: dequantized (`_kernels.int8_rows_dequant`) and the weight dequantized for that call: the same values up to
#: float32 rounding in the sums, which conformance's int8 tolerances allow, at BLAS speed.
INT8_ROWS_KERNEL_MAX = 64


class _NumpyBlas:
    """NumPy's bundled OpenBLAS, through the symbols it exports (every method does nothing when it is not found)."""

    def __init__(self):
        self.lib = numpy_openblas()
        self._set_threads = None
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                    "openblas_set_num_threads"):
            fn = getattr(self.lib, sym, None) if self.lib is not None else None
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                self._set_threads = fn
                break

        fn = getattr(self.lib, "openblas_set_num_threads_local", None) if self.lib is not None else None
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        self.set_local_threads = fn  # the calling thread's BLAS threads (None: this OpenBLAS cannot)

    def set_threads(self, n: int) -> None:
        if self._set_threads is not None:
            self._set_threads(int(n))


class _HeadPool:
    """Threads for the heads of a long attention (the encoder's): each computes whole heads, its GEMMs on a
    one-thread BLAS and its softmax on a one-thread OpenMP team.  With every small GEMM split between the
    cores instead, a (1500, 6 heads) attention took 24-31 ms against 22-23 (stop 35, issue 14).  A head is
    always computed by one thread, so the result does not depend on the number of threads."""

    def __init__(self, blas: _NumpyBlas, n: int):
        self.n, self.pid = n, os.getpid()  # a forked child has none of the threads: it makes its own pool
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="whisperkit-pythran-heads", initializer=self._start,
                                       initargs=(blas,))

    @staticmethod
    def _start(blas):
        blas.set_local_threads(1)
        K.set_threads(1)  # OpenMP's team size is per calling thread


_SCRATCH = threading.local()


def _attend_head(q, k, v, out, bi, h, dh, causal, offset):
    """out[bi, :, head h] = softmax(q k^T / sqrt(dh)) v for one head, in blocks of BLOCK_ROWS query rows, through
    this thread's two buffers (a new (512, 1500) array per block made the attention a third slower)."""
    n_q, n_kv = q.shape[1], k.shape[1]
    rows = min(BLOCK_ROWS, n_q)
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None or bufs[0].shape != (rows, n_kv) or bufs[1].shape != (rows, dh):
        bufs = _SCRATCH.bufs = (np.empty((rows, n_kv), np.float32), np.empty((rows, dh), np.float32))
    cs = slice(h * dh, (h + 1) * dh)
    kt = np.ascontiguousarray(k[bi, :, cs].T)  # (d_head, n_kv)
    vh = np.ascontiguousarray(v[bi, :, cs])    # (n_kv, d_head)
    for r in range(0, n_q, rows):
        n = min(rows, n_q - r)
        sc = np.matmul(q[bi, r:r + n, cs], kt, out=bufs[0][:n])
        K.softmax_rows_(sc, np.float32(dh ** -0.5), causal, offset + r, False)
        out[bi, r:r + n, cs] = np.matmul(sc, vh, out=bufs[1][:n])


_PATCH_SEGMENT = 1 << 20  # elements per segment of _exponent0_patches' search


def _exponent0_patches(stacks):
    """The side list of the step kernel's float16 widening: for each (n_layer, n_out, n_in) stack of
    float16 bits, the row pointers (n_layer, n_out + 1) into one list of (column, float32 bits) of the
    elements with exponent 0 (zeros, subnormals), which the kernel's bit shuffle does not widen exactly."""
    rps, cols, vals, base = [], [], [], 0
    for h in stacks:
        flat = h.reshape(-1)
        # the few exponent-0 elements, found in one pass over the bits (a flat index, then row and column:
        # an N-d nonzero and a per-row count over the whole mask took most of a cold start's prepare), by
        # segments: the masks of the whole logits weight at once were 60 MB, the peak of a cold int8 command
        where = np.concatenate([a + np.flatnonzero((flat[a:a + _PATCH_SEGMENT] & np.uint16(0x7C00)) == 0)
                                for a in range(0, flat.size, _PATCH_SEGMENT)] or [np.zeros(0, np.int64)])
        row, col = np.divmod(where, h.shape[-1])
        counts = np.bincount(row, minlength=h.shape[0] * h.shape[1]).reshape(h.shape[:2])  # (n_layer, n_out)
        ends = base + np.cumsum(counts.ravel()).reshape(counts.shape)
        rps.append(np.concatenate([ends - counts, ends[:, -1:]], axis=1).astype(np.int32))
        cols.append(col.astype(np.int32))
        vals.append(flat[where].view(np.float16).astype(np.float32).view(np.uint32))
        base = int(ends[-1, -1])
    if base >= 2 ** 31:
        raise ValueError("too many float16 zeros and subnormals for the step kernel's int32 patch list")
    return rps, np.concatenate(cols), np.concatenate(vals)


#: The six linears of a decoder layer, in the order of the step kernels' arguments (qkv, out, cross_q, cross_out, fc1, fc2)
_STEP_LINEARS = (lambda l: l.qkv, lambda l: l.out, lambda l: l.cross_q, lambda l: l.cross_out,
                 lambda l: l.mlp.fc1, lambda l: l.mlp.fc2)


def _step_vectors(g, logits):
    """What every step kernel takes besides the matrices, for the decoder_step weight group g: the LayerNorms
    stacked (layer i's attention, cross-attention and MLP norms at rows 3i, 3i + 1, 3i + 2), the six linears'
    biases stacked per kind, and the final LayerNorm with the logits' weight and zero bias."""
    lnw = np.stack([f32c(n.weight) for l in g.layers for n in (l.attn_ln, l.cross_ln, l.mlp.ln)])
    lnb = np.stack([f32c(n.bias) for l in g.layers for n in (l.attn_ln, l.cross_ln, l.mlp.ln)])
    biases = [np.stack([f32c(get(l).bias) for l in g.layers]) for get in _STEP_LINEARS]
    final = (f32c(g.ln.weight)[None], f32c(g.ln.bias)[None], logits[None], np.zeros((1, logits.shape[0]), np.float32))
    return lnw, lnb, biases, final


def _mm(x2, lin):
    """x2 (rows, n_in) @ the linear's matrix transposed, without the bias: float32 (`wt`, as prepared), or in int8
    (the contract's scheme; `INT8_ROWS_KERNEL_MAX`)."""
    if lin.wt is not None:
        return x2 @ lin.wt
    if x2.shape[0] <= INT8_ROWS_KERNEL_MAX:
        return S.linear8(f32c(x2), lin.q[None], lin.scale[None], lin.zero[None])
    wd = lin.q.astype(np.float32)  # (n_out, n_in), dequantized for this call only: the int8 stays the one copy
    wd *= lin.scale[:, None]
    return K.int8_rows_dequant(f32c(x2), lin.block) @ wd.T


class PythranBackend(Backend):
    name = "pythran"
    #: int8: every op of contract.INT8_OPS, at any width (module doc of _step)
    compute_types = ("float32", "int8")
    shared_cross_kv = True  # decoder_layer takes one cross K/V row per audio (the contract)
    padded_steps = True  # decoder_step takes left-padded rows (the contract's `pad`)
    description = "Pythran kernels compiled at install (OpenMP) + NumPy's BLAS for the GEMMs"
    #: third for `auto`: the slowest compiled backend warm (docs/bench-results.md, issues 14 and 15)
    auto_rank = 20

    def __init__(self):
        self._blas = None  # NumPy's OpenBLAS, found at load
        self._heads = None  # _HeadPool, made at the first long attention
        self._heads_lock = threading.Lock()

    @property
    def version(self) -> str:
        """The pythran that compiled the kernels (the build's, not whatever is installed now), once loaded."""
        if _IMPORT_ERROR is not None:
            return "not built"
        return str(K.__pythran__[0]) if K.module is not None else "built (not loaded)"

    def unavailable_reason(self):
        return _IMPORT_ERROR

    def load(self) -> None:
        K.load()
        S.load()
        if self._blas is None:
            self._blas = _NumpyBlas()
            short_blas_spin()
        self.set_num_threads(get_num_threads())

    def set_num_threads(self, n):
        if K.module is not None:
            K.set_threads(int(n))
        if self._blas is not None:
            self._blas.set_threads(n)

    def _head_pool(self):
        """The head threads, as many as the process's thread setting; None where this OpenBLAS cannot set one
        thread's BLAS threads (then the heads run in turn, each GEMM on every thread)."""
        if self._blas is None or self._blas.set_local_threads is None:
            return None
        n = int(get_num_threads())
        with self._heads_lock:
            pool = self._heads
            if pool is None or pool.n != n or pool.pid != os.getpid():
                if pool is not None and pool.pid == os.getpid():
                    pool.pool.shutdown(wait=False)
                pool = self._heads = _HeadPool(self._blas, n)
        return pool

    # ---- fine ops -------------------------------------------------------------------------
    def prepare_linear(self, weight, bias=None):
        weight = np.asarray(weight, np.float32)
        if weight.ndim != 2:
            raise ValueError(f"linear weight must be (n_out, n_in), got shape {weight.shape}")
        return SimpleNamespace(wt=np.ascontiguousarray(weight.T), n_out=weight.shape[0], n_in=weight.shape[1],
                               bias=None if bias is None else f32c(bias))

    def prepare_linear_int8(self, weight, bias=None):
        """The contract's int8 weight (`quantize_int8`), held once, as int8."""
        weight = np.asarray(weight, np.float32)
        if weight.ndim != 2:
            raise ValueError(f"linear weight must be (n_out, n_in), got shape {weight.shape}")
        q, scale = quantize_int8(weight)
        return SimpleNamespace(wt=None, q=np.ascontiguousarray(q), scale=scale, zero=np.zeros(q.shape[0], np.float32), block=int8_block(q.shape[1]),
                               n_out=q.shape[0], n_in=q.shape[1], bias=None if bias is None else f32c(bias))

    def supports_compute(self, op, compute_type, **args):
        return compute_type == "float32" or (compute_type == "int8" and op in INT8_OPS)

    def prepare(self, op, weights, ops):
        if ops.compute_type == "int8" and op in INT8_OPS:
            return getattr(self, f"prepare_{op}_int8")(**weights)
        return super().prepare(op, weights, ops)

    def _linear2d(self, x2, w):
        y = _mm(x2, w)
        if w.bias is not None:
            K.bias_(y, w.bias)
        return y

    def linear(self, x, w):
        if x.shape[-1] != w.n_in:
            raise ValueError(f"linear: x has {x.shape[-1]} features, the weight expects {w.n_in}")
        return self._linear2d(rows_f32(x), w).reshape(*x.shape[:-1], w.n_out)

    def prepare_conv1d(self, weight, bias, stride, padding):
        weight = np.asarray(weight, np.float32)
        c_out, c_in, k = weight.shape
        return SimpleNamespace(w2=f32c(weight.reshape(c_out, c_in * k)), bias=f32c(bias), c_in=c_in, k=k,
                               stride=int(stride), padding=int(padding))

    def conv1d(self, x, w):
        b, c_in, t = x.shape
        if c_in != w.c_in:
            raise ValueError(f"conv1d: x has {c_in} channels, the weight expects {w.c_in}")
        t_out = (t + 2 * w.padding - w.k) // w.stride + 1
        cols = K.im2col(f32c(x), w.k, w.stride, w.padding, t_out)  # (batch, c_in * k, t_out)
        y = np.matmul(w.w2, cols)  # (batch, c_out, t_out)
        y += w.bias[:, None]
        return y

    def prepare_layer_norm(self, weight, bias):
        return SimpleNamespace(weight=f32c(weight), bias=f32c(bias))

    def layer_norm(self, x, w):
        return K.layer_norm(rows_f32(x), w.weight, w.bias, np.float32(LAYER_NORM_EPS)).reshape(x.shape)

    def gelu(self, x):
        x = np.asarray(x)
        return K.gelu(f32c(x).reshape(-1)).reshape(x.shape)

    def log_softmax(self, x):
        x = np.asarray(x)
        if x.size == 0:
            return np.empty(x.shape, np.float32)
        return K.log_softmax(f32c(x).reshape(-1, x.shape[-1])).reshape(x.shape)

    def logsumexp(self, x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] == 0:
            raise ValueError(f"logsumexp: x must have at least one column; got shape {x.shape}")
        return K.logsumexp(f32c(x).reshape(-1, x.shape[-1])).reshape(x.shape[:-1])

    def top_k(self, x, k):
        x = f32c(x)
        if x.ndim != 2 or not 1 <= int(k) <= x.shape[1]:
            raise ValueError(f"top_k: x must be (rows, n) with 1 <= k <= n; got shape {x.shape} and k={k}")
        return K.top_k(x, int(k))

    def attention(self, q, k, v, n_head, causal=False, offset=0):
        b, n_q, d = q.shape
        if n_q <= ROWS_FUSED_MAX:
            return K.attention_rows(f32c(q), f32c(k), f32c(v), int(n_head), bool(causal), int(offset))
        dh = d // n_head
        out = np.empty((b, n_q, d), np.float32)
        heads = [(bi, h) for bi in range(b) for h in range(n_head)]
        pool = self._head_pool()
        if pool is None:
            for bi, h in heads:
                _attend_head(q, k, v, out, bi, h, dh, bool(causal), int(offset))
            return out
        # NumPy's OpenBLAS takes this "local" setting for the whole process: one thread while the heads run,
        # the process's setting again after (another thread's GEMMs meanwhile are slower, never wrong)
        self._blas.set_local_threads(1)
        try:
            jobs = [pool.pool.submit(_attend_head, q, k, v, out, bi, h, dh, bool(causal), int(offset)) for bi, h in heads]
            for job in jobs:
                job.result()
        finally:
            self._blas.set_threads(pool.n)
        return out

    def attention_weights(self, q, k, n_head, causal=False, offset=0):
        # GEMM + the softmax kernel at every size: only word timestamps use it, and a fused row kernel
        # for it in the same Pythran module made attention_rows slower (Pythran 0.18.1).
        b, n_q, d = q.shape
        dh = d // n_head
        n_kv = k.shape[1]
        p = np.empty((b, n_head, n_q, n_kv), np.float32)
        for bi in range(b):
            for h in range(n_head):
                cs = slice(h * dh, (h + 1) * dh)
                np.matmul(q[bi, :, cs], k[bi, :, cs].T, out=p[bi, h])
                K.softmax_rows_(p[bi, h], np.float32(dh ** -0.5), bool(causal), int(offset), True)
        return p

    # ---- coarse ops: the fine kernels with fused epilogues, weights re-laid out once ---------
    def prepare_mlp_block(self, **weights):
        return self._prepare_group(weight_group("mlp_block", weights))

    def _prepare_group(self, group):
        return map_group(group, self.prepare_layer_norm, self.prepare_linear)

    def _prepare_group8(self, group):
        return map_group(group, self.prepare_layer_norm, self.prepare_linear_int8)

    def prepare_mlp_block_int8(self, **weights):
        return self._prepare_group8(weight_group("mlp_block", weights))

    def prepare_encoder_layer_int8(self, **weights):
        return self._prepare_group8(weight_group("encoder_layer", weights))

    def prepare_decoder_layer_int8(self, **weights):
        return self._prepare_group8(weight_group("decoder_layer", weights))

    def _mlp2d(self, x2, w):
        """x2 + fc2(gelu(fc1(ln(x2)))) for C-contiguous (rows, n_state) x2; a new array."""
        h = K.layer_norm(x2, w.ln.weight, w.ln.bias, np.float32(LAYER_NORM_EPS))
        a = _mm(h, w.fc1)
        K.bias_gelu_(a, w.fc1.bias)
        y = _mm(a, w.fc2)
        K.bias_residual_(y, w.fc2.bias, x2)
        return y

    def mlp_block(self, x, w):
        return self._mlp2d(rows_f32(x), w).reshape(x.shape)

    def prepare_encoder_layer(self, **weights):
        return self._prepare_group(weight_group("encoder_layer", weights))

    def prepare_decoder_layer(self, **weights):
        return self._prepare_group(weight_group("decoder_layer", weights))

    def _self_qkv(self, x2, w):
        h = K.layer_norm(x2, w.attn_ln.weight, w.attn_ln.bias, np.float32(LAYER_NORM_EPS))
        return self._linear2d(h, w.qkv)  # (rows, 3 * n_state)

    def encoder_layer(self, x, w):
        b, n, d = x.shape
        x2 = rows_f32(x)
        qkv = self._self_qkv(x2, w).reshape(b, n, 3 * d)
        a = self.attention(qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:], w.n_head)
        y = _mm(rows_f32(a), w.out)
        K.bias_residual_(y, w.out.bias, x2)
        return self._mlp2d(y, w.mlp).reshape(b, n, d)

    def decoder_layer(self, x, w, k_cache, v_cache, cross_k, cross_v, offset, pad=None):
        b, n, d = x.shape
        offset = check_kv_step(k_cache, v_cache, offset, n)
        x2 = rows_f32(x)
        qkv = self._self_qkv(x2, w).reshape(b, n, 3 * d)
        end = offset + n
        k_cache[:, offset:end] = qkv[..., d:2 * d]
        v_cache[:, offset:end] = qkv[..., 2 * d:]
        if pad is None:
            a = self.attention(qkv[..., :d], k_cache[:, :end], v_cache[:, :end], w.n_head, causal=True, offset=offset)
        else:
            a = padded_self_attention(self.attention, qkv[..., :d], k_cache, v_cache, w.n_head, offset, pad)
        y = _mm(rows_f32(a), w.out)
        K.bias_residual_(y, w.out.bias, x2)
        h = K.layer_norm(y, w.cross_ln.weight, w.cross_ln.bias, np.float32(LAYER_NORM_EPS))
        cq = self._linear2d(h, w.cross_q).reshape(cross_k.shape[0], -1, d)  # an audio's rows share its cross K/V
        a = self.attention(cq, cross_k, cross_v, w.n_head)
        y2 = _mm(rows_f32(a), w.cross_out)
        K.bias_residual_(y2, w.cross_out.bias, y)
        return self._mlp2d(y2, w.mlp).reshape(b, n, d)

    def prepare_decoder_step(self, layers, ln_weight, ln_bias, logits_weight):
        g = weight_group("decoder_step", dict(layers=layers, ln_weight=ln_weight, ln_bias=ln_bias,
                                              logits_weight=logits_weight))
        # Prompts (many rows) run decoder_layer, GEMMs on BLAS, on transposed float32 copies of the layers'
        # matrices (as prepare_decoder_layer makes them): OpenBLAS on the transposed views as given is many
        # times slower for few rows.  Their logits (few rows) run on the step kernel's projection.
        fine = [self._prepare_group(layer) for layer in g.layers]
        mats = [[get(layer).weight for get in _STEP_LINEARS] for layer in g.layers]
        # Every matrix as float16 bits when float16 holds them all exactly (the shipped checkpoints):
        # half the bytes to read per step, the same float32 products.  Else float32 throughout.
        halves = [exact_float16(m) for ms in mats for m in ms] + [exact_float16(logits_weight)]
        fp16 = all(h is not None for h in halves)
        if fp16:
            n_kind = len(mats[0])
            stacks = [np.stack([halves[i * n_kind + j].view(np.uint16) for i in range(len(mats))])
                      for j in range(n_kind)]
            logits = halves[-1].view(np.uint16)
            patches = _exponent0_patches(stacks + [logits[None]])
        else:
            stacks = [np.stack([f32c(ms[j]) for ms in mats]) for j in range(len(mats[0]))]
            logits = f32c(logits_weight)
            patches = ([np.zeros((1, 1), np.int32)] * (len(stacks) + 1), np.zeros(0, np.int32), np.zeros(0, np.uint32))
        lnw, lnb, biases, final = _step_vectors(g, logits)
        arrays = (lnw, lnb, *[a for pair in zip(stacks, biases) for a in pair], *final, *patches)
        logits_args = (*final, patches[0][-1], *patches[1:])
        w = SimpleNamespace(n_head=g.layers[0].n_head, fine=fine, arrays=arrays, fp16=fp16,
                            kernel=S.step16 if fp16 else S.step32, logits=S.logits16 if fp16 else S.logits32,
                            logits_args=logits_args, n_vocab=logits.shape[0], drafts={})
        if fp16:  # the contract's `head` (speculative greedy decoding): the one-row step's logits of final-LN rows
            w.head = _head(final[2], final[3], (patches[0][-1], *patches[1:]))
        return w

    def prepare_decoder_step_int8(self, layers, ln_weight, ln_bias, logits_weight):
        """The layers in the contract's int8: the step kernel's int8 stacks (n_layer, n_out, n_in) per kind, and the
        layers of prompts (`fine`) as views of them, so each int8 matrix is held once.  The logits float32 (the
        contract), as float16 bits when float16 holds them exactly."""
        g = weight_group("decoder_step", dict(layers=layers, ln_weight=ln_weight, ln_bias=ln_bias,
                                              logits_weight=logits_weight))
        fine = [self._prepare_group8(layer) for layer in g.layers]
        stacks, scales = [], []
        for get in _STEP_LINEARS:
            lins = [get(layer) for layer in fine]
            stack = np.stack([lin.q for lin in lins])
            for i, lin in enumerate(lins):
                lin.q = stack[i]  # a view: the one copy
            stacks.append(stack)
            scales.append(np.stack([lin.scale for lin in lins]))
        half = exact_float16(logits_weight)
        logits = half.view(np.uint16) if half is not None else f32c(logits_weight)
        if half is not None:
            rps, pc, pv = _exponent0_patches([logits[None]])
        else:
            rps, pc, pv = [np.zeros((1, 1), np.int32)], np.zeros(0, np.int32), np.zeros(0, np.uint32)
        rps = [np.zeros((1, 1), np.int32)] * len(stacks) + rps  # the int8 kinds have no patches; the logits' are rps[6]
        lnw, lnb, biases, final = _step_vectors(g, logits)
        arrays = (lnw, lnb, *[a for pair in zip(stacks, biases) for a in pair], *final, rps, pc, pv, scales)
        return SimpleNamespace(n_head=g.layers[0].n_head, fine=fine, arrays=arrays, fp16=half is not None,
                               kernel=S.step8 if half is not None else S.step8f,
                               logits=S.logits16 if half is not None else S.logits32, logits_args=(*final, rps[-1], pc, pv))

    def decoder_step(self, x, w, k_cache, v_cache, cross_k, cross_v, offset, positions, pad=None, draft=None):
        x = np.asarray(x)
        b, n_q, d = x.shape
        offset, pos = check_step(k_cache, v_cache, len(w.fine), offset, n_q, positions)
        pos = np.array(pos, np.int64)
        direct = all(c.dtype == np.float32 and c.flags.c_contiguous for c in (k_cache, v_cache))
        if draft is not None:  # the contract's `draft`: the final LayerNorm's row into hidden, a few columns' logits
            if getattr(w, "head", None) is None:
                raise ValueError("decoder_step: `draft` needs the prepared object's `head`, which only a step on float16 "
                                 "weights offers here")
            if b * len(pos) != 1 or not direct:
                raise ValueError(f"decoder_step: a draft step is one row of one position here (its logits are head16's "
                                 f"one-row sums) on float32 C-contiguous caches; got {b} rows, {len(pos)} positions")
            kernel, more = S.step16d, draft_blocks(w.drafts, draft, w.n_vocab, DRAFT_BLOCK, 1, d)
        else:
            kernel, more = (w.kernel if b * n_q <= STEP_ROWS_MAX and direct else None), ()
        if kernel is not None:
            rows_pad = np.zeros(b, np.int64) if pad is None else np.ascontiguousarray(pad, np.int64)
            logits = kernel(f32c(x).reshape(b * n_q, d), n_q, b // cross_k.shape[1], offset, rows_pad, w.n_head, pos,
                            *w.arrays, k_cache, v_cache, f32c(cross_k), f32c(cross_v), *more)
            return logits.reshape(b, len(pos), -1)
        h = x
        for i, lw in enumerate(w.fine):  # the layers write the caches through these views
            h = self.decoder_layer(h, lw, k_cache[i], v_cache[i], cross_k[i], cross_v[i], offset, pad)
        h = np.ascontiguousarray(h[:, pos], dtype=np.float32).reshape(b * len(pos), d)
        return w.logits(h, *w.logits_args).reshape(b, len(pos), -1)


def _head(wlog: np.ndarray, blog: np.ndarray, patches: tuple):
    """The contract's decoder_step `head` of a float16 step (`_step.head16`): each row's logits those of the one-row
    step that made it, bit for bit."""
    rp, pc, pv = patches

    def head(h) -> np.ndarray:
        h = f32c(h)
        if h.ndim != 2 or h.shape[1] != wlog.shape[2]:
            raise ValueError(f"head: rows must be (rows, {wlog.shape[2]}); got shape {h.shape}")
        return S.head16(h, wlog, blog, rp, pc, pv)
    return head


@hookimpl
def whisperkit_backends():
    return [PythranBackend()]
