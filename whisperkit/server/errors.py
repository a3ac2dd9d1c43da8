"""The one error type of the server: what went wrong, as OpenAI's error JSON with its HTTP status.

OpenAI's clients read ``{"error": {"message", "type", "param", "code"}}`` whatever the status, so every
answer that is not a success has that shape, our own 404s and 500s included."""
from __future__ import annotations


class ApiError(Exception):
    """A request the server answers with `status` and OpenAI's error body; `headers` go with it
    (Retry-After on 429, WWW-Authenticate on 401)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
