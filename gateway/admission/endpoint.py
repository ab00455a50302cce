"""``GET /session/{id}/events``: admits a stream request, then opens its stream.

Admission (a ticket, or a token and its scope, in ``authentication``; then the session as its tenant
may see it, counted and waited for in ``waiting``), then the stream's first frames and its
registration; ``gateway.edge.connection`` reads the request and writes the stream straight to its
connection (``gateway.streams.stream``). Everything a request parsed (headers, the query with the
token, claims) lives in the admission's frames and is freed once the stream is open; a stream keeps
only what it writes. See docs/http-api.md.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from consumers.hub import Hub
from consumers.log_aggregation import ReasonFolding
from consumers.log_fields import FIELDS_ATTRIBUTE, fields, session_hash
from consumers.progress import PartitionProgress
from consumers.store import SessionSnapshot, SessionStore, Transition
from consumers.tracing import TENANT_ATTRIBUTE
from gateway import metrics
from gateway.admission.authentication import Authenticator
from gateway.admission.client_address import ClientAddresses
from gateway.admission.registry import ConnectionRegistry, Ticket
from gateway.admission.waiting import NoContent, SessionFinder
from gateway.auth.access import AccessRule
from gateway.auth.claims import Principal
from gateway.auth.tickets import TicketCodec
from gateway.auth.verifier import TokenVerifier
from gateway.edge.cors import CorsPolicy, RefusedOrigins
from gateway.edge.errors import StreamRefused, error_headers
from gateway.runtime.logging_setup import request_id_var
from gateway.runtime.redaction import log_value
from gateway.settings import GatewaySettings
from gateway.streams.sse import EventPosition, encode_retry, encode_transition, parse_event_id

if TYPE_CHECKING:
    from consumers.tracing.otel import Span, Tracing
    from gateway.admission.tenant import TenantEndpoint

log = logging.getLogger("gateway.stream")

STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]
_ROUTINE_ENDS = frozenset({"terminal", "client_disconnected"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}", re.ASCII)

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class StreamRequest:
    """What admission needs of a request, independent of the server that received it."""

    session_id: str
    query: bytes
    headers: dict[str, str]
    client: str | None = None  # the client address key of the per-address shares (``ClientAddresses``)


@dataclass(slots=True)
class Answer:
    """A response that is not a stream: an error (NestJS-shaped JSON), 204, or a CORS preflight."""

    status: int
    headers: Headers
    body: bytes = b""
    reason: str = ""  # why a request was refused, for its one log line
    log_fields: Mapping[str, object] | None = None  # that line's fields (``consumers.log_fields``)


@dataclass(slots=True)
class Admission:
    principal: Principal
    snapshot: SessionSnapshot
    last_seen: EventPosition | None
    headers: Headers
    ticket: Ticket


def request_id(headers: dict[str, str]) -> str:
    """The caller's X-Request-ID when it is short and plain, else a new one (it is echoed and logged).

    A new one is 128 random bits in 32 hex digits, the shape of ``uuid4().hex`` at a fifth of its cost."""
    offered = headers.get("x-request-id", "")
    return offered if _REQUEST_ID.fullmatch(offered) else os.urandom(16).hex()


class EventsEndpoint:
    def __init__(
        self,
        settings: GatewaySettings,
        store: SessionStore,
        hub: Hub,
        progress: PartitionProgress,
        verifier: TokenVerifier,
        connections: ConnectionRegistry,
        tickets: TicketCodec | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.store = store
        self.hub = hub
        self.verifier = verifier
        self.connections = connections
        self.sessions = SessionFinder(settings, AccessRule(settings), store, hub, progress, connections)
        self.cors = CorsPolicy(settings.cors_origins)
        self.authenticator = Authenticator(settings, verifier, tickets, self.cors)
        # One line per refused request at most, folded per reason: their number is the clients' to choose.
        self.refusal_log = ReasonFolding(
            log, settings.request_log_lines, what="refused requests", suppressed=metrics.REQUEST_LOG_SUPPRESSED
        )
        self.refused_origins = RefusedOrigins()
        self.addresses = ClientAddresses(settings.trusted_proxies, settings.client_address_header)
        self.tenants: TenantEndpoint | None = None  # ``GET /tenant/events``, set up by the runtime when enabled

    # Admission --------------------------------------------------------------------------
    async def admit(self, request: StreamRequest) -> Admission | Answer:
        rid = request_id(request.headers)
        request_id_var.set(rid)
        tracing = self.tracing
        if tracing is None:
            return await self._admit(request, rid, None)
        # The admission's span (consumers/tracing/): outcome, reason, tenant; the token never reaches it.
        with tracing.admission(request.headers, request.session_id, rid) as span:
            result = await self._admit(request, rid, span)
            if isinstance(result, Admission):
                tracing.admission_done(span, "admitted", 200, tenant=result.principal.tenant)
            elif result.status == 204:
                tracing.admission_done(span, "ended", 204, "session_ended")
            else:
                tracing.admission_done(span, "refused", result.status, result.reason)
            return result

    async def _admit(self, request: StreamRequest, rid: str, span: Span | None) -> Admission | Answer:
        headers = request.headers
        extra = [(b"x-request-id", rid.encode("ascii")), *self.cors.headers(headers.get("origin"))]
        self._note_origin(headers)
        try:
            principal = await self._authenticate(request.query, headers)
            if span is not None and principal.tenant is not None:  # also on a refusal after this point
                span.set_attribute(TENANT_ATTRIBUTE, principal.tenant)
            last_seen = parse_event_id(headers.get("last-event-id") or _query_last_event_id(request.query))
            snapshot, ticket = await self.sessions.find(request.session_id, principal, last_seen, request.client)
        except StreamRefused as refused:
            metrics.REQUESTS_REFUSED.labels(str(refused.status)).inc()
            line_fields = {
                "status": refused.status,
                "reason": refused.reason,
                "session_hash": session_hash(request.session_id),
                **(refused.fields or {}),
            }
            answer = Answer(refused.status, error_headers(refused, extra), refused.body(), refused.reason, line_fields)
            if not self.settings.access_log:  # else the engine's access line says it, with the reason
                self.refusal_log.log(
                    logging.INFO,
                    refused.reason,
                    "stream refused session=%r status=%d reason=%s",
                    log_value(request.session_id),
                    refused.status,
                    refused.reason,
                    extra={FIELDS_ATTRIBUTE: line_fields},
                )
            return answer
        except NoContent:  # the session ended: a normal end, not a refusal (docs/operations.md, "Metrics")
            metrics.STREAM_REQUESTS_ENDED.inc()
            return Answer(204, extra)
        return Admission(principal, snapshot, last_seen, extra, ticket)

    def preflight(self, headers: dict[str, str]) -> Answer:
        self._note_origin(headers)
        status, cors = self.cors.preflight(headers.get("origin"), headers.get("access-control-request-method"))
        return Answer(status, cors)

    def _note_origin(self, headers: dict[str, str]) -> None:
        """Says, once per origin and minute, that a page's browser will not let it read the answer."""
        origin = headers.get("origin")
        if not origin or not self.cors.refuses(origin, headers.get("host")):
            return
        if self.refused_origins.first_time(origin):
            log.warning(
                "origin %r may not read this answer (its browser reports a CORS error): add it to "
                "GATEWAY_CORS_ORIGINS (now %s); logged once per origin and %.0fs",
                log_value(origin),
                self.cors.configured,
                self.refused_origins.interval,
            )
        else:
            metrics.REQUEST_LOG_SUPPRESSED.labels("origin_not_allowed").inc()

    async def authenticate(self, query: bytes, headers: dict[str, str]) -> Principal:
        """The one authentication step of every read (the stream, the status read in ``gateway.reads``)."""
        return await self._authenticate(query, headers)

    async def _authenticate(self, query: bytes, headers: dict[str, str]) -> Principal:
        """The shared authentication step (``gateway.admission.authentication``): a ticket or a token."""
        return await self.authenticator.authenticate(query, headers)

    # Opening the stream ------------------------------------------------------------
    def expires_at(self, principal: Principal) -> float:
        # Closed when the token stops being accepted (exp plus leeway): closing at exp itself would let
        # EventSource reconnect at once with the same, still accepted, token, in a loop.
        settings = self.settings
        return principal.expires_at + settings.jwt_leeway if settings.close_on_token_expiry else float("inf")

    def first_frames(self, admission: Admission) -> tuple[list[bytes], bool]:
        """``retry:`` and the current state (or what a resuming client missed); True if that ends the stream."""
        settings = self.settings
        jitter = 1 + random.uniform(-settings.retry_jitter, settings.retry_jitter)
        frames = [encode_retry(int(settings.retry_ms * jitter))]
        session_id = admission.snapshot.session_id
        current = self.sessions.visible(self.store.get(session_id), admission.principal) or admission.snapshot
        ends = False
        for transition in _initial_transitions(current, admission.last_seen):
            frames.append(encode_transition(transition))
            ends = ends or transition.is_terminal
        return frames, ends

    def register(self, stream: Any, session_id: str, ticket: Ticket) -> None:
        """Makes an open stream receive live transitions; call right after ``first_frames``, without awaiting."""
        self.hub.subscribe(session_id, stream)
        self.connections.add(stream, ticket)

    def closed(self, stream: Any, session_id: str, ticket: Ticket, reason: str, started: float) -> None:
        self.connections.release(ticket)
        self.hub.unsubscribe(session_id, stream)
        self.connections.remove(stream)
        metrics.STREAMS_CLOSED.labels(reason).inc()
        # Routine ends (the session finished, the browser left) are counted, and logged only at DEBUG: one
        # JSON line per stream costs more than the last event's delivery; other reasons are worth a line.
        level = logging.DEBUG if reason in _ROUTINE_ENDS else logging.INFO
        if log.isEnabledFor(level):
            after = time.monotonic() - started
            log.log(
                level,
                "stream closed session=%r reason=%s after=%.1fs",
                log_value(session_id),
                reason,
                after,
                extra=fields(session_hash=session_hash(session_id), reason=reason, seconds=round(after, 1)),
            )


def _query_last_event_id(raw: bytes) -> str | None:
    """``?lastEventId=`` (the last one, names percent-decoded, as ``parse_qsl``), or None.

    Without a ``%`` a decoded name is the name as sent (``+`` only turns into a space), so a query that does
    not hold ``lastEventId`` as such (the usual one: a long token and nothing else) is not parsed at all."""
    text = raw.decode("latin-1")
    if "%" not in text and "lastEventId" not in text:
        return None
    return dict(parse_qsl(text, keep_blank_values=True)).get("lastEventId")


def _initial_transitions(snapshot: SessionSnapshot, last_seen: EventPosition | None) -> list[Transition]:
    """The current state, or exactly the transitions a resuming client missed."""
    if last_seen is None or last_seen.partition != snapshot.current.partition:
        return [snapshot.current]
    return [t for t in snapshot.transitions if t.offset > last_seen.offset]
