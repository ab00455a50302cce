"""All open streams of this process: admission limits, the shared clock, token expiry and graceful drain.

Admission: a request holds a ``Ticket`` from the moment it is authenticated until its stream ends,
waiting included (for a session that does not exist yet, or a position this replica has not read),
so parked requests count against the same limits as open streams, plus a cap of their own. Limits
are keyed so that no tenant can consume another's: per session by (tenant, session id), per subject
by (tenant, subject). Waiting requests also have a share per tenant and per client address (see
``ClientAddresses``), so that no tenant and no client can take the whole waiting budget. A stream
releases its ticket the moment it is closed, not when its connection is finally gone, so a stream
that is draining or ending never blocks its own reconnect.

Every admission decision costs O(1): counters per key, never a walk over the open streams. Both engines
close a stream (and release its ticket) as soon as they learn that its client hung up (native engine:
``connection_lost``; ASGI engine: its ``http.disconnect`` watcher), so a page reloaded right after
closing its tabs is not refused for streams that are already gone. The remaining window, a hang-up the
transport has seen but not yet reported, is covered where it matters: before a per-session or
per-subject refusal, the few streams of that key (at most its limit) are checked.

One clock task serves every connection: each tick it heartbeats one slice of the streams (so a
heartbeat wave never wakes every connection at once); once a second it closes streams whose
client went away or whose token expired; during a drain it closes the next share of streams so
clients move to other replicas gradually.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import Sequence
from typing import Protocol

from consumers.hub import Hub
from gateway import metrics
from gateway.edge.errors import StreamRefused
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.admission.registry")

TICK_SECONDS = 0.25
_PER_KEY = frozenset({"per_session", "per_subject"})
_SMALL = 16  # a key's tickets are a list up to this many (the common case: a few bytes each), then a set


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

    __slots__ = ("address", "released", "session_key", "stream", "subject_key", "tenant", "waiting")

    def __init__(
        self, subject_key: str, session_key: str, waiting: bool, tenant: str | None = None, address: str | None = None
    ) -> None:
        self.subject_key = subject_key
        self.session_key = session_key
        self.waiting = waiting
        self.tenant = tenant  # the waiting share's key; None: no per-tenant share (no tenant claim configured)
        self.address = address  # the waiting share's key; None: no per-address share (see ClientAddresses)
        self.released = False
        self.stream: OpenStream | None = None

    @classmethod
    def uncounted(cls) -> Ticket:
        """For a request no limit applies to (a draining replica's state and end of stream)."""
        ticket = cls("", "", False)
        ticket.released = True
        return ticket


Held = list[Ticket] | set[Ticket]


class ClientAddresses:
    """Which client address a connection counts for, in the per-address shares.

    The TCP peer is the client, unless it is a trusted proxy (``GATEWAY_TRUSTED_PROXIES``, loopback by
    default, as uvicorn's own proxy-header default): then the client is the right-most address of
    ``GATEWAY_CLIENT_ADDRESS_HEADER`` (X-Forwarded-For style, each proxy appends the address it was
    connected from) that is not itself a trusted proxy. Everything left of that address was written by
    the client and is ignored. A trusted proxy that names no such address (no header, only trusted
    hops, or an entry that is not an address) has no per-address share: it is one hop of the
    infrastructure, and counting every client behind it as one would throttle them all together.

    Keys: an IPv4 address as is (also when IPv4-mapped in IPv6), an IPv6 address by its /64, since
    one IPv6 client is usually given a whole /64.
    """

    MAX_HOPS = 32  # a chain longer than this names no client

    def __init__(self, trusted: Sequence[str], header: str) -> None:
        networks = [ipaddress.ip_network(network, strict=False) for network in trusted]
        self._trusted4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
        self._trusted6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
        self.header = header.strip().lower()

    def peer(self, host: str | None) -> tuple[str | None, bool]:
        """The key of a TCP peer (None when it is not an IP address) and whether it is a trusted proxy."""
        address = _ip(host) if host else None
        if address is None:
            return None, False
        return _key(address), self._is_trusted(address)

    def forwarded(self, value: str | None) -> str | None:
        """The client a trusted proxy names in the header's ``value`` (see the class docstring)."""
        if not value:
            return None
        hops = value.split(",")
        for entry in reversed(hops[-self.MAX_HOPS :]):
            address = _ip(entry.strip())
            if address is None:
                return None
            if not self._is_trusted(address):
                return _key(address)
        return None

    def client(self, host: str | None, forwarded: str | None) -> str | None:
        """The key of a request's client: its TCP peer, or the client its trusted proxy names."""
        key, trusted = self.peer(host)
        return self.forwarded(forwarded) if trusted else key

    def _is_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        networks = self._trusted4 if isinstance(address, ipaddress.IPv4Address) else self._trusted6
        return any(address in network for network in networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a proxy header or a peer name writes it: plain, ``v4:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class ConnectionRegistry:
    def __init__(self, settings: GatewaySettings, hub: Hub) -> None:
        self._settings = settings
        self._hub = hub
        self._slot_count = max(1, math.ceil(settings.heartbeat_interval / TICK_SECONDS))
        self._slots: list[set[OpenStream]] = [set() for _ in range(self._slot_count)]
        self._next_slot = 0
        # The tickets of each key (never more than its limit: refused beyond).
        self._per_session: dict[str, Held] = {}
        self._per_subject: dict[str, Held] = {}
        self._subject_limit = settings.max_connections_per_subject  # 0: off, and subjects are not tracked
        self._tenant_share = settings.waiting_per_tenant if settings.tenant_claim else 0
        self._address_share = settings.waiting_per_address
        self._waiting_per_tenant: dict[str, int] = {}
        self._waiting_per_address: dict[str, int] = {}
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

    def reserve(
        self, tenant: str, subject: str, session_id: str, *, waiting: bool, address: str | None = None
    ) -> Ticket:
        """Counts a request against every limit, or raises ``StreamRefused``; O(1) (O(limit) to refuse)."""
        ticket = Ticket(
            f"{tenant}\x00{subject}",
            f"{tenant}\x00{session_id}",
            waiting,
            tenant if self._tenant_share else None,
            address,
        )
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
        if len(self._per_session.get(ticket.session_key, ())) >= settings.max_connections_per_session:
            return StreamRefused(429, "Too many open streams for this session", {"Retry-After": "10"}, "per_session")
        return None

    def _drop_disconnected(self, reason: str, ticket: Ticket) -> int:
        """Closes the streams of the refused key whose client is already gone; how many it closed."""
        holders = self._per_session if reason == "per_session" else self._per_subject
        key = ticket.session_key if reason == "per_session" else ticket.subject_key
        gone = [
            held.stream
            for held in holders.get(key, ())
            if held.stream is not None and held.stream.close_reason is None and held.stream.disconnected()
        ]
        for stream in gone:
            stream.close("client_disconnected")
        return len(gone)

    def add(self, subscriber: OpenStream, ticket: Ticket | None = None) -> None:
        if ticket is not None and not ticket.released:
            ticket.stream = subscriber
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
