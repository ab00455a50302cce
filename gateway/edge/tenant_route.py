"""``GET /tenant/events``: the tenant stream route's one definition, for matching and for OpenAPI.

Served by ``gateway.admission.tenant`` when ``GATEWAY_TENANT_STREAM_SCOPE`` is set; the edge passes the
path on to the app (404) otherwise. See docs/http-api.md (Tenant stream).
"""

from __future__ import annotations

from typing import Any

from gateway.edge.errors import INVALID_TOKEN, MISSING_TOKEN
from gateway.edge.route import openapi_error

TENANT_PATH = "/tenant/events"
_TENANT_PATH = TENANT_PATH.encode("ascii")
NO_TENANT = "Token names no tenant"
INSUFFICIENT_SCOPE = "Insufficient scope"


def match_tenant(raw_path: bytes, root_path: str = "") -> bool:
    """True for the tenant stream's path, with or without ``root_path`` (the path a proxy strips)."""
    if raw_path == _TENANT_PATH:
        return True
    prefix = root_path.rstrip("/").encode("latin-1")
    return bool(prefix) and raw_path == prefix + _TENANT_PATH


def _query(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": {"type": "string"}}


def openapi_operation() -> dict[str, Any]:
    """The route's OpenAPI 3.1 operation object."""
    return {
        "tags": ["Session Events"],
        "summary": "Subscribe to every session of the token's tenant",
        "operationId": "tenant_events",
        "description": (
            "Only when `GATEWAY_TENANT_STREAM_SCOPE` is set (404 otherwise), for tokens carrying that scope or "
            "role. Server-Sent Events: a `retry:` field, the tenant's live sessions' current states (at most "
            "`GATEWAY_TENANT_STREAM_MAX_SNAPSHOT`; beyond, one `event: truncated` with "
            '`{"leftOut", "sent"}` before them), then every later transition of the tenant. Each event is '
            '`event: message` with `data` `{"id", "status", "updatedAt"}` (as a session stream\'s) and an `id` '
            "that is a cursor over the tenant's partitions: send it back as `Last-Event-ID` to resume on any "
            "replica without loss or duplicates. A tombstone deleting one of the tenant's sessions is "
            '`event: deleted` with `{"id"}` (whatever `status` keeps). The stream does not end when a session '
            "ends."
        ),
        "parameters": [
            _query("token", "JWT access token for authentication"),
            _query("access_token", "Alternative name for the token parameter"),
            _query("status", "Only these statuses, comma-separated (e.g. `active,fetched`)"),
            _query("lastEventId", "Resume after this event id (Last-Event-ID takes precedence)"),
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Sent by EventSource when it reconnects",
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "200": {
                "description": "The event stream.",
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "example": 'retry: 3000\n\nid: c1.ALAB\nevent: message\ndata: {"id":"abc","status":"active",'
                        '"updatedAt":"2026-11-28T10:00:00.000Z"}\n\n',
                    }
                },
            },
            "400": openapi_error(400, "Unknown status in status; expected some of: active, ...", "Bad Request"),
            "401": openapi_error(
                401,
                MISSING_TOKEN,
                "Unauthorized",
                f"No token: '{MISSING_TOKEN}'; failed verification: '{INVALID_TOKEN}'.",
            ),
            "403": openapi_error(
                403,
                INSUFFICIENT_SCOPE,
                "Forbidden",
                f"Without the scope or role: '{INSUFFICIENT_SCOPE}'; a token without a tenant: '{NO_TENANT}'.",
            ),
            "404": openapi_error(404, "Not Found", "Not Found", "The tenant stream is not enabled on this gateway."),
            "429": openapi_error(429, "Too many open tenant streams for this tenant", "Too Many Requests"),
            "503": openapi_error(
                503,
                "Session state is still loading",
                "Service Unavailable",
                "Replaying, at a connection limit, or behind a resumed position; see Retry-After.",
            ),
        },
    }
