"""compute_type="int8": the contract's scheme (whisperkit.contract), its NumPy reference, ONNX Runtime's
MatMulNBits kernels held to it, and the dispatcher sending what a backend does not run in int8 to the
reference's int8 path, never to float32."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import shared
from whisperkit.contract import compute_type_name, int8_block, quantize_int8, quantize_rows_int8
from whisperkit.registry import get_registry

# int8 against the reference's int8: the integer dot products are exact on both sides; what differs is the
# float32 order of scaling and summing the blocks, and an activation landing on the other side of a rounding
# tie.  Measured: 1e-6 of the output's scale (2e-6 .. 8e-6 absolute on outputs of 5 .. 10).
INT8_RTOL, INT8_ATOL = 1e-5, 1e-4


def _scheme_float64(x, weight, bias):
    """The contract's int8 linear written out independently: the quantization in float32 as the contract
    says (a float64 division rounds some ties the other way), the integer dots and the scaling in float64."""
    w = np.asarray(weight, np.float32)
    ws = np.abs(w).max(axis=1) / np.float32(127)
    w8 = np.clip(np.rint(w / ws[:, None]), -127, 127).astype(np.float64)
    block = int8_block(w.shape[1])
    xb = np.asarray(x, np.float32).reshape(x.shape[0], -1, block)
    xs = np.abs(xb).max(axis=2) / np.float32(127)
    x8 = np.clip(np.rint(xb / xs[..., None]), -127, 127).astype(np.float64)
    dots = np.einsum("rbk,obk->rbo", x8, w8.reshape(w.shape[0], -1, block))  # exact integers
    return (dots * xs[..., None].astype(np.float64)).sum(axis=1) * ws.astype(np.float64) + bias


def _case(m, k, n, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)).astype(np.float32), (rng.standard_normal((n, k)) * 0.05).astype(np.float32),
            rng.standard_normal(n).astype(np.float32))


def test_compute_type_names():
    assert [compute_type_name(n) for n in ("float32", "default", "auto", "int8", "int8_float32")] == \
        ["float32", "float32", "float32", "int8", "int8"]
    with pytest.raises(ValueError, match="compute_type must be one of .*got 'float16'"):
        compute_type_name("float16")


def test_quantized_weights_are_int8_per_output_channel():
    _, w, _ = _case(1, 64, 5, 0)
    w[2] = 0.0  # an all-zero row keeps scale 1 and zeros
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and q.shape == w.shape and scale.shape == (5,) and scale.dtype == np.float32
    assert np.abs(q).max() == 127 and not q[2].any() and scale[2] == 1
    np.testing.assert_allclose(q * scale[:, None], w, atol=scale.max() / 2 + 1e-7)  # within half a step
    x8, xs = quantize_rows_int8(np.ones((2, 64), np.float32) * 3, 16)
    assert x8.shape == (2, 4, 16) and (x8 == 127).all() and np.allclose(xs, 3 / 127)


@pytest.mark.parametrize("m, k, n", [(1, 384, 1000), (5, 384, 1536), (30, 1536, 384), (3, 80, 48)])
def test_the_reference_int8_linear_is_the_scheme(m, k, n):
    x, w, b = _case(m, k, n, m + k)
    got = get_registry().ops("numpy", "int8").bind("linear", weight=w, bias=b)(x)
    assert got.shape == (m, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, _scheme_float64(x, w, b), rtol=1e-5, atol=1e-5)
    assert np.abs(got - (x @ w.T + b)).max() > 1e-4  # it is quantized, not float32


@pytest.mark.parametrize("m, k, n", [(1, 384, 51864), (5, 384, 1536), (300, 1536, 384)])
def test_onnxruntime_int8_linear_is_the_reference(m, k, n):
    pytest.importorskip("onnxruntime")
    x, w, b = _case(m, k, n, n)
    reg = get_registry()
    ref = reg.ops("numpy", "int8").bind("linear", weight=w, bias=b)(x)
    ops = reg.ops("onnxruntime", "int8")
    got = ops.bind("linear", weight=w, bias=b)(x)
    assert "linear[int8]" not in ops.fallbacks and ops.bound_to["linear"] is ops.backend
    np.testing.assert_allclose(got, ref, rtol=INT8_RTOL, atol=INT8_ATOL)


def test_a_backend_without_int8_runs_those_ops_on_the_reference_int8_path():
    from whisperkit.backend import Backend

    class Float32Only(Backend):  # implements linear, in float32 only
        name = "float32-only"

        def linear(self, x, w):
            return np.matmul(x, np.asarray(w.weight, np.float32).T) + w.bias

    x, w, b = _case(4, 384, 256, 1)
    ops = get_registry().ops(Float32Only(), "int8")
    got = ops.bind("linear", weight=w, bias=b)(x)
    assert "linear[int8]" in ops.fallbacks
    np.testing.assert_array_equal(got, get_registry().ops("numpy", "int8").bind("linear", weight=w, bias=b)(x))


def test_int8_keeps_the_cross_attention_kv_projection_float32():
    """It runs once per window, not per token: an int8 model binds it in float32 (the contract), so its cross K/V are
    the float32 model's bit for bit, while its decoder layers are int8."""
    from whisperkit import WhisperTiny
    feats = np.random.default_rng(7).standard_normal((1, 1500, 384)).astype(np.float32)
    m8, m32 = WhisperTiny(backend="numpy", compute_type="int8"), WhisperTiny(backend="numpy")
    c8, c32 = m8.graph.new_cache(feats), m32.graph.new_cache(feats)
    np.testing.assert_array_equal(c8.cross_k, c32.cross_k)
    np.testing.assert_array_equal(c8.cross_v, c32.cross_v)
    tokens = np.array([[50257, 50362]])  # <|startoftranscript|> <|notimestamps|>
    assert not np.array_equal(m8.graph.decoder(tokens, c8, 0), m32.graph.decoder(tokens, c32, 0))


# ---- numba's int8 kernels (backends/numba_backend/_int8.py) ---------------------------------------------------------
def _numba_int8():
    pytest.importorskip("numba")
    from whisperkit.backends.numba_backend import _vnni
    if not _vnni():
        pytest.skip("numba's int8 kernels need AVX-512 VNNI")
    return get_registry().ops("numba", "int8")


@pytest.mark.parametrize("m, k, n", [(1, 384, 51864), (5, 384, 1536), (3, 1536, 384), (300, 1536, 384), (1500, 384, 1152),
                                     (2, 80, 40), (7, 48, 33), (17, 32, 20)])
def test_numba_int8_linear_is_the_reference_bit_for_bit(m, k, n):
    """The same int8 weights (quantize_int8), the same activation rounding, exact integer dots, and the reference's
    float32 order of scaling and summing the blocks: equal bits, whatever the thread count, blocks of 128 down to 16
    inputs, and channel counts padded to 16."""
    ops = _numba_int8()
    x, w, b = _case(m, k, n, m * k + n)
    bound = ops.bind("linear", weight=w, bias=b)
    assert bound.backend_name == "numba" and not ops.fallbacks
    ref = get_registry().ops("numpy", "int8").bind("linear", weight=w, bias=b)(x)
    import numba
    before = numba.get_num_threads()
    try:
        for nt in sorted({1, before}):
            numba.set_num_threads(nt)
            np.testing.assert_array_equal(bound(x), ref)
    finally:
        numba.set_num_threads(before)
    assert np.abs(ref - (x @ w.T + b)).max() > 1e-4  # int8, not float32


def test_numba_holds_the_contracts_int8_weights_once():
    ops = _numba_int8()
    from whisperkit.backends.numba_backend._int8 import unpack_int8
    _, w, b = _case(1, 384, 200, 3)
    p = ops.bind("linear", weight=w, bias=b).w
    q, scale = quantize_int8(w)
    assert p.packed.dtype == np.int8 and p.packed.size == 208 * 384  # 200 channels padded to 13 groups of 16
    np.testing.assert_array_equal(unpack_int8(p.packed, 200), q)
    np.testing.assert_array_equal(p.scale[:200], scale)
    assert not any(isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 2 for v in vars(p).values())


def test_numba_runs_its_int8_ops_itself_and_sends_the_rest_to_the_reference_int8_path():
    """Every op of INT8_OPS at Whisper's widths runs on numba; a width off 16 inputs falls back, to the int8 reference."""
    ops = _numba_int8()
    from whisperkit.conformance.cases import CASES
    from whisperkit.contract import INT8_OPS
    for case_id in ("linear/tiny_fc1_1500", "mlp_block/tiny_7", "encoder_layer/tiny_1500", "decoder_layer/tiny_1_off3",
                    "decoder_step/tiny_1_off3"):
        op = case_id.split("/")[0]
        assert ops.bind(op, **CASES[case_id].make().weights).backend_name == "numba", case_id
    assert set(INT8_OPS) == {"linear", "mlp_block", "encoder_layer", "decoder_layer", "decoder_step"}  # all of them
    assert not ops.fallbacks
    _, w, b = _case(1, 40, 8, 0)
    assert ops.bind("linear", weight=w, bias=b).backend_name == "numpy"
    assert ops.fallbacks == {"linear[int8]"}


@pytest.mark.parametrize("case_id", ["mlp_block/tiny_7", "mlp_block/tiny_1500", "encoder_layer/tiny_1500",
                                     "decoder_layer/tiny_1_off3", "decoder_layer/tiny_beam5_1_off20",
                                     "decoder_step/tiny_beam5_shared_cross_1_off20", "decoder_step/tiny_beam5_prompt_40_off0"])
def test_numba_int8_coarse_ops_follow_the_reference_int8_not_float32(case_id):
    """The coarse ops against the reference's int8 composition: much nearer to it than to float32, in the median
    (their float32 GELU, LayerNorm and attention differ from the reference's in rounding only, the int8 linears are
    its bits; an activation that this rounding moves across a rounding tie moves its row by a quantization step,
    which a maximum or an RMS would see: the conformance suite's tolerances bound those)."""
    d8, d32 = _median_distances_to_the_references(_numba_int8(), case_id)
    assert d8 < d32 / 100, (d8, d32)  # measured: 0 .. 2.4e-6 against 7e-3 .. 1.1e-2 (outputs of median 0.7)


def _median_distances_to_the_references(ops, case_id):
    """The median |difference| of a conformance case's output on `ops` (int8, run by that backend alone) from the
    reference's int8 and from its float32."""
    from whisperkit.conformance.cases import CASES
    reg = get_registry()
    op = case_id.split("/")[0]
    inp = CASES[case_id].make()

    def run(o):
        args = [a.copy() if isinstance(a, np.ndarray) else a for a in inp.args]
        out = o.bind(op, **inp.weights)(*args)
        return out[0] if isinstance(out, tuple) else out

    got, ref8, ref32 = run(ops), run(reg.ops("numpy", "int8")), run(reg.ops("numpy"))
    assert not ops.fallbacks
    return np.median(np.abs(got - ref8)), np.median(np.abs(got - ref32))


def test_numba_int8_step_bits_do_not_depend_on_threads():
    ops = _numba_int8()
    import numba
    from whisperkit.conformance.cases import CASES
    inp = CASES["decoder_step/tiny_beam5_shared_cross_1_off20"].make()
    step = ops.bind("decoder_step", **inp.weights)
    before, outs = numba.get_num_threads(), []
    try:
        for nt in (1, 2):
            numba.set_num_threads(nt)
            args = [a.copy() if isinstance(a, np.ndarray) else a for a in inp.args]
            step.w.threads.clear()
            outs.append((step(*args), args[1], args[2]))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_numba_int8_transcribes_jfk_with_the_reference_int8_tokens():
    """End to end: numba's int8 decode gives the NumPy reference's int8 tokens on jfk, and they are not the float32
    tokens (so int8 really ran: one token differs)."""
    _numba_int8()
    from whisperkit import WhisperTiny
    audio = str(shared("audio", "jfk_16k.wav"))

    def tokens(backend, compute_type):
        m = WhisperTiny(backend=backend, compute_type=compute_type)
        return [t for s in m.transcribe(audio, temperature=0.0).segments for t in s.tokens], m

    got, model = tokens("numba", "int8")
    assert not model.graph.ops.fallbacks
    assert got == tokens("numpy", "int8")[0]
    assert got != tokens("numba", "float32")[0]


# ---- pythran's int8 (backends/pythran_backend: _step._mv8 for few rows, a dequantized GEMM on BLAS for many) ------
@pytest.mark.parametrize("m, k, n", [(1, 384, 51864), (5, 384, 1536), (3, 1536, 384), (7, 80, 48), (300, 1536, 384),
                                     (1500, 384, 1152), (65, 100, 30)])
def test_pythran_int8_linear_is_the_reference(m, k, n):
    """Both of pythran's int8 paths (up to INT8_ROWS_KERNEL_MAX rows the int8 kernel, above it one float32 GEMM of
    the dequantized activations and weights) give the reference's int8 up to float32 rounding, not float32."""
    x, w, b = _case(m, k, n, k + n)
    reg = get_registry()
    ops = reg.ops("pythran", "int8")
    bound = ops.bind("linear", weight=w, bias=b)
    got = bound(x)
    assert bound.backend_name == "pythran" and not ops.fallbacks
    assert got.shape == (m, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, reg.ops("numpy", "int8").bind("linear", weight=w, bias=b)(x), rtol=INT8_RTOL, atol=INT8_ATOL)
    assert np.abs(got - (x @ w.T + b)).max() > 1e-4  # it is quantized, not float32


def test_pythran_holds_the_int8_weights_once():
    """decoder_step's layers are held once, in int8: the layers of prompts are views of the step kernel's stacks,
    and no float32 copy of a layer matrix is kept (the logits stay float32, as float16 bits)."""
    from whisperkit.conformance.cases import CASES
    ops = get_registry().ops("pythran", "int8")
    step = ops.bind("decoder_step", **CASES["decoder_step/tiny_beam5_shared_cross_1_off20"].make().weights)
    assert step.backend_name == "pythran" and not ops.fallbacks
    stacks = [a for a in step.w.arrays if isinstance(a, np.ndarray) and a.dtype == np.int8]
    assert len(stacks) == 6 and all(a.ndim == 3 for a in stacks)
    fine = [lin for layer in step.w.fine for lin in (layer.qkv, layer.out, layer.cross_q, layer.cross_out,
                                                      layer.mlp.fc1, layer.mlp.fc2)]
    assert all(lin.wt is None and any(np.shares_memory(lin.q, s) for s in stacks) for lin in fine)
    big = [a for a in step.w.arrays if isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 3]
    assert not big, [a.shape for a in big]


@pytest.mark.parametrize("case_id", ["mlp_block/tiny_7", "mlp_block/tiny_1500", "encoder_layer/tiny_1500",
                                     "decoder_layer/tiny_1_off3", "decoder_step/tiny_beam5_shared_cross_1_off20"])
def test_pythran_int8_coarse_ops_follow_the_reference_int8_not_float32(case_id):
    """As numba's above: pythran's coarse int8 ops are far nearer the reference's int8 than float32, in the median.
    Not through several layers of many rows (a prompt's decoder_step): there the GEMM path's float32 sums move some
    activations across a rounding tie, each such row then moves by a quantization step in every layer after, and the
    median sees it (1.4e-3 against 1.1e-2 from float32 for tiny_beam5_prompt_40_off0); conformance bounds those."""
    d8, d32 = _median_distances_to_the_references(get_registry().ops("pythran", "int8"), case_id)
    assert d8 < d32 / 20, (d8, d32)


@pytest.mark.parametrize("backend", ["onnxruntime", "numba", "pythran"])
def test_int8_transcribes_jfk(backend):
    if backend != "pythran":  # pythran is a build tool: its kernels were compiled at install (test_pythran_backend)
        pytest.importorskip(backend)
    from whisperkit import WhisperTiny
    m = WhisperTiny(backend=backend, compute_type="int8")
    assert m.compute_type == "int8" and "int8" in repr(m)
    text = m.transcribe(str(shared("audio", "jfk_16k.wav")), temperature=0.0).text
    assert "ask not what your country can do for you" in text.lower().replace(",", "")


def test_the_cli_takes_a_compute_type(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from whisperkit.cli import main
    assert main(["transcribe", str(shared("audio", "jfk_16k.wav")), "--backend", "onnxruntime", "--compute_type", "int8",
                 "--beam_size", "None", "-o", str(tmp_path), "-f", "txt"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("whisperkit: tiny.en on backend onnxruntime, int8") and "your country" in out
    assert main(["transcribe", str(shared("audio", "jfk_16k.wav")), "--compute_type", "float16", "-o", str(tmp_path)]) == 2
    assert "compute_type must be one of" in capsys.readouterr().err


def test_the_bench_runs_a_backend_in_int8(tmp_path):
    import json
    import subprocess
    import sys
    pytest.importorskip("onnxruntime")
    cmd = [sys.executable, "-c", "import sys; from whisperkit.bench.cli import main; sys.exit(main())",
           "--backend", "onnxruntime@int8,onnxruntime", "--quick", "--no-peers", "--no-ops", "--no-cold", "--batch", "0",
           "--audio", str(shared("audio", "jfk_16k.wav")), "--json", str(tmp_path / "b.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    engines = {r["engine"] for r in json.loads((tmp_path / "b.json").read_text())["records"] if r["section"] == "e2e"}
    assert {"onnxruntime@int8", "onnxruntime"} <= engines, engines


def test_auto_picks_the_fastest_backend_that_implements_int8():
    pytest.importorskip("onnxruntime")
    from whisperkit.registry import get_registry
    reg = get_registry()
    want = next(i.name for i in reg.auto_order() if "int8" in i.backend.compute_types and i.usable)
    assert reg.auto("int8").name == want
    assert all(reason == "does not implement compute type int8" for _, reason in reg.auto_skipped
               if "int8" not in reg.infos[_].backend.compute_types)


@pytest.mark.parametrize("case_id", ["decoder_step/tiny_padded_2audios_beam3_shared_cross_1_off9",
                                     "decoder_step/tiny_padded_prompts_12_off0", "decoder_step/tiny_beam5_prompt_40_off0"])
def test_numba_int8_step_rows_do_not_depend_on_the_other_rows(case_id):
    """A row's activations are quantized on their own and its int8 products do not depend on the other rows: the
    rows of one audio (with their pads, the contract's `pad`) give the same bits alone as in the batch.  (A row
    left-padded in a batch is not the same row alone: its keys sit at other positions, its float32 attention sums
    in another order, ~1e-6 on the logits, as in float32; int8's rounding can carry that to another beam.)"""
    ops = _numba_int8()
    from whisperkit.conformance.cases import CASES
    inp = CASES[case_id].make()
    step = ops.bind("decoder_step", **inp.weights)
    x, k, v, ck, cv, offset, positions = inp.args
    pad = inp.kwargs.get("pad", np.zeros(x.shape[0], np.int64))
    full = step(x, k.copy(), v.copy(), ck, cv, offset, positions, pad=pad)
    g = x.shape[0] // ck.shape[1]  # rows per audio
    for a in range(ck.shape[1]):
        rows = slice(a * g, (a + 1) * g)
        alone = step(x[rows], k[:, rows].copy(), v[:, rows].copy(), ck[:, a:a + 1], cv[:, a:a + 1], offset, positions,
                     pad=pad[rows])
        np.testing.assert_array_equal(alone, full[rows])
    assert not ops.fallbacks
