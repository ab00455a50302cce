"""In-memory materialised view: the latest state of every session and the transitions it went through.

Memory is the constraint (a replica holds every session of every partition), so a session costs one
dict entry and one ``bytes`` value: a 5-byte header (tenant index, type) followed by one 21-byte
record per applied transition (status, partition, offset, updatedAt in ms). Status only moves
forward, so a session holds at most three transitions; they are kept for resumption.

Eviction keeps no per-update index: the session dict itself is kept in the order of the last applied
update (an update re-inserts its session at the end), and terminal sessions are listed in the order
they ended. A sweep reads both from the front and looks past live entries for a bounded distance, so
an update that arrived out of order is found too. Whatever a sweep has not reached yet is never
served: ``get`` checks the TTL and the terminal retention itself. Removing a session removes every
trace of it (its entries and, with its last session, its tenant's code), and the dicts are rebuilt
when they shrink a lot, so memory follows the live sessions down after a flood.

Record order cannot defeat the sweep: for expiry, a session's last update counts from its
``updatedAt`` but never from later than its arrival plus ``MAX_CLOCK_SKEW_MS`` (a producer whose
clock or data is ahead). Every entry ahead of a session in either dict arrived no later than it did,
so each expires by that session's arrival plus the skew plus the TTL (or retention); from then on
the sweep finds nothing live ahead of it. So every session is swept by the first sweep after its
last update's arrival + ``MAX_CLOCK_SKEW_MS`` + its TTL or retention, whatever the records' dates.
The clamped time costs 8 bytes, only for a session whose last update was dated beyond the skew
(a flag in the header's type byte says it follows the header); ``updatedAt`` itself is kept as sent.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import NamedTuple

from consumers.records import StatusUpdate
from consumers.tenant_codes import TenantCodes
from schemas import STATUS_RANK, TERMINAL_STATUSES, SessionStatus, SessionType

_STATUSES: tuple[SessionStatus, ...] = tuple(SessionStatus)
_STATUS_CODE = {status: code for code, status in enumerate(_STATUSES)}
_TERMINAL_CODES = frozenset(_STATUS_CODE[s] for s in _STATUSES if s.is_terminal)
_RANK_BY_CODE = tuple(STATUS_RANK[s] for s in _STATUSES)
_TYPES: tuple[SessionType | None, ...] = (None, *SessionType)
_TYPE_CODE = {kind: code for code, kind in enumerate(_TYPES)}

_HEADER = struct.Struct("<IB")  # tenant index, type code (| _CLAMPED)
_TRANSITION = struct.Struct("<BIqq")  # status code, partition, offset, updatedAt ms
_FIRST = struct.Struct("<IBBIqq")  # a new session's bytes in one pack: _HEADER then _TRANSITION (no padding)
_EXPIRY = struct.Struct("<q")  # after the header when _CLAMPED: the time the last update counts from, ms
_H = _HEADER.size
_T = _TRANSITION.size
_TYPE_AT = 4  # the type code's byte in the header
_CLAMPED = 0x80  # in the type code: the last update was dated beyond the skew, its expiry time follows
_CLAMPED_START = _H + _EXPIRY.size

# For expiry, an update counts from its updatedAt but from no later than its arrival plus this (see above).
MAX_CLOCK_SKEW_MS = 30_000

# How many live entries a sweep reads past, looking for expired ones that arrived out of order.
SWEEP_LOOKAHEAD = 1024
# Sessions evicted at once when the store is over capacity (one pass over the dict's front).
_CAPACITY_BATCH_DIVISOR = 1000
# A dict is rebuilt (compacted) when it holds fewer than this fraction of its peak entries.
_SHRINK_FACTOR = 4
_SHRINK_MIN_PEAK = 4096


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    BACKWARD = "backward"
    AFTER_TERMINAL = "after_terminal"
    TENANT_CHANGED = "tenant_changed"
    DELETED = "deleted"
    UNKNOWN_DELETE = "unknown_delete"
    STALE = "stale"  # a new session whose update is already past its TTL or retention


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
_new_tuple = tuple.__new__  # a NamedTuple built from a tuple, without its Python-level __new__


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    session_id: str
    tenant_id: str
    type: SessionType | None
    transitions: tuple[Transition, ...]

    @property
    def current(self) -> Transition:
        return self.transitions[-1]


class SessionStore:
    def __init__(
        self,
        terminal_retention_ms: int,
        session_ttl_ms: int,
        max_sessions: int,
        clock: Callable[[], int] = wall_clock_ms,
        max_clock_skew_ms: int = MAX_CLOCK_SKEW_MS,
    ) -> None:
        self.terminal_retention_ms = terminal_retention_ms
        self.session_ttl_ms = session_ttl_ms
        self.max_sessions = max_sessions
        self.clock = clock
        self.max_clock_skew_ms = max_clock_skew_ms
        self._sessions: dict[str, bytes] = {}  # in the order of the last applied update
        self._terminal: dict[str, None] = {}  # terminal sessions, in the order they ended
        self._peak = 0
        self._terminal_peak = 0
        self._tenants = TenantCodes()
        self.evicted = {"terminal_retention": 0, "ttl": 0, "max_sessions": 0}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    @property
    def tenant_count(self) -> int:
        return len(self._tenants)

    def apply(
        self, update: StatusUpdate, partition: int, offset: int, now_ms: int | None = None
    ) -> tuple[Outcome, Transition | None]:
        """Applies one update; only a forward move of the status changes the store.

        The replay's hot path (docs/operations.md, "Start-up"): a new session, the common case, is one dict
        look-up, one ``struct`` pack of its header and first transition, and one insert.
        """
        session_id, tenant_id, status, updated_ms, kind = update
        code = _STATUS_CODE[status]
        sessions = self._sessions
        data = sessions.get(session_id)
        if now_ms is None:
            now_ms = self.clock()
        if data is None:
            terminal = code in _TERMINAL_CODES
            if updated_ms < now_ms - (self.terminal_retention_ms if terminal else self.session_ttl_ms):
                return Outcome.STALE, None
            latest = now_ms + self.max_clock_skew_ms  # the latest time an update may count from for expiry
            tenant = self._tenants.acquire(tenant_id)
            if updated_ms > latest:
                sessions[session_id] = (
                    _HEADER.pack(tenant, _TYPE_CODE[kind] | _CLAMPED)
                    + _EXPIRY.pack(latest)
                    + _TRANSITION.pack(code, partition, offset, updated_ms)
                )
            else:
                sessions[session_id] = _FIRST.pack(tenant, _TYPE_CODE[kind], code, partition, offset, updated_ms)
            count = len(sessions)
            if count > self._peak:  # noqa: PLR1730 (no call to max(): the replay's hot path)
                self._peak = count
            if count > self.max_sessions:
                self._evict_for_capacity(session_id)
        else:
            if self._tenants.names[_HEADER.unpack_from(data)[0]] != tenant_id:
                return Outcome.TENANT_CHANGED, None
            last = data[-_T]
            if last in _TERMINAL_CODES:
                return Outcome.AFTER_TERMINAL, None
            if last == code:
                return Outcome.DUPLICATE, None
            if _RANK_BY_CODE[code] < _RANK_BY_CODE[last]:
                return Outcome.BACKWARD, None
            terminal = code in _TERMINAL_CODES
            del sessions[session_id]  # re-inserted at the end: the dict stays in update order
            latest = now_ms + self.max_clock_skew_ms
            if updated_ms > latest or data[_TYPE_AT] & _CLAMPED:
                data = _restamp(data, latest if updated_ms > latest else None)
            sessions[session_id] = data + _TRANSITION.pack(code, partition, offset, updated_ms)
        if terminal:
            self._terminal[session_id] = None
            self._terminal_peak = max(self._terminal_peak, len(self._terminal))
        return APPLIED, _new_tuple(Transition, (session_id, status, updated_ms, partition, offset))

    def tenant_of(self, session_id: str) -> str | None:
        """The tenant of a held session (expired or not), else None."""
        data = self._sessions.get(session_id)
        return None if data is None else self._tenants.names[_HEADER.unpack_from(data)[0]]

    def delete(self, session_id: str) -> Outcome:
        data = self._sessions.get(session_id)
        if data is None:
            return Outcome.UNKNOWN_DELETE
        self._remove(session_id, data)
        return Outcome.DELETED

    def get(self, session_id: str, now_ms: int | None = None) -> SessionSnapshot | None:
        """The session as a client may see it; one past its TTL or retention is gone, swept or not."""
        data = self._sessions.get(session_id)
        if data is None or self._expired(data, self.clock() if now_ms is None else now_ms):
            return None
        tenant, kind = _HEADER.unpack_from(data)
        start = _H
        if kind & _CLAMPED:
            kind ^= _CLAMPED
            start = _CLAMPED_START
        transitions = tuple(
            Transition(session_id, _STATUSES[code], updated_ms, partition, offset)
            for code, partition, offset, updated_ms in _TRANSITION.iter_unpack(data[start:])
        )
        return SessionSnapshot(session_id, self._tenants.names[tenant], _TYPES[kind], transitions)

    def tenant_sessions(self, tenant_id: str, now_ms: int | None = None) -> list[SessionSnapshot]:
        """The tenant's sessions a client may see, least recently updated first (a tenant stream's snapshot).

        One pass over the store comparing a 4-byte prefix per session: no per-tenant index is kept, so a
        session costs no more memory; a tenant stream pays this once when it opens (docs/http-api.md).
        """
        code = self._tenants.codes.get(tenant_id)
        if code is None:
            return []
        prefix = code.to_bytes(4, "little")
        now_ms = self.clock() if now_ms is None else now_ms
        found = [session_id for session_id, data in self._sessions.items() if data.startswith(prefix)]
        return [snapshot for session_id in found if (snapshot := self.get(session_id, now_ms)) is not None]

    def evict_expired(self, now_ms: int) -> list[str]:
        """Removes terminal sessions past their retention and idle sessions past the TTL."""
        evicted: list[str] = []
        sessions = self._sessions
        cutoff = now_ms - self.terminal_retention_ms
        for session_id in self._expired_front(self._terminal, cutoff):
            self._remove(session_id, sessions[session_id])
            self.evicted["terminal_retention"] += 1
            evicted.append(session_id)
        cutoff = now_ms - self.session_ttl_ms
        for session_id in self._expired_front(sessions, cutoff):
            self._remove(session_id, sessions[session_id])
            self.evicted["ttl"] += 1
            evicted.append(session_id)
        self._compact()
        return evicted

    def _expired_front(self, ordered: dict[str, bytes] | dict[str, None], cutoff_ms: int) -> list[str]:
        """Expired sessions near the front of ``ordered``, reading past at most SWEEP_LOOKAHEAD live ones."""
        sessions = self._sessions
        expired: list[str] = []
        live = 0
        for session_id in ordered:
            if _counts_from(sessions[session_id]) < cutoff_ms:
                expired.append(session_id)
            else:
                live += 1
                if live > SWEEP_LOOKAHEAD:
                    break
        return expired

    def _expired(self, data: bytes, now_ms: int) -> bool:
        ttl = self.terminal_retention_ms if data[-_T] in _TERMINAL_CODES else self.session_ttl_ms
        return _counts_from(data) < now_ms - ttl

    def _evict_for_capacity(self, keep: str) -> None:
        """Evicts the least recently updated sessions, a batch per pass over the dict's front."""
        sessions = self._sessions
        excess = len(sessions) - self.max_sessions
        batch = max(excess, self.max_sessions // _CAPACITY_BATCH_DIVISOR, 1)
        victims = [s for s in islice(sessions, batch + 1) if s != keep][: min(batch, len(sessions) - 1)]
        for victim in victims:
            self._remove(victim, sessions[victim])
            self.evicted["max_sessions"] += 1

    def _remove(self, session_id: str, data: bytes) -> None:
        del self._sessions[session_id]
        if data[-_T] in _TERMINAL_CODES:
            self._terminal.pop(session_id, None)
        self._tenants.release(_HEADER.unpack_from(data)[0])

    def _compact(self) -> None:
        """Rebuilds the dicts once they hold a fraction of their peak (a dict never shrinks by itself)."""
        if self._peak >= _SHRINK_MIN_PEAK and len(self._sessions) * _SHRINK_FACTOR < self._peak:
            self._sessions = dict(self._sessions.items())
            self._peak = len(self._sessions)
        if self._terminal_peak >= _SHRINK_MIN_PEAK and len(self._terminal) * _SHRINK_FACTOR < self._terminal_peak:
            self._terminal = dict(self._terminal.items())
            self._terminal_peak = len(self._terminal)
        if self._tenants.sparse(_SHRINK_MIN_PEAK, _SHRINK_FACTOR):
            self._renumber_tenants()

    def _renumber_tenants(self) -> None:
        """Gives the live tenants dense codes again (``TenantCodes.renumber``); one pass over the sessions."""
        remap = self._tenants.renumber()
        sessions = self._sessions
        for session_id, data in sessions.items():
            old, kind = _HEADER.unpack_from(data)
            if remap[old] != old:
                sessions[session_id] = _HEADER.pack(remap[old], kind) + data[_H:]


def _counts_from(data: bytes) -> int:
    """The time a session's last update counts from for expiry: its updatedAt, or its clamped time."""
    if data[_TYPE_AT] & _CLAMPED:
        clamped: int = _EXPIRY.unpack_from(data, _H)[0]
        return clamped
    updated_ms: int = _TRANSITION.unpack_from(data, len(data) - _T)[3]
    return updated_ms


def _restamp(data: bytes, clamped_ms: int | None) -> bytes:
    """``data`` with the clamped expiry time ``clamped_ms`` after its header, or with none."""
    tenant, kind = _HEADER.unpack_from(data)
    start = _CLAMPED_START if kind & _CLAMPED else _H
    kind &= ~_CLAMPED
    if clamped_ms is None:
        return _HEADER.pack(tenant, kind) + data[start:]
    return _HEADER.pack(tenant, kind | _CLAMPED) + _EXPIRY.pack(clamped_ms) + data[start:]
