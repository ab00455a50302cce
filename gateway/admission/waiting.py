"""Finding the session a request asks for, as its tenant may see it, waiting (counted) when it is not there yet.

A browser opens its stream when its page loads, which may be before the session's first record, or
reconnects to a replica that has not read as far as its ``Last-Event-ID``; its EventSource gives up
for good on an error status, so such a request waits (holding its ticket) instead of being refused.
Another tenant's session is treated exactly like an unknown one: same wait, same answers, same
timing. See docs/http-api.md (Errors, Event ids and resuming) and docs/security.md (Tenants).
"""

from __future__ import annotations

import asyncio
import contextlib

from consumers.hub import Hub
from consumers.progress import PartitionProgress
from consumers.store import SessionSnapshot, SessionStore
from gateway.admission.registry import ConnectionRegistry, Ticket
from gateway.auth.access import AccessRule
from gateway.auth.claims import Principal
from gateway.edge.errors import StreamRefused, not_found_message
from gateway.edge.route import MAX_SESSION_ID_LENGTH
from gateway.settings import AdmissionSettings
from gateway.streams.sse import EventPosition


class _Arrival:
    """Hub subscriber that notices records of a session this request waits for."""

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


class NoContent(Exception):
    """The client's last event was terminal: answer 204 so EventSource stops reconnecting."""


class SessionFinder:
    """The session of a stream request, visible to its principal, with the ticket that counts the request."""

    def __init__(
        self,
        settings: AdmissionSettings,
        access: AccessRule,
        store: SessionStore,
        hub: Hub,
        progress: PartitionProgress,
        connections: ConnectionRegistry,
    ) -> None:
        self.settings = settings
        self.access = access
        self.store = store
        self.hub = hub
        self.progress = progress
        self.connections = connections

    async def find(
        self, session_id: str, principal: Principal, last_seen: EventPosition | None, client: str | None
    ) -> tuple[SessionSnapshot, Ticket]:
        """The snapshot to start from and the request's ticket; ``StreamRefused``, or ``NoContent`` when the
        client's last event was the session's end."""
        if not self.progress.caught_up.is_set():
            await self._await_replay(principal, session_id, client)
        if not self.access.session_allowed(principal, session_id):
            raise StreamRefused(404, not_found_message(session_id), reason="session_claim_mismatch")
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            raise StreamRefused(404, not_found_message(session_id), reason="unknown_session")
        # Another tenant's session is treated exactly like an unknown one (same wait, same answers),
        # so neither the status, the timing nor a 204 reveals that it exists.
        snapshot = self.visible(self.store.get(session_id), principal)
        if snapshot is None and last_seen is not None and last_seen.terminal:
            raise NoContent
        draining = self.connections.draining
        tenant = principal.tenant or ""
        waits = snapshot is None or (
            last_seen is not None
            and last_seen.partition == snapshot.current.partition
            and not self.progress.reached(last_seen.partition, last_seen.offset)
        )
        # Counted from here on, waiting included. A draining replica answers with the state and an
        # immediate end of stream, so such a request holds nothing and is not refused by a limit.
        ticket = (
            Ticket.uncounted()
            if draining
            else self.connections.reserve(tenant, principal.subject, session_id, waiting=waits, address=client)
        )
        try:
            if snapshot is None and self.settings.unknown_session_wait > 0:
                snapshot = await self._await_visible(session_id, principal)
            if snapshot is None:
                raise StreamRefused(404, not_found_message(session_id), reason="unknown_session")
            if last_seen is not None and last_seen.partition == snapshot.current.partition:
                if not self.progress.reached(last_seen.partition, last_seen.offset):
                    caught_up = await self.progress.wait_for(
                        last_seen.partition, last_seen.offset, self.settings.resume_wait
                    )
                    if not caught_up:
                        raise StreamRefused(
                            503,
                            "This server has not caught up with the stream yet",
                            {"Retry-After": "2"},
                            "resume_behind",
                        )
                    snapshot = self.visible(self.store.get(session_id), principal) or snapshot
                if last_seen.offset >= snapshot.current.offset and snapshot.current.is_terminal:
                    raise NoContent
        except BaseException:
            self.connections.release(ticket)
            raise
        self.connections.stop_waiting(ticket)
        return snapshot, ticket

    async def _await_replay(self, principal: Principal, session_id: str, client: str | None) -> None:
        """A request that reaches a replica still replaying waits (counted) for the replay, then 503.

        A browser's EventSource gives up for good on an error status, and a replica restarting alone
        (no other replica to route to) would otherwise refuse every reconnect until it is ready.
        """
        wait = self.settings.replay_wait
        if wait > 0 and not self.connections.draining:
            ticket = self.connections.reserve(
                principal.tenant or "", principal.subject, session_id, waiting=True, address=client
            )
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.progress.caught_up.wait(), wait)
            finally:
                self.connections.release(ticket)
        if not self.progress.caught_up.is_set():
            raise StreamRefused(503, "Session state is still loading", {"Retry-After": "5"}, reason="replaying")

    def visible(self, snapshot: SessionSnapshot | None, principal: Principal) -> SessionSnapshot | None:
        """The snapshot if the principal may see it, else None (as for an unknown session)."""
        return self.access.visible(snapshot, principal)

    async def _await_visible(self, session_id: str, principal: Principal) -> SessionSnapshot | None:
        """Waits until the session exists for this caller, or the full wait has passed.

        A record for the same id in another tenant wakes the wait but does not end it: the answer
        comes at the same time as for an id that never appears.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.unknown_session_wait
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            arrival = _Arrival()
            self.hub.subscribe(session_id, arrival)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrival.future, remaining)
            finally:
                self.hub.unsubscribe(session_id, arrival)
            snapshot = self.visible(self.store.get(session_id), principal)
            if snapshot is not None:
                return snapshot
