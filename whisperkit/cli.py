"""The ``whisperkit`` command: transcribe, backends, convert, conformance, serve."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

import numpy as np

from .contract import compute_type_name
from .errors import WhisperkitError
from .timing import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS
from .writers import OUTPUT_FORMATS, format_timestamp


WORD_OPTIONS = ("highlight_words", "max_line_count", "max_line_width", "max_words_per_line")


def _warn(message: str) -> None:
    print(f"whisperkit: warning: {message}", file=sys.stderr)


def _transcribe_options(args, model) -> dict:
    """openai-whisper's `whisper` CLI arguments -> transcribe() options."""
    from .tokenizer import normalize_language
    language = args.language
    if language is not None and language.lower() != "none":
        try:
            language = normalize_language(language)
        except ValueError as exc:
            raise WhisperkitError(str(exc)) from None
    else:
        language = None
    if not model.is_multilingual and language not in (None, "en"):
        _warn(f"{model.name} is an English-only model but received language {args.language!r}; using English instead")
        language = "en"
    if args.temperature_increment_on_fallback is not None:
        if args.temperature_increment_on_fallback <= 0:
            raise WhisperkitError(f"--temperature_increment_on_fallback must be positive, got {args.temperature_increment_on_fallback}")
        temperature = tuple(float(t) for t in np.arange(args.temperature, 1.0 + 1e-6, args.temperature_increment_on_fallback))
    else:
        temperature = (args.temperature,)
    return dict(
        verbose=None, temperature=temperature, task=args.task, language=language,
        best_of=args.best_of, beam_size=args.beam_size, patience=args.patience, length_penalty=args.length_penalty,
        suppress_tokens=args.suppress_tokens, initial_prompt=args.initial_prompt,
        carry_initial_prompt=args.carry_initial_prompt, condition_on_previous_text=args.condition_on_previous_text,
        compression_ratio_threshold=args.compression_ratio_threshold, logprob_threshold=args.logprob_threshold,
        no_speech_threshold=args.no_speech_threshold, word_timestamps=args.word_timestamps,
        prepend_punctuations=args.prepend_punctuations, append_punctuations=args.append_punctuations,
        clip_timestamps=args.clip_timestamps, hallucination_silence_threshold=args.hallucination_silence_threshold,
        vad_filter=args.vad_filter, vad_method=args.vad_method, strict_audio=args.strict_audio,
        progress=False if args.no_progress else None,
        **({} if args.without_timestamps is None else {"without_timestamps": args.without_timestamps}))


def cmd_transcribe(args) -> int:
    import os

    from .api import Whisper
    from .threads import set_num_threads
    from .writers import get_writer

    if args.audio.count("-") > 1:
        raise WhisperkitError("standard input ('-') can be given once")
    if args.output_name and len(args.audio) > 1:
        raise WhisperkitError(f"--output_name names the outputs of one input, got {len(args.audio)} inputs")
    if not args.word_timestamps:
        for option in WORD_OPTIONS:
            if getattr(args, option):
                raise WhisperkitError(f"--{option} requires --word_timestamps True")
    if args.max_line_count and not args.max_line_width:
        _warn("--max_line_count has no effect without --max_line_width")
    if args.max_words_per_line and args.max_line_width:
        _warn("--max_words_per_line has no effect with --max_line_width")
    writer_args = {option: getattr(args, option) for option in WORD_OPTIONS}
    if args.ray is not None:  # the inputs go to a Ray cluster (whisperkit.distributed; Ray is imported only there)
        from types import SimpleNamespace

        from .distributed.cli import transcribe_on_ray
        # No model is loaded here (the actors load theirs): an English-only model given another language is set to
        # English by the actors' transcribe() itself, without the warning below.
        options = _transcribe_options(args, SimpleNamespace(name=args.model, is_multilingual=True))
        return transcribe_on_ray(args, options, writer_args)
    if args.actors is not None:
        raise WhisperkitError("--actors sizes the actor pool of --ray; give --ray too")

    import warnings

    from .audio import AudioDamageWarning
    warnings.simplefilter("ignore", AudioDamageWarning)  # each result's warnings are printed by _emit
    if args.threads:
        set_num_threads(args.threads)
    try:
        compute_type = compute_type_name(args.compute_type)
    except ValueError as exc:
        raise WhisperkitError(str(exc)) from None
    model = Whisper(args.model, backend=args.backend, compute_type=compute_type, download_root=args.model_dir)
    if args.transcribe_verbose and not args.json:
        print(f"whisperkit: {model.name} on backend {model.backend.name}"
              + ("" if compute_type == "float32" else f", {compute_type}")
              + (" (auto: the fastest usable here)" if args.backend == "auto" else ""))
    options = _transcribe_options(args, model)
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as exc:
        raise WhisperkitError(f"cannot create the output directory {args.output_dir}: {exc.strerror}") from None
    writer = get_writer(args.output_format, args.output_dir)
    with contextlib.ExitStack() as cleanup:
        sources = [_spool_stdin(cleanup) if a == "-" else a for a in args.audio]  # "-": standard input
        names = [args.output_name or ("stdin" if a == "-" else a) for a in args.audio]
        try:
            if args.batch_size > 1:  # the VAD chunks of the files decoded batch_size at a time (whisperkit.chunked)
                chunked = {k: v for k, v in options.items() if k not in ("vad_filter", "clip_timestamps", "condition_on_previous_text")}
                results = model.transcribe_batch(sources, batch_size=args.batch_size, chunked=True, **chunked)
            else:
                results = (model.transcribe(path, **options) for path in sources)
            for name, result in zip(names, results):
                _emit(args, writer, writer_args, name, result)
        except ValueError as exc:  # an option the decoder rejects (e.g. --patience without --beam_size)
            if isinstance(exc, WhisperkitError):
                raise
            raise WhisperkitError(str(exc)) from None
    return 0


def _spool_stdin(cleanup: contextlib.ExitStack) -> str:
    """Standard input as a temporary file (`audio.as_file`), removed at the end: the transcription reads its
    audio twice (the streaming log-mel's two passes), which a pipe cannot give."""
    import os

    from .audio import as_file
    path = cleanup.enter_context(as_file(sys.stdin.buffer))
    if os.path.getsize(path) == 0:
        raise WhisperkitError("standard input held no audio (0 bytes): pipe a file into `whisperkit transcribe -`")
    return path


def _emit(args, writer, writer_args, path, result) -> None:
    """Write one result's files and print it as the options ask."""
    for message in result.warnings:  # once each, on stderr (the Python warnings are silenced in main)
        _warn(message)
    writer(result, path, **writer_args)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    if not args.transcribe_verbose:
        return
    if len(args.audio) > 1:
        print(f"# {path}")
    for s in result.segments:
        print(f"[{format_timestamp(s.start)} --> {format_timestamp(s.end)}] {s.text.strip()}")
    print()
    print(result.text.strip())


def cmd_backends(args) -> int:
    from .registry import get_registry
    reg = get_registry()
    reg.load_all()  # listed as usable only when it loads here
    pick = reg.auto_name()
    pick_int8 = reg.auto_name("int8")
    rows = []
    for name in reg.names():
        i = reg.infos[name]
        rank = "-" if i.auto_rank is None else f"{i.auto_rank:g}"
        rows.append((name + (" *" if name == pick else ""), i.version, "yes" if i.usable else "no", rank,
                     ",".join(i.backend.compute_types), ", ".join(i.ops) or "-", i.reason))
    if args.json:
        print(json.dumps([dict(name=i.name, version=i.version, usable=i.usable, auto_rank=i.auto_rank, auto=i.name == pick,
                               auto_int8=i.name == pick_int8, compute_types=list(i.backend.compute_types),
                               ops=list(i.ops), reason=i.reason) for i in map(reg.infos.get, reg.names())], indent=2))
        return 0
    head = ("backend", "version", "usable", "rank", "compute")
    w = [max(len(r[k]) for r in rows + [head]) for k in range(5)]
    print("  ".join(f"{h:<{w[k]}}" for k, h in enumerate(head)) + "  ops / reason")
    for name, version, usable, rank, types, ops, reason in rows:
        print("  ".join(f"{v:<{w[k]}}" for k, v in enumerate((name, version, usable, rank, types))) + f"  {ops}")
        if reason:
            print(f"{'':<{sum(w) + 10}}unusable: {reason}")
    print(f"* backend auto picks {pick}: the usable backend of highest rank (ranks from the bench's measurements); "
          f"with --compute_type int8, {pick_int8} (the highest rank that implements int8)")
    return 0


def cmd_convert(args) -> int:
    from .weights import resolve_model, write_hf
    weights = resolve_model(args.model)
    out = write_hf(weights, args.out_dir, dtype=args.dtype)
    print(f"wrote {weights.name} as a Hugging Face safetensors directory: {out}")
    return 0


def cmd_serve(args) -> int:
    from .server import serve  # imported here: FastAPI and uvicorn load only for this command
    return serve(args)


def cmd_conformance(argv: list[str]) -> int:
    from .conformance.cli import main
    return main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisperkit", description="Whisper speech recognition on the CPU through pluggable kernel backends")
    p.add_argument("-v", "--verbose", action="store_true", help="log backend fallbacks and loading")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio files (openai-whisper's `whisper` options)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("audio", nargs="+",
                   help="audio or video files: wav, flac, ogg, opus and mp3 through libsndfile; m4a, aac, mp4, mkv, "
                        "webm, wma and whatever else FFmpeg reads through PyAV; '-' reads standard input")
    t.add_argument("--output_name", default=None,
                   help="base name of the output files of one input (default: the input's name; 'stdin' for '-')")
    t.add_argument("--model", default="tiny.en", help="tiny.en (bundled), base (with the base-model extra), a local directory, or a Hub repo id")
    t.add_argument("--model_dir", default=None, help="where downloaded models are kept")
    t.add_argument("--backend", default="auto",
                   help="kernel backend (default auto: the fastest usable here; see `whisperkit backends`)")
    t.add_argument("--compute_type", default="float32",
                   help="float32 (token-exact with openai-whisper) or int8 (the linear layers in int8, faster-whisper's "
                        "name; README 'int8')")
    t.add_argument("--output_dir", "-o", default=".", help="directory to save the outputs")
    t.add_argument("--output_format", "-f", default="all", choices=OUTPUT_FORMATS, help="format of the output files; all: every format")
    t.add_argument("--verbose", dest="transcribe_verbose", type=_str2bool, default=True,
                   help="print the timestamped segments, then the text")
    t.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                   help="X->X speech recognition (transcribe) or X->English translation (translate)")
    t.add_argument("--language", default=None, help="language spoken (code or name); detected when omitted")
    t.add_argument("--temperature", type=float, default=0.0, help="temperature of the first decoding attempt")
    t.add_argument("--best_of", type=_optional_int, default=5, help="candidates when sampling at temperature > 0")
    t.add_argument("--beam_size", type=_optional_int, default=5, help="beams of beam search at temperature 0 (None: greedy)")
    t.add_argument("--patience", type=_optional_float, default=None, help="beam search patience (1.0: conventional beam search)")
    t.add_argument("--length_penalty", type=_optional_float, default=None, help="length penalty alpha; default: plain length normalisation")
    t.add_argument("--suppress_tokens", default="-1", help="comma-separated token ids to suppress; -1: most special characters")
    t.add_argument("--initial_prompt", default=None, help="text to prompt the first window with")
    t.add_argument("--carry_initial_prompt", type=_str2bool, default=False, help="prepend the initial prompt to every window's prompt")
    t.add_argument("--condition_on_previous_text", type=_str2bool, default=True, help="prompt each window with the text before it")
    t.add_argument("--fp16", type=_str2bool, default=True, help="accepted for compatibility; whisperkit computes in fp32")
    t.add_argument("--temperature_increment_on_fallback", type=_optional_float, default=0.2,
                   help="temperature step when a decoding fails the thresholds below (None: no fallback)")
    t.add_argument("--compression_ratio_threshold", type=_optional_float, default=2.4, help="a gzip compression ratio above this fails the decoding")
    t.add_argument("--logprob_threshold", type=_optional_float, default=-1.0, help="an average log probability below this fails the decoding")
    t.add_argument("--no_speech_threshold", type=_optional_float, default=0.6,
                   help="no-speech probability above this, with a failed logprob, makes the window silence")
    t.add_argument("--word_timestamps", type=_str2bool, default=False, help="word-level timestamps (cross-attention + DTW)")
    t.add_argument("--prepend_punctuations", default=PREPEND_PUNCTUATIONS, help="with word timestamps: marks merged into the next word")
    t.add_argument("--append_punctuations", default=APPEND_PUNCTUATIONS, help="with word timestamps: marks merged into the previous word")
    t.add_argument("--highlight_words", type=_str2bool, default=False, help="(needs --word_timestamps True) underline each word as it is spoken in srt and vtt")
    t.add_argument("--max_line_width", type=_optional_int, default=None, help="(needs --word_timestamps True) characters in a line before breaking it")
    t.add_argument("--max_line_count", type=_optional_int, default=None, help="(needs --word_timestamps True) lines in a subtitle")
    t.add_argument("--max_words_per_line", type=_optional_int, default=None,
                   help="(needs --word_timestamps True, no effect with --max_line_width) words in a line")
    t.add_argument("--batch_size", type=int, default=1,
                   help="above 1: the batched pipeline, as faster-whisper's: the speech of each file (the VAD's) in "
                        "chunks of up to 30 s, this many decoded at a time, the chunks of one file after another, "
                        "without conditioning on the text before (not token-exact with openai-whisper) (default 1: "
                        "the sequential loop, token-exact)")
    t.add_argument("--without_timestamps", type=_str2bool, default=None,
                   help="decode text only, one segment per window (default: True with --batch_size, as faster-whisper's "
                        "batched mode; False otherwise, as openai-whisper)")
    t.add_argument("--vad_filter", type=_str2bool, default=False,
                   help="transcribe only the speech regions found by the voice-activity filter")
    t.add_argument("--vad_method", default="auto", choices=("auto", "silero", "energy"),
                   help="the voice-activity filter: Silero VAD (the 'vad' extra), our energy filter, or auto "
                        "(Silero when installed)")
    t.add_argument("--strict_audio", type=_str2bool, default=False,
                   help="a file whose decoding fails part-way is an error; by default its readable part is "
                        "transcribed, with a warning")
    t.add_argument("--threads", type=_optional_int, default=0,
                   help="threads for every backend (0: all cores); with --ray, each actor's (0: 1 thread)")
    t.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="transcribe the files (directories, globs) on Ray (the 'ray' extra): join the cluster at "
                        "ADDRESS, or start a local Ray without one; outputs renamed into place whole, complete ones "
                        "skipped on a rerun, whisperkit-manifest.json in --output_dir; exit status: inputs failed")
    t.add_argument("--actors", type=int, default=None,
                   help="with --ray: transcription actors, one model each; None: as many as the nodes' CPUs hold, "
                        "--threads CPUs each")
    t.add_argument("--clip_timestamps", default="0", help="start,end,start,end,... seconds of the clips to process; the last end defaults to the end of the file")
    t.add_argument("--hallucination_silence_threshold", type=_optional_float, default=None,
                   help="(needs --word_timestamps True) skip silences longer than this (s) before a possible hallucination")
    t.add_argument("--json", action="store_true", help="print the result as JSON (openai-whisper's shape) instead of the text")
    t.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar on stderr")
    t.set_defaults(func=cmd_transcribe)

    b = sub.add_parser("backends", help="list the registered kernel backends")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backends)

    c = sub.add_parser("convert", help="write any loadable model as a Hugging Face safetensors directory")
    c.add_argument("model", help="tiny.en, base, a directory or a Hub repo id")
    c.add_argument("out_dir")
    c.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    c.set_defaults(func=cmd_convert)

    s = sub.add_parser("serve", help="serve OpenAI's audio transcription API over HTTP (the server extra)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port, printed at start)")
    s.add_argument("--model", action="append", default=None,
                   help="a model to load (repeat for several); the first is the default, also called whisper-1 "
                        "(default: tiny.en)")
    s.add_argument("--model_dir", default=None, help="where downloaded models are kept")
    s.add_argument("--backend", default="auto", help="kernel backend (see `whisperkit backends`)")
    s.add_argument("--compute_type", default="float32",
                   help="float32 (token-exact with openai-whisper) or int8 (the linear layers in int8; README 'int8')")
    s.add_argument("--workers", type=int, default=None,
                   help="decoding slots (default: one per core on a thread-safe backend, else 1 with every core)")
    s.add_argument("--max_queue", type=int, default=8,
                   help="requests admitted beyond the busy slots; past that a request gets 429 with Retry-After")
    s.add_argument("--max_upload_mb", type=float, default=25.0, help="largest audio upload in MiB (413 above)")
    s.add_argument("--api_key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $WHISPERKIT_API_KEY; unset: no key)")
    s.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level; info logs every request")
    s.set_defaults(func=cmd_serve)

    sub.add_parser("conformance", help="hold a backend to the reference (run `whisperkit conformance --help`)", add_help=False)
    return p


def _optional_int(v: str) -> int | None:
    return None if v == "None" else int(v)


def _optional_float(v: str) -> float | None:
    return None if v == "None" else float(v)


def _str2bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def main(argv: list[str] | None = None) -> int:
    process = argv is None  # the command itself (the console script), not a caller of main()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "conformance":
        return cmd_conformance(argv[1:])
    if "--ray" in argv:  # `--ray DIR`: DIR is an input, not the address (whisperkit.distributed.cli)
        from .distributed.cli import ray_argv
        argv = ray_argv(argv)
    args = build_parser().parse_args(argv)
    if process and args.func is cmd_transcribe and args.ray is None:
        one_malloc_arena()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        code = args.func(args)
    except WhisperkitError as exc:
        print(f"whisperkit: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        return 130
    if process and args.func is cmd_transcribe and args.ray is None:
        _exit_now(code)
    return code


def one_malloc_arena() -> bool:
    """Make every thread of this process allocate from glibc's main arena (``M_ARENA_MAX`` 1), unless the user set
    MALLOC_ARENA_MAX.  `Whisper` loads the backend on a thread while it reads the weights; with an arena of its
    own, what that thread freed was held apart from the main heap, and a cold ``transcribe`` peaked higher
    (docs/bench-results.md).  Only the command does this: a library leaves its host's allocator
    alone.  Returns whether the setting was made (glibc only)."""
    import ctypes
    import os
    try:
        if "MALLOC_ARENA_MAX" in os.environ or not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        return ctypes.CDLL(None).mallopt(-8, 1) == 1  # -8: M_ARENA_MAX (malloc.h)
    except (ValueError, OSError, AttributeError):  # no such confstr name, no libc symbol
        return False


def _exit_now(code: int) -> None:
    """End a local `whisperkit transcribe` without the interpreter's teardown: once the outputs are written (their
    files closed by the writers), tearing down Numba's loaded kernels and the objects of its type system took
    ~0.1 s of a ~0.95 s command (`python -c` with and without os._exit after loading the kernels).  Streams and log
    handlers are flushed first; nothing else registered at exit holds data (with --ray, Ray's shutdown does: that
    path exits normally)."""
    import os
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
