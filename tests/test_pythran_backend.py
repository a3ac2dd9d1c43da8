"""The Pythran backend against the NumPy reference, op by op, at Whisper's shapes.

Each check looks at the shape, then the dtype (float32 out), then the values.  Tolerances are set
once per op below, with the reason.  The kernels are compiled at install time; if they are missing
these tests fail (an install that could not compile them is reported by `unavailable_reason`)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from whisperkit.backends.numpy_backend import NumpyBackend
from whisperkit.backends.pythran_backend import PythranBackend
from whisperkit.backend import Ops

REF = NumpyBackend()
PT = PythranBackend()

# (rtol, atol relative to the reference's largest magnitude), one per op:
TOL = {
    # GEMM either way, but a re-laid-out weight / one im2col GEMM instead of one per tap: float32
    # summation order differs over n_in <= 1536 terms.
    "linear": (1e-5, 1e-5),
    "conv1d": (1e-5, 1e-5),
    # float64 row accumulators vs NumPy's float32 pairwise mean/var: the reference is off by ~1 ulp.
    "layer_norm": (1e-5, 1e-6),
    # the same erfc formula evaluated in float64 per element, then rounded: within 1e-6 relative.
    "gelu": (1e-6, 0.0),
    # scores of magnitude ~20 summed in float32 in another order than BLAS carry ~1e-6 absolute
    # error, which exp() turns into ~1e-5 relative error in the probabilities.
    "attention": (1e-5, 1e-5),
    "attention_weights": (1e-4, 1e-6),
    # compositions of the above through two to five GEMMs with LayerNorm in between.
    "mlp_block": (1e-4, 1e-5),
    "encoder_layer": (1e-4, 1e-5),
    "decoder_layer": (1e-4, 1e-5),
}


def rng(seed=0):
    return np.random.default_rng(seed)


def f32(*shape, seed=0, scale=1.0):
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


def noncontig(a):
    """The same values as `a`, in a strided, non-C-contiguous view."""
    big = np.zeros(a.shape[:-1] + (a.shape[-1] * 2,), np.float32)
    big[..., ::2] = a
    view = big[..., ::2]
    assert not view.flags.c_contiguous
    return view


def check(op, got, ref):
    assert got.shape == ref.shape, f"{op}: shape {got.shape} != {ref.shape}"
    assert got.dtype == np.float32, f"{op}: dtype {got.dtype}, must be float32"
    rtol, atol = TOL[op]
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * float(np.abs(ref).max()), err_msg=op)


def bind_both(op, **weights):
    return (Ops(PT, REF).bind(op, **weights), Ops(REF, REF).bind(op, **weights))


def test_available():
    assert PT.unavailable_reason() is None
    assert set(PT.implemented_ops()) >= {"linear", "conv1d", "layer_norm", "gelu", "attention", "attention_weights",
                                         "mlp_block", "encoder_layer", "decoder_layer"}


@pytest.mark.parametrize("n_in,n_out,rows", [(384, 1152, 1500), (384, 1536, 3), (1536, 384, 1500), (512, 512, 1),
                                             (384, 51864, 1)])
@pytest.mark.parametrize("contig", [True, False])
def test_linear(n_in, n_out, rows, contig):
    w = dict(weight=f32(n_out, n_in, seed=1, scale=0.05), bias=f32(n_out, seed=2))
    pt, ref = bind_both("linear", **w)
    x = f32(1, rows, n_in, seed=3)
    check("linear", pt(x if contig else noncontig(x)), ref(x))


def test_linear_without_bias_and_bad_input():
    pt, ref = bind_both("linear", weight=f32(51864, 384, seed=1, scale=0.05), bias=None)
    x = f32(2, 3, 384)
    check("linear", pt(x), ref(x))
    with pytest.raises(ValueError, match="384"):
        pt(f32(1, 3, 385))


@pytest.mark.parametrize("c_in,c_out,t,stride", [(80, 384, 3000, 1), (384, 384, 3000, 2), (80, 512, 3000, 1)])
def test_conv1d(c_in, c_out, t, stride):
    pt, ref = bind_both("conv1d", weight=f32(c_out, c_in, 3, seed=1, scale=0.05), bias=f32(c_out, seed=2),
                        stride=stride, padding=1)
    x = f32(1, c_in, t, seed=3)
    check("conv1d", pt(x), ref(x))
    check("conv1d", pt(noncontig(x)), ref(x))
    check("conv1d", pt(np.asfortranarray(x)), ref(x))


@pytest.mark.parametrize("n_state", [384, 512])
def test_layer_norm(n_state):
    pt, ref = bind_both("layer_norm", weight=f32(n_state, seed=1), bias=f32(n_state, seed=2))
    x = f32(2, 1500, n_state, seed=3, scale=5.0) + 3.0
    check("layer_norm", pt(x), ref(x))
    check("layer_norm", pt(noncontig(x)), ref(x))


def test_gelu():
    x = f32(1500, 1536, seed=4, scale=4.0)
    check("gelu", PT.gelu(x), REF.gelu(x))
    check("gelu", PT.gelu(x.T), REF.gelu(x.T))  # Fortran-ordered view
    tails = np.array([-3e38, -1e4, -12.0, -9.0, -5.0, -1e-30, 0.0, 1e-30, 5.0, 1e4, 3e38], np.float32)
    with np.errstate(all="raise"):
        got = PT.gelu(tails)
    check("gelu", got, REF.gelu(tails))
    assert np.all(np.isfinite(got))


ATTN_CASES = [  # (n_state, n_head, n_q, n_kv, causal, offset)
    (384, 6, 1500, 1500, False, 0),  # encoder self-attention, tiny
    (512, 8, 1500, 1500, False, 0),  # encoder self-attention, base
    (384, 6, 1, 1, True, 0),  # decoder self-attention, first token
    (384, 6, 3, 3, True, 0),  # the SOT prompt
    (384, 6, 1, 2, True, 1),
    (384, 6, 3, 4, True, 1),
    (384, 6, 1, 448, True, 447),  # last cache slot
    (512, 8, 3, 450, True, 447),
    (384, 6, 1, 1500, False, 0),  # cross-attention
    (512, 8, 3, 1500, False, 0),
    (384, 6, 100, 140, True, 40),  # many query rows, causal: the GEMM path with a mask
]


@pytest.mark.parametrize("n_state,n_head,n_q,n_kv,causal,offset", ATTN_CASES)
def test_attention(n_state, n_head, n_q, n_kv, causal, offset):
    q, k, v = (f32(1, n, n_state, seed=s, scale=2.0) for s, n in ((1, n_q), (2, n_kv), (3, n_kv)))
    ref = REF.attention(q, k, v, n_head, causal, offset)
    check("attention", PT.attention(q, k, v, n_head, causal, offset), ref)
    check("attention", PT.attention(noncontig(q), noncontig(k), noncontig(v), n_head, causal, offset), ref)
    pref = REF.attention_weights(q, k, n_head, causal, offset)
    p = PT.attention_weights(noncontig(q), k, n_head, causal, offset)
    check("attention_weights", p, pref)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


def test_attention_batch_and_large_scores():
    q, k, v = f32(2, 3, 384, seed=1, scale=300.0), f32(2, 20, 384, seed=2, scale=300.0), f32(2, 20, 384, seed=3)
    with np.errstate(over="raise", invalid="raise"):
        got = PT.attention(q, k, v, 6)
    check("attention", got, REF.attention(q, k, v, 6))


def block_weights(n_state, n_head, seed=10, decoder=False):
    r = rng(seed)
    def m(*shape, s=0.05):
        return (r.standard_normal(shape) * s).astype(np.float32)
    w = dict(n_head=n_head, attn_ln_weight=1 + m(n_state), attn_ln_bias=m(n_state), qkv_weight=m(3 * n_state, n_state),
             qkv_bias=m(3 * n_state), out_weight=m(n_state, n_state), out_bias=m(n_state),
             mlp_ln_weight=1 + m(n_state), mlp_ln_bias=m(n_state), fc1_weight=m(4 * n_state, n_state),
             fc1_bias=m(4 * n_state), fc2_weight=m(n_state, 4 * n_state), fc2_bias=m(n_state))
    if decoder:
        w.update(cross_ln_weight=1 + m(n_state), cross_ln_bias=m(n_state), cross_q_weight=m(n_state, n_state),
                 cross_q_bias=m(n_state), cross_out_weight=m(n_state, n_state), cross_out_bias=m(n_state))
    return w


@pytest.mark.parametrize("n_state,rows", [(384, 1500), (512, 3)])
def test_mlp_block(n_state, rows):
    w = block_weights(n_state, 1)
    pt, ref = bind_both("mlp_block", ln_weight=w["mlp_ln_weight"], ln_bias=w["mlp_ln_bias"], fc1_weight=w["fc1_weight"],
                        fc1_bias=w["fc1_bias"], fc2_weight=w["fc2_weight"], fc2_bias=w["fc2_bias"])
    x = f32(1, rows, n_state, seed=3)
    check("mlp_block", pt(noncontig(x)), ref(x))


@pytest.mark.parametrize("n_state,n_head", [(384, 6), (512, 8)])
def test_encoder_layer(n_state, n_head):
    pt, ref = bind_both("encoder_layer", **block_weights(n_state, n_head))
    x = f32(1, 1500, n_state, seed=3)
    check("encoder_layer", pt(x), ref(x))
    check("encoder_layer", pt(noncontig(x)), ref(x))


@pytest.mark.parametrize("n_state,n_head", [(384, 6), (512, 8)])
@pytest.mark.parametrize("n_q,offset", [(3, 0), (1, 1), (1, 447), (3, 100)])
def test_decoder_layer(n_state, n_head, n_q, offset):
    pt, ref = bind_both("decoder_layer", **block_weights(n_state, n_head, decoder=True))
    x = f32(1, n_q, n_state, seed=3)
    cross_k, cross_v = f32(1, 1500, n_state, seed=4), f32(1, 1500, n_state, seed=5)
    caches = []
    for _ in range(2):
        kc, vc = np.zeros((1, 448, n_state), np.float32), np.zeros((1, 448, n_state), np.float32)
        kc[:, :offset], vc[:, :offset] = f32(1, offset, n_state, seed=6), f32(1, offset, n_state, seed=7)
        caches.append((kc, vc))
    got = pt(noncontig(x), *caches[0], cross_k, cross_v, offset)
    want = ref(x, *caches[1], cross_k, cross_v, offset)
    check("decoder_layer", got, want)
    for mine, theirs in zip(caches[0], caches[1]):  # the KV cache written in place, the same slots
        check("linear", mine, theirs)


def test_threads_follow_the_setting():
    q, k, v = f32(1, 1500, 384, seed=1), f32(1, 1500, 384, seed=2), f32(1, 1500, 384, seed=3)
    want = REF.attention(q, k, v, 6)
    try:
        PT.set_num_threads(1)
        check("attention", PT.attention(q, k, v, 6), want)
    finally:
        from whisperkit.threads import get_num_threads
        PT.set_num_threads(get_num_threads())


def test_missing_kernels_make_the_backend_unavailable():
    code = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.endswith("pythran_backend._kernels"):
                    raise ImportError("simulated: not built")
        sys.meta_path.insert(0, Block())
        from whisperkit.registry import get_registry
        info = get_registry().infos["pythran"]
        print(info.usable, "|", info.reason)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    usable, reason = out.strip().split(" | ", 1)
    assert usable == "False"
    assert "compiled kernels not found" in reason and "reinstall" in reason
