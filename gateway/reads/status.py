"""``GET /session/{id}``: a session's current state as one JSON answer, with its ETag, and an optional long poll.

For the clients that poll instead of holding a stream (an SDK waiting for a wallet, a backend that checks
once). It is the stream's admission in small: the same authentication (``EventsEndpoint.authenticate``),
the same tenant rule and the same 401/404 bodies; the body is exactly an event's data (the SSE encoder's
``encode_payload``). It does not wait for an unknown session unless the client asks (``?wait=N``, at most
``GATEWAY_UNKNOWN_SESSION_WAIT``); with ``If-None-Match`` naming the current state, ``?wait=N`` is a long
poll that answers when the hub delivers a change, or 304 after N seconds. A request that waits holds a
ticket exactly like a waiting stream request (every limit and share); one that does not holds nothing
beyond its socket. The edge (``gateway.edge.connection``) reads the request and writes the answer on a
keep-alive connection, without the ASGI app. See docs/http-api.md (Status reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass

from consumers.store import SessionSnapshot
from gateway import metrics
from gateway.admission.endpoint import Answer, EventsEndpoint, request_id
from gateway.admission.registry import Ticket
from gateway.auth.claims import Principal
from gateway.edge.errors import StreamRefused, error_headers, not_found_message
from gateway.edge.route import MAX_SESSION_ID_LENGTH
from gateway.reads.etag import entity_tag, none_match
from gateway.runtime.logging_setup import request_id_var
from gateway.runtime.redaction import log_value
from gateway.streams.sse import encode_payload

log = logging.getLogger("gateway.status")

_WAIT = re.compile(rb"\d{1,9}(?:\.\d{1,9})?")
_BAD_WAIT = "wait must be a number of seconds"
_PREFLIGHT_METHODS = ("GET", "HEAD")
_PREFLIGHT_HEADERS = b"authorization, if-none-match"
_JSON = (b"content-type", b"application/json; charset=utf-8")
_NO_STORE = (b"cache-control", b"no-store")
_EXPOSE = (b"access-control-expose-headers", b"ETag")


@dataclass(slots=True)
class StatusRead:
    """What a status read needs of a request."""

    session_id: str
    query: bytes
    headers: dict[str, str]
    if_none_match: bytes = b""  # every If-None-Match header's value, joined by commas
    client: str | None = None  # the client address key of the waiting shares (``ClientAddresses``)


def parse_wait(query: bytes) -> float:
    """The last ``wait`` parameter of a raw query in seconds (0 without one); ``StreamRefused`` 400 unless it is a
    plain decimal. The name is taken as sent, like the token's (``?w%61it=`` is not ``wait``)."""
    value = None
    if b"wait=" in query:
        for pair in query.split(b"&"):
            name, _, raw = pair.partition(b"=")
            if name == b"wait":
                value = raw
    if value is None:
        return 0.0
    if not _WAIT.fullmatch(value):
        raise StreamRefused(400, _BAD_WAIT, reason="bad_wait")
    return float(value)


class _Change:
    """Hub subscriber that wakes a waiting read on any record (or deletion) of its session."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        self._wake()

    def session_deleted(self) -> None:
        self._wake()

    def close(self, reason: str) -> None:
        self._wake()


class StatusReads:
    """Answers status reads from the store, as the caller's tenant may see it."""

    def __init__(self, events: EventsEndpoint) -> None:
        self.events = events
        self.settings = events.settings
        self.sessions = events.sessions
        self.store = events.store
        self.hub = events.hub
        self.progress = events.sessions.progress
        self.connections = events.connections

    def preflight(self, headers: dict[str, str]) -> Answer:
        status, cors = self.events.cors.preflight(
            headers.get("origin"),
            headers.get("access-control-request-method"),
            methods=_PREFLIGHT_METHODS,
            allowed_headers=_PREFLIGHT_HEADERS,
        )
        return Answer(status, cors)

    async def read(self, request: StatusRead) -> Answer:
        """The answer: 200 with the state, 304, or the stream's error answers (and 400 for a bad ``wait``)."""
        headers = request.headers
        rid = request_id(headers)
        request_id_var.set(rid)
        cors = self.events.cors.headers(headers.get("origin"))
        extra = [(b"x-request-id", rid.encode("ascii")), *cors]
        if cors:
            extra.append(_EXPOSE)
        try:
            principal = await self.events.authenticate(request.query, headers)
            wait = self._wait(request.query)
            snapshot = await self._find(request, principal, wait)
        except StreamRefused as refused:
            metrics.STATUS_READS.labels(str(refused.status)).inc()
            if not self.settings.access_log:  # else the edge's access line says it, with the reason
                self.events.refusal_log.log(
                    logging.INFO,
                    refused.reason,
                    "status read refused session=%r status=%d reason=%s",
                    log_value(request.session_id),
                    refused.status,
                    refused.reason,
                )
            return Answer(refused.status, error_headers(refused, extra), refused.body(), refused.reason)
        tag = entity_tag(snapshot)
        assert tag is not None
        answer_headers = [(b"etag", tag), _NO_STORE, *extra]
        if none_match(request.if_none_match, tag):
            metrics.STATUS_READS.labels("304").inc()
            return Answer(304, answer_headers)
        metrics.STATUS_READS.labels("200").inc()
        return Answer(200, [_JSON, *answer_headers], encode_payload(snapshot.current).encode())

    def _wait(self, query: bytes) -> float:
        """``?wait=N`` in seconds, at most ``GATEWAY_UNKNOWN_SESSION_WAIT``; 400 unless a plain decimal."""
        return min(parse_wait(query), self.settings.unknown_session_wait)

    async def _find(self, request: StatusRead, principal: Principal, wait: float) -> SessionSnapshot:
        """The visible snapshot to answer with, after the wait the client asked for (counted while it lasts)."""
        session_id = request.session_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        waits = wait > 0 and not self.connections.draining
        if not self.progress.caught_up.is_set():
            if waits:
                ticket = self._reserve(principal, session_id, request.client)
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.progress.caught_up.wait(), min(wait, self.settings.replay_wait))
                finally:
                    self.connections.release(ticket)
            if not self.progress.caught_up.is_set():
                raise StreamRefused(503, "Session state is still loading", {"Retry-After": "5"}, reason="replaying")
        if not self.sessions.access.session_allowed(principal, session_id):
            raise StreamRefused(404, not_found_message(session_id), reason="session_claim_mismatch")
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            raise StreamRefused(404, not_found_message(session_id), reason="unknown_session")
        # Another tenant's session is exactly an unknown one: not visible, so never compared with a tag.
        snapshot = self.sessions.visible(self.store.get(session_id), principal)
        known = entity_tag(snapshot)
        if waits and (snapshot is None or none_match(request.if_none_match, known)):
            ticket = self._reserve(principal, session_id, request.client)
            try:
                snapshot = await self._await_change(session_id, principal, known, deadline)
            finally:
                self.connections.release(ticket)
        if snapshot is None:
            raise StreamRefused(404, not_found_message(session_id), reason="unknown_session")
        return snapshot

    def _reserve(self, principal: Principal, session_id: str, client: str | None) -> Ticket:
        return self.connections.reserve(
            principal.tenant or "", principal.subject, session_id, waiting=True, address=client
        )

    async def _await_change(
        self, session_id: str, principal: Principal, known: bytes | None, deadline: float
    ) -> SessionSnapshot | None:
        """The visible state once it differs from ``known`` (None: no session), or at ``deadline`` whatever it is.

        Woken by the hub on each record of the session; a record of the same id in another tenant wakes it
        but does not end it, so such a wait ends when one for an id that never appears does.
        """
        loop = asyncio.get_running_loop()
        while True:
            snapshot = self.sessions.visible(self.store.get(session_id), principal)
            remaining = deadline - loop.time()
            if entity_tag(snapshot) != known or remaining <= 0:
                return snapshot
            change = _Change()
            self.hub.subscribe(session_id, change)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(change.future, remaining)
            finally:
                self.hub.unsubscribe(session_id, change)
