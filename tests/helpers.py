"""Helpers shared by the test files: shared data, random inputs, binding an op on a backend and on the reference,
the comparison with the conformance suite's tolerance, the one CTranslate2 model.bin writer (and its reader for
re-serialising a real file), a WAV writer, and the installed command's error shape.

Test files import it as `from helpers import ...`: pytest puts tests/ (the folder of the root conftest.py, which
has no __init__.py) on sys.path, exactly as for conftest, so this works from a fresh clone with
`python -m pytest -q tests`.  No test file imports from another test_*.py file.
"""
from __future__ import annotations

import importlib
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

#: the backends shipped with whisperkit (installed by the `all` extra): each must conform wherever CI runs
BUILTIN_BACKENDS = ("numba", "pythran", "onnxruntime")
#: ops a built-in backend leaves to the reference on purpose, with the measured reason in its module doc
LEFT_TO_REFERENCE = {"onnxruntime": frozenset({"top_k", "logsumexp"}), "pythran": frozenset({"encoder_stem"})}
#: built-in backend -> (the library it needs, or None when it is compiled in; its module; its class)
BUILTIN = {
    "numba": ("numba", "whisperkit.backends.numba_backend", "NumbaBackend"),
    "pythran": (None, "whisperkit.backends.pythran_backend", "PythranBackend"),
    "onnxruntime": ("onnxruntime", "whisperkit.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
}

#: the installed command line
EXE = shutil.which("whisperkit") or str(Path(sys.executable).parent / "whisperkit")


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"missing shared test data {path}: ../shared must sit beside the repository")
    return path


# --- inputs and binding -------------------------------------------------------------------------------------
def f32(*shape, seed=0, scale=1.0) -> np.ndarray:
    """Standard normal float32 values of `shape` (times `scale`), the same for the same seed."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def strided(a: np.ndarray) -> np.ndarray:
    """The same values as `a` in a non-contiguous view (every other element of a wider buffer)."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), np.float32)
    big[..., ::2] = a
    v = big[..., ::2]
    assert not v.flags.c_contiguous
    return v


def reference():
    from whisperkit.registry import get_registry
    return get_registry().reference()


def new_backend(name: str):
    """A fresh instance of built-in backend `name` (its own sessions and thread setting); the test is skipped when
    the library the backend needs is not installed."""
    library, module, cls = BUILTIN[name]
    if library is not None:
        pytest.importorskip(library)
    return getattr(importlib.import_module(module), cls)()


def bind_both(backend, op: str, **weights):
    """`op` bound to `weights` on `backend` (falling back to the reference) and on the reference itself."""
    from whisperkit.backend import Ops
    ref = reference()
    return Ops(backend, ref).bind(op, **weights), Ops(ref, ref).bind(op, **weights)


def decoder_weights() -> dict:
    """A tiny decoder layer's weights (n_state 384, 6 heads), from the conformance table."""
    from whisperkit.conformance.cases import CASES
    return CASES["decoder_layer/tiny_1_off3"].make().weights


def run_op_case(case_id: str, backend) -> None:
    """The conformance suite's check of one case of its table on `backend`, with the suite's tolerance."""
    from whisperkit.backend import Ops
    from whisperkit.conformance.cases import CASES
    from whisperkit.conformance.checks import run_case
    ref = reference()
    run_case(CASES[case_id], backend, Ops(backend, ref), Ops(ref, ref))


# --- comparison with the reference ----------------------------------------------------------------------------
def assert_matches_reference(op: str, got: np.ndarray, ref: np.ndarray, inputs=None) -> None:
    """A backend's output that the case table does not produce (a KV cache written through a backend's own path,
    several decode steps) against the reference's, by the suite's comparison with its tolerance and error scale
    for `op` (stated once, in whisperkit.conformance.cases.RECORDS).  `inputs`: the call's
    `whisperkit.conformance.cases.Inputs`, needed by the ops whose error scale depends on them (not the layers')."""
    from whisperkit.conformance.cases import RECORDS
    from whisperkit.conformance.checks import compare
    rec = RECORDS[op]
    tol = rec.tolerances[str(ref.dtype)]
    scale = np.broadcast_to(np.asarray(rec.scale(inputs, ref), np.float64), ref.shape)
    problem = compare(op, got, ref, scale, tol.rtol, tol.atol)
    assert problem is None, problem


def assert_decode_steps_match_reference(backend, steps, batch: int = 1, strided_cache: bool = False) -> None:
    """A tiny decoder layer (the table's weights) on `backend`, stepped through `steps` [(offset, n_q), ...] over one
    pair of zero-filled KV caches, C-contiguous or strided views: at every step the output and the caches, written in
    place, match the reference's; nothing is written outside the steps' rows, nor between a view's elements."""
    got, want = bind_both(backend, "decoder_layer", **decoder_weights())
    assert got.backend_name == backend.name, "decoder_layer falls back to the reference"
    n, rng = 384, np.random.default_rng(7)
    cross = [rng.standard_normal((batch, 1500, n)).astype(np.float32) for _ in range(2)]
    buffers = [np.zeros((batch, 448, 2 * n if strided_cache else n), np.float32) for _ in range(2)]
    kc, vc = [b[..., ::2] for b in buffers] if strided_cache else buffers
    kr, vr = np.zeros((batch, 448, n), np.float32), np.zeros((batch, 448, n), np.float32)
    written = np.zeros(448, bool)
    for offset, n_q in steps:
        x = rng.standard_normal((batch, n_q, n)).astype(np.float32)
        assert_matches_reference("decoder_layer", got(x, kc, vc, *cross, offset), want(x, kr, vr, *cross, offset))
        for mine, theirs in ((kc, kr), (vc, vr)):
            assert_matches_reference("decoder_layer", np.ascontiguousarray(mine), theirs)
        written[offset:offset + n_q] = True
    assert not kc[:, ~written].any() and not vc[:, ~written].any(), "cache written outside the steps' rows"
    if strided_cache:
        assert not any(b[..., 1::2].any() for b in buffers), "cache written between the view's elements"


# --- the command line -----------------------------------------------------------------------------------------
def assert_one_clear_error(proc, *fragments) -> None:
    """The command failed with exit status 2 and one line `whisperkit: error: ...` holding every fragment."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("whisperkit: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# --- CTranslate2 model.bin ------------------------------------------------------------------------------------
#: the alias every Whisper model.bin carries: the output projection is the token embedding
WHISPER_CT2_ALIASES = [("decoder/projection/weight", "decoder/embeddings/weight")]


def ct2_bytes(variables, aliases=WHISPER_CT2_ALIASES, *, version=6, spec="WhisperSpec", revision=3) -> tuple[bytes, list]:
    """A model.bin: the header, each variable [name, shape, dtype id, raw bytes] and the aliases [(alias, target)].
    Also returns the header's integer fields as (offset, size, what) so a mutation can aim at them.  A variable may
    carry a 5th item: a declared byte count to lie with."""
    fields: list[tuple[int, int, str]] = []
    out = bytearray()

    def field(fmt, value, what):
        fields.append((len(out), struct.calcsize(fmt), what))
        out.extend(struct.pack(fmt, value))

    def string(s, what):
        b = (s.encode() if isinstance(s, str) else s) + b"\0"
        field("<H", len(b), f"length of {what}")
        out.extend(b)

    field("<I", version, "version")
    string(spec, "spec")
    field("<I", revision, "revision")
    field("<I", len(variables), "count")
    for v in variables:
        name, shape, dt, raw = v[:4]
        string(name, "name")
        field("<B", len(shape), "rank")
        for s in shape:
            field("<I", s, "dim")
        field("<B", dt, "dtype")
        field("<I", v[4] if len(v) > 4 else len(raw), "nbytes")
        out.extend(raw)
    field("<I", len(aliases), "alias count")
    for a, target in aliases:
        string(a, "alias")
        string(target, "alias target")
    return bytes(out), fields


def parse_ct2(data: bytes) -> tuple[dict, list, list]:
    """The inverse of `ct2_bytes` for a well-formed file: (header keywords, variables, aliases)."""
    o = 0

    def take(fmt):
        nonlocal o
        v = struct.unpack_from(fmt, data, o)
        o += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal o
        n = take("<H")
        s = data[o : o + n - 1].decode()
        o += n
        return s

    header = dict(version=take("<I"), spec=string(), revision=take("<I"))
    variables = []
    for _ in range(take("<I")):
        name = string()
        shape = tuple(take("<I") for _ in range(take("<B")))
        dt, nb = take("<B"), take("<I")
        variables.append([name, shape, dt, data[o : o + nb]])
        o += nb
    aliases = [(string(), string()) for _ in range(take("<I"))]
    assert o == len(data), f"{len(data) - o} bytes after the aliases"
    return header, variables, aliases


def rewrite_ct2(src: Path, dst: Path, edit) -> None:
    """Re-serialise a model.bin; ``edit(name, shape, dtype_id, raw)`` returns a variable, a list of them, or None."""
    header, variables, aliases = parse_ct2(src.read_bytes())
    out = []
    for v in variables:
        r = edit(*v)
        if isinstance(r, list):
            out.extend(r)
        elif r is not None:
            out.append(r)
    dst.write_bytes(ct2_bytes(out, aliases, **header)[0])


# --- WAV ------------------------------------------------------------------------------------------------------
#: the integer fields of `wav_bytes`'s header: (offset, size, what)
WAV_FIELDS = [(4, 4, "riff size"), (16, 4, "fmt size"), (20, 2, "format"), (22, 2, "channels"), (24, 4, "rate"),
              (28, 4, "byte rate"), (32, 2, "block align"), (34, 2, "bits"), (40, 4, "data size")]  # fmt: skip


def wav_bytes(rate: int, channels: int, bits: int, fmt: int, data: bytes, *, data_len: int | None = None) -> bytes:
    """A canonical 44-byte-header RIFF/WAVE file by hand (fmt 1 = PCM, 3 = IEEE float); `data_len`: a declared size
    of the data chunk to lie with."""
    block = channels * bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * block, block, bits)
    n = len(data) if data_len is None else data_len
    riff = min(4 + 8 + len(fmt_chunk) + 8 + n, 2**32 - 1)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
            + b"data" + struct.pack("<I", n) + data)
