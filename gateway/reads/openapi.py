"""The status read's OpenAPI 3.1 operation, for the internal port's document (``gateway.runtime.api_docs``).

The edge serves the route natively (``gateway.edge.connection``), so no FastAPI route describes it; its
answers are written out here, from the same constants the code uses. See docs/http-api.md (Status reads).
"""

from __future__ import annotations

from typing import Any

from gateway.edge.route import MAX_SESSION_ID_LENGTH, openapi_error, openapi_parameter, session_errors

_HEADERS = {
    "ETag": {
        "description": "Opaque strong tag of this state (send it back as If-None-Match)",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "`no-store`", "schema": {"type": "string"}},
}


def status_operation() -> dict[str, Any]:
    """``GET /session/{id}``'s operation object (``HEAD`` answers the same head without the body)."""
    return {
        "tags": ["Session Events"],
        "summary": "Read a session's current status",
        "operationId": "session_status",
        "description": (
            'The session\'s current state, exactly one event\'s data: `{"id", "status", "updatedAt"}`, with an '
            "`ETag`. The same authentication (`token`, `access_token`, `Authorization: Bearer`, the cookie), tenant "
            "rule and error bodies as the stream. `If-None-Match` naming the current tag answers 304. An unknown "
            "session is 404 at once unless `wait` asks to wait for it; with `If-None-Match`, `wait` is a long poll "
            "that answers when the state changes, or 304 after `wait` seconds. Waits are capped by "
            "`GATEWAY_UNKNOWN_SESSION_WAIT` and count against the waiting-request limits. Keep-alive: reuse the "
            "connection. `HEAD` answers the same head without the body."
        ),
        "parameters": [
            openapi_parameter("id", "path", "Session ID (percent-encoded)", maxLength=MAX_SESSION_ID_LENGTH),
            openapi_parameter("token", "query", "JWT access token for authentication"),
            openapi_parameter("access_token", "query", "Alternative name for the token parameter"),
            openapi_parameter(
                "wait",
                "query",
                "Seconds to wait for the session or (with If-None-Match) for a change",
                pattern=r"^\d{1,9}(\.\d{1,9})?$",
            ),
            openapi_parameter("If-None-Match", "header", "ETag(s) the client holds; `*` matches any state"),
        ],
        "responses": {
            "200": {
                "description": "The current state.",
                "headers": _HEADERS,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["id", "status", "updatedAt"],
                            "properties": {
                                "id": {"type": "string"},
                                "status": {
                                    "type": "string",
                                    "enum": ["active", "fetched", "completed", "expired", "failed", "cancelled"],
                                },
                                "updatedAt": {"type": "string", "format": "date-time"},
                            },
                        },
                        "example": {"id": "abc", "status": "active", "updatedAt": "2026-11-28T10:00:00.000Z"},
                    }
                },
            },
            "304": {
                "description": "If-None-Match names the current state (after `wait`: it did not change).",
                "headers": _HEADERS,
            },
            "400": openapi_error(400, "wait must be a number of seconds", "Bad Request"),
            **session_errors(),
            "429": openapi_error(
                429, "Too many requests waiting from this address", "Too Many Requests", "A waiting limit."
            ),
            "503": openapi_error(
                503,
                "Session state is still loading",
                "Service Unavailable",
                "Replaying, or at a waiting limit; see Retry-After.",
            ),
        },
    }
