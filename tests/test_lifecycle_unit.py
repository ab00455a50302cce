"""Stream lifecycle logic that a real gateway process cannot reach on demand (see ``test_lifecycle``).

The slow-client cut needs a write the peer does not take, which one SSE stream over loopback never
reaches (at most three events plus heartbeats, and the kernel absorbs megabytes). So the stream runs
here against a ``StreamChannel`` whose bytes stay pending.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from consumers.progress import PartitionProgress
from consumers.store import Transition
from gateway.streams.sse import HEARTBEAT, EventPosition, event_id, parse_event_id
from gateway.streams.stream import NativeStream
from schemas import SessionStatus


def slow_client_cuts() -> float:
    return REGISTRY.get_sample_value("gateway_slow_client_disconnects_total") or 0.0


class RecordingChannel:
    """A ``StreamChannel`` whose peer takes nothing until ``drain()``."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.pending = 0
        self.ended = False
        self.aborted = False

    def write_event(self, data: bytes) -> None:
        self.written.append(data)
        self.pending += len(data)

    def end(self, last: bytes = b"") -> None:
        if last:
            self.write_event(last)
        self.ended = True

    def abort(self) -> None:
        self.aborted = True

    def pending_bytes(self) -> int:
        return self.pending

    def buffered_bytes(self) -> int:
        return self.pending

    def is_closing(self) -> bool:
        return self.ended or self.aborted

    def drain(self) -> None:
        self.pending = 0


def native_stream(max_buffered: int = 1024) -> tuple[RecordingChannel, NativeStream, list[str]]:
    channel = RecordingChannel()
    closed: list[str] = []
    stream = NativeStream(channel, "session", float("inf"), max_buffered, lambda _, reason: closed.append(reason))
    return channel, stream, closed


def test_native_stream_writes_each_event_at_once_and_ends_after_a_terminal_one() -> None:
    channel, stream, closed = native_stream()
    stream.queue(b"retry: 3000\n\n", is_event=False)
    stream.deliver(b"first", 0, False)
    stream.heartbeat()
    stream.deliver(b"last", 0, True)
    assert channel.written == [b"retry: 3000\n\n", b"first", HEARTBEAT, b"last"]
    assert channel.ended and not channel.aborted
    assert closed == ["terminal"]
    stream.deliver(b"after", 0, False)
    stream.heartbeat()
    assert channel.written[-1] == b"last", "nothing is written after the end"


def test_native_stream_is_cut_when_the_peer_stops_taking_bytes() -> None:
    before = slow_client_cuts()
    channel, stream, closed = native_stream(max_buffered=10_000)
    stream.deliver(b"x" * 100, 0, False)
    assert not stream.stalled(), "first check: bytes pending, nothing to compare with yet"
    channel.drain()
    stream.deliver(b"y" * 100, 0, False)
    assert not stream.stalled(), "the peer took bytes since the last check"
    assert stream.stalled(), "pending at two checks in a row with nothing drained"
    stream.cut_slow_client()
    assert channel.aborted and closed == ["slow_client"]
    assert slow_client_cuts() - before == 1


def test_native_stream_over_its_buffer_bound_is_cut_at_the_next_event() -> None:
    channel, stream, closed = native_stream(max_buffered=250)
    stream.deliver(b"x" * 200, 0, False)
    assert closed == []
    stream.deliver(b"x" * 100, 0, False)
    assert closed == ["slow_client"] and channel.aborted


@pytest.mark.parametrize("reason", ["draining", "token_expired", "session_deleted"])
def test_native_stream_close_ends_the_response_normally(reason: str) -> None:
    channel, stream, closed = native_stream()
    stream.close(reason)
    stream.close("again")
    assert channel.ended and not channel.aborted
    assert closed == [reason]


async def test_resume_wait_that_times_out_leaves_no_waiter_behind() -> None:
    progress = PartitionProgress()
    progress.advance(0, 5)
    for _ in range(100):
        assert not await progress.wait_for(0, 1_000_000, 0.001)
    assert sum(len(waiters) for waiters in progress._waiters.values()) == 0


async def test_resume_wait_returns_once_the_position_is_consumed() -> None:
    progress = PartitionProgress()
    progress.advance(0, 5)
    assert await progress.wait_for(0, 4, 0.01)  # already consumed
    waiting = asyncio.create_task(progress.wait_for(0, 7, 1.0))
    await asyncio.sleep(0)
    progress.advance(0, 7)  # offset 7 not consumed yet: position 7 is the next record to read
    # advance() wakes a waiter at once (it resolves its future); this one is still waiting.
    assert [future.done() for _, future in progress._waiters[0]] == [False]
    assert not waiting.done()
    progress.advance(0, 8)
    assert await asyncio.wait_for(waiting, 1.0)


@pytest.mark.parametrize(
    ("status", "expected"),
    [("active", "2-41"), ("fetched", "2-41"), ("completed", "2-41-end"), ("expired", "2-41-end")],
)
def test_event_id_round_trips(status: str, expected: str) -> None:
    transition = Transition("s", SessionStatus(status), 0, 2, 41)
    assert event_id(transition) == expected
    assert parse_event_id(expected) == EventPosition(2, 41, transition.is_terminal)
    assert parse_event_id(f"  {expected}\n") == EventPosition(2, 41, transition.is_terminal)


MALFORMED = [None, "", " ", "garbage", "0-", "-1", "0--1", "1-2-3", "0-5-END", "0-5-end-x", "0:5", "0-0x10", "0 - 5"]


@pytest.mark.parametrize("value", [*MALFORMED, "1" * 10 + "-1", "0-" + "9" * 20])
def test_malformed_event_ids_are_absent(value: str | None) -> None:
    assert parse_event_id(value) is None


@pytest.mark.parametrize("value", [f"0-{2**63}", "0-" + "9" * 19, "\u0663-\u0663"])
def test_ids_that_cannot_be_kafka_positions_are_absent(value: str) -> None:
    assert parse_event_id(value) is None
