"""CTranslate2 ``model.bin`` (format version 6, ``WhisperSpec``): the header parser and its map onto
the canonical layout, generated from the name table in `layout`."""
from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from whisperkit.errors import ModelFileError

from . import layout
from .files import (LoadedWeights, loaded, Source, alignment_heads, check_tensors, positive_dims, read_json, refuse_pickle,
                    stored_weight)
from .layout import DECODER, ENCODER, ModelDimensions

_CT2_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2")}
_CT2_VERSIONS = (6,)


@dataclass
class _Var:
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]


class _CT2File:
    """Parses the header of a CTranslate2 model.bin; tensors are decoded on demand."""

    def __init__(self, src: Source):
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
            raise refuse_pickle(label, "this looks like a pickled PyTorch checkpoint, not a CTranslate2 model.bin")
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

    def weight(self, name: str) -> np.ndarray:
        """The tensor at its stored precision where that is exact (`files.stored_weight`); quantized
        tensors are scaled to float32."""
        real = self.resolve(name)
        if real is None:
            raise ModelFileError(f"{self.src.label}: missing tensor {name!r}")
        a = self.raw(real)
        if a.dtype.kind == "f":
            out = stored_weight(a)
            self.src.release(self.vars[real].offset, a.nbytes)
            return out
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



def _ct2(side: str, name: str) -> str:
    return layout.module(side, name)[0].ct2


def _ct2_to_canonical(ct2: _CT2File, where: str) -> tuple[ModelDimensions, dict[str, np.ndarray]]:
    def need_shape(name: str, rank: int) -> tuple[int, ...]:
        if not ct2.has(name):
            raise ModelFileError(f"{where}: missing tensor {name}")
        s = ct2.shape(name)
        if len(s) != rank:
            raise ModelFileError(f"{where}: tensor {name} has shape {s}, expected rank {rank}")
        return s

    conv1 = need_shape(_ct2(ENCODER, "conv1"), 3)
    enc_pos = need_shape(_ct2(ENCODER, "positional_embedding"), 2)
    emb = need_shape(_ct2(DECODER, "token_embedding.weight"), 2)
    dec_pos = need_shape(_ct2(DECODER, "positional_embedding"), 2)

    def count_layers(side: str) -> int:
        block = layout.CT2_BLOCK.format(side=side, i="")
        pat = re.compile(rf"^{re.escape(block)}(\d+)/")
        idx = {int(m.group(1)) for n in ct2.vars if (m := pat.match(n))}
        n = max(idx) + 1 if idx else 0
        if len(idx) != n:  # also keeps a hostile "layer_4294967295" from sizing the model
            gap = next(i for i, k in enumerate(sorted(idx)) if i != k)
            raise ModelFileError(f"{where}: {side} has layers up to {block}{n - 1} but no {block}{gap}")
        return n

    n_audio_state, n_text_state = conv1[0], emb[1]
    n_audio_head = ct2.scalar("encoder/num_heads") or max(n_audio_state // 64, 1)
    n_text_head = ct2.scalar("decoder/num_heads") or max(n_text_state // 64, 1)
    dims = ModelDimensions(
        n_mels=conv1[1],
        n_audio_ctx=enc_pos[0],
        n_audio_state=n_audio_state,
        n_audio_head=n_audio_head,
        n_audio_layer=count_layers(ENCODER),
        n_vocab=emb[0],
        n_text_ctx=dec_pos[0],
        n_text_state=n_text_state,
        n_text_head=n_text_head,
        n_text_layer=count_layers(DECODER),
    )
    positive_dims(dims, where, len(ct2.vars))

    tensors: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for t in layout.tensors(dims):
        origin[t.canonical] = t.ct2
        if not ct2.has(t.ct2):
            continue
        a = ct2.weight(t.ct2)
        if t.zero_part is not None:  # a fused bias whose key part the canonical layout keeps zero
            parts = len(t.hf)
            d = t.shape[0] // parts
            k = d * t.zero_part
            if a.shape == (parts * d,):
                a[k : k + d] = 0.0  # K bias: softmax-invariant
            elif a.shape == ((parts - 1) * d,):  # stored without the K part
                a = np.concatenate([a[:k], np.zeros(d, a.dtype), a[k:]])
        tensors[t.canonical] = a
    check_tensors(tensors, dims, where, origin)
    return dims, tensors


def _read_ct2_files(paths: Sequence[Path], config_dir: Path, name: str, source: Path) -> LoadedWeights:
    where = "+".join(str(p) for p in paths)
    with Source(paths) as src:
        ct2 = _CT2File(src)
        dims, tensors = _ct2_to_canonical(ct2, where)
        del ct2
    heads = None
    cfg_path = config_dir / "config.json"
    if cfg_path.is_file():
        heads = alignment_heads(read_json(cfg_path).get("alignment_heads"), str(cfg_path), dims)
    return loaded(dims, tensors, heads, config_dir, name, source)


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
