"""``GET /session/{id}/events``: the one definition of the stream route, for matching and for OpenAPI.

Matched on the raw (still percent-encoded) path, so an id may contain any character, ``/``
included (``/session/a%2Fb/events``), and behind a ``root_path`` (the path a proxy strips) the
route matches with or without that prefix. The OpenAPI document is built from the same constants.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from gateway.edge.errors import INVALID_TOKEN, MISSING_TOKEN

PATH_TEMPLATE = "/session/{id}/events"
STATUS_PATH_TEMPLATE = "/session/{id}"  # the status read (``gateway.reads.status``)
_PREFIX = b"/session/"
_SUFFIX = b"/events"
MAX_SESSION_ID_LENGTH = 256  # the record contract's limit


def match(raw_path: bytes, root_path: str = "", suffix: bytes = _SUFFIX) -> str | None:
    """The session id of a stream request's raw path (or ``/session/{id}<suffix>``'s), else None."""
    if root_path:
        prefix = root_path.rstrip("/").encode("latin-1")
        if prefix and raw_path.startswith(prefix + b"/"):
            raw_path = raw_path[len(prefix) :]
    if not (raw_path.startswith(_PREFIX) and raw_path.endswith(suffix)):
        return None
    return _session_id(raw_path[len(_PREFIX) : -len(suffix)])


def match_status(raw_path: bytes, root_path: str = "") -> str | None:
    """The session id of a status read's raw path (``/session/{id}``), or None when the path is another route."""
    if root_path:
        prefix = root_path.rstrip("/").encode("latin-1")
        if prefix and raw_path.startswith(prefix + b"/"):
            raw_path = raw_path[len(prefix) :]
    if not raw_path.startswith(_PREFIX):
        return None
    return _session_id(raw_path[len(_PREFIX) :])


def _session_id(segment: bytes) -> str | None:
    if not segment or b"/" in segment:
        return None
    try:
        text = segment.decode("ascii")
    except UnicodeDecodeError:  # raw UTF-8 in the path (not percent-encoded): take it as sent
        return segment.decode("utf-8", errors="replace")
    return unquote(text, errors="replace") if "%" in text else text


def openapi_parameter(name: str, where: str, description: str, **schema: Any) -> dict[str, Any]:
    """An OpenAPI parameter object (every public route's document uses these two helpers)."""
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": {"type": "string", **schema},
    }


def openapi_error(status: int, message: str, error: str, description: str = "") -> dict[str, Any]:
    """An OpenAPI response with the NestJS-shaped error body as its example."""
    return {
        "description": description or message,
        "content": {"application/json": {"example": {"statusCode": status, "message": message, "error": error}}},
    }


def session_errors() -> dict[str, Any]:
    """The 401, 403 and 404 answers every route of one session shares (the stream, the status read)."""
    return {
        "401": openapi_error(
            401,
            MISSING_TOKEN,
            "Unauthorized",
            f"No token: '{MISSING_TOKEN}'; failed verification: '{INVALID_TOKEN}'.",
        ),
        "403": openapi_error(403, "Insufficient scope", "Forbidden"),
        "404": openapi_error(
            404,
            "Session abc not found",
            "Not Found",
            "Unknown session, or one the token's tenant or session claim does not cover.",
        ),
    }


def openapi_operation() -> dict[str, Any]:
    """The route's OpenAPI 3.1 operation object."""
    return {
        "tags": ["Session Events"],
        "summary": "Subscribe to session status updates",
        "operationId": "session_events",
        "description": (
            "Server-Sent Events stream of a session's status. First a `retry:` field, then the current "
            "status, then every later transition; the stream ends after a terminal status (completed, "
            "expired, failed, cancelled). Each event is `event: message` with an `id` encoding the Kafka "
            "position (send it back as `Last-Event-ID` to resume without loss) and `data` "
            '`{"id", "status", "updatedAt"}`. The token may also come from `access_token`, '
            "`Authorization: Bearer` or the configured cookie. Percent-encode the id (`/` as `%2F`)."
        ),
        "parameters": [
            openapi_parameter(
                "id", "path", "Session ID to subscribe to (percent-encoded)", maxLength=MAX_SESSION_ID_LENGTH
            ),
            openapi_parameter("token", "query", "JWT access token for authentication"),
            openapi_parameter("access_token", "query", "Alternative name for the token parameter"),
            openapi_parameter("lastEventId", "query", "Resume after this event id (Last-Event-ID takes precedence)"),
            openapi_parameter("Last-Event-ID", "header", "Sent by EventSource when it reconnects"),
        ],
        "responses": {
            "200": {
                "description": "The event stream.",
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "example": 'retry: 3000\n\nid: 0-42\nevent: message\ndata: {"id":"abc","status":"active",'
                        '"updatedAt":"2026-11-28T10:00:00.000Z"}\n\n',
                    }
                },
            },
            "204": {"description": "The client's last event (Last-Event-ID) was terminal: nothing more will come."},
            **session_errors(),
            "429": openapi_error(429, "Too many open streams for this session", "Too Many Requests"),
            "503": openapi_error(
                503,
                "Session state is still loading",
                "Service Unavailable",
                "Replaying, at a connection limit, or behind a resumed position; see Retry-After.",
            ),
        },
    }
