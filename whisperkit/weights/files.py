"""What every reader shares: the result type, JSON and dimension checks, a byte source over mmap'ed
files, and the one refusal of pickled checkpoints."""
from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from whisperkit.errors import ModelFileError

from .layout import ModelDimensions, canonical_shapes

#: File names of pickled PyTorch checkpoints.
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def refuse_pickle(where, found: str) -> ModelFileError:
    """The one error for a pickled checkpoint: ``where`` is the file or directory, ``found`` says what it holds."""
    return ModelFileError(
        f"{where}: {found}; pickled PyTorch checkpoints are never loaded, because unpickling can run arbitrary "
        "code. Convert the model to safetensors (config.json + model.safetensors) or to CTranslate2 (model.bin)."
    )


def refuse_pickled_dir(d: Path) -> None:
    """Raise the pickle refusal when directory ``d`` holds pickled checkpoints."""
    pickled = sorted({p.name for pat in PICKLE_PATTERNS for p in d.glob(pat)})
    if pickled:
        raise refuse_pickle(d, f"has only pickled PyTorch checkpoints ({', '.join(pickled)})")


def stored_weight(a: np.ndarray) -> np.ndarray:
    """A tensor read from a file as the readers hand it on: float16 stays float16, at half the memory of
    its float32 widening, which is what it means (the op contract lets backends keep it so, and widen
    where they compute); any other floating type becomes float32.  Always a C-contiguous copy, which
    detaches it from the mmap."""
    return np.array(a, dtype=np.float16 if a.dtype == np.float16 else np.float32, order="C")


@dataclass
class LoadedWeights:
    dims: ModelDimensions
    tensors: dict[str, np.ndarray] = field(repr=False)
    alignment_heads: np.ndarray | None  # int64 (k, 2) of (layer, head)
    tokenizer_json: Path | None
    name: str
    source: Path


def loaded(dims: ModelDimensions, tensors: dict[str, np.ndarray], heads: np.ndarray | None, model_dir: Path,
           name: str, source: Path) -> LoadedWeights:
    """A reader's result, with the tokenizer.json beside the weights when there is one."""
    tok = model_dir / "tokenizer.json"
    return LoadedWeights(dims=dims, tensors=tensors, alignment_heads=heads,
                         tokenizer_json=tok if tok.is_file() else None, name=name, source=source)


def check_tensors(
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


def alignment_heads(value, where: str, dims: ModelDimensions | None = None) -> np.ndarray | None:
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


def json_loads(raw: bytes):
    """``json.loads`` whose every failure is a ValueError: bad UTF-8, bad JSON, a number with more
    digits than Python converts, or nesting deep enough to exhaust the recursion limit."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def positive_dims(dims: ModelDimensions, where: str, n_values: int) -> None:
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


def read_json(path: Path) -> dict:
    try:
        data = json_loads(path.read_bytes())
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read JSON: {exc}") from None
    except ValueError as exc:
        raise ModelFileError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- byte sources


class Source:
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

    def release(self, offset: int, n: int) -> None:
        """Drop this process's mapped pages of bytes offset .. offset + n (after they were copied out), so
        reading a model holds each weight once, not once mapped and once copied.  Pages that are read again
        come back from the page cache."""
        page = mmap.PAGESIZE
        for m, start in zip(self._maps, self._starts):
            if not isinstance(m, mmap.mmap) or not hasattr(m, "madvise"):
                continue
            lo, hi = max(offset - start, 0), min(offset + n - start, len(m))
            lo -= lo % page
            if hi > lo:
                m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

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
