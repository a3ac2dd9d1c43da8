"""Transcription of many files on a Ray cluster (the ``ray`` extra): ``transcribe_dataset``.

    from whisperkit.distributed import transcribe_dataset
    report = transcribe_dataset("archive/", "out/", address="10.0.0.1:6379", threads_per_actor=2)
    report.counts        # {'transcribed': 9812, 'skipped': 0, 'failed': 3}

Ray Data runs it: the inputs as a dataset of paths, decoding and resampling in Ray tasks, transcription in a
pool of actors holding one model each (`ray.data.ActorPoolStrategy`), each actor given `threads_per_actor`
CPUs and as many kernel threads.  Ray restarts a dead actor and retries its task (``max_restarts``,
``max_task_retries``).  Every input gets its outputs (the JSON of ``TranscriptionResult.to_dict()``, and any
other format asked for) renamed into place whole; a rerun skips the inputs whose outputs are complete.
`whisperkit-manifest.json` in the output directory lists every input with its status and error.

Importing this module does not import Ray; calling `transcribe_dataset` does.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

from ..errors import WhisperkitError
from .plan import Item, expand_inputs, formats_of, is_complete, probe_seconds
from .stages import MODEL_ERROR, check_compute_type

__all__ = ["transcribe_dataset", "JobReport"]

#: how often Ray retries an input whose actor died under it before the input is recorded as failed; the actor
#: itself is restarted each time (a file that kills its worker every time must not stall the job forever)
MAX_TASK_RETRIES = 3

#: the most blocks the list of inputs is cut into (see _pipeline)
MAX_BLOCKS = 10_000

#: transcribe() options the job sets itself
_OWN_OPTIONS = {"progress": "the job draws one bar for all inputs", "verbose": "actors print nothing",
                "batch_size": "it is transcribe_dataset's own argument (files per actor call)"}


@dataclass
class JobReport:
    """What a job did: one row per input (as in the manifest) and the figures of the run."""

    rows: list[dict]
    output_dir: str
    actors: int = 0
    threads_per_actor: int = 0
    wall_seconds: float = 0.0
    interrupted: bool = False
    options: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("transcribed", "skipped", "failed", "pending"), 0)
        for row in self.rows:
            counts[row["status"]] += 1
        return counts

    @property
    def failed(self) -> int:
        return self.counts["failed"]

    @property
    def audio_seconds(self) -> float:
        """Audio transcribed by this run (skipped inputs not counted)."""
        return sum(r["audio_seconds"] for r in self.rows if r["status"] == "transcribed")

    @property
    def speed(self) -> float:
        """Audio hours transcribed per wall-clock hour of the job (0 when nothing ran)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def per_worker(self) -> dict[str, dict]:
        """Each actor process's share: files, audio seconds, busy seconds."""
        shares: dict[str, dict] = {}
        for r in self.rows:
            if r["status"] == "transcribed":
                s = shares.setdefault(r["worker"], dict(files=0, audio_seconds=0.0, seconds=0.0,
                                                        backend=r["backend"]))
                s["files"] += 1
                s["audio_seconds"] += r["audio_seconds"]
                s["seconds"] += r["seconds"]
        return shares

    def summary(self) -> str:
        c = self.counts
        lines = [f"{c['transcribed']} transcribed, {c['skipped']} skipped (complete before), {c['failed']} failed"
                 + (f", {c['pending']} not done" if c["pending"] else "") + (" (interrupted)" if self.interrupted else "")]
        if self.wall_seconds > 0 and self.actors and self.audio_seconds > 0:
            lines.append(f"{self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s: {self.speed:.1f} audio "
                         f"hours per wall hour; {self.actors} actor{'s' * (self.actors > 1)} x {self.threads_per_actor} "
                         f"thread{'s' * (self.threads_per_actor > 1)}: {self.speed / self.actors:.1f} per actor")
            for worker, s in sorted(self.per_worker().items()):
                rate = s["audio_seconds"] / s["seconds"] if s["seconds"] else 0.0
                lines.append(f"  {worker}, backend {s['backend']}: {s['files']} files, {s['audio_seconds']:.1f} s of "
                             f"audio, {s['seconds']:.1f} s transcribing ({rate:.1f} x real time)")
        return "\n".join(lines)

    def manifest(self) -> dict:
        return dict(counts=self.counts, interrupted=self.interrupted, audio_seconds=round(self.audio_seconds, 3),
                    wall_seconds=round(self.wall_seconds, 3), actors=self.actors,
                    threads_per_actor=self.threads_per_actor, options=self.options, inputs=self.rows)


def transcribe_dataset(inputs, output_dir, *, model: str = "tiny.en", backend: str = "auto",
                       compute_type: str = "float32", actors: int | None = None, threads_per_actor: int | None = None,
                       batch_size: int = 1, address: str | None = None, output_format="json",
                       writer_options: dict | None = None, download_root: str | None = None,
                       progress: bool | None = None, **transcribe_options) -> JobReport:
    """Transcribe every input file on Ray, each into ``output_dir`` (its JSON and any other `output_format`).

    inputs: a path, directory (searched recursively for audio and video files) or glob pattern, or a list of
    them.  model/backend/download_root: as `whisperkit.Whisper`.  compute_type: "float32" or "int8" (as `whisperkit.Whisper`).
    threads_per_actor (default 1): each actor's kernel threads and the CPUs Ray reserves for it.  actors
    (default: as many as the nodes' CPUs hold): the size of the pool.  batch_size (default 1): files per actor
    call; above 1 they are transcribed together (`Whisper.transcribe_batch`: at temperature 0 the same tokens,
    with fallback to higher temperatures the draws can differ).  address: a Ray cluster to join; None starts a
    private local Ray.  output_format: "json" (always written), "txt", "vtt", "srt", "tsv", "all" or a list;
    writer_options: the srt/vtt line options (max_line_width, ...).  progress: a bar over the audio seconds on
    stderr (None: when stderr is a terminal), and the counts and throughput at the end (unless False).  Other
    keywords: `Whisper.transcribe`'s options.

    Returns a `JobReport`; its rows are also in ``<output_dir>/whisperkit-manifest.json``.  An input that cannot be
    decoded or transcribed is a failed row with its error; the job goes on."""
    check_compute_type(compute_type)
    threads = _positive("threads_per_actor", 1 if threads_per_actor is None else threads_per_actor)
    batch_size = _positive("batch_size", batch_size)
    if actors is not None:
        _positive("actors", actors)
    options = _check_options(transcribe_options)
    formats = formats_of(output_format)
    out = _output_dir(output_dir)
    items = expand_inputs(inputs, out)

    rows = {i.source: _row(i, out, "skipped" if is_complete(i, out, formats) else "pending") for i in items}
    todo = [i for i in items if rows[i.source]["status"] == "pending"]
    own = {k: _jsonable(v) for k, v in options.items() if k not in _OWN_OPTIONS}
    report = JobReport(list(rows.values()), out, threads_per_actor=threads,
                       options=dict(model=model, backend=backend, compute_type=compute_type, batch_size=batch_size,
                                    formats=list(formats), **own))
    ran = False
    try:
        if todo:
            _run(report, rows, todo, address, actors, threads, batch_size, progress,
                 dict(model=model, backend=backend, compute_type=compute_type, threads=threads,
                      download_root=download_root, output_dir=out, formats=formats,
                      writer_options=dict(writer_options or {}), options=options))
        ran = True
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    finally:
        _finish(report, rows, todo, formats)
        if progress is not False and (ran or report.interrupted):
            print(f"whisperkit: {report.summary()}", file=sys.stderr)
    return report


def _finish(report: JobReport, rows: dict, todo: list[Item], formats: tuple[str, ...]) -> None:
    """After the job, finished or stopped: leftovers removed, the manifest written."""
    from .outputs import manifest_path, remove_leftovers, write_json_atomically
    remove_leftovers(report.output_dir)  # the job's workers are gone: what is still temporary, a killed one left
    for item in todo:  # written by an actor, its row not yet back when the job was stopped
        if rows[item.source]["status"] == "pending" and is_complete(item, report.output_dir, formats):
            rows[item.source]["status"] = "transcribed"
    write_json_atomically(manifest_path(report.output_dir), report.manifest())


def _run(report: JobReport, rows: dict, todo: list[Item], address, actors, threads, batch_size, progress,
         actor_kwargs: dict) -> None:
    """Run the pipeline over `todo`, filling in `rows` as results come back."""
    from .cluster import connected, node_cpus, size_pool
    with connected(address) as ray:
        report.actors = size_pool(node_cpus(ray), actors, threads)
        ds = _pipeline(ray, todo, report.actors, threads, batch_size, actor_kwargs)
        probes = {i.source: probe_seconds(i.source) for i in todo}  # the bar's total: the files' durations
        bar = _bar(sum(probes.values()), progress)
        start = time.perf_counter()
        try:
            for row in _iter_rows(ds):
                # NumPy scalars -> Python; the key is the output's name, already in the row
                row = {k: v.item() if hasattr(v, "item") else v for k, v in row.items() if k != "key"}
                bar.update(probes[row["source"]])
                rows[row["source"]].update(row, warnings=json.loads(row["warnings"]))
                report.wall_seconds = time.perf_counter() - start
        finally:
            bar.close()
            report.wall_seconds = time.perf_counter() - start
    for item in todo:  # a row that never came back: Ray gave up on it (its worker died on every retry) and dropped it
        row = rows[item.source]
        if row["status"] == "pending":
            row.update(status="failed", error=f"{item.source}: no result: the worker process decoding or "
                                              f"transcribing it died on each of {MAX_TASK_RETRIES + 1} attempts")
    model_errors = [rows[i.source]["error"] for i in todo if rows[i.source]["error"].startswith(MODEL_ERROR)]
    if model_errors and not any(rows[i.source]["status"] == "transcribed" for i in todo):
        raise WhisperkitError(model_errors[0])  # nothing can be transcribed: one error, not one per input


def _pipeline(ray, todo: list[Item], actors: int, threads: int, batch_size: int, actor_kwargs: dict):
    """The Ray Data pipeline: paths -> decode (tasks) -> transcribe and write (actor pool) -> result rows."""
    from .stages import Transcriber, decode
    # A block per file, so that files are balanced over the actors and retried one by one; past MAX_BLOCKS, a few
    # files share a block (and its task, and its retry), which keeps the number of objects Ray tracks bounded.
    ds = ray.data.from_items([{"source": i.source, "key": i.key} for i in todo],
                             override_num_blocks=min(len(todo), MAX_BLOCKS))
    # Decoding reserves no CPU: it is a few percent of transcription's work, and a reserved core would be taken
    # from the actors (on a node of N cores, N one-thread actors leave no CPU for a task that asks for one, and
    # the job would stall).  Its concurrency is bounded instead, so it runs just ahead of the actors.
    ds = ds.map_batches(decode, fn_kwargs={"strict_audio": bool(actor_kwargs["options"].get("strict_audio"))},
                        batch_size=1, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=min(actors + 1, len(todo))))
    with warnings.catch_warnings():
        # max_restarts and max_task_retries have no named parameter in Ray 2.60: they go as remote args, which
        # Ray 2.60 warns are deprecated for 2.64 (hence the extra's bound, ray<2.64)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=Warning)
        ds = ds.map_batches(Transcriber, fn_constructor_kwargs=actor_kwargs, batch_size=batch_size,
                            num_cpus=threads, compute=ray.data.ActorPoolStrategy(size=actors),
                            max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)
    ctx = ds.context
    ctx.enable_progress_bars = False  # ours is the one bar, over audio seconds
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1  # an input whose retries run out is dropped by Ray, and recorded failed by us
    return ds


def _iter_rows(ds):
    """The pipeline's result rows; an error that stops the whole job (the actors cannot start: a model that
    does not load) becomes one WhisperkitError naming its cause."""
    try:
        yield from ds.iter_rows()
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as exc:
        raise WhisperkitError(f"the job stopped: {_root_cause(exc)}") from None


def _root_cause(exc: BaseException) -> str:
    """The error under a Ray error chain: whisperkit's own if there is one, else the innermost, as "Type: message"
    (its last line)."""
    chain, seen = [], set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    ours = [e for e in chain if isinstance(e, WhisperkitError)]
    cause = ours[0] if ours else chain[-1]
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def _bar(total: float, progress: bool | None):
    from tqdm import tqdm
    shown = sys.stderr.isatty() if progress is None else progress  # as transcribe()'s own bar
    return tqdm(total=round(total, 1), unit="s", disable=not shown, file=sys.stderr, leave=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]")


def _row(item: Item, out: str, status: str) -> dict:
    """An input's row of the manifest, filled in by the transcriber's row for it."""
    return dict(source=item.source, output=item.output(out), status=status, error="", warnings=[],
                audio_seconds=0.0, seconds=0.0, worker="", backend="")


def _check_options(options: dict) -> dict:
    """`transcribe()`'s options, by name: an unknown or reserved one is an error here, not on every input."""
    from ..decoding import DecodingOptions
    from ..transcribe import _transcribe_source
    known = set(inspect.signature(_transcribe_source).parameters) - {"model", "audio", "decode_options"}
    known |= set(DecodingOptions.__dataclass_fields__)
    for name in options:
        if name in _OWN_OPTIONS:
            raise WhisperkitError(f"transcribe option {name!r} cannot be given to transcribe_dataset: "
                                  f"{_OWN_OPTIONS[name]}")
        if name not in known:
            raise WhisperkitError(f"unknown transcribe option {name!r}; expected one of: "
                                  f"{', '.join(sorted(known - set(_OWN_OPTIONS)))}")
    return dict(options, progress=False, verbose=None)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WhisperkitError(f"{name} must be a positive integer, got {value!r}")
    return value


def _output_dir(output_dir) -> str:
    out = os.path.abspath(os.fspath(output_dir))
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise WhisperkitError(f"cannot create the output directory {out}: {exc.strerror}") from None
    return out


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
