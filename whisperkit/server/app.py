"""The FastAPI application: OpenAI's audio endpoints, /v1/models, /health, errors as OpenAI's JSON.

Every /v1 request goes: the API key (401) -> a place among the admitted requests (429) -> the upload,
streamed to a temporary file (413, 400) -> the fields checked (400, 404) -> a decoding slot -> the response.
The checks that need no body come first, so a refused request costs no disk and no decoding."""
from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .errors import ApiError, error_body
from .protocol import read_job, run_job
from .slots import Slots
from .upload import read_upload

log = logging.getLogger("whisperkit.server")

ALIAS = "whisper-1"  # the model name OpenAI's clients send: the default model here


@dataclass
class ServerState:
    """What the app serves: the loaded models (the first is the default, also named `whisper-1`), the
    slots, the upload limit and the API key (None: no auth)."""
    models: dict  # model id -> Whisper
    slots: Slots
    max_upload_bytes: int
    api_key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def default(self) -> str:
        return next(iter(self.models))

    def model(self, name: str | None):
        """The model a request names (none: the default); ApiError 404 for a model not loaded here."""
        key = self.default if name in (None, "", ALIAS) else name
        if key not in self.models:
            raise ApiError(404, f"the model {name!r} is not loaded on this server: use one of "
                                f"{', '.join(self.model_ids())}", param="model", code="model_not_found")
        return self.models[key]

    def model_ids(self) -> list[str]:
        return [*self.models, ALIAS]


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="whisperkit", version=__version__,
                  description="OpenAI's audio transcription API on whisperkit (see the README's `whisperkit serve`)")
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        """Liveness and load: the models, the slots in use and the requests waiting (no API key needed)."""
        s = state.slots
        return {"status": "ok", "models": list(state.models), "slots": s.slots, "decoding": s.decoding,
                "waiting": s.waiting, "max_queue": s.max_queue}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_auth_check(state))])

    @v1.get("/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(i, state) for i in state.model_ids()]}

    @v1.get("/models/{model_id}")
    async def get_model(model_id: str) -> dict:
        state.model(model_id)  # 404 when it is not here
        return _model_card(model_id, state)

    @v1.post("/audio/transcriptions", openapi_extra=_form_schema(translate=False))
    async def transcriptions(request: Request) -> Response:
        return await _transcribe(request, state, "transcribe")

    @v1.post("/audio/translations", openapi_extra=_form_schema(translate=True))
    async def translations(request: Request) -> Response:
        return await _transcribe(request, state, "translate")

    app.include_router(v1)
    return app


async def _transcribe(request: Request, state: ServerState, task: str) -> Response:
    with state.slots.admit():
        async with read_upload(request, state.max_upload_bytes) as upload:
            job = read_job(upload, task, state.model(upload.value("model")))
            rendered = await state.slots.run(run_job, job, upload)
    headers = {"X-Whisperkit-Warnings": str(len(rendered.warnings))} if rendered.warnings else None
    if isinstance(rendered.body, dict):
        return JSONResponse(rendered.body, headers=headers)
    return PlainTextResponse(rendered.body, media_type=rendered.media_type, headers=headers)


def _model_card(model_id: str, state: ServerState) -> dict:
    target = state.default if model_id == ALIAS else model_id
    card = {"id": model_id, "object": "model", "created": state.created, "owned_by": "whisperkit"}
    if model_id == ALIAS:
        card["alias_of"] = target
    return card


def _auth_check(state: ServerState):
    """A dependency that lets a request through when the server has no key, or when its
    `Authorization: Bearer <key>` matches; compared in constant time, so the time taken tells nothing
    of how much of a guess was right."""
    expected = state.api_key.encode() if state.api_key is not None else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(401, "incorrect API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return check


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        log.info("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # routing's own errors (404 unknown path, 405 wrong method) in OpenAI's shape
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(message, code=_slug(str(exc.detail))), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug: logged with its traceback here, one line to the client; the server goes on serving
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error ({type(exc).__name__}); the server log has the details",
                                       type="server_error"), status_code=500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _slug(text: str) -> str:
    return "_".join(text.lower().split())


def _form_schema(translate: bool) -> dict:
    """The multipart fields, for /docs (the body is read by hand, so FastAPI cannot infer them)."""
    fields = {
        "file": {"type": "string", "format": "binary", "description": "the audio (any format whisperkit reads)"},
        "model": {"type": "string", "description": "a loaded model's id or whisper-1 (the default model)"},
        "prompt": {"type": "string", "description": "text to condition the first window on"},
        "response_format": {"type": "string", "enum": ["json", "text", "srt", "vtt", "verbose_json"], "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
        "language": {"type": "string", "description": "ISO-639-1 code of the speech (detected when absent)"},
    }
    if not translate:
        fields["timestamp_granularities[]"] = {"type": "array", "items": {"type": "string", "enum": ["segment", "word"]}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": fields}}}}}
