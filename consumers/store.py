"""In-memory materialised view: the latest state of every session and the transitions it went through.

Memory is the constraint (a replica holds every session of every partition), so a session costs one
dict entry and one ``bytes`` value: a 5-byte header (tenant index, type) followed by one 21-byte
record per applied transition (status, partition, offset, updatedAt in ms). Status only moves
forward, so a session holds at most three transitions; they are kept for resumption.

Eviction never scans the whole store: each update is appended to a coarse time bucket (16 bytes
per update) and old buckets are checked lazily against the session's real last update.
"""

from __future__ import annotations

import heapq
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from consumers.records import StatusUpdate
from schemas import STATUS_RANK, TERMINAL_STATUSES, SessionStatus, SessionType

_STATUSES: tuple[SessionStatus, ...] = tuple(SessionStatus)
_STATUS_CODE = {status: code for code, status in enumerate(_STATUSES)}
_TERMINAL_CODES = frozenset(_STATUS_CODE[s] for s in _STATUSES if s.is_terminal)
_RANK_BY_CODE = tuple(STATUS_RANK[s] for s in _STATUSES)
_TYPES: tuple[SessionType | None, ...] = (None, *SessionType)
_TYPE_CODE = {kind: code for code, kind in enumerate(_TYPES)}

_HEADER = struct.Struct("<IB")  # tenant index, type code
_TRANSITION = struct.Struct("<BIqq")  # status code, partition, offset, updatedAt ms
_H = _HEADER.size
_T = _TRANSITION.size


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    BACKWARD = "backward"
    AFTER_TERMINAL = "after_terminal"
    TENANT_CHANGED = "tenant_changed"
    DELETED = "deleted"
    UNKNOWN_DELETE = "unknown_delete"


class Transition(NamedTuple):
    session_id: str
    status: SessionStatus
    updated_ms: int
    partition: int
    offset: int

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


APPLIED = Outcome.APPLIED


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    session_id: str
    tenant_id: str
    type: SessionType | None
    transitions: tuple[Transition, ...]

    @property
    def current(self) -> Transition:
        return self.transitions[-1]


class _Bucket:
    __slots__ = ("cursor", "ids", "stamps")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.stamps = array("q")  # update time of each entry, 8 bytes apiece
        self.cursor = 0


class _Buckets:
    """Session ids grouped by the coarse time of their update (a heap of time slots).

    Entries go stale when their session is updated again; readers check an entry against the
    session's real last update instead of removing old entries eagerly.
    """

    __slots__ = ("_buckets", "_slots", "_width_ms")

    def __init__(self, width_ms: int) -> None:
        self._width_ms = max(1, width_ms)
        self._buckets: dict[int, _Bucket] = {}
        self._slots: list[int] = []

    def add(self, session_id: str, at_ms: int) -> None:
        slot = at_ms // self._width_ms
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = _Bucket()
            heapq.heappush(self._slots, slot)
        bucket.ids.append(session_id)
        bucket.stamps.append(at_ms)

    def pop_older_than(self, cutoff_ms: int) -> Iterator[tuple[str, int]]:
        """Yields (id, update time) of every bucket that ended before ``cutoff_ms`` and forgets them."""
        slots = self._slots
        while slots and (slots[0] + 1) * self._width_ms <= cutoff_ms:
            bucket = self._buckets.pop(heapq.heappop(slots))
            yield from zip(bucket.ids[bucket.cursor :], bucket.stamps[bucket.cursor :], strict=True)

    def pop_oldest(self) -> tuple[str, int] | None:
        slots = self._slots
        while slots:
            bucket = self._buckets[slots[0]]
            if bucket.cursor < len(bucket.ids):
                index = bucket.cursor
                bucket.cursor += 1
                return bucket.ids[index], bucket.stamps[index]
            del self._buckets[heapq.heappop(slots)]
        return None

    def clear(self) -> None:
        self._buckets.clear()
        self._slots.clear()


class SessionStore:
    def __init__(self, terminal_retention_ms: int, session_ttl_ms: int, max_sessions: int) -> None:
        self.terminal_retention_ms = terminal_retention_ms
        self.session_ttl_ms = session_ttl_ms
        self.max_sessions = max_sessions
        self._sessions: dict[str, bytes] = {}
        self._tenants: list[str] = []
        self._tenant_codes: dict[str, int] = {}
        self._by_update = _Buckets(max(1000, session_ttl_ms // 64))
        self._terminal = _Buckets(max(1000, terminal_retention_ms // 16))
        self.evicted = {"terminal_retention": 0, "ttl": 0, "max_sessions": 0}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def apply(self, update: StatusUpdate, partition: int, offset: int) -> tuple[Outcome, Transition | None]:
        """Applies one update; only a forward move of the status changes the store."""
        session_id, tenant_id, status, updated_ms, kind = update
        code = _STATUS_CODE[status]
        record = _TRANSITION.pack(code, partition, offset, updated_ms)
        data = self._sessions.get(session_id)
        if data is None:
            tenant = self._tenant_code(tenant_id)
            self._sessions[session_id] = _HEADER.pack(tenant, _TYPE_CODE[kind]) + record
            if len(self._sessions) > self.max_sessions:
                self._evict_for_capacity(session_id)
        else:
            if self._tenants[_HEADER.unpack_from(data)[0]] != tenant_id:
                return Outcome.TENANT_CHANGED, None
            last = data[-_T]
            if last in _TERMINAL_CODES:
                return Outcome.AFTER_TERMINAL, None
            if last == code:
                return Outcome.DUPLICATE, None
            if _RANK_BY_CODE[code] < _RANK_BY_CODE[last]:
                return Outcome.BACKWARD, None
            self._sessions[session_id] = data + record
        self._by_update.add(session_id, updated_ms)
        if code in _TERMINAL_CODES:
            self._terminal.add(session_id, updated_ms)
        return APPLIED, Transition(session_id, status, updated_ms, partition, offset)

    def delete(self, session_id: str) -> Outcome:
        if self._sessions.pop(session_id, None) is None:
            return Outcome.UNKNOWN_DELETE
        return Outcome.DELETED

    def get(self, session_id: str) -> SessionSnapshot | None:
        data = self._sessions.get(session_id)
        if data is None:
            return None
        tenant, kind = _HEADER.unpack_from(data)
        transitions = tuple(
            Transition(session_id, _STATUSES[code], updated_ms, partition, offset)
            for code, partition, offset, updated_ms in _TRANSITION.iter_unpack(data[_H:])
        )
        return SessionSnapshot(session_id, self._tenants[tenant], _TYPES[kind], transitions)

    def evict_expired(self, now_ms: int) -> list[str]:
        """Removes terminal sessions past their retention and idle sessions past the TTL."""
        evicted: list[str] = []
        cutoff = now_ms - self.terminal_retention_ms
        for session_id, _ in self._terminal.pop_older_than(cutoff):
            data = self._sessions.get(session_id)
            if data is not None and data[-_T] in _TERMINAL_CODES and self._last_ms(data) < cutoff:
                del self._sessions[session_id]
                self.evicted["terminal_retention"] += 1
                evicted.append(session_id)
        cutoff = now_ms - self.session_ttl_ms
        for session_id, _ in self._by_update.pop_older_than(cutoff):
            data = self._sessions.get(session_id)
            if data is not None and self._last_ms(data) < cutoff:
                del self._sessions[session_id]
                self.evicted["ttl"] += 1
                evicted.append(session_id)
        if not self._sessions:
            self._by_update.clear()
            self._terminal.clear()
        return evicted

    def _evict_for_capacity(self, keep: str) -> None:
        while len(self._sessions) > self.max_sessions:
            oldest = self._by_update.pop_oldest()
            if oldest is None:
                return
            victim, at_ms = oldest
            data = self._sessions.get(victim)
            # An entry is stale when its session was updated again since: that update has its own entry.
            if victim != keep and data is not None and self._last_ms(data) == at_ms:
                del self._sessions[victim]
                self.evicted["max_sessions"] += 1

    def _tenant_code(self, tenant_id: str) -> int:
        code = self._tenant_codes.get(tenant_id)
        if code is None:
            code = self._tenant_codes[tenant_id] = len(self._tenants)
            self._tenants.append(tenant_id)
        return code

    @staticmethod
    def _last_ms(data: bytes) -> int:
        updated_ms: int = _TRANSITION.unpack_from(data, len(data) - _T)[3]
        return updated_ms
