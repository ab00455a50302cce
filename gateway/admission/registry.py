"""Admission limits: every admitted request, waiting or streaming, counted against its limits and shares.

A request holds a ``Ticket`` from the moment it is authenticated until its stream ends, waiting
included, so parked requests count against the same limits as open streams, plus caps of their own.
Keys are per tenant (session and subject), so no tenant can use up another's limits, and waiting
requests have a share per tenant and per client address (``gateway.admission.client_address``). A
stream releases its ticket the moment it is closed, not when its connection is finally gone, so a
stream that is draining or ending never blocks its own reconnect.

Every decision costs O(1): counters per key, never a walk over the open streams. A hang-up the
transport has seen but not yet reported is covered where it matters: before a per-session or
per-subject refusal, the few streams of that key (at most its limit) are checked. The open streams
themselves, their clock and the drain are ``gateway.admission.clock``'s. See docs/security.md (Limits
on everything a client can make us hold).
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway import metrics
from gateway.admission.clock import OpenStream, StreamClock
from gateway.edge.errors import StreamRefused
from gateway.settings import AdmissionSettings

_PER_KEY = frozenset({"per_session", "per_subject", "tenant_streams"})
_SMALL = 16  # a key's tickets are a list up to this many (the common case: a few bytes each), then a set


class Ticket:
    """One admitted request (waiting or streaming) as counted by the limits."""

    __slots__ = ("address", "released", "session_key", "stream", "subject_key", "tenant", "tenant_stream", "waiting")

    def __init__(
        self, subject_key: str, session_key: str, waiting: bool, tenant: str | None = None, address: str | None = None
    ) -> None:
        self.subject_key = subject_key
        self.session_key = session_key
        self.waiting = waiting
        self.tenant = tenant  # the waiting share's key; None: no per-tenant share (no tenant claim configured)
        self.address = address  # the waiting share's key; None: no per-address share (see ClientAddresses)
        self.released = False
        self.tenant_stream = False  # a tenant stream's (``reserve`` with no session id)
        self.stream: OpenStream | None = None

    @classmethod
    def uncounted(cls) -> Ticket:
        """For a request no limit applies to (a draining replica's state and end of stream)."""
        ticket = cls("", "", False)
        ticket.released = True
        return ticket


Held = list[Ticket] | set[Ticket]


class ConnectionRegistry:
    """The limits and shares of admitted requests; the open streams, their clock and drain in ``streams``."""

    def __init__(self, settings: AdmissionSettings, streams: StreamClock, *, tenant_shares: bool) -> None:
        self._settings = settings
        self.streams = streams
        # The tickets of each key (never more than its limit: refused beyond).
        self._per_session: dict[str, Held] = {}
        self._per_subject: dict[str, Held] = {}
        self._subject_limit = settings.max_connections_per_subject  # 0: off, and subjects are not tracked
        self._tenant_share = settings.waiting_per_tenant if tenant_shares else 0  # no tenants without the claim
        self._address_share = settings.waiting_per_address
        self._waiting_per_tenant: dict[str, int] = {}
        self._waiting_per_address: dict[str, int] = {}
        self._tickets = 0
        self._waiting = 0

    def __len__(self) -> int:
        """Open streams (admitted requests that are still waiting are not streams yet)."""
        return len(self.streams)

    @property
    def waiting(self) -> int:
        return self._waiting

    def reserve(
        self, tenant: str, subject: str, session_id: str, *, waiting: bool, address: str | None = None
    ) -> Ticket:
        """Counts a request against every limit, or raises ``StreamRefused``; O(1) (O(limit) to refuse).

        ``session_id`` is empty for a tenant stream: its key (no session id is empty) is the tenant's, under
        ``GATEWAY_MAX_TENANT_STREAMS_PER_TENANT`` instead of the per-session limit."""
        ticket = Ticket(
            f"{tenant}\x00{subject}",
            f"{tenant}\x00{session_id}",
            waiting,
            tenant if self._tenant_share else None,
            address,
        )
        ticket.tenant_stream = not session_id
        refusal = self._refusal(ticket)
        if refusal is not None and refusal.reason in _PER_KEY and self._drop_disconnected(refusal.reason, ticket):
            refusal = self._refusal(ticket)
        if refusal is not None:
            metrics.LIMIT_REFUSALS.labels(refusal.reason).inc()
            raise refusal
        self._tickets += 1
        _add(self._per_session, ticket.session_key, ticket)
        if self._subject_limit:
            _add(self._per_subject, ticket.subject_key, ticket)
        if waiting:
            self._waiting += 1
            metrics.WAITING_REQUESTS.inc()
            if ticket.tenant is not None:
                _count(self._waiting_per_tenant, ticket.tenant, 1)
            if ticket.address is not None:
                _count(self._waiting_per_address, ticket.address, 1)
        return ticket

    def stop_waiting(self, ticket: Ticket) -> None:
        if ticket.waiting and not ticket.released:
            ticket.waiting = False
            self._waiting -= 1
            metrics.WAITING_REQUESTS.dec()
            if ticket.tenant is not None:
                _count(self._waiting_per_tenant, ticket.tenant, -1)
            if ticket.address is not None:
                _count(self._waiting_per_address, ticket.address, -1)

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        self.stop_waiting(ticket)
        ticket.released = True
        ticket.stream = None
        self._tickets -= 1
        _remove(self._per_session, ticket.session_key, ticket)
        if self._subject_limit:
            _remove(self._per_subject, ticket.subject_key, ticket)

    def _refusal(self, ticket: Ticket) -> StreamRefused | None:
        settings = self._settings
        if self._tickets >= settings.max_connections:
            return StreamRefused(503, "Too many open streams on this server", {"Retry-After": "5"}, "max_connections")
        if ticket.waiting:
            if self._waiting >= settings.max_waiting_requests:
                return StreamRefused(
                    503, "Too many requests waiting on this server", {"Retry-After": "5"}, "max_waiting_requests"
                )
            if ticket.tenant is not None and self._waiting_per_tenant.get(ticket.tenant, 0) >= self._tenant_share:
                return StreamRefused(
                    429, "Too many requests waiting for this tenant", {"Retry-After": "5"}, "waiting_per_tenant"
                )
            if ticket.address is not None and self._waiting_per_address.get(ticket.address, 0) >= self._address_share:
                return StreamRefused(
                    429, "Too many requests waiting from this address", {"Retry-After": "5"}, "waiting_per_address"
                )
        subject_limit = self._subject_limit
        if subject_limit and len(self._per_subject.get(ticket.subject_key, ())) >= subject_limit:
            return StreamRefused(
                429, "Too many open streams for this token subject", {"Retry-After": "10"}, "per_subject"
            )
        if ticket.tenant_stream:
            if len(self._per_session.get(ticket.session_key, ())) >= settings.max_tenant_streams_per_tenant:
                return StreamRefused(
                    429, "Too many open tenant streams for this tenant", {"Retry-After": "10"}, "tenant_streams"
                )
            return None
        if len(self._per_session.get(ticket.session_key, ())) >= settings.max_connections_per_session:
            return StreamRefused(429, "Too many open streams for this session", {"Retry-After": "10"}, "per_session")
        return None

    def _drop_disconnected(self, reason: str, ticket: Ticket) -> int:
        """Closes the streams of the refused key whose client is already gone; how many it closed."""
        by_session = reason != "per_subject"
        holders = self._per_session if by_session else self._per_subject
        key = ticket.session_key if by_session else ticket.subject_key
        gone = [
            held.stream
            for held in holders.get(key, ())
            if held.stream is not None and held.stream.close_reason is None and held.stream.disconnected()
        ]
        for stream in gone:
            stream.close("client_disconnected")
        return len(gone)

    # The open streams (``StreamClock``), as the engine and the server use them ---------------------
    def add(self, stream: OpenStream, ticket: Ticket | None = None) -> None:
        """An open stream; its ticket (if counted) learns it, for the check before a per-key refusal."""
        if ticket is not None and not ticket.released:
            ticket.stream = stream
        self.streams.add(stream)

    def remove(self, stream: OpenStream) -> None:
        self.streams.remove(stream)

    @property
    def draining(self) -> bool:
        return self.streams.draining

    @property
    def drained(self) -> asyncio.Event:
        return self.streams.drained

    def start_drain(self, seconds: float) -> None:
        self.streams.start_drain(seconds)

    def close_all(self, reason: str) -> None:
        self.streams.close_all(reason)

    async def run_clock(self) -> None:
        await self.streams.run_clock()


def _add(holders: dict[str, Held], key: str, ticket: Ticket) -> None:
    held = holders.get(key)
    if held is None:
        holders[key] = [ticket]
    elif isinstance(held, set):
        held.add(ticket)
    elif len(held) < _SMALL:
        held.append(ticket)
    else:  # removal stays O(1) for a key with a high limit (e.g. a subject shared by many browsers)
        holders[key] = {*held, ticket}


def _remove(holders: dict[str, Held], key: str, ticket: Ticket) -> None:
    held = holders.get(key)
    if held is None:
        return
    if isinstance(held, set):
        held.discard(ticket)
    else:
        with contextlib.suppress(ValueError):
            held.remove(ticket)
    if not held:
        del holders[key]


def _count(counts: dict[str, int], key: str, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)
