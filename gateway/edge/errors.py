"""HTTP errors shaped like NestJS's (``{"statusCode", "message", "error"}``), sent before any stream starts."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

import orjson

MISSING_TOKEN = "Authentication required. Provide a valid JWT token via the 'token' query parameter."
MISSING_TOKEN_HEADER = "Authentication required. Provide a valid JWT token in the 'Authorization: Bearer' header."
QUERY_TOKEN_REFUSED = (
    "Tokens in the URL are not accepted (GATEWAY_ALLOW_QUERY_TOKENS=false). "
    "Send the token in the 'Authorization: Bearer' header."
)
INVALID_TOKEN = "Invalid or expired token"
KEYS_NOT_LOADED = "Signing keys are not loaded yet: the gateway cannot verify tokens. Retry later"
CROSS_ORIGIN_COOKIE = "Cookie authentication is not allowed from this origin"


def not_found_message(session_id: str) -> str:
    return f"Session {session_id} not found"


class StreamRefused(Exception):
    """Raised while admitting a stream; becomes an HTTP error response."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        reason: str = "",
        fields: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.reason = reason
        self.fields = fields  # details for the refusal's log line, never for the client

    def body(self) -> bytes:
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"statusCode": status, "message": message, "error": HTTPStatus(status).phrase})


def error_headers(refused: StreamRefused, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers of an error answer (the content length is added by whoever writes it)."""
    return [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"cache-control", b"no-store"),
        *((name.lower().encode(), value.encode()) for name, value in refused.headers.items()),
        *extra,
    ]
