"""What the transcription loop and the word aligner need of a model, as two small protocols.

transcribe.py and timing.py type against these, not against the `whisperkit.api.Whisper` façade:
the façade imports them, so depending on it back would close an import cycle.  `Whisper` satisfies
both protocols, and so does any object with these members (a test double, another front end).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from .model import ModelDimensions, WhisperGraph
    from .tokenizer import Tokenizer


class AlignmentModel(Protocol):
    """What word timestamps need: the graph (for the cross-attention pass), the dimensions, and the
    alignment heads as (layer, head) rows (None: Whisper's default, the upper half of the decoder)."""

    graph: WhisperGraph
    dims: ModelDimensions
    alignment_heads: np.ndarray | None


class SpeechModel(AlignmentModel, Protocol):
    """What long-form transcription needs: the above, a tokenizer per language and task, and the encoder."""

    def tokenizer_for(self, language: str | None = None, task: str | None = None) -> Tokenizer:
        """The tokenizer whose sot sequence names this language and task."""
        ...

    def embed_audio(self, mel: np.ndarray) -> np.ndarray:
        """mel (batch, n_mels, 3000) -> audio features (batch, n_audio_ctx, n_audio_state)."""
        ...
