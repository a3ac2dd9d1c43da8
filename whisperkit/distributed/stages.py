"""The two stages of a job, as Ray Data runs them: `decode` (Ray tasks: read a file, decode and resample it to
16 kHz mono) and `Transcriber` (an actor pool: one model per actor, which transcribes the decoded arrays and
writes each input's outputs).  A stage never raises for one bad input: the input's row carries its error, so
the job goes on and the manifest says what went wrong.

Rows between the stages: source, key (the `plan.Item`), audio (float32, empty when decoding failed), error
(str, "" when none), warnings (JSON list of str: a damaged file's report).  Rows out of the transcriber:
source, key, status ("transcribed" or "failed"), error, warnings, audio_seconds, seconds (transcription time),
worker ("<node ip> pid <pid> (node <Ray node id, 8 digits>)"), backend (the kernel backend the actor's model runs on).
"""
from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import WhisperkitError

#: how the error of every input of an actor whose model did not load begins
MODEL_ERROR = "the model could not be loaded"

def check_compute_type(compute_type: str) -> None:
    """A compute type's name checked on the driver, before any Ray work (whisperkit.contract's names)."""
    from ..contract import compute_type_name
    try:
        compute_type_name(compute_type)
    except ValueError as exc:
        raise WhisperkitError(str(exc)) from None


def load_model(model: str, backend: str, compute_type: str, download_root: str | None):
    """The one place a job's model is built."""
    check_compute_type(compute_type)
    from ..api import Whisper
    return Whisper(model, backend=backend, compute_type=compute_type, download_root=download_root)


def limit_threads(n: int) -> None:
    """`n` kernel threads in this process: BLAS and OpenMP pools (threadpoolctl: process-wide), and every
    whisperkit backend (Numba's count is per calling thread, so this runs on the thread that transcribes)."""
    from threadpoolctl import threadpool_limits

    from ..threads import set_num_threads
    threadpool_limits(limits=n)
    set_num_threads(n)


def decode(batch: dict, strict_audio: bool = False) -> dict:
    """Ray Data task: each row's file -> float32 16 kHz mono samples, or the reason it cannot be read."""
    from ..audio import AudioDamageWarning, load_audio
    warnings.simplefilter("ignore", AudioDamageWarning)  # the damage is kept in the row instead
    audio, errors, reports = [], [], []
    for source in batch["source"]:
        damage: list = []
        try:
            samples, error = load_audio(str(source), strict=strict_audio, damage=damage), ""
        except WhisperkitError as exc:  # unreadable, empty, not audio: the decoder's own words
            samples, error = np.zeros(0, np.float32), str(exc)
        except Exception as exc:  # anything else a decoder raises is this file's failure, not the job's
            samples, error = np.zeros(0, np.float32), f"{source}: {type(exc).__name__}: {exc}"
        audio.append(samples)
        errors.append(error)
        reports.append(json.dumps([d.message for d in damage]))
    return {"source": batch["source"], "key": batch["key"], "audio": audio, "error": errors, "warnings": reports}


class Transcriber:
    """Ray Data actor: holds one model and transcribes the decoded rows it is given, `batch_size` files at a
    time (several files together through `transcribe_batch`, which batches their windows; one at a time
    through `transcribe`, token for token openai-whisper's)."""

    def __init__(self, *, model: str, backend: str, compute_type: str, threads: int, download_root: str | None,
                 output_dir: str, formats: tuple, writer_options: dict, options: dict):
        import ray
        node = ray.get_runtime_context().get_node_id()[:8]
        self.worker = f"{ray.util.get_node_ip_address()} pid {os.getpid()} (node {node})"
        self.threads, self.output_dir, self.formats = threads, output_dir, tuple(formats)
        self.writer_options, self.options = writer_options, options
        limit_threads(threads)  # before the model: backends size their pools when they are created
        self.model, self.model_error = None, ""
        try:
            self.model = load_model(model, backend, compute_type, download_root)
        except WhisperkitError as exc:
            # Raised here, Ray would restart the actor again and again and print its traceback each time; kept,
            # it fails this actor's inputs with one clear message (and the driver stops on it: see transcribe_dataset)
            self.model_error = f"{MODEL_ERROR} on {self.worker}: {exc}"

    def __call__(self, batch: dict) -> dict:
        limit_threads(self.threads)  # Ray Data calls from a thread of its own; Numba's setting is per thread
        from .plan import Item
        items = [Item(str(s), str(k)) for s, k in zip(batch["source"], batch["key"])]
        rows = [self._row(item, str(error), str(warnings))
                for item, error, warnings in zip(items, batch["error"], batch["warnings"])]
        todo = [k for k, row in enumerate(rows) if not row["error"]]  # decoded, and a model to transcribe them
        arrays = [np.asarray(batch["audio"][k], np.float32) for k in todo]
        for j, result, seconds in self._transcribe(arrays):
            rows[todo[j]].update(audio_seconds=len(arrays[j]) / SAMPLE_RATE, seconds=seconds)
            self._record(rows[todo[j]], items[todo[j]], result)
        return {name: [row[name] for row in rows] for name in rows[0]}

    def _row(self, item, error: str, warnings: str) -> dict:
        """An input's result row, failed until it is transcribed and written."""
        return dict(source=item.source, key=item.key, status="failed", error=error or self.model_error,
                    warnings=warnings, audio_seconds=0.0, seconds=0.0, worker=self.worker,
                    backend=self.model.backend.name if self.model is not None else "")

    def _record(self, row: dict, item, result) -> None:
        """Write a transcription's outputs and mark its row transcribed, or record why not."""
        if isinstance(result, BaseException):
            row["error"] = f"{row['source']}: {type(result).__name__}: {result}"
            return
        result.warnings = json.loads(row["warnings"]) + list(result.warnings)  # as transcribe(path) reports them
        try:
            from .outputs import write_outputs
            write_outputs(result.to_dict(), item, self.output_dir, self.formats, self.writer_options)
        except OSError as exc:  # a full disk, a permission: this input's failure
            row["error"] = f"cannot write the outputs of {row['source']}: {exc}"
            return
        row.update(status="transcribed", warnings=json.dumps(result.warnings))

    def _transcribe(self, arrays: list):
        """(index, result or the exception it raised, seconds) for each array."""
        if len(arrays) > 1:
            start = time.perf_counter()
            try:
                results = self.model.transcribe_batch(arrays, batch_size=len(arrays), **self.options)
            except Exception:  # one file's failure fails the batch: find it by doing them one at a time
                pass
            else:
                seconds = (time.perf_counter() - start) / len(arrays)  # the batch's time, shared
                yield from ((k, r, seconds) for k, r in enumerate(results))
                return
        for k, audio in enumerate(arrays):
            start = time.perf_counter()
            try:
                result = self.model.transcribe(audio, **self.options)
            except Exception as exc:  # this input fails, the others go on
                result = exc
            yield k, result, time.perf_counter() - start
