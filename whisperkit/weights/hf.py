"""Hugging Face transformers Whisper directories: the safetensors reader, `read_hf` and `write_hf`,
both generated from the name table in `layout` (so the writer is the reader's inverse)."""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from whisperkit.errors import ModelFileError

from . import layout
from .files import (LoadedWeights, loaded, Source, alignment_heads, check_tensors, json_loads, positive_dims, read_json,
                    refuse_pickled_dir, stored_weight)
from .layout import DECODER, ENCODER, ModelDimensions

#: The one tensor of the Hugging Face layout that is not canonical: the output projection, tied to the
#: token embedding.
HF_PROJ_OUT = "proj_out.weight"



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
        self.src = Source([path])
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
            header = json_loads(bytes(self.src.view(8, n)))
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

    def weight(self, key: str) -> np.ndarray:
        """The tensor at its stored precision where that is exact (`files.stored_weight`); bfloat16 as float32."""
        dtype, dt, shape, b, e = self.entries[key]
        a = np.frombuffer(self.src.view(self.start + b, e - b), dtype=dtype).reshape(shape)
        if dt == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if dtype.kind != "f":
            raise ModelFileError(f"{self.path}: tensor {key!r} is {dt}, expected a floating-point tensor")
        out = stored_weight(a)
        self.src.release(self.start + b, e - b)
        return out

    def close(self) -> None:
        self.src.close()


def _hf_weight_files(d: Path) -> list[Path]:
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    index = d / "model.safetensors.index.json"
    if index.is_file():
        wm = read_json(index).get("weight_map")
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
    refuse_pickled_dir(d)
    raise ModelFileError(f"{d}: no model.safetensors (expected a Hugging Face Whisper directory with config.json + model.safetensors)")


def read_hf(path: str | os.PathLike, *, name: str | None = None) -> LoadedWeights:
    """Read a Hugging Face transformers Whisper directory (config.json + model.safetensors)."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise ModelFileError(f"{d}: not a directory (expected config.json + model.safetensors)")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        refuse_pickled_dir(d)
        raise ModelFileError(f"{d}: no config.json (expected a Hugging Face Whisper directory)")
    cfg = read_json(cfg_path)

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
        positive_dims(dims, str(cfg_path), len(owner))
        probe = layout.module(ENCODER, "conv1")[0].hf[0]
        prefix = "model." if "model." + probe in owner or probe not in owner else ""
        used: dict[str, str] = {}
        tensors: dict[str, np.ndarray] = {}

        def get(hf: str, canon: str) -> np.ndarray | None:
            full = prefix + hf
            used[canon] = full
            st = owner.get(full)
            return None if st is None else st.weight(full)

        def fused(canon: str, hf_parts: tuple[str | None, ...]) -> np.ndarray | None:
            arrays = []
            for part in hf_parts:
                if part is None:
                    arrays.append(None)
                    continue
                a = get(part, canon)
                if a is None:
                    return None
                arrays.append(a)
            given = [a for a in arrays if a is not None]
            if any(a.ndim == 0 for a in given) or len({a.shape[1:] for a in given}) != 1:
                raise ModelFileError(f"{where}: cannot fuse {list(hf_parts)} into {canon}: shapes {[a.shape for a in given]}")
            width = given[0].shape[0]
            arrays = [np.zeros((width,) + given[0].shape[1:], given[0].dtype) if a is None else a for a in arrays]
            if len({a.shape[1:] for a in arrays}) != 1:
                raise ModelFileError(f"{where}: cannot fuse {list(hf_parts)} into {canon}: shapes {[a.shape for a in arrays]}")
            return np.concatenate(arrays, axis=0)

        for t in layout.tensors(dims):
            a = get(t.hf[0], t.canonical) if len(t.hf) == 1 else fused(t.canonical, t.hf)
            if a is not None:
                tensors[t.canonical] = a
        check_tensors(tensors, dims, where, used)
        proj = owner.get(prefix + HF_PROJ_OUT)
        if proj is not None:
            p = proj.weight(prefix + HF_PROJ_OUT)
            if not np.array_equal(p, tensors[layout.module(DECODER, "token_embedding.weight")[0].canonical]):
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
        heads = alignment_heads(read_json(gen_path).get("alignment_heads"), str(gen_path), dims)
    if heads is None and "alignment_heads" in cfg:
        heads = alignment_heads(cfg["alignment_heads"], str(cfg_path), dims)
    return loaded(dims, tensors, heads, d, name or d.name, d)


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
    check_tensors(weights.tensors, dims, weights.name)
    t = weights.tensors
    D = dims.n_audio_state
    out: dict[str, np.ndarray] = {}
    for x in layout.tensors(dims):  # the inverse of read_hf: fused tensors split back into their parts
        a = t[x.canonical]
        width = a.shape[0] // len(x.hf)
        for k, hf in enumerate(x.hf):
            if hf is not None:
                part = a if len(x.hf) == 1 else a[k * width : (k + 1) * width]
                out["model." + hf] = np.ascontiguousarray(part, dtype=np_dtype)

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
