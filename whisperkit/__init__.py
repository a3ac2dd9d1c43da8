"""whisperkit: OpenAI Whisper on the CPU through pluggable kernel backends."""
from __future__ import annotations

__version__ = "0.1.0"

from .backend import Backend  # noqa: E402,F401
from .errors import (AudioError, BackendError, ModelFileError, ModelNotFoundError,  # noqa: E402,F401
                     TokenizerError, WhisperkitError)
from .hookspecs import hookimpl  # noqa: E402,F401

_LAZY = {
    "Whisper": "whisperkit.api", "WhisperTiny": "whisperkit.api", "load_model": "whisperkit.api",
    "TranscriptionResult": "whisperkit.transcribe", "Segment": "whisperkit.transcribe",
    "get_registry": "whisperkit.registry", "set_num_threads": "whisperkit.threads",
}


def __getattr__(name):  # keep `import whisperkit` cheap: heavy modules load on first use
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'whisperkit' has no attribute {name!r}")
