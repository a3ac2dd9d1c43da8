"""`whisperkit serve`: OpenAI's audio transcription API (POST /v1/audio/transcriptions and /translations,
GET /v1/models, GET /health) on FastAPI and uvicorn, the `server` extra.

The models are loaded once, before the socket is opened, and shared by a fixed number of decoding slots;
see `app` for a request's way through, `slots` for the admission bound, `upload` for the streamed upload
and `protocol` for OpenAI's fields and response shapes."""
from __future__ import annotations

import os
import socket
import sys
import warnings

from ..errors import WhisperkitError

API_KEY_ENV = "WHISPERKIT_API_KEY"


def check_compute_type(compute_type: str) -> str:
    """The compute type every model is loaded with (faster-whisper's names, `whisperkit.contract`): float32,
    token-exact with openai-whisper, or int8; a name that is neither stops the start."""
    from ..contract import compute_type_name
    try:
        return compute_type_name(compute_type)
    except ValueError as exc:
        raise WhisperkitError(f"--compute_type: {exc}") from None


def serve(args) -> int:
    """Run the server until it is interrupted; startup problems are a WhisperkitError (one line, exit 2)."""
    compute_type = check_compute_type(args.compute_type)
    max_upload = _positive(args.max_upload_mb, "--max_upload_mb", float)
    max_queue = _positive(args.max_queue, "--max_queue", int, allow_zero=True)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    try:
        import uvicorn

        from .app import ServerState, create_app
        from .slots import Slots, usable_cores
    except ImportError as exc:
        raise WhisperkitError(f"whisperkit serve needs the server extra ({exc.name} is missing): "
                              "pip install 'whisperkit[server]'") from None

    sock = _bind(args.host, args.port)  # first: a port in use fails before seconds of loading
    models = _load_models(args.model or ["tiny.en"], args.backend, compute_type, args.model_dir)
    slots, threads = plan_slots(models, args.workers, usable_cores())
    from ..threads import set_num_threads
    set_num_threads(threads)
    state = ServerState(models=models, slots=Slots(slots, max_queue), max_upload_bytes=int(max_upload * (1 << 20)),
                        api_key=api_key)
    # A damaged upload's warning goes to its client in the response, not to the server's stderr
    from ..audio import AudioDamageWarning
    warnings.simplefilter("ignore", AudioDamageWarning)
    warnings.filterwarnings("ignore", message="Word-level timestamps on translations")

    host, port = sock.getsockname()[:2]
    first = next(iter(models.values()))
    print(f"whisperkit serve: {', '.join(models)} (whisper-1: {first.name}) on backend {first.backend.name}, "
          f"{compute_type}, "
          f"{slots} decoding slot{'s' * (slots > 1)} x {threads} thread{'s' * (threads > 1)}, queue {max_queue}, "
          f"uploads up to {max_upload:g} MiB, API key {'required' if api_key else 'not required'}", flush=True)
    if api_key is None and host not in ("127.0.0.1", "::1", "localhost"):
        print(f"whisperkit serve: warning: listening on {host} without an API key (--api_key or {API_KEY_ENV})",
              file=sys.stderr, flush=True)
    print(f"whisperkit serve: listening on http://{_url_host(host)}:{port}", flush=True)
    config = uvicorn.Config(create_app(state), log_level=args.log_level, access_log=args.log_level in ("debug", "info"),
                            timeout_graceful_shutdown=30)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        state.slots.shutdown()
        sock.close()
    return 0


def _positive(value, flag: str, kind, allow_zero: bool = False):
    if value != value or value < 0 or (value == 0 and not allow_zero):  # value != value: NaN
        raise WhisperkitError(f"{flag} must be {'zero or more' if allow_zero else 'positive'}, got {value}")
    return kind(value)


def _load_models(names: list[str], backend: str, compute_type: str, model_dir: str | None) -> dict:
    """Each model once, by the id clients will use (its name as given: tiny.en, base, or a path)."""
    from ..api import Whisper
    models = {}
    for name in names:
        if name == "whisper-1":
            raise WhisperkitError("--model whisper-1: that is the alias of the first --model, not a model")
        if name not in models:
            models[name] = Whisper(name, backend=backend, compute_type=compute_type, download_root=model_dir)
    return models


def plan_slots(models: dict, workers: int | None, cores: int) -> tuple[int, int]:
    """(decoding slots, threads per decode) so that slots x threads = the cores: a decode's kernels use its
    threads, so more slots than that would only take the cores from one another.

    A backend that is not thread-safe runs one decode at a time whatever the slots (Whisper.transcribe takes
    its lock), so its default is one slot with every core."""
    thread_safe = all(getattr(m.backend, "thread_safe", False) for m in models.values())
    if workers is None:
        slots = cores if thread_safe else 1
    elif workers < 1:
        raise WhisperkitError(f"--workers must be positive, got {workers}")
    else:
        slots = workers
        if slots > 1 and not thread_safe:
            print(f"whisperkit serve: warning: backend {next(iter(models.values())).backend.name} is not thread-safe: "
                  f"its decodes take turns, so {slots} slots decode one request at a time", file=sys.stderr, flush=True)
    return slots, max(1, cores // slots)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so that a port in use is one clear error, and port 0 (any free
    port) can be reported."""
    if not 0 <= port <= 65535:
        raise WhisperkitError(f"--port must be from 0 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WhisperkitError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise WhisperkitError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
