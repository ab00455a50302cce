"""``GET /session/{id}/events``: admits a stream, then hands it to a ``StreamSubscriber``.

Served as a bare ASGI endpoint in front of FastAPI: an open stream then holds only uvicorn's
request task, this coroutine and its subscriber, not a stack of middleware frames. FastAPI
still documents the route (see ``gateway.app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Iterable
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from consumers.hub import Hub
from consumers.progress import PartitionProgress
from consumers.store import SessionSnapshot, SessionStore, Transition
from gateway import metrics
from gateway.authentication import AuthenticationError, Principal, TokenVerifier, find_token
from gateway.connections import ConnectionRegistry
from gateway.errors import INVALID_TOKEN, MISSING_TOKEN, StreamRefused, not_found_message, send_error
from gateway.logging_setup import request_id_var
from gateway.settings import GatewaySettings
from gateway.sse import EventPosition, encode_retry, encode_transition, parse_event_id
from gateway.subscriber import StreamSubscriber

log = logging.getLogger("gateway.stream")

MAX_SESSION_ID_LENGTH = 256  # the record contract's limit

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]


class _Arrival:
    """Hub subscriber that only notices the first record of a session not yet in the store."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def session_deleted(self) -> None:
        return None

    def close(self, reason: str) -> None:
        return None


class _NoContent(Exception):
    """The client's last event was terminal: answer 204 so EventSource stops reconnecting."""


class EventsEndpoint:
    def __init__(
        self,
        settings: GatewaySettings,
        store: SessionStore,
        hub: Hub,
        progress: PartitionProgress,
        verifier: TokenVerifier,
        connections: ConnectionRegistry,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.progress = progress
        self.verifier = verifier
        self.connections = connections
        self._cors = {origin.encode() for origin in settings.cors_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send, session_id: str) -> None:
        # Everything before the stream runs in other frames, so what it parsed (headers, query with
        # the token, claims, the session snapshot) is freed instead of living as long as the stream.
        admitted = await self._admit(scope, send, session_id)
        if admitted is None:
            return
        subscriber = await self._start_stream(session_id, *admitted, send)
        del admitted
        # The access log line is written: the query and headers (the token, cookies, about 1 KB from
        # a browser) need not stay in memory as long as the stream does.
        scope["query_string"] = b""
        scope["headers"] = []
        if self.connections.draining:
            # A browser's EventSource gives up for good on any error status, so a client reaching a
            # draining replica gets what it missed and a normal end of stream, then retries elsewhere.
            subscriber.close("draining")
        # Without uvicorn's transport (see gateway.subscriber), a task per stream watches for the disconnect.
        watcher = None if subscriber.transport else asyncio.ensure_future(_watch_disconnect(receive, subscriber))
        started = time.monotonic()
        reason = "error"
        try:
            reason = await subscriber.run()
            if reason not in ("slow_client", "client_disconnected"):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
            self.hub.unsubscribe(session_id, subscriber)
            self.connections.remove(subscriber)
            metrics.STREAMS_CLOSED.labels(reason).inc()
            log.info("stream closed session=%s reason=%s after=%.1fs", session_id, reason, time.monotonic() - started)

    async def _admit(
        self, scope: Scope, send: Send, session_id: str
    ) -> tuple[Principal, SessionSnapshot, EventPosition | None, list[tuple[bytes, bytes]]] | None:
        """Checks everything before the stream starts; answers the error itself and returns None on refusal."""
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        request_id_var.set(request_id)
        extra_headers = [(b"x-request-id", request_id.encode("latin-1")), *self._cors_headers(headers)]
        try:
            principal = await self._authenticate(scope.get("query_string", b""), headers)
            last_seen = parse_event_id(headers.get("last-event-id") or query.get("lastEventId"))
            snapshot = await self._find_session(session_id, principal, last_seen)
        except StreamRefused as refused:
            metrics.REQUESTS_REFUSED.labels(str(refused.status)).inc()
            log.info("stream refused session=%s status=%d reason=%s", session_id, refused.status, refused.reason)
            await send_error(send, refused, extra_headers)
            return None
        except _NoContent:
            metrics.REQUESTS_REFUSED.labels("204").inc()
            await send({"type": "http.response.start", "status": 204, "headers": extra_headers})
            await send({"type": "http.response.body", "body": b""})
            return None
        return principal, snapshot, last_seen, extra_headers

    async def _authenticate(self, query: bytes, headers: dict[str, str]) -> Principal:
        token = find_token(query, headers, self.settings.token_cookie)
        if not token:
            metrics.AUTH_FAILURES.labels("missing").inc()
            raise StreamRefused(401, MISSING_TOKEN, {"WWW-Authenticate": "Bearer"}, reason="missing_token")
        try:
            principal = await self.verifier.verify(token)
        except AuthenticationError as error:
            metrics.AUTH_FAILURES.labels(error.reason).inc()
            raise StreamRefused(
                401, INVALID_TOKEN, {"WWW-Authenticate": 'Bearer error="invalid_token"'}, reason=error.reason
            ) from None
        required = self.settings.required_scope
        if required and required not in principal.scopes:
            metrics.AUTH_FAILURES.labels("insufficient_scope").inc()
            raise StreamRefused(
                403,
                "Insufficient scope",
                {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{required}"'},
                reason="insufficient_scope",
            )
        return principal

    async def _find_session(
        self, session_id: str, principal: Principal, last_seen: EventPosition | None
    ) -> SessionSnapshot:
        settings = self.settings
        if not self.progress.caught_up.is_set():
            raise StreamRefused(503, "Session state is still loading", {"Retry-After": "5"}, reason="replaying")
        self.connections.admit(principal.subject)
        if settings.session_claim and principal.session is not None and principal.session != session_id:
            raise StreamRefused(404, not_found_message(session_id), reason="session_claim_mismatch")
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            raise StreamRefused(404, not_found_message(session_id), reason="unknown_session")
        # Another tenant's session is treated exactly like an unknown one (same wait, same answers),
        # so neither the status, the timing nor a 204 reveals that it exists.
        snapshot = self._visible(self.store.get(session_id), principal)
        if snapshot is None and last_seen is not None and last_seen.terminal:
            raise _NoContent
        if snapshot is None and settings.unknown_session_wait > 0:
            snapshot = self._visible(await self._await_arrival(session_id), principal)
        if snapshot is None:
            raise StreamRefused(404, not_found_message(session_id), reason="unknown_session")
        if last_seen is not None and last_seen.partition == snapshot.current.partition:
            if not self.progress.reached(last_seen.partition, last_seen.offset):
                caught_up = await self.progress.wait_for(last_seen.partition, last_seen.offset, settings.resume_wait)
                if not caught_up:
                    raise StreamRefused(
                        503, "This server has not caught up with the stream yet", {"Retry-After": "2"}, "resume_behind"
                    )
                snapshot = self.store.get(session_id) or snapshot
            if last_seen.offset >= snapshot.current.offset and snapshot.current.is_terminal:
                raise _NoContent
        # Checked again after the waits above: requests that waited must not overshoot the limits.
        self.connections.admit(principal.subject, session_id)
        return snapshot

    def _visible(self, snapshot: SessionSnapshot | None, principal: Principal) -> SessionSnapshot | None:
        if snapshot is not None and self.settings.tenant_claim and principal.tenant != snapshot.tenant_id:
            return None
        return snapshot

    async def _await_arrival(self, session_id: str) -> SessionSnapshot | None:
        arrival = _Arrival()
        self.hub.subscribe(session_id, arrival)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrival.future, self.settings.unknown_session_wait)
        finally:
            self.hub.unsubscribe(session_id, arrival)
        return self.store.get(session_id)

    async def _start_stream(
        self,
        session_id: str,
        principal: Principal,
        snapshot: SessionSnapshot,
        last_seen: EventPosition | None,
        extra_headers: list[tuple[bytes, bytes]],
        send: Send,
    ) -> StreamSubscriber:
        settings = self.settings
        # Closed when the token stops being accepted (exp plus leeway): closing at exp itself would let
        # EventSource reconnect at once with the same, still accepted, token, in a loop.
        expires_at = principal.expires_at + settings.jwt_leeway if settings.close_on_token_expiry else float("inf")
        subscriber = StreamSubscriber(session_id, principal.subject, expires_at, settings.max_buffered_bytes, send)
        jitter = 1 + random.uniform(-settings.retry_jitter, settings.retry_jitter)
        subscriber.queue(encode_retry(int(settings.retry_ms * jitter)), is_event=False)
        # Re-read and register without awaiting in between, so no transition slips past.
        current = self.store.get(session_id) or snapshot
        for transition in _initial_transitions(current, last_seen):
            subscriber.queue(encode_transition(transition))
            if transition.is_terminal:
                subscriber.end_after_flush = True
        if not subscriber.end_after_flush:
            self.hub.subscribe(session_id, subscriber)
            self.connections.add(subscriber)
        await send({"type": "http.response.start", "status": 200, "headers": [*_STREAM_HEADERS, *extra_headers]})
        subscriber.enable_direct_writes()
        metrics.STREAMS_OPENED.inc()
        return subscriber

    def _cors_headers(self, headers: dict[str, str]) -> Iterable[tuple[bytes, bytes]]:
        origin = headers.get("origin")
        if not origin or not self._cors:
            return ()
        if b"*" in self._cors:
            return ((b"access-control-allow-origin", b"*"),)
        if origin.encode("latin-1") in self._cors:
            return (
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                (b"vary", b"Origin"),
            )
        return ()


def _initial_transitions(snapshot: SessionSnapshot, last_seen: EventPosition | None) -> list[Transition]:
    """The current state, or exactly the transitions a resuming client missed."""
    if last_seen is None or last_seen.partition != snapshot.current.partition:
        return [snapshot.current]
    return [t for t in snapshot.transitions if t.offset > last_seen.offset]


async def _watch_disconnect(receive: Receive, subscriber: StreamSubscriber) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    subscriber.close("client_disconnected")
