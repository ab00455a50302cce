"""SSE wire format of a session transition, as the reference NestJS endpoint sends it.

The event id encodes the Kafka position (``partition-offset``), so any replica can resume from it,
and ends in ``-end`` for a terminal status, so a replica can answer a finished session's reconnect
with 204 even after the session left its store. With several topics, the partition of a topic other
than the first is written ``t<index>.<partition>`` (``t1.3-42``; see ``consumers.partitions``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date, timedelta

import orjson
from sse_starlette import ServerSentEvent

from consumers.partitions import MAX_PARTITION, format_partition, parse_partition
from consumers.store import Transition

HEARTBEAT = b":\n\n"
_EVENT_ID = re.compile(r"((?:t\d{1,4}\.)?\d{1,7})-(\d{1,19})(-end)?", re.ASCII)
_MAX_OFFSET = 2**63 - 1
_EPOCH_DAY = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class EventPosition:
    partition: int
    offset: int
    terminal: bool


def event_id(transition: Transition) -> str:
    suffix = "-end" if transition.is_terminal else ""
    partition = transition.partition
    where = partition if partition <= MAX_PARTITION else format_partition(partition)
    return f"{where}-{transition.offset}{suffix}"


def parse_event_id(value: str | None) -> EventPosition | None:
    """A malformed or foreign id is treated as absent."""
    if not value:
        return None
    match = _EVENT_ID.fullmatch(value.strip())
    if match is None or int(match.group(2)) > _MAX_OFFSET:
        return None
    partition = parse_partition(match.group(1))
    if partition is None:
        return None
    return EventPosition(partition, int(match.group(2)), match.group(3) is not None)


def iso_millis(updated_ms: int) -> str:
    """UTC with milliseconds and 'Z': JavaScript's ``Date.prototype.toISOString()`` form.

    Integer arithmetic (no float rounding) and a zero-padded year (``strftime`` prints year 999 as
    ``999``); the store only holds times in years 0001-9999 (see ``consumers.records``). The date part
    is computed once per day (a record's, a stream's first event's, a status read's time: issue 24).
    """
    seconds, millis = divmod(updated_ms, 1000)
    days, second = divmod(seconds, 86_400)
    minutes, second = divmod(second, 60)
    return f"{_iso_date(days)}T{minutes // 60:02d}:{minutes % 60:02d}:{second:02d}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_date(days: int) -> str:
    """``YYYY-MM-DD`` of the day ``days`` after 1970-01-01 (``date.isoformat`` pads the year to four digits)."""
    return (_EPOCH_DAY + timedelta(days=days)).isoformat()


# Line breaks that JSON leaves raw but line-splitting clients (Python's str.splitlines, some SSE
# libraries) break lines at; escaped, the data stays one line for every client and parses the same.
_UNICODE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def encode_payload(transition: Transition) -> str:
    """The event's data, ``{"id","status","updatedAt"}``: also the body of a status read (``gateway.reads``)."""
    return json_data(
        {"id": transition.session_id, "status": transition.status.value, "updatedAt": iso_millis(transition.updated_ms)}
    )


def json_data(value: dict[str, str]) -> str:
    """``value`` as an event's one-line JSON data."""
    data = orjson.dumps(value).decode()
    if not data.isascii():
        data = data.translate(_UNICODE_BREAKS)
    return data


def encode_transition(transition: Transition) -> bytes:
    return ServerSentEvent(data=encode_payload(transition), event="message", id=event_id(transition), sep="\n").encode()


def encode_retry(retry_ms: int) -> bytes:
    return f"retry: {retry_ms}\n\n".encode()
