"""The Pythran backend: float32 kernels written as Pythran modules, compiled ahead of time at install.

`setup.py` compiles ``src/_kernels.py`` into the extension ``_kernels`` of this package (OpenMP, no
CBLAS) when the project is installed; nothing is compiled at run time.  GEMMs (linear, the im2col
GEMM of conv1d, the two GEMMs of encoder attention) run on NumPy's BLAS, near the machine's peak; the
Pythran kernels do the rest: LayerNorm, GELU (fused with fc1's bias), bias/residual
epilogues, im2col, a stable row softmax, and fully fused attention for few query rows (the decoder).
"""
from __future__ import annotations

import ctypes
import glob
import importlib.machinery
import os
from types import SimpleNamespace

import numpy as np

from whisperkit.backend import Backend, check_kv_step, f32c, hookimpl, map_group, rows_f32, weight_group
from whisperkit.contract import LAYER_NORM_EPS
from whisperkit.threads import get_num_threads

# libgomp reads this when it loads.  Its default (spin before sleeping) makes OpenMP's workers and
# NumPy's OpenBLAS workers fight over the 2 cores at every switch between a GEMM and a kernel, which
# made encoder attention in 128-row blocks many times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_IMPORT_ERROR: str | None = None
try:
    from . import _kernels as K  # noqa: N812
    if not K.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        raise ImportError(f"{K.__file__} is not a compiled extension")
except ImportError as exc:  # the build could not compile the kernels
    K = None
    _IMPORT_ERROR = (f"compiled kernels not found ({exc}): the build could not compile them "
                     "(no C++ compiler or no pythran at build time?) -- reinstall with a compiler: "
                     "pip install -e '.[pythran]' (see setup.py's warning in the build log)")

#: Query rows at or below which attention runs the fully fused per-row kernel; above, two GEMMs
#: around the in-place softmax kernel (the encoder's 1500 x 1500).
ROWS_FUSED_MAX = 32
#: Query rows per block in the GEMM path: keeps a block of scores (512 x 1500 floats) in L2.
BLOCK_ROWS = 512


def _numpy_blas_set_threads():
    """The setter of NumPy's bundled OpenBLAS thread count, or None when not found."""
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libs, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                    "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                return fn
    return None


class PythranBackend(Backend):
    name = "pythran"
    shared_cross_kv = True  # decoder_layer takes one cross K/V row per audio (the contract)
    description = "Pythran kernels compiled at install (OpenMP) + NumPy's BLAS for the GEMMs"

    def __init__(self):
        # the pythran that compiled the kernels (the build's, not whatever is installed now)
        self.version = str(getattr(K, "__pythran__", ("not built",))[0]) if K is not None else "not built"
        self._blas_threads = _numpy_blas_set_threads()
        if K is not None:
            self.set_num_threads(get_num_threads())

    def unavailable_reason(self):
        return _IMPORT_ERROR

    def set_num_threads(self, n):
        if K is not None:
            K.set_threads(int(n))
        if self._blas_threads is not None:
            self._blas_threads(int(n))

    # ---- fine ops -------------------------------------------------------------------------
    def prepare_linear(self, weight, bias=None):
        weight = np.asarray(weight, np.float32)
        if weight.ndim != 2:
            raise ValueError(f"linear weight must be (n_out, n_in), got shape {weight.shape}")
        return SimpleNamespace(wt=np.ascontiguousarray(weight.T), n_out=weight.shape[0], n_in=weight.shape[1],
                               bias=None if bias is None else f32c(bias))

    def _linear2d(self, x2, w):
        y = x2 @ w.wt
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

    def attention(self, q, k, v, n_head, causal=False, offset=0):
        b, n_q, d = q.shape
        if n_q <= ROWS_FUSED_MAX:
            return K.attention_rows(f32c(q), f32c(k), f32c(v), int(n_head), bool(causal), int(offset))
        dh = d // n_head
        scale = np.float32(dh ** -0.5)
        out = np.empty((b, n_q, d), np.float32)
        for bi in range(b):
            for h in range(n_head):
                cs = slice(h * dh, (h + 1) * dh)
                kt = np.ascontiguousarray(k[bi, :, cs].T)  # (d_head, n_kv)
                vh = np.ascontiguousarray(v[bi, :, cs])    # (n_kv, d_head)
                for r in range(0, n_q, BLOCK_ROWS):
                    s = q[bi, r:r + BLOCK_ROWS, cs] @ kt
                    K.softmax_rows_(s, scale, bool(causal), int(offset) + r)
                    out[bi, r:r + BLOCK_ROWS, cs] = s @ vh
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
                K.softmax_rows_(p[bi, h], np.float32(dh ** -0.5), bool(causal), int(offset))
        return p

    # ---- coarse ops: the fine kernels with fused epilogues, weights re-laid out once ---------
    def prepare_mlp_block(self, **weights):
        return self._prepare_group(weight_group("mlp_block", weights))

    def _prepare_group(self, group):
        return map_group(group, self.prepare_layer_norm, self.prepare_linear)

    def _mlp2d(self, x2, w):
        """x2 + fc2(gelu(fc1(ln(x2)))) for C-contiguous (rows, n_state) x2; a new array."""
        h = K.layer_norm(x2, w.ln.weight, w.ln.bias, np.float32(LAYER_NORM_EPS))
        a = h @ w.fc1.wt
        K.bias_gelu_(a, w.fc1.bias)
        y = a @ w.fc2.wt
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
        y = rows_f32(a) @ w.out.wt
        K.bias_residual_(y, w.out.bias, x2)
        return self._mlp2d(y, w.mlp).reshape(b, n, d)

    def decoder_layer(self, x, w, k_cache, v_cache, cross_k, cross_v, offset):
        b, n, d = x.shape
        offset = check_kv_step(k_cache, v_cache, offset, n)
        x2 = rows_f32(x)
        qkv = self._self_qkv(x2, w).reshape(b, n, 3 * d)
        end = offset + n
        k_cache[:, offset:end] = qkv[..., d:2 * d]
        v_cache[:, offset:end] = qkv[..., 2 * d:]
        a = self.attention(qkv[..., :d], k_cache[:, :end], v_cache[:, :end], w.n_head, causal=True, offset=offset)
        y = rows_f32(a) @ w.out.wt
        K.bias_residual_(y, w.out.bias, x2)
        h = K.layer_norm(y, w.cross_ln.weight, w.cross_ln.bias, np.float32(LAYER_NORM_EPS))
        cq = self._linear2d(h, w.cross_q).reshape(cross_k.shape[0], -1, d)  # an audio's rows share its cross K/V
        a = self.attention(cq, cross_k, cross_v, w.n_head)
        y2 = rows_f32(a) @ w.cross_out.wt
        K.bias_residual_(y2, w.cross_out.bias, y)
        return self._mlp2d(y2, w.mlp).reshape(b, n, d)


@hookimpl
def whisperkit_backends():
    return [PythranBackend()]
