"""The Numba backend: every op of the contract as parallel Numba kernels, GEMMs through NumPy's OpenBLAS.

``decoder_step`` is one Numba call per decoding step (every layer, the final LayerNorm fused with the
logits GEMV): matrices stacked per kind over the layers, stored as float16 when the checkpoint's are
(exact_float16), else float32; the new keys and values written straight into the stacked caches; the
cross K/V read once per step for all the beams of an audio.  See `_kernels` for the kernels and the
reasons behind them (float16 and 512-bit vectors through LLVM intrinsics).  compute_type="int8" (on a CPU with
AVX-512 VNNI): every op of contract.INT8_OPS runs on `_int8`'s vpdpbusd kernels, its int8 linears the
reference's bits; the logits of decoder_step stay float32 (float16 storage where exact).  The module imports without
Numba (the registry lists it at no cost): Numba and the kernels are imported by `load`, when the backend
is chosen; without Numba installed the backend reports itself unavailable with the reason.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import time
from typing import NamedTuple
from types import SimpleNamespace

import numpy as np

from whisperkit.backend import (AttentionPair, Backend, Linear, MlpWeights, Norm, check_kv_step, check_stem, check_step, draft_blocks, exact_float16, f32c, f32c_group,
                                group_arrays, hookimpl, rows_f32, weight_group, weight_matrices)
from whisperkit.threads import short_blas_spin

def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist) if importlib.util.find_spec(dist) is not None else None
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None


_VERSION = _installed("numba")
_IMPORT_ERROR = None if _VERSION else "Numba is not installed; install the 'numba' extra"
numba = None  # the module, imported by _numba() when the backend is loaded


def _numba():
    global numba
    if numba is None:
        import numba as nb
        numba = nb
    return numba

_K = None  # the kernels module, imported on first use (it compiles/loads the kernels)


def _kern():
    global _K
    if _K is None:
        from . import _kernels as k
        _K = k
    return _K


_MODULES: dict = {}  # the kernel modules imported so far, by name: a decode step asks for them several times, and a
#                    relative import statement runs importlib's Python each time (several microseconds, caches cold)


def _int8_kernels():
    """The int8 kernels (imported on first use, after `_kernels`)."""
    m = _MODULES.get("_int8")
    if m is None:
        _kern()
        from . import _int8 as m
        _MODULES["_int8"] = m
    return m


#: The ops of contract.INT8_OPS this backend runs in int8 itself (`_int8`): all of them, for widths of multiples
#: of 16 (`NumbaBackend.supports_compute`); the others run on the reference's int8 path.
_INT8_NATIVE = ("linear", "mlp_block", "encoder_layer", "decoder_layer", "decoder_step")


def _step_kernels():
    """The decoder step's kernels (imported on first use, after `_kernels`)."""
    m = _MODULES.get("_step")
    if m is None:
        _kern()
        from . import _step as m
        _MODULES["_step"] = m
    return m


def _encoder_kernels():
    """The encoder layer's kernel (imported on first use, after `_kernels`)."""
    m = _MODULES.get("_encoder")
    if m is None:
        _kern()
        from . import _encoder as m
        _MODULES["_encoder"] = m
    return m


_F32 = np.float32


@functools.lru_cache(maxsize=None)
def _vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI (vpdpbusd), which the int8 kernels are written for: /proc/cpuinfo's flags
    (cheap: the registry reads `compute_types` when it lists the backends), else LLVM's view of the host."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512_vnni" in line.split()
    except OSError:
        pass
    try:
        import llvmlite.binding as llb
        return bool(llb.get_host_cpu_features().get("avx512vnni"))
    except Exception:  # noqa: BLE001  (no llvmlite: no Numba either)
        return False


def _hot_signatures():
    """(kernel, signature) of every float32 kernel a transcription on a float16 checkpoint calls, with the types
    it calls them with.  `load` opens those every compute type calls at once: the first one pays Numba's one-time
    set-up (about 0.2 s), and `Whisper` runs `load` on a thread while it reads the weights.  The float32 layers'
    kernels (`_OPENED_AT_PREPARE`) open when a float32 model prepares them: an int8 model never calls them, and
    each holds ~2-8 MiB once open.  A signature missing here is only opened later, at its first call
    (tests/test_numba_backend.py checks the list)."""
    from numba import types as t
    K, S, E = _kern(), _step_kernels(), _encoder_kernels()
    f = [None] + [t.Array(t.float32, nd, "C") for nd in (1, 2, 3, 4)]
    h = [None, None] + [t.Array(t.uint16, nd, "C") for nd in (2, 3, 4)]
    i = t.int64
    layer = (f[2], f[2], h[4], f[2], h[4], f[2]) * 3  # per kind of layer part: LN weight, bias; matrix (packed), bias
    views = t.Array(t.float32, 2, "A", readonly=True)  # encoder_stem's rows over overlapping memory
    ids = t.Array(t.int64, 1, "C")
    pick_args = (f[2], t.Array(t.int64, 2, "C"), i, ids, ids, t.boolean, i, i, i, i, f[2])  # then the picks' outputs
    return [
        (E.encoder_stem_kernel, (views, f[3], f[1], f[2], views, f[3], f[1], f[2], f[2], i, i)),
        (K.gelu_kernel, (f[1], f[1], i)),
        (K.log_softmax_kernel, (f[2], f[2], i)),
        (K.greedy_pick_kernel, pick_args + (t.Array(t.int64, 1, "C"), f[1])),
        (K.beam_pick_kernel, pick_args + (t.Array(t.int64, 2, "C"), f[2], i)),
        (K.logsumexp_kernel, (f[2], f[1])),
        (K.top_k_kernel, (f[2], i, t.Array(t.int64, 2, "C"), i)),
        (E.encoder_layer_kernel, (f[2], i, i) + (f[1], f[1], f[3], f[1], f[3], f[1]) + (f[1], f[1], f[3], f[1], f[3], f[1])
         + (i, i, i)),
        (K.layer_norm_kernel, (f[2], f[1], f[1], f[2], i)),
        (E.linear_rows_kernel, (f[2], f[3], f[1], f[2], i, i)),
        (S.decoder_step_kernel, (f[2], i, i, f[4], f[4], f[4], f[4], i, t.Array(t.int64, 1, "C")) + layer
         + (f[1], f[1], h[3], t.Array(t.int64, 1, "C"), f[2], i, t.Array(t.float32, 6, "C"), t.Array(t.float32, 6, "C"))
         + (f[4], f[4], t.Array(t.uint16, 5, "C"), h[4], f[2], ids, f[2])),
        (S.pack_cross, (f[4], f[4], i, t.Array(t.float32, 6, "C"), t.Array(t.float32, 6, "C"))),
        (S.project_cross, (f[3], f[4], f[3], f[2], h[4], f[2], t.Array(t.float32, 6, "C"), t.Array(t.float32, 6, "C"))),
        (S.embedding_rows_kernel, (h[3], t.Array(t.int64, 1, "C"), i, f[2], f[2])),
    ]


#: op -> the float32 kernel of `_hot_signatures` that op's float32 prepare opens (`_open_float32_overload`)
_OPENED_AT_PREPARE = {"encoder_layer": "encoder_layer_kernel", "decoder_step": "decoder_step_kernel"}


def _open_float32_overload(op: str) -> None:
    """The hot float32 kernel of `op` (`_OPENED_AT_PREPARE`), opened from the on-disk cache; LLVM's pages are
    released again when it was not open yet."""
    for kernel, sig in _hot_signatures():
        if kernel.py_func.__name__ == _OPENED_AT_PREPARE[op]:
            before = len(kernel.overloads)
            kernel.compile(sig)
            if len(kernel.overloads) > before:
                release_code_pages("libllvmlite")


def release_code_pages(library: str) -> int:
    """Drop this process's resident pages of `library`'s read-only file mappings (MADV_DONTNEED; Linux); returns the
    bytes of the mappings released.  LLVM's initialisation touches ~68 MB of libllvmlite's code and constants, which
    stay resident although no kernel needs LLVM once loaded (a cold `whisperkit transcribe` peaked at ~356 MiB, of
    which these were 68).  The pages stay in the page cache: a later compile (a new signature) faults back what it
    uses."""
    import ctypes
    spans = _code_spans(library)
    if not spans:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for lo, hi in spans:
        if libc.madvise(lo, hi - lo, 4) == 0:  # 4: MADV_DONTNEED
            released += hi - lo
    return released


def _code_spans(library: str) -> tuple[tuple[int, int], ...]:
    """(start, end) of `library`'s read-only file mappings no byte of which was written (smaps "Anonymous: 0", so no
    relocated page: MADV_DONTNEED on a written private page would bring back the file's unrelocated bytes).  Read
    once (~5 ms of parsing smaps) after the library is loaded: its mappings do not change.  Empty without /proc
    (not Linux) or before the library is loaded."""
    import re
    if library in _SPANS:
        return _SPANS[library]
    spans, cur = [], None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                    p = line.split()
                    cur = None
                    if len(p) > 5 and library in p[5].rsplit("/", 1)[-1] and p[1] in ("r-xp", "r--p"):
                        lo, hi = (int(v, 16) for v in p[0].split("-"))
                        cur = [lo, hi, None]
                        spans.append(cur)
                elif cur is not None and line.startswith("Anonymous:"):
                    cur[2] = int(line.split()[1])
    except OSError:
        return ()
    found = tuple((lo, hi) for lo, hi, anon in spans if anon == 0)
    if found:
        _SPANS[library] = found
    return found


_SPANS: dict[str, tuple[tuple[int, int], ...]] = {}


def _open_int8_overload(op, w) -> None:
    """The int8 kernel a transcription calls for `op`, opened now (from the on-disk cache) with the types of its call,
    rather than in the first transcription; LLVM's code pages are then released again (as `_open_float32_overload`
    does for the float32 layers).  Ops a transcription does not call (the
    int8 decoder_layer and mlp_block of word timing and tests) open at their first call."""
    K = _int8_kernels()
    f2, f4, i64 = np.empty((1, 1), _F32), np.empty((1, 1, 1, 1), _F32), np.empty(1, np.int64)
    if op == "linear":
        kernel, args = K.linear_int8_kernel, (f2, w.packed, w.wsum, w.scale, w.bias, f2, 1)
    elif op == "encoder_layer":
        kernel, args = K.encoder_layer_int8_kernel, (f2, 1, 1, *w.arrays, 1, 1, 1)
    elif op == "decoder_step":
        kernel, args = K.decoder_step_int8_kernel, (f2, 1, 1, f4, f4, f4, f4, 1, i64, *w.arrays, i64, f2, 1)
    else:
        return
    nb = _numba()
    before = len(kernel.overloads)
    kernel.compile(tuple(nb.typeof(a) for a in args))
    if len(kernel.overloads) > before:
        release_code_pages("libllvmlite")


def _warm_up():
    """A window's first kernel, the encoder's stem, at a window's sizes (~10 ms; `load` runs on a thread while the
    weights are read): it runs on the packed tiles, as the encoder's layers do.  Without such a warm-up the first window
    of a process paid ~60 ms more in its first kernels (measured with the model's own kernels and a fresh process, stop
    36; a small GEMM, or only warming the thread pool or the allocator, did not remove it).  The kernel is among
    `_hot_signatures`, opened before."""
    rng = np.random.default_rng(0)  # random values: on zeros and ones the kernel took twice as long as on a window's
    mel, h1 = rng.standard_normal((3002, 80), dtype=_F32), np.zeros((3002, 384), _F32)
    views = (np.lib.stride_tricks.as_strided(mel, (3000, 240), (320, 4), writeable=False),
             np.lib.stride_tricks.as_strided(h1, (1500, 1152), (3072, 4), writeable=False))
    w1, w2 = (_step_kernels().pack_blocks(rng.standard_normal((384, k), dtype=_F32) / np.float32(k)) for k in (240, 1152))
    b = np.zeros(384, _F32)
    _encoder_kernels().encoder_stem_kernel(views[0], w1, b, h1, views[1], w2, b, np.zeros((1500, 384), _F32),
                                           np.empty((1500, 384), _F32), _ROW_BLOCK, _nt())


def _nt():
    """Numba's current thread count, passed to the kernels (calling numba.get_num_threads() inside a
    kernel embeds a ctypes pointer, which makes the function uncacheable).  Once Numba's threads are up, read
    from the threading layer's own getter: numba.get_num_threads() takes two locks first (one a process lock),
    ~30 us a decode step with the caches cold."""
    if _NUM_THREADS:
        n = _NUM_THREADS[0]()
        if n > 0:
            return n
    n = _numba().get_num_threads()  # launches the threads
    from numba.np.ufunc import parallel
    getter = getattr(parallel, "_get_num_threads", None)  # Numba's private ctypes getter (0.5x-0.6x)
    if callable(getter) and not _NUM_THREADS and getter() == n:
        _NUM_THREADS.append(getter)
    return n


_NUM_THREADS: list = []

#: Row-block sizes.  Single-threaded sgemm on one block gets markedly faster from 128 to ~256-512 rows
#: (it packs the whole weight for every call, and its small-M edge costs more), while the per-thread
#: (rows, 4 n_state) fc1 block and (rows, n_ctx) score block should stay near the 2 MB L2: 384 rows
#: for the row phases (a 1500-row window splits into 4 blocks of 375), 256 query rows per attention task.
_ROW_BLOCK = 384
_ATTN_BLOCK = 256
#: The decoder step runs parallel only from this many rows (batch * n_q) on: a beam of 5 already gives
#: each thread enough work per region (docs/bench-results.md, issue 14), a single greedy row does not.
_DECODE_PARALLEL_ROWS = 2
_KEEP_BUFFER_ROWS = 16  # decode steps with up to this many rows reuse their work buffers
_LINEAR_ROW_BLOCKS = 32  # `linear` splits rows over the threads from this many rows on, else blocks of outputs


def _unit_last(a):
    a = np.asarray(a)
    if a.dtype != _F32 or a.strides[-1] != 4 or a.ndim != 3:
        a = np.ascontiguousarray(a, dtype=_F32)
    return a


def _int8_group(group):
    """A coarse op's weights for the int8 kernels: norms float32, each linear packed by `_int8.pack_int8` as
    (packed, wsum, scale, bias), flattened in the contract's order."""
    pack = _int8_kernels().pack_int8
    arrays: list = []

    def walk(g):
        for v in g:
            if isinstance(v, MlpWeights):
                walk(v)
            elif isinstance(v, Linear):
                arrays.extend(pack(v.weight, v.bias)[:4])
            elif isinstance(v, Norm):
                arrays.extend((f32c(v.weight), f32c(v.bias)))

    walk(group)
    return SimpleNamespace(int8=True, n_head=getattr(group, "n_head", None), arrays=tuple(arrays))


def _step_arrays(g, linear) -> tuple:
    """decoder_step's arrays in the step kernels' order: per layer part stacked over the layers, each LayerNorm's
    weight and bias float32, each linear as `linear(get)` gives it (`get(layer)` -> its Linear), then the final
    LayerNorm and the logits weight (float16 bits where exact, else float32), packed by `_step.pack_blocks`."""
    def norm(get):
        return (np.stack([f32c(get(layer).weight) for layer in g.layers]),
                np.stack([f32c(get(layer).bias) for layer in g.layers]))

    logits = exact_float16(g.logits.weight)
    return (*norm(lambda l: l.attn_ln), *linear(lambda l: l.qkv), *linear(lambda l: l.out),
            *norm(lambda l: l.cross_ln), *linear(lambda l: l.cross_q), *linear(lambda l: l.cross_out),
            *norm(lambda l: l.mlp.ln), *linear(lambda l: l.mlp.fc1), *linear(lambda l: l.mlp.fc2),
            f32c(g.ln.weight), f32c(g.ln.bias),
            _step_kernels().pack_blocks(f32c(g.logits.weight) if logits is None else logits.view(np.uint16)))


def _embedding_rows(packed: np.ndarray, n_vocab: int):
    """The contract's decoder_step `embedding_rows` over the packed logits weight (`_step.pack_blocks`): the step
    keeps the token embedding only in that layout, and the model reads its rows from there."""
    kernel = _step_kernels().embedding_rows_kernel
    n = packed.shape[1]
    nothing = np.zeros((0, n), _F32)

    def rows(tokens, plus=None) -> np.ndarray:
        t = np.asarray(tokens)
        flat = np.ascontiguousarray(t, np.int64).reshape(-1)
        out = np.empty((flat.shape[0], n), _F32)
        # one call, as a greedy step's embedding is made between two steps whose weights left the caches cold: the
        # fancy indexing, the range checks, the widening and the sum had taken ~50 us a step there
        add = nothing if plus is None else f32c(plus).reshape(-1, n)
        if add.shape[0] and flat.shape[0] % add.shape[0]:
            raise ValueError(f"embedding_rows: {add.shape[0]} rows to add do not divide {flat.shape[0]} tokens")
        bad = kernel(packed, flat, n_vocab, out, add)
        if bad >= 0:
            raise IndexError(f"token {flat[bad]} is outside the vocabulary (0..{n_vocab - 1})")
        return out.reshape(t.shape + (n,))
    return rows


class _ThreadChoice:
    """Thread count of the one-token decode steps of one row count: every thread, or one, whichever has been
    faster lately.  A step streams 64-75 MB (tiny.en), more than one core's bandwidth brings in the time, so
    on an idle machine every thread wins; but its ~33 parallel regions each wait for the slowest thread,
    and on an oversubscribed machine a descheduled thread makes a region cost a time slice, where one
    thread is many times faster.  Both choices compute the same bits (decoder_step_kernel splits work
    independently of the thread count), so switching changes only the time.  The other choice is re-timed
    every PROBE steps, less often while it stays far behind."""

    PROBE = 32
    WARM = 4  # steps of each choice timed before choosing
    #: a choice this many times slower than the best is re-timed 8 times less often: each re-timing costs a
    #: slow step, and on an idle machine one thread stays well behind (docs/bench-results.md, issue 14)
    FAR = 1.5

    def __init__(self, nt):
        self.time = {nt: None, 1: None}  # exponential average of the step time
        self.steps = 0
        self.order = None  # (best, other, every): set by record once both are timed

    def pick(self, nt):
        if nt not in self.time:
            self.time, self.steps, self.order = {nt: None, 1: None}, 0, None
        self.steps += 1
        if self.steps <= 2 * self.WARM or self.order is None:  # alternate at first: a lone first
            return nt if self.steps % 2 else 1                 # time may carry one-off costs
        best, other, every = self.order
        return other if self.steps % every == 0 else best

    def record(self, nt, dt):
        t = self.time.get(nt)
        # down at once (a first call pays one-off costs), up gradually and by at most a quarter a step: one step
        # the machine stole (19 ms among 3 ms ones) made one thread look better and ran 18 steps on it
        self.time[nt] = dt if t is None or dt < t else 0.75 * t + 0.25 * min(dt, 2 * t)
        (a, ta), (b, tb) = self.time.items()
        if ta is not None and tb is not None:  # the choice, made here once per step rather than at each pick
            best, other = (a, b) if ta <= tb else (b, a)
            self.order = best, other, self.PROBE * (8 if self.time[other] > self.FAR * self.time[best] else 1)


_NO_CROSS = np.empty((0,) * 6, _F32)  # decoder_step_kernel's cross_kp, cross_vp when it folds
#: decoder_step_kernel's fold arrays when it reads the cross K/V
_NO_FOLD = (np.empty((0,) * 4, _F32), np.empty((0,) * 4, _F32), np.empty((0,) * 5, np.uint16),
            np.empty((0,) * 4, np.uint16), np.empty((0, 0), _F32))
_NO_DRAFT = np.empty(0, np.int64)  # decoder_step_kernel's draft_blocks and hidden of a step that is no draft
_NO_HIDDEN = np.empty((0, 0), _F32)


def _head(packed: np.ndarray, n_vocab: int):
    """The contract's decoder_step `head` over the packed logits weight: the logits of final-LayerNormed rows, by
    the kernel the step's own logits run (`_step.gemvt`; each row's bits whatever the other rows and threads)."""
    gemvt = _step_kernels().gemvt

    def head(h) -> np.ndarray:
        h = f32c(h)
        if h.ndim != 2 or h.shape[1] != packed.shape[1]:
            raise ValueError(f"head: rows must be (rows, {packed.shape[1]}); got shape {h.shape}")
        out = np.empty((h.shape[0], n_vocab), _F32)
        gemvt(h, packed, None, out, out, False, _nt())
        return out
    return head


#: the most query rows per audio (rows x new tokens) whose step folds the cross K/V projection into its
#: cross-attention (`_step.fold_attn`): a greedy step, a multilingual prompt (3 tokens).  Its products grow with the
#: rows (27.6 M multiply-adds a row on tiny) where the K/V's read does not: 5 beams read the K/V
FOLD_ROWS = 4


def _audio_fold(cross_kv, n_head):
    """The contract's decoder_step `audio_fold`: given every layer's cross K/V projection (weight (2 n, n_a), bias),
    W_k^T per head and W_v packed as float16 bits, b_v float32; None when a weight is not exactly float16 (the
    kernel takes float16 bits only) or the audio width is not a multiple of the packing block.  Its `cross` lays a
    beam window's K/V out from the features with W_k (float32) and the same W_v (`_step.project_cross`)."""
    pack = _step_kernels().pack_blocks
    wkt, wvp, bv, wk, bk = [], [], [], [], []
    for weight, bias in cross_kv:
        half = exact_float16(weight)
        n = half.shape[0] // 2 if half is not None else 0
        if half is None or half.shape[1] % _step_kernels().PACK_BLOCK or n != n_head * _step_kernels().PACK_BLOCK:
            return None  # fold_attn reads W_v by heads of one packing block
        bits = half.view(np.uint16)
        dh = n // n_head
        wkt.append(np.stack([pack(np.ascontiguousarray(bits[h * dh:(h + 1) * dh].T)) for h in range(n_head)]))
        wvp.append(pack(np.ascontiguousarray(bits[n:])))
        bv.append(f32c(np.asarray(bias)[n:]))
        wk.append(half[:n].astype(np.float32))
        bk.append(f32c(np.asarray(bias)[:n]))
    folded = (np.stack(wkt), np.stack(wvp), np.stack(bv))
    wk, bk = np.stack(wk), np.stack(bk)

    def packed(x):
        return np.stack([pack(x[b]) for b in range(x.shape[0])])

    def layout(audio_features):
        """(batch_c, n_audio, n_a) -> the features packed as a weight of n_audio outputs and transposed, per audio,
        then the folded weights: what decoder_step takes as `audio`."""
        x = f32c(audio_features)
        return (packed(x), np.stack([pack(np.ascontiguousarray(x[b].T)) for b in range(x.shape[0])])) + folded

    def cross(audio_features):
        """(batch_c, n_audio, n_a) -> what `cross_layout` gives for the K/V of these features, bit for bit."""
        x = f32c(audio_features)
        kout, vout = _step_kernels().cross_arrays(wk.shape[0], x.shape[0], x.shape[1], wk.shape[1], n_head)
        _step_kernels().project_cross(x, packed(x), wk, bk, folded[1], folded[2], kout, vout)
        return CrossLayout(kout, vout, x.shape[1])

    return SimpleNamespace(rows=FOLD_ROWS, layout=layout, cross=cross)


def _kv_shapes(w, batch_c: int, n_audio: int) -> np.ndarray:
    """What decoder_step_kernel takes as cross_k and cross_v when it reads no K/V arrays (it folds them, or reads a
    layout made from the features): their shapes only, one empty array per shape."""
    key = (batch_c, n_audio)
    shapes = w.shaped.get(key)
    if shapes is None:
        shapes = w.shaped[key] = np.empty((w.n_layer, batch_c, n_audio, 0), _F32)
    return shapes


class CrossLayout(NamedTuple):
    """The contract's cross layout of the numba step: the keys and values by block and head (`_step.pack_cross`), and
    the window's key count (the blocks pad it), which a step over a layout with no K/V arrays takes its shape from."""
    k: np.ndarray
    v: np.ndarray
    n_keys: int


class NumbaBackend(AttentionPair, Backend):
    name = "numba"
    shared_cross_kv = True  # decoder_layer takes one cross K/V row per audio (the contract)
    padded_steps = True  # decoder_step takes left-padded rows (the contract's `pad`)
    version = _VERSION or "missing"
    description = "Numba parallel kernels (prange over rows/heads), GEMMs via NumPy's OpenBLAS called from Numba"
    #: first for `auto`: the fastest warm and cold on tiny.en and base (docs/bench-results.md, issues 14 and 15)
    auto_rank = 40

    @property
    def compute_types(self):
        """int8: the contract's scheme on AVX-512 VNNI (`_int8`), for the ops in `_INT8_NATIVE`; declared only on
        a CPU with VNNI (elsewhere every int8 op would run on the reference)."""
        return ("float32", "int8") if _vnni() else ("float32",)

    def unavailable_reason(self):
        return _IMPORT_ERROR

    def load(self) -> None:
        if _IMPORT_ERROR is not None:
            raise ImportError(_IMPORT_ERROR)
        _numba()
        # The kernels leave NumPy's BLAS on the threads they found (`_kernels.blas_single`), so its idle workers,
        # woken by the log-mel's GEMM, would spin for ~0.1 s while the encoder's kernels run: jfk greedy took
        # 0.38 s against 0.33 (stop 36).  They sleep at once instead, as for pythran and onnxruntime.
        short_blas_spin()
        # LLVM's pages are dropped after each stage, not once at the end: the stages touch different ones, and
        # together they were the peak of a cold command (release_code_pages)
        release_code_pages("libllvmlite")
        for kernel, sig in _hot_signatures():
            if kernel.py_func.__name__ not in _OPENED_AT_PREPARE.values():
                kernel.compile(sig)  # from the on-disk cache (compiled once, on the first run after install)
                release_code_pages("libllvmlite")
        _warm_up()

    def supports_compute(self, op, compute_type, **args):
        if compute_type == "float32":
            return True
        if compute_type not in self.compute_types or op not in _INT8_NATIVE:
            return False
        # the kernels take blocks of 16 inputs (every Whisper width); the step's layers also 16-channel groups
        mats = list(weight_matrices(args))
        if op == "linear":  # any n_out (padded to 16 channels)
            return all(w.shape[1] % 16 == 0 for w in mats)
        mats = [w for w in mats if w is not args.get("logits_weight")]  # the step's logits are float32
        return all(w.shape[0] % 16 == 0 and w.shape[1] % 16 == 0 for w in mats)

    def prepare(self, op, weights, ops):
        if ops.compute_type == "int8" and op in _INT8_NATIVE:
            w = getattr(self, f"prepare_{op}_int8")(**weights)
            _open_int8_overload(op, w)
            return w
        return super().prepare(op, weights, ops)

    def set_num_threads(self, n):
        if _IMPORT_ERROR is None:
            nb = _numba()
            nb.set_num_threads(max(1, min(int(n), nb.config.NUMBA_NUM_THREADS)))

    # ---- fine ops ---------------------------------------------------------------------------------
    def prepare_linear(self, weight, bias=None):
        """The weight packed by blocks of outputs (`_step.pack_blocks`), float32: `_encoder.linear_rows_kernel`."""
        weight = f32c(weight)
        b = np.zeros(weight.shape[0], _F32) if bias is None else f32c(bias)
        return SimpleNamespace(packed=_step_kernels().pack_blocks(weight), bias=b, n_out=weight.shape[0],
                               n_in=weight.shape[1])

    def prepare_linear_int8(self, weight, bias=None):
        """The contract's int8 weights (`contract.quantize_int8`), held once, packed for vpdpbusd (`_int8.pack_int8`)."""
        wp, wsum, scale, b, n_out, block = _int8_kernels().pack_int8(weight, bias)
        return SimpleNamespace(int8=True, packed=wp, wsum=wsum, scale=scale, bias=b, n_out=n_out, n_in=wsum.shape[1] * block)

    def linear(self, x, w):
        x = np.asarray(x)
        if getattr(w, "int8", False):
            if x.shape[-1] != w.n_in:
                raise ValueError(f"linear: input has {x.shape[-1]} features, weight expects {w.n_in}")
            x2 = rows_f32(x)
            out = np.empty((x2.shape[0], w.scale.shape[0]), _F32)
            _int8_kernels().linear_int8_kernel(x2, w.packed, w.wsum, w.scale, w.bias, out, _nt())
            if w.n_out != out.shape[1]:
                out = np.ascontiguousarray(out[:, :w.n_out])
            return out.reshape(x.shape[:-1] + (w.n_out,))
        if x.shape[-1] != w.n_in:
            raise ValueError(f"linear: input has {x.shape[-1]} features, weight expects {w.n_in}")
        x2 = rows_f32(x)
        out = np.empty((x2.shape[0], w.n_out), _F32)
        if x2.shape[0] >= _LINEAR_ROW_BLOCKS:
            _encoder_kernels().linear_rows_kernel(x2, w.packed, w.bias, out, _ROW_BLOCK, _nt())
        else:  # few rows: the blocks of outputs over the threads, as the decode step's products
            _step_kernels().gemvt(x2, w.packed, w.bias, out, out, False, _nt())
        return out.reshape(x.shape[:-1] + (w.n_out,))

    def prepare_conv1d(self, weight, bias, stride, padding):
        weight = np.asarray(weight, _F32)
        return SimpleNamespace(weight=f32c(weight.transpose(2, 0, 1)),  # (k, c_out, c_in): one GEMM operand per tap
                               bias=f32c(bias), stride=int(stride), padding=int(padding), k=weight.shape[2])

    def conv1d(self, x, w):
        x = np.asarray(x, _F32)
        b, c_in, t = x.shape
        k, c_out, wc_in = w.weight.shape
        if c_in != wc_in:
            raise ValueError(f"conv1d: input has {c_in} channels, weight expects {wc_in}")
        s, p = w.stride, w.padding
        t_out = (t + 2 * p - k) // s + 1
        t_ph = t_out + (k - 1) // s  # frames each phase must hold
        out = np.empty((b, c_out, t_out), _F32)
        # The padded input split into `stride` phases (xs[ph, :, j] = xpad[:, j*stride + ph]): one copy of
        # the input, against k copies for im2col; every tap is then a plain strided GEMM operand.
        xs = np.zeros((s, c_in, t_ph), _F32)
        xpad = np.zeros((c_in, t + 2 * p), _F32)
        for i in range(b):
            xpad[:, p:p + t] = x[i]
            for ph in range(s):
                src = xpad[:, ph::s][:, :t_ph]
                xs[ph, :, :src.shape[1]] = src
            _kern().conv1d_kernel(xs, w.weight, w.bias, out[i], s, t_out, _nt())
        return out

    def prepare_layer_norm(self, weight, bias):
        return SimpleNamespace(weight=f32c(weight), bias=f32c(bias))

    def layer_norm(self, x, w):
        x = np.asarray(x)
        x2 = rows_f32(x)
        out = np.empty_like(x2)
        _kern().layer_norm_kernel(x2, w.weight, w.bias, out, _nt())
        return out.reshape(x.shape)

    def log_softmax(self, x):
        x = np.asarray(x)
        if x.size == 0:
            return np.empty(x.shape, _F32)
        rows = f32c(x).reshape(-1, x.shape[-1])
        y = np.empty_like(rows)
        _kern().log_softmax_kernel(rows, y, _nt())
        return y.reshape(x.shape)

    @staticmethod
    def _pick_args(x, tokens, rules) -> tuple:
        """What both pick kernels take after the logits x: the token histories, the filters as data (`decoding.PickRules`)
        and the scratch of the timestamps' log-probabilities, (rows, n_vocab - timestamp_begin)."""
        rows, n_vocab = x.shape
        return (np.ascontiguousarray(tokens, np.int64), rules.sample_begin, rules.blank, rules.suppress, rules.timestamps,
                rules.no_timestamps, rules.timestamp_begin, rules.eot, rules.max_initial,
                np.empty((rows, max(n_vocab - rules.timestamp_begin, 0)), _F32))

    def greedy_pick(self, logits, tokens, rules):
        """The optional slot of the decode loop (`whisperkit.contract.GREEDY_PICK`): `_kernels.greedy_pick_kernel`, one
        call where the filters and GreedyDecoder made ~40 NumPy calls, each after a step left the caches cold."""
        x = f32c(logits)
        tok = np.empty(x.shape[0], np.int64)
        lp = np.empty(x.shape[0], _F32)
        _kern().greedy_pick_kernel(x, *self._pick_args(x, tokens, rules), tok, lp)
        return tok, lp

    def beam_pick(self, logits, tokens, rules, k):
        """The optional slot of the decode loop (`whisperkit.contract.BEAM_PICK`): `_kernels.beam_pick_kernel`, one
        call for a beam step's filters, log_softmax and top_k, where they made ~50 NumPy calls and wrote every
        row's log-probabilities."""
        x = f32c(logits)
        rows, n_vocab = x.shape
        k = int(k)
        if not 1 <= k <= n_vocab:
            raise ValueError(f"beam_pick: k must be in 1..{n_vocab} (the logits' columns); got {k}")
        top = np.empty((rows, k), np.int64)
        lp = np.empty((rows, k), _F32)
        _kern().beam_pick_kernel(x, *self._pick_args(x, tokens, rules), top, lp, _nt())
        return top, lp

    def logsumexp(self, x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] == 0:
            raise ValueError(f"logsumexp: x must have at least one column; got shape {x.shape}")
        rows = f32c(x).reshape(-1, x.shape[-1])
        y = np.empty(rows.shape[0], _F32)
        _kern().logsumexp_kernel(rows, y)
        return y.reshape(x.shape[:-1])

    def top_k(self, x, k):
        x = f32c(x)
        k = int(k)
        if x.ndim != 2 or not 1 <= k <= x.shape[1]:
            raise ValueError(f"top_k: x must be (rows, n) with 1 <= k <= n; got shape {x.shape} and k={k}")
        out = np.empty((x.shape[0], k), np.int64)
        _kern().top_k_kernel(x, k, out, _nt())
        return out

    def gelu(self, x):
        x = np.asarray(x)
        flat = np.ascontiguousarray(x, dtype=_F32).reshape(-1)
        out = np.empty_like(flat)
        _kern().gelu_kernel(flat, out, _nt())
        return out.reshape(x.shape)

    def _attention(self, q, k, v, n_head, causal, offset, want_p):
        q, k = _unit_last(q), _unit_last(k)
        v = _unit_last(v) if v is not None else k
        b, n_q, d = q.shape
        n_kv = k.shape[1]
        if causal and offset + n_q > n_kv:
            raise ValueError(f"attention: causal with offset {offset} needs {offset + n_q} keys, got {n_kv}")
        K = _kern()
        if want_p:
            p = np.empty((b, n_head, n_q, n_kv), _F32)
            out_addr = 0
        else:
            p = np.empty((1, 1, 1, 1), _F32)
            out = np.empty((b, n_q, d), _F32)
            out_addr = out.ctypes.data
        st = lambda a: (a.strides[0] // 4, a.strides[1] // 4)  # noqa: E731
        (qb, qr), (kb, kr), (vb, vr) = st(q), st(k), st(v)
        K.attention_kernel(q.ctypes.data, qb, qr, k.ctypes.data, kb, kr, v.ctypes.data, vb, vr,
                           out_addr, n_q * d, d, b, n_q, n_kv, n_head, d // n_head, bool(causal), int(offset),
                           _ATTN_BLOCK, p, _nt())
        return p if want_p else out

    # ---- coarse ops ---------------------------------------------------------------------------------
    def prepare_mlp_block(self, **weights):
        return f32c_group(weight_group("mlp_block", weights))

    def prepare_mlp_block_int8(self, **weights):
        return _int8_group(weight_group("mlp_block", weights))

    def mlp_block(self, x, w):
        x = np.asarray(x)
        x2 = rows_f32(x)
        y = np.empty_like(x2)
        if getattr(w, "int8", False):
            _int8_kernels().mlp_int8_kernel(x2, *w.arrays, y, _ROW_BLOCK, _nt())
        else:
            _kern().mlp_kernel(x2, *group_arrays(w), y, _ROW_BLOCK, _nt())
        return y.reshape(x.shape)

    def prepare_encoder_stem(self, conv1_weight, conv1_bias, conv2_weight, conv2_bias, positional_embedding):
        """Each convolution's weight as one of c_out outputs over (tap, c_in) inputs, packed (`_step.pack_blocks`),
        float32 as the encoder layers' are: `_encoder.encoder_stem_kernel`."""
        def packed(w):  # (c_out, c_in, k) -> (c_out, k * c_in), tap-major: a row of the kernel's views
            w = np.asarray(w, _F32)
            return _step_kernels().pack_blocks(f32c(w.transpose(0, 2, 1).reshape(w.shape[0], -1)))

        w1, w2 = np.shape(conv1_weight), np.shape(conv2_weight)
        if w1[2] != 3 or w2 != (w1[0], w1[0], 3):
            raise ValueError(f"encoder_stem: conv1_weight must be (n_state, n_mels, 3) and conv2_weight (n_state, n_state, 3); "
                             f"got {w1} and {w2}")
        return SimpleNamespace(w1=packed(conv1_weight), b1=f32c(conv1_bias), w2=packed(conv2_weight), b2=f32c(conv2_bias),
                               pos=f32c(positional_embedding), n_mels=w1[1], n_state=w1[0])

    def encoder_stem(self, mel, w):
        n_ctx = w.pos.shape[0]
        mel = check_stem(mel, w.n_mels, n_ctx)
        b, n_mels, t = mel.shape
        n = w.n_state
        out = np.empty((b, n_ctx, n), _F32)
        padded = np.zeros((t + 2, n_mels), _F32)  # the mel time-major, a zero frame at each end (conv1's padding)
        h1 = np.empty((t + 2, n), _F32)
        h1[0] = h1[t + 1] = 0.0  # conv2's padding (the last row is read only for an odd frame count)
        # rows with overlapping memory: row t of mel_rows is padded[t:t + 3] flattened, row r of h1_rows is h1[2r:2r + 3]
        mel_rows = np.lib.stride_tricks.as_strided(padded, (t, 3 * n_mels), (4 * n_mels, 4), writeable=False)
        h1_rows = np.lib.stride_tricks.as_strided(h1, (n_ctx, 3 * n), (8 * n, 4), writeable=False)
        for i in range(b):
            padded[1:t + 1] = mel[i].T
            _encoder_kernels().encoder_stem_kernel(mel_rows, w.w1, w.b1, h1, h1_rows, w.w2, w.b2, w.pos, out[i], _ROW_BLOCK,
                                                   _nt())
        return out

    def prepare_encoder_layer_int8(self, **weights):
        return _int8_group(weight_group("encoder_layer", weights))

    def prepare_encoder_layer(self, **weights):
        """The four linears' weights packed by blocks of outputs (`_step.pack_blocks`), float32: `_encoder`."""
        _open_float32_overload("encoder_layer")
        g = f32c_group(weight_group("encoder_layer", weights))
        pack = _step_kernels().pack_blocks
        arrays = tuple(pack(a) if a.ndim == 2 else a for a in group_arrays(g))
        return SimpleNamespace(n_head=g.n_head, arrays=arrays)

    def encoder_layer(self, x, w):
        x = np.asarray(x)
        if getattr(w, "int8", False):
            y = _int8_kernels().encoder_layer_int8_kernel(rows_f32(x), x.shape[0], w.n_head, *w.arrays, _ROW_BLOCK,
                                                          _ATTN_BLOCK, _nt())
            return y.reshape(x.shape)
        y = _encoder_kernels().encoder_layer_kernel(rows_f32(x), x.shape[0], w.n_head, *w.arrays, _ROW_BLOCK,
                                                    _ATTN_BLOCK, _nt())
        return y.reshape(x.shape)

    def prepare_decoder_layer(self, **weights):
        g = f32c_group(weight_group("decoder_layer", weights))
        # buffers: row count (<= _KEEP_BUFFER_ROWS) -> preallocated work buffers of the decode step
        return SimpleNamespace(n_head=g.n_head, arrays=group_arrays(g), fc1_rows=g.mlp.fc1.weight.shape[0],
                               buffers={}, dummy=np.empty((1, 1, 1, 1), _F32))

    def prepare_decoder_layer_int8(self, **weights):
        g = _int8_group(weight_group("decoder_layer", weights))
        return SimpleNamespace(int8=True, n_head=g.n_head, arrays=g.arrays, fc1_rows=np.shape(weights["fc1_weight"])[0],
                               buffers={}, dummy=np.empty((1, 1, 1, 1), _F32))

    def decoder_layer(self, x, w, k_cache, v_cache, cross_k, cross_v, offset):
        x = np.asarray(x)
        b, n_q, n = x.shape
        offset = check_kv_step(k_cache, v_cache, offset, n_q)
        x2 = rows_f32(x)
        m = x2.shape[0]
        bufs = w.buffers.get(m)
        if bufs is None:
            e = lambda c: np.empty((m, c), _F32)  # noqa: E731
            bufs = (e(n), e(3 * n), e(n), e(n), e(n), e(w.fc1_rows))
            # Keep them only for the hot token steps (a few rows: one per beam or batched file).  A prompt
            # has a new row count nearly every window; keeping those made a 60-minute run's memory grow.
            if m <= _KEEP_BUFFER_ROWS:
                w.buffers[m] = bufs
        kc, vc = k_cache, v_cache
        direct = (kc.dtype == _F32 and vc.dtype == _F32 and kc.flags.c_contiguous and vc.flags.c_contiguous)
        if not direct:  # write through contiguous copies, then back into the caller's caches
            kc, vc = f32c(k_cache), f32c(v_cache)
        y = np.empty((m, n), _F32)
        # A one-row decode step runs on one thread: its small parallel regions per layer cost more in
        # barriers than they save, catastrophically so when the 2 cores are oversubscribed.  Several rows
        # (beams, batched files, prompts) and the logits GEMV (one large region) run parallel.
        nt = _nt() if m >= _DECODE_PARALLEL_ROWS else 1
        nb = _numba()
        prev_nt = nb.get_num_threads()
        if nt != prev_nt:
            nb.set_num_threads(nt)
        try:
            self._decoder_call(x2, n_q, w, kc, vc, cross_k, cross_v, offset, bufs, y, nt)
        finally:
            if nt != prev_nt:
                nb.set_num_threads(prev_nt)
        if not direct:
            k_cache[:, offset:offset + n_q] = kc[:, offset:offset + n_q]
            v_cache[:, offset:offset + n_q] = vc[:, offset:offset + n_q]
        return y.reshape(b, n_q, n)

    @staticmethod
    def _decoder_call(x2, n_q, w, kc, vc, cross_k, cross_v, offset, bufs, y, nt):
        if getattr(w, "int8", False):
            _int8_kernels().decoder_layer_int8_kernel(x2, n_q, w.n_head, kc, vc, f32c(cross_k), f32c(cross_v), offset,
                                                      *w.arrays, *bufs, y, _ATTN_BLOCK, w.dummy, nt)
            return
        _kern().decoder_layer_kernel(x2, n_q, w.n_head, kc, vc, f32c(cross_k), f32c(cross_v), offset,
                                     *w.arrays, *bufs, y, _ATTN_BLOCK, w.dummy, nt)


    def prepare_decoder_step(self, layers, ln_weight, ln_bias, logits_weight):
        _open_float32_overload("decoder_step")
        g = weight_group("decoder_step", dict(layers=layers, ln_weight=ln_weight, ln_bias=ln_bias,
                                              logits_weight=logits_weight))

        def linear(get):
            """Every layer's matrix packed by blocks of outputs (`_step.pack_blocks`) and stacked, as float16 bits
            (uint16) when all of them are float16 values, else float32; then the biases."""
            ws = [get(layer).weight for layer in g.layers]
            hs = [exact_float16(w) for w in ws]
            pack = _step_kernels().pack_blocks
            mat = np.stack([pack(h.view(np.uint16)) for h in hs]) if all(h is not None for h in hs) else \
                np.stack([pack(f32c(w)) for w in ws])
            return mat, np.stack([f32c(get(layer).bias) for layer in g.layers])

        arrays = _step_arrays(g, linear)
        n_head = g.layers[0].n_head
        return SimpleNamespace(n_layer=len(g.layers), n_head=n_head, arrays=arrays,
                               audio_fold=lambda cross_kv: _audio_fold(cross_kv, n_head),
                               n_vocab=logits_weight.shape[0], embedding_rows=_embedding_rows(arrays[-1], logits_weight.shape[0]),
                               head=_head(arrays[-1], logits_weight.shape[0]),
                               threads={},  # batch rows -> _ThreadChoice of the one-token steps
                               shaped={},  # decoder_step's arrays that depend only on the step's shape
                               # the contract's cross_layout: the window's keys and values by block and head (`_step.pack_cross`)
                               cross_layout=lambda cross_k, cross_v: CrossLayout(
                                   *_step_kernels().cross_layout(f32c(cross_k), f32c(cross_v), n_head), cross_k.shape[2]))

    def prepare_decoder_step_int8(self, layers, ln_weight, ln_bias, logits_weight):
        """The layers' linears in the contract's int8 (`_int8.pack_int8`, stacked per kind over the layers); the
        LayerNorms float32; the logits float32 as in the float32 step (float16 storage where exact)."""
        g = weight_group("decoder_step", dict(layers=layers, ln_weight=ln_weight, ln_bias=ln_bias,
                                              logits_weight=logits_weight))
        pack = _int8_kernels().pack_int8

        def linear(get):
            parts = [pack(*get(layer))[:4] for layer in g.layers]  # packed, wsum, scale, bias
            return tuple(np.stack([p[k] for p in parts]) for k in range(4))

        arrays = _step_arrays(g, linear)
        return SimpleNamespace(int8=True, n_layer=len(g.layers), n_head=g.layers[0].n_head, arrays=arrays,
                               n_vocab=logits_weight.shape[0], embedding_rows=_embedding_rows(arrays[-1], logits_weight.shape[0]),
                               threads={}, shaped={})

    def decoder_step(self, x, w, k_cache, v_cache, cross_k, cross_v, offset, positions, pad=None, cross=None,
                     audio=None, draft=None):
        x = np.asarray(x)
        b, n_q, n = x.shape
        offset, pos = check_step(k_cache, v_cache, w.n_layer, offset, n_q, positions)
        # the arrays that depend only on the step's shape, made once per shape: between two steps every NumPy call
        # costs several microseconds (the step left the caches cold)
        key = (b, n_q, tuple(pos))
        shaped = w.shaped.get(key)
        if shaped is None:
            shaped = w.shaped[key] = (np.zeros(b, np.int64), np.array([r * n_q + p for r in range(b) for p in pos], np.int64))
        pad = shaped[0] if pad is None else np.ascontiguousarray(pad, np.int64)
        pos_rows = shaped[1]
        x2 = f32c(x).reshape(b * n_q, n)
        kc, vc = k_cache, v_cache
        direct = (kc.dtype == _F32 and vc.dtype == _F32 and kc.flags.c_contiguous and vc.flags.c_contiguous)
        if not direct:  # write through contiguous copies, then back into the caller's caches
            kc, vc = f32c(k_cache), f32c(v_cache)
        if audio is not None:  # the contract's `audio`: the cross-attention from the features (`_step.fold_attn`)
            xp, xtp = audio[:2]  # and the folded weights (`_audio_fold`)
            ck = cv = _kv_shapes(w, xp.shape[0], xtp.shape[2])
        elif cross_k is None:  # a layout made from the features (the fold's `cross`)
            ck = cv = _kv_shapes(w, cross.k.shape[1], cross.n_keys)
        else:
            ck, cv = f32c(cross_k), f32c(cross_v)
        if draft is None:
            logits, blocks, hidden = np.empty((len(pos_rows), w.n_vocab), _F32), _NO_DRAFT, _NO_HIDDEN
        else:  # the contract's `draft`: the final LayerNorm's rows into `hidden`, the logits of the draft's columns only
            if getattr(w, "int8", False):
                raise ValueError("decoder_step: `draft` needs the prepared object's `head`, which an int8 step does not offer")
            blocks, hidden = draft_blocks(w.shaped.setdefault("draft", {}), draft, w.n_vocab, w.arrays[-1].shape[2],
                                          len(pos_rows), n)
            logits = np.full((len(pos_rows), w.n_vocab), -np.inf, _F32)
        nt = _nt()
        tuner = w.threads.get(b) if n_q == 1 else None
        if tuner is None and n_q == 1 and nt > 1:
            tuner = w.threads[b] = _ThreadChoice(nt)
        if tuner is not None:
            nt = tuner.pick(nt)
            t0 = time.perf_counter()
        if getattr(w, "int8", False):
            _int8_kernels().decoder_step_int8_kernel(x2, n_q, w.n_head, kc, vc, ck, cv, offset, pad, *w.arrays, pos_rows,
                                                     logits, nt)
        else:  # the keys and values by block and head: laid out once per window by the caller (`cross`), else here
            if audio is not None:
                kp = vp = _NO_CROSS
                fold = audio
            else:
                kp, vp = (cross if cross is not None else w.cross_layout(ck, cv))[:2]
                fold = _NO_FOLD
            _step_kernels().decoder_step_kernel(x2, n_q, w.n_head, kc, vc, ck, cv, offset, pad, *w.arrays, pos_rows,
                                                logits, nt, kp, vp, *fold, blocks, hidden)
        if tuner is not None:
            tuner.record(nt, time.perf_counter() - t0)
        if not direct:
            k_cache[:, :, offset:offset + n_q] = kc[:, :, offset:offset + n_q]
            v_cache[:, :, offset:offset + n_q] = vc[:, :, offset:offset + n_q]
        return logits.reshape(b, len(pos), w.n_vocab)


@hookimpl
def whisperkit_backends():
    return [NumbaBackend()]
