"""Fuzzing the model readers (CTranslate2 model.bin, Hugging Face safetensors) and the audio loader.

The property, for every generated or mutated input: either a valid result comes out, or one of our
clear errors (ModelFileError / ModelNotFoundError / AudioError) whose message names the file. Never
another exception type, never a hang (faulthandler kills the run with a traceback after
HANG_SECONDS, writing the
hung case's traceback to the file named in _hang_log), never memory beyond a bound proportional to the file (tracemalloc peak), and never
anything executed from a model file (an audit hook watches for unpickling and process spawning).

Inputs are small files written from scratch here (a Whisper with n_state 8 and one layer: a few KB)
so thousands of cases run in the default CI run; ``-m slow`` runs SLOW_FACTOR times more, not
derandomized. Run with ``--hypothesis-show-statistics`` to see the number of cases per test.
"""
from __future__ import annotations

import faulthandler
import functools
import json
import math
import os
import struct
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import WAV_FIELDS, WHISPER_CT2_ALIASES, ct2_bytes, wav_bytes
from whisperkit.audio import SAMPLE_RATE, load_audio
from whisperkit.errors import AudioError, ModelFileError, ModelNotFoundError
from whisperkit.model import ModelDimensions
from whisperkit.weights import LoadedWeights, canonical_shapes, read_ctranslate2, read_hf, resolve_model, write_hf

TINY = ModelDimensions(
    n_mels=4, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=1,
    n_vocab=12, n_text_ctx=5, n_text_state=8, n_text_head=2, n_text_layer=1,
)  # fmt: skip

HANG_SECONDS = 60  # per case; a case normally takes milliseconds
SLOW_FACTOR = 10
# Peak traced allocation of one read, as a multiple of the file's size plus a constant: float16 or
# int8 weights widen to float32 (x2, x4), a few transient copies, and the parsers' Python objects.
MEM_FACTOR, MEM_SLACK = 32, 4 << 20

_HC = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
# Address-space headroom per fuzz test: an allocation the tracemalloc bound would flag only after the
# fact (or one made in C, which tracemalloc does not see) becomes a MemoryError here instead of
# driving a shared machine into the OOM killer.
AS_HEADROOM = 3 << 30


@pytest.fixture(autouse=True)
def _address_space_cap():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: no cap
        yield
        return
    cap = vm + AS_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < cap:
        cap = soft
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _fuzz(n: int, *strategies):
    """Two tests from one body: the CI run (n cases, derandomized so CI is reproducible) and the
    slow run (SLOW_FACTOR * n cases, random)."""

    def deco(body):
        common = dict(deadline=None, database=None, suppress_health_check=_HC, print_blob=True)
        ci = settings(max_examples=n, derandomize=True, **common)(given(*strategies)(body))
        slow = settings(max_examples=n * SLOW_FACTOR, derandomize=False, **common)(given(*strategies)(body))
        # run only when asked for (-m slow), even if the default -m set does not exclude slow tests
        asked = pytest.mark.skipif("'slow' not in config.getoption('markexpr')", reason="slow fuzz run: select it with -m slow")
        return ci, pytest.mark.slow(asked(slow))

    return deco


# ----------------------------------------------------------------------------- nothing executed

_WATCHED = {"pickle.find_class", "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork"}
_EVENTS: list[str] = []


def _audit(event: str, args, _watched=_WATCHED, _events=_EVENTS) -> None:
    if event in _watched:  # bound as defaults: module globals are gone at interpreter exit
        _events.append(f"{event} {args!r}"[:200])


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only appends to a list


# ----------------------------------------------------------------------------- the property


_HANG_LOG = []


def _hang_log():
    """Where the watchdog writes the hung case's traceback before exiting: a file, because pytest
    captures fd 2 (default: $TMPDIR/whisperkit-fuzz-hang.txt; WHISPERKIT_FUZZ_HANG_LOG overrides)."""
    if not _HANG_LOG:
        path = Path(os.environ.get("WHISPERKIT_FUZZ_HANG_LOG", Path(tempfile.gettempdir()) / "whisperkit-fuzz-hang.txt"))
        _HANG_LOG.append(open(path, "w"))
    return _HANG_LOG[0]


class _Guard:
    """One case: a hang watchdog, a tracemalloc peak bound, and the audit log."""

    def __init__(self, size: int):
        self.limit = MEM_FACTOR * size + MEM_SLACK

    def __enter__(self):
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=_hang_log())
        self.events = len(_EVENTS)
        tracemalloc.start()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc):
        peak = tracemalloc.get_traced_memory()[1] - self.base
        tracemalloc.stop()
        faulthandler.cancel_dump_traceback_later()
        assert len(_EVENTS) == self.events, f"a model/audio read unpickled or spawned: {_EVENTS[self.events:]}"
        assert peak <= self.limit, f"read allocated {peak} bytes, more than the bound {self.limit}"
        return False


def _valid_weights(w: LoadedWeights) -> None:
    assert isinstance(w, LoadedWeights)
    for k, v in vars(w.dims).items():
        assert isinstance(v, int) and v > 0, (k, v)
    shapes = canonical_shapes(w.dims)
    assert set(w.tensors) == set(shapes)
    for name, shape in shapes.items():
        a = w.tensors[name]
        assert a.shape == shape and a.dtype in (np.float16, np.float32) and a.flags.c_contiguous, name
        assert np.isfinite(a).all(), name
    if w.alignment_heads is not None:
        h = w.alignment_heads
        assert h.dtype == np.int64 and h.ndim == 2 and h.shape[1] == 2
        assert ((h[:, 0] >= 0) & (h[:, 0] < w.dims.n_text_layer) & (h[:, 1] >= 0) & (h[:, 1] < w.dims.n_text_head)).all()


def _outcome(fn, where: Path, size: int, errors=(ModelFileError, ModelNotFoundError)):
    """Run one read under the guard; return the result or the (checked) error."""
    with _Guard(size):
        try:
            result = fn()
        except errors as exc:
            msg = str(exc)
            assert str(where) in msg, f"the error does not name {where}: {msg}"
            return exc
    return result


# ----------------------------------------------------------------------------- tiny CTranslate2 files


_NP_OF_ID = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def tiny_ct2_vars(dims: ModelDimensions = TINY, seed: int = 0, dtype_id: int = 4) -> list[list]:
    """The variables of a CTranslate2 WhisperSpec model.bin for ``dims``: [name, shape, dtype id, raw]."""
    rng = np.random.default_rng(seed)
    out: list[list] = []

    def put(name, *shape):
        a = (rng.standard_normal(shape) * 0.1 + 0.01).astype(_NP_OF_ID[dtype_id])
        out.append([name, tuple(shape), dtype_id, a.tobytes()])

    def scalar(name, value, dt=2):
        out.append([name, (), dt, np.array(value, _NP_OF_ID[dt]).tobytes()])

    def lin(p, o, i):
        put(f"{p}/weight", o, i)
        put(f"{p}/bias", o)

    def ln(p, d):
        put(f"{p}/gamma", d)
        put(f"{p}/beta", d)

    def ffn_and_self_attention(p, n):  # what an encoder and a decoder layer both hold, in the file's order
        ln(f"{p}/ffn/layer_norm", n)
        lin(f"{p}/ffn/linear_0", 4 * n, n)
        lin(f"{p}/ffn/linear_1", n, 4 * n)
        ln(f"{p}/self_attention/layer_norm", n)
        lin(f"{p}/self_attention/linear_0", 3 * n, n)
        lin(f"{p}/self_attention/linear_1", n, n)

    d, t = dims.n_audio_state, dims.n_text_state
    scalar("decoder/num_heads", dims.n_text_head)
    scalar("decoder/alignment_heads", 1)
    put("decoder/embeddings/weight", dims.n_vocab, t)
    for i in range(dims.n_text_layer):
        p = f"decoder/layer_{i}"
        ln(f"{p}/attention/layer_norm", t)
        lin(f"{p}/attention/linear_0", t, t)
        lin(f"{p}/attention/linear_1", 2 * t, d)
        lin(f"{p}/attention/linear_2", t, t)
        ffn_and_self_attention(p, t)
    ln("decoder/layer_norm", t)
    put("decoder/position_encodings/encodings", dims.n_text_ctx, t)
    lin("encoder/conv1", d, dims.n_mels)
    out[-2][1] = (d, dims.n_mels, 3)
    out[-2][3] = (rng.standard_normal((d, dims.n_mels, 3)) * 0.1).astype(_NP_OF_ID[dtype_id]).tobytes()
    lin("encoder/conv2", d, d)
    out[-2][1] = (d, d, 3)
    out[-2][3] = (rng.standard_normal((d, d, 3)) * 0.1).astype(_NP_OF_ID[dtype_id]).tobytes()
    for i in range(dims.n_audio_layer):
        p = f"encoder/layer_{i}"
        ffn_and_self_attention(p, d)
    ln("encoder/layer_norm", d)
    scalar("encoder/num_heads", dims.n_audio_head)
    put("encoder/position_encodings/encodings", dims.n_audio_ctx, d)
    return out


TINY_ALIASES = WHISPER_CT2_ALIASES


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def tiny_ct2(workdir) -> tuple[bytes, list]:
    return ct2_bytes(tiny_ct2_vars())


def test_tiny_ct2_is_valid(workdir, tiny_ct2):
    """The generator's file loads and equals what it wrote (so the fuzz starts from a valid model)."""
    d = workdir / "valid-ct2"
    d.mkdir()
    (d / "model.bin").write_bytes(tiny_ct2[0])
    w = read_ctranslate2(d)
    _valid_weights(w)
    assert w.dims == TINY
    variables = {v[0]: v for v in tiny_ct2_vars()}
    conv2 = np.frombuffer(variables["encoder/conv2/weight"][3], np.float16).reshape(8, 8, 3)
    np.testing.assert_array_equal(w.tensors["encoder.conv2.weight"], conv2.astype(np.float32))
    # the K third of the fused self-attention bias is zeroed, the rest kept
    qkv = np.frombuffer(variables["encoder/layer_0/self_attention/linear_0/bias"][3], np.float16)
    b = w.tensors["encoder.blocks.0.attn.qkv.bias"]
    assert not b[8:16].any() and np.array_equal(b[:8], qkv[:8].astype(np.float32))


# ----------------------------------------------------------------------------- byte-level mutations

_BIG = [0, 1, 2, 3, 7, 8, 255, 256, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 2**63, 2**64 - 1]


@st.composite
def byte_mutations(draw, data: bytes, fields: list[tuple[int, int, str]] | None = None, max_ops: int = 3):
    """1..max_ops edits of ``data``: bit flips, truncation, inserted/deleted runs, overwritten runs,
    and (when ``fields`` is given) header integers set to extreme values."""
    buf = bytearray(data)
    kinds = ["flip", "truncate", "insert", "delete", "overwrite"] + (["field", "field", "field"] if fields else [])
    for _ in range(draw(st.integers(1, max_ops))):
        if not buf:
            break
        kind = draw(st.sampled_from(kinds))
        pos = draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 64))]
        elif kind == "overwrite":
            run = draw(st.binary(min_size=1, max_size=16))
            buf[pos : pos + len(run)] = run
        else:
            off, size, _ = draw(st.sampled_from(fields))
            if off + size > len(buf):
                continue
            value = draw(st.sampled_from(_BIG + [len(data), len(data) + 1]) | st.integers(0, 2 ** (8 * size) - 1))
            buf[off : off + size] = (value % 2 ** (8 * size)).to_bytes(size, "little")
    return bytes(buf)


def _ct2_case(workdir: Path, data: bytes):
    d = workdir / "ct2"
    d.mkdir(exist_ok=True)
    p = d / "model.bin"
    p.write_bytes(data)
    r = _outcome(lambda: read_ctranslate2(d), p, len(data))
    if isinstance(r, LoadedWeights):
        _valid_weights(r)
    return r


@st.composite
def _ct2_mutated(draw):
    data, fields = ct2_bytes(tiny_ct2_vars(dtype_id=draw(st.sampled_from([0, 4]))))
    return draw(byte_mutations(data, fields))


def _body_ct2_bytes(workdir, data):
    _ct2_case(workdir, data)


test_fuzz_ct2_bytes, test_fuzz_ct2_bytes_slow = _fuzz(900, _ct2_mutated())(_body_ct2_bytes)


# ----------------------------------------------------------------------------- structural CTranslate2


@st.composite
def _ct2_structural(draw):
    """Valid-looking files with one or more semantic lies: shapes (zero, huge), dtypes, byte counts,
    quantized tensors with odd scales, hostile layer numbers, head counts, aliases."""
    variables = tiny_ct2_vars(dtype_id=draw(st.sampled_from([0, 4])))
    aliases = list(TINY_ALIASES)
    names = [v[0] for v in variables]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(
            ["drop", "shape", "huge_shape", "dtype", "nbytes", "quantize", "layer", "heads", "alias", "rank", "nan", "dup"]
        ))  # fmt: skip
        k = draw(st.integers(0, len(variables) - 1))
        v = variables[k]
        if op == "drop":
            del variables[k]
            if not variables:
                break
        elif op == "shape":  # same data, another shape (the byte count follows the shape)
            v[1] = tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=4)))
            n = math.prod(v[1]) * np.dtype(_NP_OF_ID.get(v[2], np.uint8)).itemsize
            v[3] = (v[3] * (n // max(len(v[3]), 1) + 1))[:n]
        elif op == "huge_shape":  # claims gigabytes, holds bytes: must be refused before allocating
            v[1] = tuple(draw(st.lists(st.sampled_from([2**31, 2**32 - 1, 65536, 1 << 20]), min_size=1, max_size=3)))
            v.append(min(math.prod(v[1]) * 4, 2**32 - 1))
        elif op == "dtype":
            v[2] = draw(st.integers(0, 255))
            v[3] = v[3][: len(v[3]) // 4 * 4]
        elif op == "nbytes":
            v.append(draw(st.sampled_from(_BIG) | st.integers(0, 2**32 - 1)) % 2**32)  # a 4-byte field
        elif op == "quantize":
            v[2] = draw(st.sampled_from([1, 2, 3]))
            count = math.prod(v[1])
            if count > 1 << 16:  # a shape already made huge: nothing to quantize
                continue
            v[3] = np.zeros(count, _NP_OF_ID[v[2]]).tobytes() if not draw(st.booleans()) else (
                np.arange(count) % 100).astype(_NP_OF_ID[v[2]]).tobytes()
            if draw(st.booleans()):
                sshape = tuple(draw(st.lists(st.integers(0, 40), max_size=3)))
                svals = draw(st.sampled_from([1.0, 0.0, np.nan, np.inf, 127.0]))
                variables.append([v[0] + "_scale", sshape, 0, np.full(sshape, svals, np.float32).tobytes()])
        elif op == "layer":  # a layer number from nowhere
            n = draw(st.sampled_from([1, 2, 7, 2**31, 2**32 - 1, 10**12]))
            v[0] = v[0].replace("layer_0", f"layer_{n}") if "layer_0" in v[0] else f"encoder/layer_{n}/x"
        elif op == "heads":
            name = draw(st.sampled_from(["encoder/num_heads", "decoder/num_heads"]))
            dt = draw(st.sampled_from([0, 1, 2, 3, 4]))
            val = draw(st.sampled_from([0, -1, 1, 3, 5, 127, 1000, np.nan, np.inf, 2.5]))
            shape = draw(st.sampled_from([(), (0,), (2,)]))
            with np.errstate(all="ignore"):  # casting wraps or saturates: whatever bytes come out
                raw = np.full(shape, val, np.float64).astype(_NP_OF_ID[dt]).tobytes()
            variables = [x for x in variables if x[0] != name] + [[name, shape, dt, raw]]
        elif op == "alias":
            a = draw(st.sampled_from(names + ["decoder/projection/weight", "x"]))
            target = draw(st.sampled_from(names + [a, "missing/thing", "decoder/projection/weight"]))
            aliases.append((a, target))
            if draw(st.booleans()):
                aliases.append((target, a))  # a cycle
            if draw(st.booleans()):  # the real name gone, only the alias left
                variables = [x for x in variables if x[0] != a]
        elif op == "rank":
            v[1] = tuple(draw(st.lists(st.integers(0, 2), min_size=9, max_size=12)))
        elif op == "nan":
            a = np.frombuffer(v[3], _NP_OF_ID.get(v[2], np.uint8)).copy()
            if a.size and a.dtype.kind == "f":
                a[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
                v[3] = a.tobytes()
        elif op == "dup":
            variables.append(list(v))
    return ct2_bytes(variables, aliases)[0]


test_fuzz_ct2_structure, test_fuzz_ct2_structure_slow = _fuzz(700, _ct2_structural())(_body_ct2_bytes)


def test_ct2_huge_length_rejected_before_allocating(workdir):
    """A 1 KB file whose tensor claims 4 GB: refused, and tracemalloc sees no large allocation."""
    v = [["encoder/conv1/weight", (2**30,), 0, b"\0" * 512, 2**32 - 4]]
    data = ct2_bytes(v)[0]
    d = workdir / "huge"
    d.mkdir()
    (d / "model.bin").write_bytes(data)
    assert len(data) < 1024
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"(?s)model\.bin.*encoder/conv1/weight.*4294967292"):
            read_ctranslate2(d)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


# ----------------------------------------------------------------------------- safetensors


@pytest.fixture(scope="module")
def tiny_hf_dir(workdir, tiny_ct2) -> Path:
    d = workdir / "valid-ct2-for-hf"
    d.mkdir(exist_ok=True)
    (d / "model.bin").write_bytes(tiny_ct2[0])
    w = read_ctranslate2(d)
    w.alignment_heads = np.array([[0, 1]], np.int64)
    return write_hf(w, workdir / "valid-hf")


def test_tiny_hf_round_trip(tiny_hf_dir, workdir):
    w = read_hf(tiny_hf_dir)
    _valid_weights(w)
    ref = read_ctranslate2(workdir / "valid-ct2-for-hf")
    for k, v in ref.tensors.items():
        np.testing.assert_array_equal(w.tensors[k], v, err_msg=k)
    assert w.alignment_heads.tolist() == [[0, 1]]


def _split_st(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join_st(header, body: bytes, *, length: int | None = None, raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + body


def _hf_case(workdir: Path, tiny_hf_dir: Path, files: dict[str, bytes]):
    """Write a HF directory (valid files unless replaced by ``files``) and read it."""
    d = workdir / "hf"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (d / name).write_bytes(files.get(name, (tiny_hf_dir / name).read_bytes()))
    for name, data in files.items():
        if name not in ("config.json", "generation_config.json", "model.safetensors"):
            (d / name).write_bytes(data)
    size = sum(f.stat().st_size for f in d.iterdir())
    r = _outcome(lambda: read_hf(d), d, size)
    if isinstance(r, LoadedWeights):
        _valid_weights(r)
    r2 = _outcome(lambda: resolve_model(d), d, size)
    assert type(r2) is type(r)
    return r


@st.composite
def _st_mutated(draw, st_bytes: bytes):
    (n,) = struct.unpack("<Q", st_bytes[:8])
    fields = [(0, 8, "header length")]
    return draw(byte_mutations(st_bytes, fields))


_JUNK = st.sampled_from(
    [-1, -(2**63), 0, 2**31, 2**40, 2**64, 10**30, 1.5, 1e308, float("inf"), float("nan"), True, None, "8", "", [], [1], {}, [[1]]]
)


@st.composite
def _st_header(draw, st_bytes: bytes):
    """A safetensors file whose JSON header lies: shapes, dtypes, offsets, lengths, nesting."""
    header, body = _split_st(st_bytes)
    keys = [k for k in header if k != "__metadata__"]
    op = draw(st.sampled_from(["shape", "dtype", "offsets", "entry", "length", "metadata", "deep", "bigint", "utf8", "extra", "alias"]))
    key = draw(st.sampled_from(keys))
    e = header[key]
    if op == "shape":
        e["shape"] = draw(st.lists(_JUNK | st.integers(-5, 50), max_size=4) | _JUNK)
    elif op == "dtype":
        e["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "I64", "F8_E4M3", "f32", "", "F32 "]) | _JUNK)
    elif op == "offsets":
        b, end = e["data_offsets"]
        e["data_offsets"] = draw(st.sampled_from([[end, b], [b, end + 4], [b - 4, end - 4], [0, end - b], [b, 2**64], [-8, end], [b], [b, end, 0], "x"])
                                 | st.lists(_JUNK, max_size=3))  # fmt: skip
    elif op == "entry":
        header[key] = draw(_JUNK | st.just({"shape": e["shape"]}))
    elif op == "length":
        length = draw(st.sampled_from([0, 1, len(json.dumps(header)) + 1, len(st_bytes), len(st_bytes) - 7, 2**32, 2**63, 2**64 - 1]))
        return _join_st(header, body, length=length)
    elif op == "metadata":
        header["__metadata__"] = draw(_JUNK | st.just({"format": "pt", "x": [1]}))
    elif op == "deep":
        depth = draw(st.sampled_from([100, 5000, 100_000]))
        return _join_st(None, body, raw_header=b"[" * depth + b"]" * depth)
    elif op == "bigint":
        return _join_st(None, body, raw_header=json.dumps(header).replace(str(e["shape"][0]), "9" * 5000, 1).encode())
    elif op == "utf8":
        raw = bytearray(json.dumps(header).encode())
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.sampled_from([0x80, 0xFF, 0xC0, 0x00]))
        return _join_st(None, body, raw_header=bytes(raw))
    elif op == "extra":
        header[draw(st.text(max_size=20))] = {"dtype": "F32", "shape": [draw(st.integers(0, 3))], "data_offsets": [0, 4]}
    elif op == "alias":  # two names for the same bytes (safetensors forbids it)
        other = header[draw(st.sampled_from(keys))]
        header[key] = dict(other)
    return _join_st(header, body)


@pytest.fixture(scope="module")
def st_bytes(tiny_hf_dir) -> bytes:
    return (tiny_hf_dir / "model.safetensors").read_bytes()


def _body_st(workdir, tiny_hf_dir, st_bytes, data):
    mutated = data.draw(_st_mutated(st_bytes) | _st_header(st_bytes))
    _hf_case(workdir, tiny_hf_dir, {"model.safetensors": mutated})


test_fuzz_safetensors, test_fuzz_safetensors_slow = _fuzz(700, st.data())(_body_st)


_CONFIG_KEYS = [
    "d_model", "encoder_attention_heads", "encoder_layers", "decoder_attention_heads", "decoder_layers",
    "num_mel_bins", "max_source_positions", "max_target_positions", "vocab_size", "model_type",
]  # fmt: skip


def _body_config(workdir, tiny_hf_dir, data):
    cfg = json.loads((tiny_hf_dir / "config.json").read_text())
    gen = json.loads((tiny_hf_dir / "generation_config.json").read_text())
    files: dict[str, bytes] = {}
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["config", "config", "heads", "index", "raw"]))
        if op == "config":
            cfg[data.draw(st.sampled_from(_CONFIG_KEYS))] = data.draw(_JUNK | st.integers(-3, 20) | st.just("llama"))
        elif op == "heads":
            gen["alignment_heads"] = data.draw(
                _JUNK | st.lists(st.lists(_JUNK | st.integers(-2, 3), max_size=3), max_size=3)
            )
        elif op == "index":
            shard = data.draw(st.sampled_from(["model.safetensors", "../valid-hf/model.safetensors", "/etc/passwd", "", ".", "nope.safetensors", 5, None, ["a"]]))
            files["model.safetensors.index.json"] = json.dumps({"weight_map": {"model.encoder.conv1.weight": shard}}).encode()
            files["model.safetensors"] = b""  # placeholder, removed below: the index is used
        else:
            files["config.json"] = data.draw(st.sampled_from([b"", b"[]", b"{", b"\xff\xfe", b"[" * 50_000, b'{"d_model": 1' + b"0" * 5000 + b"}", b"null"]))
    files.setdefault("config.json", json.dumps(cfg).encode())
    files["generation_config.json"] = json.dumps(gen).encode()
    if "model.safetensors.index.json" in files:
        d = workdir / "hf"
        d.mkdir(exist_ok=True)
        for f in d.iterdir():
            f.unlink()
        for name, b in files.items():
            if name != "model.safetensors":
                (d / name).write_bytes(b)
        (d / "model-00001-of-00001.safetensors").write_bytes((tiny_hf_dir / "model.safetensors").read_bytes())
        size = sum(f.stat().st_size for f in d.iterdir())
        r = _outcome(lambda: read_hf(d), d, size)
        if isinstance(r, LoadedWeights):
            _valid_weights(r)
        return
    _hf_case(workdir, tiny_hf_dir, files)


test_fuzz_hf_config, test_fuzz_hf_config_slow = _fuzz(300, st.data())(_body_config)


def test_safetensors_header_length_beyond_file(workdir, tiny_hf_dir, st_bytes):
    header, body = _split_st(st_bytes)
    total = len(_join_st(header, body))
    for length in (total - 7, total, 2**32, 2**64 - 1):
        with tracemalloc_peak() as peak:
            with pytest.raises(ModelFileError, match=r"model\.safetensors.*header of \d+ bytes does not fit"):
                _hf_raise(workdir, tiny_hf_dir, _join_st(header, body, length=length))
        assert peak() < 1 << 20


def test_safetensors_shape_claims_gigabytes(workdir, tiny_hf_dir, st_bytes):
    header, body = _split_st(st_bytes)
    key = next(k for k in header if k != "__metadata__")
    header[key] = {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 4 * 2**40]}
    with tracemalloc_peak() as peak:
        with pytest.raises(ModelFileError, match=r"model\.safetensors"):
            _hf_raise(workdir, tiny_hf_dir, _join_st(header, body))
    assert peak() < 1 << 20


class tracemalloc_peak:
    def __enter__(self):
        tracemalloc.start()
        self._peak = None
        return lambda: self._peak

    def __exit__(self, *exc):
        self._peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return False


def _hf_raise(workdir, tiny_hf_dir, st_data: bytes):
    d = workdir / "hf-raise"
    d.mkdir(exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        (d / name).write_bytes((tiny_hf_dir / name).read_bytes())
    (d / "model.safetensors").write_bytes(st_data)
    read_hf(d)


# ----------------------------------------------------------------------------- pickles are never run


class _Payload:
    """Unpickling this creates the marker file (open(marker, "w")): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_never_executed(tmp_path, tiny_hf_dir):
    import pickle
    import zipfile

    # the payload is live: unpickling it really does create its marker
    probe = tmp_path / "probe-marker"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()

    marker = tmp_path / "MARKER"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    torch_zip = tmp_path / "torch.zip"
    with zipfile.ZipFile(torch_zip, "w") as z:  # torch.save's layout: archive/data.pkl
        z.writestr("archive/data.pkl", payload)
    zipped = torch_zip.read_bytes()
    cfg = (tiny_hf_dir / "config.json").read_text()  # a valid config: the weights file is what is refused
    cases = {
        "pt-dir/pytorch_model.bin": payload,
        "pt-zip-dir/pytorch_model.bin": zipped,
        "ct2/model.bin": payload,
        "ct2-zip/model.bin": zipped,
        "st/model.safetensors": payload,
        "file/whisper.pt": payload,
        "file/whisper.pth": zipped,
        "file/model.ckpt": payload,
        "bare/model.bin": zipped,
    }
    from whisperkit import load_model

    events = len(_EVENTS)
    for rel, data in cases.items():
        p = tmp_path / rel
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        if rel.startswith(("pt", "st")):
            (p.parent / "config.json").write_text(cfg)
        for target in (p, p.parent):
            # the reference backend: a compiled one, loading on its own thread meanwhile, would add its own
            # kernel cache's unpickling (Numba's) to the events this test audits for the model file's
            for loader in (resolve_model, functools.partial(load_model, backend="numpy")):
                with pytest.raises(ModelFileError) as ei:
                    loader(target)
                assert str(p.parent) in str(ei.value), str(ei.value)
        if rel.startswith(("pt", "st")):
            with pytest.raises(ModelFileError):
                read_hf(p.parent)
    assert not marker.exists()
    assert len(_EVENTS) == events, _EVENTS[events:]


def test_readers_contain_no_code_execution():
    """Static check: the readers never call pickle, eval, exec, compile, np.load or torch.load."""
    import ast

    import whisperkit.audio
    import whisperkit.weights

    files = sorted(Path(whisperkit.weights.__file__).parent.glob("*.py")) + [Path(whisperkit.audio.__file__)]
    assert len(files) > 2, files  # the weights package's modules, not only its __init__
    for path in files:
        tree = ast.parse(path.read_text())
        bad = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                bad += [n for n in names if n.split(".")[0] in ("pickle", "marshal", "dill", "joblib", "torch", "shelve")]
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile", "__import__", "load", "loads"):
                    bad.append(ast.unparse(node)[:80])
                if isinstance(f, ast.Attribute) and f.attr in ("load", "loads", "Unpickler", "literal_eval") and not (
                    isinstance(f.value, ast.Name) and f.value.id == "json"
                ):
                    bad.append(ast.unparse(node)[:80])
        assert not bad, (str(path), bad)


# ----------------------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def audio_seeds(workdir) -> list[tuple[str, bytes, list]]:
    """Small real files in several formats: (suffix, bytes, header fields or [])."""
    rng = np.random.default_rng(1)
    x = (rng.uniform(-0.5, 0.5, (1200, 2))).astype(np.float32)
    seeds = [
        ("wav", wav_bytes(16000, 1, 16, 1, (x[:, 0] * 32767).astype("<i2").tobytes()), WAV_FIELDS),
        ("wav", wav_bytes(8000, 2, 32, 3, x[:600].astype("<f4").tobytes()), WAV_FIELDS),
        ("wav", wav_bytes(22050, 1, 8, 1, ((x[:, 0] + 1) * 127.5).astype(np.uint8).tobytes()), WAV_FIELDS),
    ]
    for suffix, fmt, sub, rate in (("flac", "FLAC", "PCM_16", 44100), ("ogg", "OGG", "VORBIS", 44100), ("mp3", "MP3", "MPEG_LAYER_III", 32000)):
        p = workdir / f"seed.{suffix}"
        try:
            soundfile.write(str(p), x[:1000], rate, format=fmt, subtype=sub)
        except (soundfile.LibsndfileError, ValueError, TypeError):
            continue  # this libsndfile cannot write it
        seeds.append((suffix, p.read_bytes(), []))
    return seeds


def _audio_case(workdir: Path, suffix: str, data: bytes) -> None:
    p = workdir / f"audio.{suffix}"
    p.write_bytes(data)
    # decoded audio may legitimately be larger than a compressed file; for PCM WAV the samples
    # held are at most 16x (1 kHz lowest rate -> 16 kHz) of one byte per sample, as float32
    bound = len(data) * (16 * 4 * 4 if suffix == "wav" else 4096) + (4 << 20)
    with _Guard(len(data)) as g:
        g.limit = bound
        try:
            a = load_audio(p)
        except AudioError as exc:
            assert str(p) in str(exc), str(exc)
            return
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 1 and a.size > 0
    assert np.isfinite(a).all()
    if suffix == "wav":
        assert a.size <= 16 * len(data) + 1024


def _body_audio(workdir, audio_seeds, data):
    suffix, raw, fields = data.draw(st.sampled_from(audio_seeds))
    _audio_case(workdir, suffix, data.draw(byte_mutations(raw, fields or None)))


test_fuzz_audio_files, test_fuzz_audio_files_slow = _fuzz(600, st.data())(_body_audio)


_AUDIO_DTYPES = st.sampled_from(
    [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.dtype("M8[s]"), np.dtype("U2")]
)  # fmt: skip


def _body_audio_array(x):
    with _Guard(x.nbytes) as g:
        g.limit = 8 * x.size + (1 << 20)
        try:
            out = load_audio(x)
        except AudioError as exc:
            assert "audio array" in str(exc), str(exc)
            return
    assert out.dtype == np.float32 and out.shape == x.shape and x.ndim == 1
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, x.astype(np.float32))


test_fuzz_audio_arrays, test_fuzz_audio_arrays_slow = _fuzz(
    300, hnp.arrays(_AUDIO_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=50))
)(_body_audio_array)


# ----------------------------------------------------------------------------- regressions (each was a bug)


def _ct2_read(workdir: Path, variables, aliases=TINY_ALIASES):
    d = workdir / "regress-ct2"
    d.mkdir(exist_ok=True)
    (d / "model.bin").write_bytes(ct2_bytes(variables, aliases)[0])
    return read_ctranslate2(d)


def _with(variables, name, **change):
    out = [list(v) for v in variables]
    for v in out:
        if v[0] == name:
            for k, val in change.items():
                v[{"name": 0, "shape": 1, "dtype": 2, "raw": 3}[k]] = val
    return out


@pytest.mark.parametrize("layer", [2**32 - 1, 10**12])
def test_hostile_layer_number_is_quick(workdir, layer):
    """A variable named layer_<huge> once sized the model by it (a loop over 10**12 layers)."""
    v = tiny_ct2_vars() + [[f"encoder/layer_{layer}/ffn/x", (1,), 0, b"\0" * 4]]
    t = time.perf_counter()
    with pytest.raises(ModelFileError, match=rf"model\.bin.*encoder/layer_{layer}.*no encoder/layer_1\b"):
        _ct2_read(workdir, v)
    assert time.perf_counter() - t < 2


@pytest.mark.parametrize(
    "shape, dt, value, match",
    [((0,), 2, 0, "must hold one integer"), ((2,), 2, 2, "must hold one integer"),
     ((), 4, np.nan, "must hold one integer"), ((), 4, 2.5, "must hold one integer"),
     ((), 2, -2, "n_text_head is -2"), ((), 2, 3, "not divisible by its 3 heads")],
)  # fmt: skip
def test_bad_num_heads(workdir, shape, dt, value, match):
    raw = np.full(shape, value, _NP_OF_ID[dt]).tobytes()
    v = _with(tiny_ct2_vars(), "decoder/num_heads", shape=shape, dtype=dt, raw=raw)
    with pytest.raises(ModelFileError, match=match):
        _ct2_read(workdir, v)


@pytest.mark.parametrize(
    "sshape, sval, match",
    [((3,), 1.0, r"scale .* has shape \(3,\)"), ((8, 32), 1.0, "does not fit"), ((32,), 0.0, "zero, NaN or Inf"), ((), np.inf, "zero, NaN or Inf")],
)
def test_bad_quantization_scale(workdir, sshape, sval, match):
    name = "encoder/layer_0/ffn/linear_0/weight"  # (32, 8)
    v = _with(tiny_ct2_vars(), name, dtype=1, raw=np.ones(256, np.int8).tobytes())
    v.append([name + "_scale", sshape, 0, np.full(sshape, sval, np.float32).tobytes()])
    with pytest.raises(ModelFileError, match=match):
        _ct2_read(workdir, v)
    v[-1] = [name + "_scale", (32,), 0, np.full(32, 4.0, np.float32).tobytes()]  # a good scale loads
    w = _ct2_read(workdir, v)
    assert (w.tensors["encoder.blocks.0.mlp.fc1.weight"] == 0.25).all()


def test_nan_weight_refused(workdir):
    name = "decoder/layer_0/ffn/linear_1/weight"
    a = np.zeros((8, 32), np.float16)
    a[3, 5] = np.nan
    with pytest.raises(ModelFileError, match=r"decoder\.blocks\.0\.mlp\.fc2\.weight \(from decoder/layer_0/ffn/linear_1/weight\) has 1 NaN"):
        _ct2_read(workdir, _with(tiny_ct2_vars(), name, raw=a.tobytes()))


def test_zero_width_model_refused(workdir):
    dims = ModelDimensions(4, 6, 8, 2, 1, 12, 5, 8, 2, 1)
    v = _with(tiny_ct2_vars(dims), "encoder/position_encodings/encodings", shape=(0, 8), raw=b"")
    with pytest.raises(ModelFileError, match="n_audio_ctx is 0, expected a positive integer"):
        _ct2_read(workdir, v)


def _st_with(workdir, tiny_hf_dir, st_bytes, edit=None, raw_header=None):
    header, body = _split_st(st_bytes)
    if edit:
        edit(header)
    d = workdir / "regress-hf"
    d.mkdir(exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        (d / name).write_bytes((tiny_hf_dir / name).read_bytes())
    (d / "model.safetensors").write_bytes(_join_st(header, body, raw_header=raw_header))
    return read_hf(d)


def _first(header):
    return header[next(k for k in header if k != "__metadata__")]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: _first(h).update(dtype=["F32"]), "unsupported dtype"),  # was TypeError: unhashable
        (lambda h: _first(h).update(shape=[1.5, 2]), "non-integer shape"),
        (lambda h: _first(h).update(shape=[1e400]), "non-integer shape"),  # was OverflowError
        (lambda h: _first(h).update(shape=[True]), "non-integer shape"),
        (lambda h: h.update(__metadata__=[1]), "__metadata__ is not a JSON object"),
        (lambda h: h.update({k: dict(_first(h)) for k in [next(k for k in h if k != "__metadata__") + "_alias"]}),
         "overlaps|without overlaps"),  # two names for one byte range
    ],
)  # fmt: skip
def test_safetensors_header_lies(workdir, tiny_hf_dir, st_bytes, edit, match):
    with pytest.raises(ModelFileError, match=rf"model\.safetensors.*({match})"):
        _st_with(workdir, tiny_hf_dir, st_bytes, edit)


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' + b"9" * 5000 + b"}"])
def test_safetensors_header_json_bombs(workdir, tiny_hf_dir, st_bytes, raw):
    """Deep nesting (was RecursionError) and a 5000-digit integer (was a bare ValueError)."""
    with pytest.raises(ModelFileError, match=r"model\.safetensors: corrupt safetensors header"):
        _st_with(workdir, tiny_hf_dir, st_bytes, raw_header=raw)


@pytest.mark.parametrize(
    "key, value, match",
    [("encoder_layers", 10**9, "n_audio_layer is 1000000000 but the file has only"),  # was a 10**9-step loop
     ("decoder_attention_heads", 3, "decoder width 8 is not divisible by its 3 heads"), ("d_model", 0, "n_audio_state is 0"),
     ("vocab_size", -1, "n_vocab is -1")],
)  # fmt: skip
def test_hf_config_lies(workdir, tiny_hf_dir, st_bytes, key, value, match):
    d = workdir / "regress-cfg"
    d.mkdir(exist_ok=True)
    cfg = json.loads((tiny_hf_dir / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes(st_bytes)
    t = time.perf_counter()
    with pytest.raises(ModelFileError, match=rf"config\.json: {match}"):
        read_hf(d)
    assert time.perf_counter() - t < 2


@pytest.mark.parametrize("heads", [[[1e30, 0]], [[float("nan"), 0]], [[0, 5]]])
def test_bad_alignment_heads(workdir, tiny_hf_dir, st_bytes, heads):
    d = workdir / "regress-heads"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_bytes((tiny_hf_dir / "config.json").read_bytes())
    (d / "generation_config.json").write_text(json.dumps({"alignment_heads": heads}))
    (d / "model.safetensors").write_bytes(st_bytes)
    with pytest.raises(ModelFileError, match=r"generation_config\.json: alignment.head"):
        read_hf(d)


@pytest.mark.parametrize("shard", [["a"], 5, "../valid-hf/model.safetensors", "/etc/passwd", ""])
def test_index_shard_names(workdir, tiny_hf_dir, st_bytes, shard):
    """Shard names must be plain file names in the model directory (was TypeError, or reads outside)."""
    d = workdir / "regress-index"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_bytes((tiny_hf_dir / "config.json").read_bytes())
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.encoder.conv1.weight": shard}}))
    with pytest.raises(ModelFileError, match=r"index\.json: shard name .* is not a file name"):
        read_hf(d)
