"""A tenant stream (``GET /tenant/events``): its opening frames and its live subscriber.

The stream itself is the session streams' ``NativeStream`` (heartbeats, slow clients, token expiry and
drain come with it); ``TenantFeed`` sits between it and the hub, keeps the stream's cursor
(``gateway.streams.cursor``) and writes each transition, and each deletion of a session (``event: deleted``),
with the cursor as its event id. It never ends the stream on a terminal status: a tenant's view outlives its
sessions.

The opening (``opening``) is the tenant's sessions' current states, or after a ``Last-Event-ID`` the
transitions the cursor has not seen, sorted by partition and offset so that every event's id is exact
for the events before it (a client cut off half-way resumes without loss or duplicates). Beyond the
snapshot bound the most recently updated are sent and one ``truncated`` event, ahead of them, says how
many were left out. See docs/http-api.md (Tenant stream).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from sse_starlette import ServerSentEvent

from consumers.store import SessionSnapshot, Transition
from gateway.streams.cursor import encode_cursor
from gateway.streams.sse import encode_payload, json_data
from gateway.streams.stream import NativeStream
from schemas import SessionStatus

Statuses = frozenset[SessionStatus] | None  # None: every status


def encode_event(transition: Transition, cursor: dict[int, int]) -> bytes:
    data = encode_payload(transition)
    return ServerSentEvent(data=data, event="message", id=encode_cursor(cursor), sep="\n").encode()


def encode_deleted(session_id: str, cursor: dict[int, int]) -> bytes:
    """A tombstone deleted one of the tenant's sessions: ``event: deleted``, ``{"id"}``."""
    return ServerSentEvent(
        data=json_data({"id": session_id}), event="deleted", id=encode_cursor(cursor), sep="\n"
    ).encode()


def encode_truncated(left_out: int, sent: int, cursor: dict[int, int] | None) -> bytes:
    """Sent before the opening's events, with the id the client had (none for a snapshot): a client cut off
    during the opening hears it again when it resumes."""
    data = orjson.dumps({"leftOut": left_out, "sent": sent}).decode()
    event_id = None if cursor is None else encode_cursor(cursor)
    return ServerSentEvent(data=data, event="truncated", id=event_id, sep="\n").encode()


@dataclass(frozen=True, slots=True)
class Opening:
    """What a tenant stream starts with: the events, how many were left out, and the cursor after them."""

    frames: list[bytes]
    sent: int
    left_out: int
    cursor: dict[int, int]


def opening(
    sessions: Iterable[SessionSnapshot], seen: dict[int, int] | None, statuses: Statuses, limit: int
) -> Opening:
    """The snapshot (``seen`` is None) or what a resuming client missed, at most ``limit`` events.

    ``sessions`` come least recently updated first (``SessionStore.tenant_sessions``); the cursor after
    the opening covers every transition of every session, filtered out or left out included, so that
    neither comes back on a resume.
    """
    final = dict(seen or {})
    candidates: list[Transition] = []
    for snapshot in sessions:
        for transition in snapshot.transitions:
            if final.get(transition.partition, -1) < transition.offset:
                final[transition.partition] = transition.offset
        if seen is None:
            wanted: Iterable[Transition] = (snapshot.current,)
        else:
            wanted = (t for t in snapshot.transitions if t.offset > seen.get(t.partition, -1))
        candidates.extend(t for t in wanted if statuses is None or t.status in statuses)
    left_out = max(0, len(candidates) - limit)
    chosen = sorted(candidates[left_out:], key=lambda t: (t.partition, t.offset))
    frames = [encode_truncated(left_out, len(chosen), seen)] if left_out else []
    cursor = dict(seen or {})
    current_partition = -1
    for transition in chosen:
        if transition.partition != current_partition:
            if current_partition >= 0:
                cursor[current_partition] = final[current_partition]
            current_partition = transition.partition
        cursor[current_partition] = transition.offset
        frames.append(encode_event(transition, cursor))
    return Opening(frames, len(chosen), left_out, final)


class TenantFeed:
    """The hub's tenant subscriber of one tenant stream: advances its cursor, writes what its filter keeps."""

    __slots__ = ("cursor", "statuses", "stream", "tenant_id")

    def __init__(self, stream: NativeStream, tenant_id: str, cursor: dict[int, int], statuses: Statuses) -> None:
        self.stream = stream
        self.tenant_id = tenant_id
        self.cursor = cursor
        self.statuses = statuses

    def transition(self, transition: Transition, record_timestamp_ms: int) -> None:
        cursor = self.cursor
        if cursor.get(transition.partition, -1) >= transition.offset:
            return  # already reflected by the opening
        cursor[transition.partition] = transition.offset
        statuses = self.statuses
        if statuses is not None and transition.status not in statuses:
            return
        self.stream.deliver(encode_event(transition, cursor), record_timestamp_ms, False)

    def deleted(self, session_id: str, partition: int, offset: int, record_timestamp_ms: int) -> None:
        """Whatever the status filter: a client's list must lose the session."""
        cursor = self.cursor
        if cursor.get(partition, -1) >= offset:
            return  # (a resumed opening already covers this position)
        cursor[partition] = offset
        self.stream.deliver(encode_deleted(session_id, cursor), record_timestamp_ms, False)

    def close(self, reason: str) -> None:
        self.stream.close(reason)
