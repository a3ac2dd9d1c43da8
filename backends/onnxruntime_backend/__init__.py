"""ONNX Runtime backend plugin: imports without onnxruntime/onnx (then `unavailable_reason()` says so)."""
from whisperkit.backend import hookimpl

from .backend import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend"]


@hookimpl
def whisperkit_backends():
    return [OnnxRuntimeBackend()]
