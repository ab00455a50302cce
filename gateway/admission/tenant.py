"""``GET /tenant/events``: admits a tenant stream, then opens it.

Only when ``GATEWAY_TENANT_STREAM_SCOPE`` is set (the edge routes the path here only then; else it is
an unknown path, 404). The token is checked as for session streams (``EventsEndpoint``), then it must
carry the scope (or role) and name a tenant, else 403. The request counts against the same global
limits as a session stream and against ``GATEWAY_MAX_TENANT_STREAMS_PER_TENANT``
(``gateway.admission.registry``); a resuming request waits, counted, until this replica has read as
far as its ``Last-Event-ID`` (``gateway.streams.cursor``). The stream is a ``NativeStream`` fed by a
``gateway.streams.tenant.TenantFeed``. See docs/http-api.md (Tenant stream).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from consumers.progress import PartitionProgress
from gateway import metrics
from gateway.admission.endpoint import Answer, EventsEndpoint, Headers, StreamRequest, request_id
from gateway.admission.opening_rate import OpeningRate
from gateway.admission.registry import Ticket
from gateway.auth.claims import Principal
from gateway.edge.errors import StreamRefused, error_headers
from gateway.edge.tenant_route import INSUFFICIENT_SCOPE, NO_TENANT
from gateway.runtime.logging_setup import request_id_var
from gateway.streams.cursor import parse_cursor
from gateway.streams.sse import encode_retry
from gateway.streams.stream import NativeStream, StreamChannel
from gateway.streams.tenant import Statuses, TenantFeed, opening
from schemas import SessionStatus

log = logging.getLogger("gateway.stream")

_STATUSES = {status.value: status for status in SessionStatus}
_MAX_FILTER_ITEMS = len(_STATUSES)  # each status once at most
_ROUTINE_ENDS = frozenset({"client_disconnected"})


@dataclass(slots=True)
class TenantAdmission:
    principal: Principal
    tenant: str
    seen: dict[int, int] | None
    statuses: Statuses
    headers: Headers
    ticket: Ticket


def parse_statuses(query: list[tuple[str, str]]) -> Statuses:
    """``?status=active,fetched`` (repeatable) as a set; None without it; ``StreamRefused`` 400 if invalid."""
    values = [value for name, value in query if name == "status"]
    if not values:
        return None
    items = [item.strip() for value in values for item in value.split(",")]
    if len(items) > _MAX_FILTER_ITEMS:
        raise StreamRefused(400, f"At most {_MAX_FILTER_ITEMS} statuses in status", reason="bad_status_filter")
    unknown = [item for item in items if item not in _STATUSES]
    if unknown or not items:
        expected = ", ".join(_STATUSES)
        raise StreamRefused(400, f"Unknown status in status; expected some of: {expected}", reason="bad_status_filter")
    return frozenset(_STATUSES[item] for item in items)


class TenantEndpoint:
    """Admission and opening of tenant streams; shares the session streams' endpoint, limits and hub."""

    def __init__(self, events: EventsEndpoint, progress: PartitionProgress) -> None:
        self.events = events
        self.progress = progress
        self.scope = events.settings.tenant_stream_scope or ""
        settings = events.settings
        self.openings = OpeningRate(settings.tenant_stream_opening_rate, settings.tenant_stream_opening_burst)

    async def admit(self, request: StreamRequest) -> TenantAdmission | Answer:
        events = self.events
        headers = request.headers
        rid = request_id(headers)
        request_id_var.set(rid)
        extra = [(b"x-request-id", rid.encode("ascii")), *events.cors.headers(headers.get("origin"))]
        try:
            principal = await events.authenticate(request.query, headers)
            tenant = self._allowed(principal)
            query = parse_qsl(request.query.decode("latin-1"), keep_blank_values=True)
            statuses = parse_statuses(query)
            last = headers.get("last-event-id") or dict(query).get("lastEventId")
            seen = self._known(parse_cursor(last))
            wait = self.openings.wait(tenant)
            if wait:  # each opening reads the whole store once: not at a client's will
                metrics.LIMIT_REFUSALS.labels("tenant_stream_openings").inc()
                raise StreamRefused(
                    429,
                    "Too many tenant stream openings; retry later",
                    {"Retry-After": self.openings.retry_after(wait)},
                    reason="tenant_stream_openings",
                )
            ticket = await self._reserve(principal, tenant, seen, request.client)
        except StreamRefused as refused:
            metrics.REQUESTS_REFUSED.labels(str(refused.status)).inc()
            if not events.settings.access_log:
                events.refusal_log.log(
                    logging.INFO,
                    refused.reason,
                    "tenant stream refused status=%d reason=%s",
                    refused.status,
                    refused.reason,
                )
            return Answer(refused.status, error_headers(refused, extra), refused.body(), refused.reason)
        return TenantAdmission(principal, tenant, seen, statuses, extra, ticket)

    def _known(self, seen: dict[int, int] | None) -> dict[int, int] | None:
        """A cursor naming a partition this replica does not read is foreign: treated as no id at all."""
        if seen is None:
            return None
        progress = self.progress
        known = progress.targets.keys() | progress.positions.keys()
        return seen if known and all(partition in known for partition in seen) else None

    def _allowed(self, principal: Principal) -> str:
        scope = self.scope
        # A stream ticket is one session's (``gateway.auth.tickets``): never a tenant's view.
        if principal.ticket_session is not None or (scope not in principal.scopes and scope not in principal.roles):
            metrics.AUTH_FAILURES.labels("insufficient_scope").inc()
            raise StreamRefused(
                403,
                INSUFFICIENT_SCOPE,
                {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
                reason="insufficient_scope",
            )
        if not principal.tenant or not self.events.sessions.access.tenants_enforced:
            raise StreamRefused(403, NO_TENANT, reason="no_tenant")
        return principal.tenant

    async def _reserve(
        self, principal: Principal, tenant: str, seen: dict[int, int] | None, client: str | None
    ) -> Ticket:
        """The request's ticket once this replica has replayed and read as far as ``seen``."""
        events, progress = self.events, self.progress
        if not progress.caught_up.is_set():
            await events.sessions._await_replay(principal, "", client)  # counted like a session request
        behind = {p: o for p, o in (seen or {}).items() if not progress.reached(p, o)}
        connections = events.connections
        if connections.draining:
            ticket = Ticket.uncounted()
        else:
            ticket = connections.reserve(tenant, principal.subject, "", waiting=bool(behind), address=client)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + events.settings.resume_wait
            for partition, offset in behind.items():
                remaining = deadline - loop.time()
                if remaining <= 0 or not await progress.wait_for(partition, offset, remaining):
                    raise StreamRefused(
                        503, "This server has not caught up with the stream yet", {"Retry-After": "2"}, "resume_behind"
                    )
        except BaseException:
            connections.release(ticket)
            raise
        connections.stop_waiting(ticket)
        return ticket

    def open(self, admission: TenantAdmission, channel: StreamChannel, started: float) -> NativeStream:
        """The stream after its head: ``retry:``, the opening, then live transitions; call without awaiting."""
        events = self.events
        settings = events.settings
        tenant, ticket = admission.tenant, admission.ticket
        feed: TenantFeed | None = None

        def closed(stream: NativeStream, reason: str) -> None:
            events.connections.release(ticket)
            if feed is not None:
                events.hub.unsubscribe_tenant(tenant, feed)
                metrics.TENANT_STREAMS_OPEN.dec()
            events.connections.remove(stream)
            metrics.STREAMS_CLOSED.labels(reason).inc()
            level = logging.DEBUG if reason in _ROUTINE_ENDS else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "tenant stream closed reason=%s after=%.1fs", reason, time.monotonic() - started)

        stream = NativeStream(channel, "", events.expires_at(admission.principal), settings.max_buffered_bytes, closed)
        jitter = 1 + random.uniform(-settings.retry_jitter, settings.retry_jitter)
        stream.queue(encode_retry(int(settings.retry_ms * jitter)), is_event=False)
        begin = opening(
            events.store.tenant_sessions(tenant),
            admission.seen,
            admission.statuses,
            settings.tenant_stream_max_snapshot,
        )
        for frame in begin.frames:
            stream.queue(frame)
        if stream.close_reason is None:
            feed = TenantFeed(stream, tenant, begin.cursor, admission.statuses)
            events.hub.subscribe_tenant(tenant, feed)
            metrics.TENANT_STREAMS_OPEN.inc()
            events.connections.add(stream, ticket)
            if events.connections.draining:
                stream.close("draining")
        return stream
