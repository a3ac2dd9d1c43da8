"""Whisper weights: readers for CTranslate2 ``model.bin`` and Hugging Face safetensors directories,
a safetensors writer, and :func:`resolve_model` (local path, bundled model, or Hub repo id).

Every reader returns :class:`LoadedWeights` whose ``tensors`` use one canonical naming (see
:func:`canonical_shapes` and the name table in `layout`) and are C-contiguous float16 or float32: a
checkpoint's float16 tensors stay float16 (each stands for its exact float32 widening, which the op
contract allows backends to keep), every other float type becomes float32. Nothing here
ever unpickles: PyTorch ``pytorch_model.bin`` / ``*.pt`` checkpoints are refused.

| module    | holds |
| layout    | ModelDimensions, the one table of tensor names, canonical shapes, layer keyword arguments |
| files     | LoadedWeights, the shared checks, the mmap'ed byte source, the pickle refusal |
| ct2       | CTranslate2 model.bin |
| hf        | Hugging Face safetensors: read_hf, write_hf |
| resolve   | bundled models, the Hub, resolve_model |
"""
from .ct2 import _read_ct2_files, read_ctranslate2
from .files import LoadedWeights
from .hf import read_hf, write_hf
from .layout import ModelDimensions, canonical_shapes
from .resolve import _tiny_en_dir, available_models, resolve_model

__all__ = [
    "LoadedWeights",
    "ModelDimensions",
    "canonical_shapes",
    "read_ctranslate2",
    "read_hf",
    "write_hf",
    "resolve_model",
    "available_models",
]
