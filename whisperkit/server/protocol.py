"""OpenAI's audio API on whisperkit: a request's form fields -> transcribe() options, and a TranscriptionResult
-> the response in the asked format (json, text, srt, vtt, verbose_json with OpenAI's field names)."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import AudioError
from ..tokenizer import LANGUAGES, normalize_language
from ..writers import WriteSRT, WriteVTT
from .errors import ApiError
from .upload import FILE_FIELD, Upload

if TYPE_CHECKING:
    from ..api import Whisper
    from ..transcribe import TranscriptionResult

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
SUBTITLES = {"srt": WriteSRT, "vtt": WriteVTT}
FALLBACK_STEP = 0.2  # openai-whisper's temperature schedule: 0, 0.2, ... 1
SEGMENT_FIELDS = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                  "compression_ratio", "no_speech_prob")


@dataclass(frozen=True)
class Job:
    """One request, checked: the model, transcribe()'s options and the response wanted."""
    model: "Whisper"
    task: str
    options: dict
    response_format: str
    granularities: frozenset[str]


def read_job(upload: Upload, task: str, model: "Whisper") -> Job:
    """The request's fields, checked; ApiError 400 naming the first bad one."""
    if upload.path is None:
        raise ApiError(400, "no audio file: send it as the multipart field 'file'", param=FILE_FIELD, code="missing_file")
    if (upload.value("stream") or "false").strip().lower() not in ("false", "0", ""):
        raise ApiError(400, "stream=true is not supported by this server: ask without it", param="stream",
                       code="unsupported_parameter")
    response_format = (upload.value("response_format") or "json").strip()
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, f"unknown response_format {response_format!r}: use one of {', '.join(RESPONSE_FORMATS)}",
                       param="response_format", code="invalid_value")
    granularities = _granularities(upload, response_format)
    language = _language(upload.value("language"), model, task)
    if task == "translate" and not model.is_multilingual:
        raise ApiError(400, f"model {model.name} is English-only and cannot translate: start the server with a "
                            "multilingual model (e.g. --model base)", param="model", code="invalid_value")
    options = dict(task=task, language=language, initial_prompt=upload.value("prompt") or None,
                   temperature=_temperatures(upload.value("temperature")),
                   word_timestamps="word" in granularities, verbose=None, progress=False)
    return Job(model, task, options, response_format, granularities)


def _granularities(upload: Upload, response_format: str) -> frozenset[str]:
    given = upload.fields.get("timestamp_granularities[]", []) + upload.fields.get("timestamp_granularities", [])
    wanted = {g.strip() for value in given for g in value.split(",") if g.strip()}
    unknown = sorted(wanted - set(GRANULARITIES))
    if unknown:
        raise ApiError(400, f"unknown timestamp_granularities {', '.join(map(repr, unknown))}: use segment, word or both",
                       param="timestamp_granularities", code="invalid_value")
    if wanted and response_format != "verbose_json":
        raise ApiError(400, "timestamp_granularities needs response_format verbose_json",
                       param="timestamp_granularities", code="invalid_value")
    return frozenset(wanted or {"segment"})


def _language(value: str | None, model: "Whisper", task: str) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        language = normalize_language(value)
    except ValueError:
        raise ApiError(400, f"unknown language {value!r}: use an ISO-639-1 code such as 'en' or 'de'",
                       param="language", code="invalid_value") from None
    if not model.is_multilingual and language != "en":
        raise ApiError(400, f"model {model.name} is English-only: language {value!r} is not available "
                            "(start the server with a multilingual model, e.g. --model base)",
                       param="language", code="invalid_value")
    return language


def _temperatures(value: str | None) -> tuple[float, ...]:
    """The temperatures to try.  OpenAI: 0 (the default) raises the temperature "until certain thresholds are
    hit", which is openai-whisper's fallback (0, 0.2, ... 1); any other value is the one temperature used."""
    if value is None or not value.strip():
        t = 0.0
    else:
        try:
            t = float(value)
        except ValueError:
            t = math.nan
        if not 0.0 <= t <= 1.0:  # NaN fails too
            raise ApiError(400, f"temperature must be a number from 0 to 1, got {value!r}", param="temperature",
                           code="invalid_value")
    if t > 0:
        return (t,)
    return tuple(float(x) for x in np.arange(0.0, 1.0 + 1e-6, FALLBACK_STEP))


# --- the work of a slot: transcribe and render ---------------------------------------------------------------
@dataclass(frozen=True)
class Rendered:
    body: str | dict
    media_type: str
    warnings: list[str]


def run_job(job: Job, upload: Upload) -> Rendered:
    """Transcribe the upload and render the response (on a decoding slot).  An unreadable file is
    ApiError 400, its message naming the upload rather than the temporary file."""
    if upload.size == 0:
        raise ApiError(400, f"the uploaded file {upload.filename!r} is empty (0 bytes)", param=FILE_FIELD,
                       code="invalid_audio")
    try:
        result = job.model.transcribe(upload.path, **job.options)
    except AudioError as exc:
        raise ApiError(400, _named(str(exc), upload), param=FILE_FIELD, code="invalid_audio") from None
    except ValueError as exc:  # an option the decoder rejects
        raise ApiError(400, _named(str(exc), upload), code="invalid_value") from None
    warnings = [_named(w, upload) for w in result.warnings]
    return Rendered(_body(job, result, upload, warnings), _MEDIA_TYPES[job.response_format], warnings)


_MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
                "srt": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}


def _named(message: str, upload: Upload) -> str:
    """whisperkit's messages name the file they read: here a temporary file the client never saw."""
    quoted = message.replace(f"'{upload.path}'", repr(upload.filename))  # libsndfile's "Error opening '<path>'"
    return quoted.replace(upload.path, f"the upload {upload.filename!r}")


def _body(job: Job, result: "TranscriptionResult", upload: Upload, warnings: list[str]) -> str | dict:
    fmt = job.response_format
    if fmt == "text":
        return result.text.strip() + "\n"
    if fmt in SUBTITLES:
        out = io.StringIO()
        SUBTITLES[fmt](".").write_result(result.to_dict(), file=out)
        return out.getvalue()
    body: dict = {"text": result.text.strip()}
    if fmt == "verbose_json":
        body = _verbose(job, result, _duration(upload))
    if warnings:  # not in OpenAI's shape; its clients keep fields they do not know
        body["warnings"] = warnings
    return body


def _verbose(job: Job, result: "TranscriptionResult", duration: float) -> dict:
    """OpenAI's verbose_json: task, language (its English name, lower case), duration, text, then the
    segments and the words as timestamp_granularities asks, and the usage in seconds."""
    body: dict = {"task": job.task, "language": LANGUAGES.get(result.language, result.language),
                  "duration": round(duration, 3), "text": result.text.strip()}
    if "segment" in job.granularities:
        body["segments"] = [{k: getattr(s, k) for k in SEGMENT_FIELDS} for s in result.segments]
    if "word" in job.granularities:
        body["words"] = [{"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
                         for s in result.segments for w in (s.words or [])]
    body["usage"] = {"type": "duration", "seconds": math.ceil(duration)}
    return body


def _duration(upload: Upload) -> float:
    """Seconds of audio in the upload, counted as the transcription read it (the readable part of a damaged
    file; its damage was reported already)."""
    from ..audio import SAMPLE_RATE, iter_file_blocks
    return sum(block.size for block in iter_file_blocks(upload.path, damage=[])) / SAMPLE_RATE
