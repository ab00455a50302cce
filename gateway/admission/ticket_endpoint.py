"""``POST /session/{id}/ticket``: a backend trades its token for a ticket good for one session only.

The token comes from ``Authorization: Bearer`` only (no query, no cookie): a browser adds neither by
itself, and a cross-origin page must preflight the header, so no page can make a browser mint a ticket
(CSRF). The body is at most ``MAX_BODY`` bytes (the edge refuses more before reading it); it may ask for
a shorter lifetime, never a longer one. The ticket carries the caller's tenant and ``sub`` and the path's
session; reading it is ``gateway.admission.authentication``'s, the format ``gateway.auth.tickets``'s.
Served only when ``GATEWAY_TICKET_KEYS`` is set (else the route is unknown: 404). See docs/tickets.md.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import Counter
from starlette.types import Receive, Scope, Send

from consumers.log_aggregation import ReasonFolding
from gateway.admission.authentication import Authenticator
from gateway.admission.endpoint import request_id
from gateway.auth.access import AccessRule
from gateway.auth.tickets import Grant, TicketCodec, expiry
from gateway.edge.cors import CorsPolicy
from gateway.edge.errors import StreamRefused, not_found_message
from gateway.edge.route import MAX_SESSION_ID_LENGTH, match, openapi_error
from gateway.runtime.logging_setup import request_id_var
from gateway.runtime.redaction import log_value
from gateway.settings import AuthSettings

log = logging.getLogger("gateway.tickets")

SUFFIX = b"/ticket"
PATH_TEMPLATE = "/session/{id}/ticket"
MAX_BODY = 1024
_PREFLIGHT_HEADERS = b"authorization, content-type"

# Kept here, not in gateway.metrics, while that module is being reworked; same registry.
TICKETS_ISSUED = Counter("gateway_tickets_issued_total", "Stream tickets issued (POST /session/{id}/ticket, 201).")
TICKET_REQUESTS_REFUSED = Counter(
    "gateway_ticket_requests_refused_total",
    "Ticket requests (POST /session/{id}/ticket) refused, by reason.",
    ["reason"],
)

Headers = list[tuple[bytes, bytes]]


def expires_at_text(expires: int) -> str:
    """``exp`` as ISO 8601 UTC with milliseconds, like ``Date.prototype.toISOString()``."""
    return datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def requested_ttl(body: bytes, longest: float) -> float:
    """The lifetime asked for in ``{"ttl": seconds}`` (an empty body asks for none), at most ``longest``."""
    if not body.strip():
        return longest
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise StreamRefused(400, 'The body must be a JSON object like {"ttl": 300}', reason="bad_body") from None
    ttl = document.get("ttl", longest) if isinstance(document, dict) and set(document) <= {"ttl"} else None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise StreamRefused(400, 'The body may only hold "ttl": a positive number of seconds', reason="bad_body")
    return min(float(ttl), longest)


class TicketEndpoint:
    """The route's ASGI app (``gateway.runtime.ports`` sends it the requests whose path matches)."""

    def __init__(
        self,
        settings: AuthSettings,
        authenticator: Authenticator,
        codec: TicketCodec,
        cors: CorsPolicy,
        root_path: str = "",
        refusals: ReasonFolding | None = None,
    ) -> None:
        self._root_path = root_path
        self._refusals = refusals or ReasonFolding(log, what="refused ticket requests")
        self._settings = settings
        self._authenticator = authenticator
        self._codec = codec
        self._cors = cors
        self._access = AccessRule(settings)

    @staticmethod
    def session_id(scope: Scope, root_path: str = "") -> str | None:
        return match(scope.get("raw_path") or scope["path"].encode("latin-1", "replace"), root_path, SUFFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1") for name, value in scope["headers"]
        }
        rid = request_id(headers)
        request_id_var.set(rid)
        extra: Headers = [(b"x-request-id", rid.encode("ascii")), *self._cors.headers(headers.get("origin"))]
        method = scope["method"]
        if method == "OPTIONS":
            status, cors = self._cors.preflight(
                headers.get("origin"),
                headers.get("access-control-request-method"),
                methods=("POST",),
                allowed_headers=_PREFLIGHT_HEADERS,
            )
            await _send(send, status, cors)
            return
        session_id = self.session_id(scope, self._root_path) or ""
        try:
            if method != "POST":
                raise StreamRefused(405, "Use POST to ask for a ticket", {"Allow": "POST, OPTIONS"}, "method")
            body = await _read_body(receive)
            status, answer = 201, await self._issue(session_id, scope.get("query_string", b""), headers, body)
        except StreamRefused as refused:
            TICKET_REQUESTS_REFUSED.labels(refused.reason or str(refused.status)).inc()
            # One line per refused request at most, folded per reason: their number is the clients' to choose.
            self._refusals.log(
                logging.INFO,
                f"ticket_{refused.reason}",
                "ticket refused session=%r status=%d reason=%s",
                log_value(session_id),
                refused.status,
                refused.reason,
            )
            own = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in refused.headers.items()]
            await _send(send, refused.status, [*_JSON, *own, *extra], refused.body())
            return
        await _send(send, status, [*_JSON, *extra], answer)

    async def _issue(self, session_id: str, query: bytes, headers: dict[str, str], body: bytes) -> bytes:
        if query:
            # A token in a URL ends up in access logs and browser history; this route never reads one there.
            raise StreamRefused(
                400, "This route takes no query parameters: send the token in the Authorization header", reason="query"
            )
        if len(body) > MAX_BODY:
            raise StreamRefused(413, f"The body is limited to {MAX_BODY} bytes", reason="body_too_large")
        principal = await self._authenticator.bearer(headers)
        ttl = requested_ttl(body, self._settings.ticket_ttl)
        if len(session_id) > MAX_SESSION_ID_LENGTH or not self._access.session_allowed(principal, session_id):
            raise StreamRefused(404, not_found_message(session_id), reason="session_claim_mismatch")
        grant = Grant(principal.subject, principal.tenant, session_id, expiry(time.time(), ttl))
        ticket = self._codec.mint(grant)
        TICKETS_ISSUED.inc()
        log.debug(
            "ticket issued session=%r sub=%r exp=%d", log_value(session_id), log_value(grant.subject), grant.expires
        )
        return orjson.dumps({"ticket": ticket, "expiresAt": expires_at_text(grant.expires)})


_JSON: Headers = [
    (b"content-type", b"application/json; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise StreamRefused(400, "The request ended early", reason="disconnected")
        body += bytes(message.get("body", b""))
        if len(body) > MAX_BODY:
            raise StreamRefused(413, f"The body is limited to {MAX_BODY} bytes", reason="body_too_large")
        if not message.get("more_body", False):
            return body


async def _send(send: Send, status: int, headers: Headers, body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def openapi_operation() -> dict[str, Any]:
    """The route's OpenAPI 3.1 operation object (the route itself is not a FastAPI route)."""
    return {
        "tags": ["Session Events"],
        "summary": "Get a stream ticket for one session (backends only)",
        "operationId": "session_ticket",
        "description": (
            "Trades the caller's token, sent in `Authorization: Bearer` only (never the query or a cookie), for a "
            "ticket that opens this one session of the caller's tenant: `GET /session/{id}/events?ticket=...`. "
            "Only when `GATEWAY_TICKET_KEYS` is set (else 404). See docs/tickets.md."
        ),
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 256}},
        ],
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"ttl": {"type": "number", "exclusiveMinimum": 0}},
                    }
                }
            },
        },
        "responses": {
            "201": {
                "description": "The ticket (`Cache-Control: no-store`).",
                "content": {
                    "application/json": {
                        "example": {"ticket": "v1.eyJ....q_84", "expiresAt": "2026-11-28T10:15:00.000Z"}
                    }
                },
            },
            "400": openapi_error(
                400, "This route takes no query parameters: send the token in the Authorization header", "Bad Request"
            ),
            "401": openapi_error(401, "Invalid or expired token", "Unauthorized"),
            "403": openapi_error(403, "Insufficient scope", "Forbidden"),
            "404": openapi_error(404, "Session abc not found", "Not Found"),
            "413": openapi_error(413, f"The body is limited to {MAX_BODY} bytes", "Payload Too Large"),
        },
    }
