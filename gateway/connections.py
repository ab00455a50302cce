"""All open streams of this process: admission limits, the shared clock, token expiry and graceful drain.

Admission: a request holds a ``Ticket`` from the moment it is authenticated until its stream ends,
waiting included (for a session that does not exist yet, or a position this replica has not read),
so parked requests count against the same limits as open streams, plus a cap of their own. Limits
are keyed so that no tenant can consume another's: per session by (tenant, session id), per subject
by (tenant, subject). A stream releases its ticket the moment it is closed, not when its connection
is finally gone, so a stream that is draining or ending never blocks its own reconnect.

One clock task serves every connection: each tick it heartbeats one slice of the streams (so a
heartbeat wave never wakes every connection at once); once a second it closes streams whose
client went away or whose token expired; during a drain it closes the next share of streams so
clients move to other replicas gradually.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Protocol

from consumers.hub import Hub
from gateway import metrics
from gateway.errors import StreamRefused
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.connections")

TICK_SECONDS = 0.25


class OpenStream(Protocol):
    """What the registry and its clock need of an open stream (native or portable ASGI)."""

    session_id: str
    slot: int
    last_write: float
    expires_at: float
    close_reason: str | None

    def stalled(self) -> bool: ...
    def heartbeat(self) -> None: ...
    def disconnected(self) -> bool: ...
    def close(self, reason: str) -> None: ...
    def cut_slow_client(self) -> None: ...


class Ticket:
    """One admitted request (waiting or streaming) as counted by the limits."""

    __slots__ = ("released", "session_key", "subject_key", "waiting")

    def __init__(self, subject_key: str, session_key: str, waiting: bool) -> None:
        self.subject_key = subject_key
        self.session_key = session_key
        self.waiting = waiting
        self.released = False

    @classmethod
    def uncounted(cls) -> Ticket:
        """For a request no limit applies to (a draining replica's state and end of stream)."""
        ticket = cls("", "", False)
        ticket.released = True
        return ticket


class ConnectionRegistry:
    def __init__(self, settings: GatewaySettings, hub: Hub) -> None:
        self._settings = settings
        self._hub = hub
        self._slot_count = max(1, math.ceil(settings.heartbeat_interval / TICK_SECONDS))
        self._slots: list[set[OpenStream]] = [set() for _ in range(self._slot_count)]
        self._next_slot = 0
        self._per_subject: dict[str, int] = {}
        self._per_session: dict[str, int] = {}
        self._tickets = 0
        self._waiting = 0
        self._count = 0
        self._tick = 0
        self.draining = False
        self.drained = asyncio.Event()
        self._drain_started = 0.0
        self._drain_seconds = 0.0
        self._drain_total = 0

    def __len__(self) -> int:
        return self._count

    @property
    def waiting(self) -> int:
        return self._waiting

    def reserve(self, tenant: str, subject: str, session_id: str, *, waiting: bool) -> Ticket:
        """Counts a request against every limit, or raises ``StreamRefused``.

        Hang-ups are noticed by the once-a-second sweep; before refusing, streams whose client is
        already gone are dropped, so a page reload right after closing tabs is not refused.
        """
        subject_key = f"{tenant}\x00{subject}"
        session_key = f"{tenant}\x00{session_id}"
        refusal = self._refusal(subject_key, session_key, waiting)
        if refusal is not None and self._drop_disconnected():
            refusal = self._refusal(subject_key, session_key, waiting)
        if refusal is not None:
            metrics.LIMIT_REFUSALS.labels(refusal.reason).inc()
            raise refusal
        self._tickets += 1
        self._per_subject[subject_key] = self._per_subject.get(subject_key, 0) + 1
        self._per_session[session_key] = self._per_session.get(session_key, 0) + 1
        if waiting:
            self._waiting += 1
            metrics.WAITING_REQUESTS.inc()
        return Ticket(subject_key, session_key, waiting)

    def stop_waiting(self, ticket: Ticket) -> None:
        if ticket.waiting and not ticket.released:
            ticket.waiting = False
            self._waiting -= 1
            metrics.WAITING_REQUESTS.dec()

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        self.stop_waiting(ticket)
        ticket.released = True
        self._tickets -= 1
        for counts, key in ((self._per_subject, ticket.subject_key), (self._per_session, ticket.session_key)):
            remaining = counts[key] - 1
            if remaining:
                counts[key] = remaining
            else:
                del counts[key]

    def _refusal(self, subject_key: str, session_key: str, waiting: bool) -> StreamRefused | None:
        settings = self._settings
        if self._tickets >= settings.max_connections:
            return StreamRefused(503, "Too many open streams on this server", {"Retry-After": "5"}, "max_connections")
        if waiting and self._waiting >= settings.max_waiting_requests:
            return StreamRefused(
                503, "Too many requests waiting on this server", {"Retry-After": "5"}, "max_waiting_requests"
            )
        per_subject = settings.max_connections_per_subject
        if per_subject and self._per_subject.get(subject_key, 0) >= per_subject:
            return StreamRefused(
                429, "Too many open streams for this token subject", {"Retry-After": "10"}, "per_subject"
            )
        if self._per_session.get(session_key, 0) >= settings.max_connections_per_session:
            return StreamRefused(429, "Too many open streams for this session", {"Retry-After": "10"}, "per_session")
        return None

    def _drop_disconnected(self) -> int:
        gone = [s for slot in self._slots for s in slot if s.close_reason is None and s.disconnected()]
        for subscriber in gone:
            subscriber.close("client_disconnected")
        return len(gone)

    def add(self, subscriber: OpenStream) -> None:
        subscriber.slot = self._next_slot
        self._next_slot = (self._next_slot + 1) % self._slot_count
        self._slots[subscriber.slot].add(subscriber)
        self._count += 1
        metrics.OPEN_STREAMS.inc()

    def remove(self, subscriber: OpenStream) -> None:
        slot = self._slots[subscriber.slot]
        if subscriber not in slot:
            return
        slot.discard(subscriber)
        self._count -= 1
        metrics.OPEN_STREAMS.dec()
        if self.draining and not self._count:
            self.drained.set()

    def start_drain(self, seconds: float) -> None:
        """Refuses new streams from now on and closes open ones spread over ``seconds``."""
        if self.draining:
            return
        self.draining = True
        self._drain_started = time.monotonic()
        self._drain_seconds = seconds
        self._drain_total = self._count
        log.info("draining %d streams over %.1fs", self._count, seconds)
        if not self._count:
            self.drained.set()
        self._drain_step()

    def close_all(self, reason: str) -> None:
        for slot in self._slots:
            for subscriber in tuple(slot):
                subscriber.close(reason)

    async def run_clock(self) -> None:
        """The shared clock (run by the supervisor); a failure on one stream closes that stream only."""
        settings = self._settings
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self._tick += 1
            now = time.monotonic()
            stale_before = now - settings.heartbeat_interval + TICK_SECONDS
            for subscriber in tuple(self._slots[self._tick % self._slot_count]):
                try:
                    if subscriber.stalled():
                        subscriber.cut_slow_client()
                    elif subscriber.last_write <= stale_before:
                        subscriber.heartbeat()
                except Exception:
                    self._clock_failed(subscriber)
            if self._tick % 4 == 0:
                self._sweep(time.time())
            if self.draining:
                self._drain_step()

    def _clock_failed(self, subscriber: OpenStream) -> None:
        metrics.CLOCK_ERRORS.inc()
        log.exception("the stream clock failed on a stream of session %r; closing it", subscriber.session_id)
        self.remove(subscriber)
        self._hub.unsubscribe(subscriber.session_id, subscriber)  # type: ignore[arg-type]
        with contextlib.suppress(Exception):
            subscriber.close("clock_error")

    def _sweep(self, wall: float) -> None:
        """Once a second: streams whose client went away or whose token expired."""
        close_on_expiry = self._settings.close_on_token_expiry
        for slot in self._slots:
            for subscriber in tuple(slot):
                try:
                    if subscriber.disconnected():
                        subscriber.close("client_disconnected")
                    elif close_on_expiry and subscriber.expires_at <= wall:
                        subscriber.close("token_expired")
                except Exception:
                    self._clock_failed(subscriber)

    def _drain_step(self) -> None:
        """Closes streams on a uniform schedule: the k-th of n at (k - 1/2) / n of the drain time.

        Streams that ended by themselves meanwhile count as drained; new ones (closed at once after their
        state, see ``subscribe``) do not change the schedule.
        """
        open_streams = [s for slot in self._slots for s in slot if s.close_reason is None]
        if not open_streams:
            return
        total, seconds = self._drain_total, self._drain_seconds
        fraction = 1.0 if seconds <= 0 else min(1.0, (time.monotonic() - self._drain_started) / seconds)
        may_stay_open = total - min(total, math.floor(total * fraction + 0.5))
        for subscriber in open_streams[: max(0, len(open_streams) - may_stay_open)]:
            subscriber.close("draining")
