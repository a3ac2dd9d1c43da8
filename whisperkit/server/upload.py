"""A multipart/form-data request body read as it arrives: the audio part goes straight into a temporary file,
never whole into memory, and the body stops being read as soon as it breaks a limit.

FastAPI's own form parsing reads the whole body before the endpoint runs, so it could only say "too large"
after storing it; here the count is kept while reading and the upload stops at the limit.  The form fields
(model, language, prompt...) are small and kept in memory, each up to `MAX_FIELD_BYTES`.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ApiError

FILE_FIELD = "file"
MAX_FIELD_BYTES = 16 << 10  # a prompt is used up to 223 tokens; this is far above any real field
MAX_FIELDS = 32
FORM_ALLOWANCE = 1 << 20  # the body's bytes beyond the file's: the fields (at most 512 KiB), headers, boundaries
BODY_DONE = "whisperkit.body_done"  # in the ASGI scope once the request body has been read to its end


@dataclass
class Upload:
    """A request's form: its text fields (every value of each name, in order) and the audio, in a temporary
    file at `path` (None when the request had no `file` part)."""
    fields: dict[str, list[str]] = field(default_factory=dict)
    path: str | None = None
    filename: str = "upload"
    size: int = 0

    def value(self, name: str) -> str | None:
        """The last value given for `name` (a repeated single-valued field: the last one counts)."""
        values = self.fields.get(name)
        return values[-1] if values else None


@contextlib.asynccontextmanager
async def read_upload(request, max_file_bytes: int):
    """The request's form as an `Upload`; its temporary file is removed when the block ends.

    ApiError 413 when the file is over `max_file_bytes` (at once when the declared Content-Length says so),
    400 when the body is not a well-formed multipart/form-data body."""
    boundary = _boundary(request.headers.get("content-type"))
    limit = max_file_bytes + FORM_ALLOWANCE
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(max_file_bytes, f"the request body of {int(declared)} bytes")
    form = _FormReader(boundary, max_file_bytes)
    try:
        received = 0
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "the client closed the connection before the upload ended", code="client_disconnected")
            chunk, last = message.get("body", b""), not message.get("more_body", False)
            if last:  # marked first: an error below must not wait for more of a body that has ended
                request.scope[BODY_DONE] = True
            received += len(chunk)
            if received > limit:
                raise _too_large(max_file_bytes, "the request body")
            form.feed(chunk)
            if last:
                break
        yield form.finish()
    finally:
        form.discard()


async def drain_body(request, cap: int) -> None:
    """Read and drop what is left of the request body, up to `cap` bytes, before an error is answered early
    (401, 413, 429): a client that is still sending when the server closes the connection gets a reset
    rather than the answer.  Past `cap` the connection is left to close."""
    if request.scope.get(BODY_DONE) or request.scope.get("type") != "http":
        return
    seen = 0
    while seen <= cap:
        message = await request.receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            request.scope[BODY_DONE] = True
            return


def _boundary(content_type: str | None) -> bytes:
    if not content_type:
        raise ApiError(400, "the request has no Content-Type: send the audio as multipart/form-data "
                            "with the file in the field 'file'", param=FILE_FIELD, code="invalid_multipart")
    mime, params = parse_options_header(content_type)
    if mime != b"multipart/form-data":
        raise ApiError(400, f"the request body must be multipart/form-data, got {mime.decode('latin-1')!r}",
                       param=FILE_FIELD, code="invalid_multipart")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "the multipart/form-data Content-Type has no boundary", param=FILE_FIELD,
                       code="invalid_multipart")
    return boundary


def _too_large(max_file_bytes: int, what: str) -> ApiError:
    return ApiError(413, f"{what} is over the server's upload limit of {_mib(max_file_bytes)}",
                    param=FILE_FIELD, code="file_too_large")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB ({n} bytes)"


def _malformed(reason: str) -> ApiError:
    return ApiError(400, f"malformed multipart/form-data body: {reason}", param=FILE_FIELD, code="invalid_multipart")


class _FormReader:
    """python-multipart's streaming parser with callbacks that write the `file` part to a temporary file and
    keep the other parts as text fields, checking the limits as the bytes arrive."""

    def __init__(self, boundary: bytes, max_file_bytes: int):
        self.max_file_bytes = max_file_bytes
        self.upload = Upload()
        self._file = None  # the open temporary file of the `file` part
        self._header_name, self._header_value = bytearray(), bytearray()
        self._headers: dict[str, str] = {}
        self._part: str | None = None  # the current part's field name
        self._value = bytearray()
        self._ended = False
        callbacks = dict(on_part_begin=self._part_begin, on_header_field=self._header_field,
                         on_header_value=self._header_value_data, on_header_end=self._header_end,
                         on_headers_finished=self._headers_finished, on_part_data=self._part_data,
                         on_part_end=self._part_end, on_end=self._end)
        self._parser = MultipartParser(boundary, callbacks)

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise _malformed(str(exc) or type(exc).__name__) from None

    def finish(self) -> Upload:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise _malformed(str(exc) or type(exc).__name__) from None
        if not self._ended:
            raise _malformed("the body ends before the closing boundary")
        if self._file is not None:
            self._file.close()
        return self.upload

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file.name)

    # --- the parser's callbacks -----------------------------------------------------------------------------
    def _part_begin(self) -> None:
        self._headers, self._part = {}, None
        self._value.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise _malformed("a part has no Content-Disposition: form-data; name=...")
        name = params[b"name"].decode("utf-8", "replace")
        if name == FILE_FIELD:
            self._open_file(params.get(b"filename", b"").decode("utf-8", "replace"))
        elif b"filename" in params:
            raise ApiError(400, f"unexpected file in the field {name!r}: send the audio as the field 'file'",
                           param=name, code="invalid_multipart")
        elif sum(len(v) for v in self.upload.fields.values()) >= MAX_FIELDS:
            raise ApiError(400, f"too many form fields (over {MAX_FIELDS})", param=name, code="invalid_multipart")
        self._part = name

    def _open_file(self, filename: str) -> None:
        if self._file is not None:
            raise ApiError(400, "the request has more than one 'file' part: send one audio file per request",
                           param=FILE_FIELD, code="invalid_multipart")
        self.upload.filename = os.path.basename(filename.replace("\\", "/")) or "upload"
        # The extension, when it looks like one, is kept: it is what a person reading an error message knows
        suffix = os.path.splitext(self.upload.filename)[1]
        self._file = tempfile.NamedTemporaryFile(prefix="whisperkit-upload-", delete=False,
                                                 suffix=suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else "")
        self.upload.path = self._file.name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._part == FILE_FIELD:
            self.upload.size += n
            if self.upload.size > self.max_file_bytes:
                raise _too_large(self.max_file_bytes, f"the file {self.upload.filename!r}")
            self._file.write(data[start:end])
        else:
            if len(self._value) + n > MAX_FIELD_BYTES:
                raise ApiError(400, f"the form field {self._part!r} is over {MAX_FIELD_BYTES} bytes",
                               param=self._part, code="invalid_multipart")
            self._value += data[start:end]

    def _part_end(self) -> None:
        if self._part is None or self._part == FILE_FIELD:
            return
        try:
            text = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"the form field {self._part!r} is not UTF-8 text", param=self._part,
                           code="invalid_multipart") from None
        self.upload.fields.setdefault(self._part, []).append(text)

    def _end(self) -> None:
        self._ended = True
