"""The errors whisperkit raises on bad input. Every message names the problem: the file, the field,
what was expected and what was found."""


class WhisperkitError(Exception):
    """Base class of every error whisperkit raises on purpose."""


class AudioError(WhisperkitError, ValueError):
    """An audio input that cannot be read or is not usable (missing, empty, not audio, no samples)."""


class ModelFileError(WhisperkitError, ValueError):
    """A model file or directory that is missing, truncated, or inconsistent."""


class ModelNotFoundError(WhisperkitError, LookupError):
    """A model name that resolves to nothing reachable (no such path, no bundled model, hub offline)."""


class BackendError(WhisperkitError, LookupError):
    """An unknown, unusable or incompatible kernel backend."""


class TokenizerError(WhisperkitError, ValueError):
    """A tokenizer file that cannot be turned into Whisper's vocabulary."""
