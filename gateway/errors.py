"""HTTP errors shaped like NestJS's (``{"statusCode", "message", "error"}``), sent before any stream starts."""

from __future__ import annotations

from http import HTTPStatus

import orjson
from starlette.types import Send

MISSING_TOKEN = "Authentication required. Provide a valid JWT token via the 'token' query parameter."
INVALID_TOKEN = "Invalid or expired token"


def not_found_message(session_id: str) -> str:
    return f"Session {session_id} not found"


class StreamRefused(Exception):
    """Raised while admitting a stream; becomes an HTTP error response."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.reason = reason

    def body(self) -> bytes:
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"statusCode": status, "message": message, "error": HTTPStatus(status).phrase})


async def send_error(send: Send, refused: StreamRefused, extra_headers: list[tuple[bytes, bytes]]) -> None:
    body = refused.body()
    headers = [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *((name.lower().encode(), value.encode()) for name, value in refused.headers.items()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
