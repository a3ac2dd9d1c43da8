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
    assert not ops.fallbacks
    np.testing.assert_allclose(got, ref, rtol=INT8_RTOL, atol=INT8_ATOL)


def test_a_backend_without_int8_runs_those_ops_on_the_reference_int8_path():
    pytest.importorskip("numba")
    x, w, b = _case(4, 384, 256, 1)
    ops = get_registry().ops("numba", "int8")
    got = ops.bind("linear", weight=w, bias=b)(x)
    assert "linear[int8]" in ops.fallbacks
    np.testing.assert_array_equal(got, get_registry().ops("numpy", "int8").bind("linear", weight=w, bias=b)(x))


@pytest.mark.parametrize("backend", ["onnxruntime", "numba"])
def test_int8_transcribes_jfk(backend):
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
