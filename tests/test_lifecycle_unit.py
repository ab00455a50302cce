"""Stream lifecycle logic that a real gateway process cannot reach on demand (see ``test_lifecycle``).

The slow-client cut needs a write that uvicorn has paused (its transport holds 64 KiB the kernel
would not take), which one SSE stream never reaches (at most three events plus heartbeats); so
the subscriber runs here against a stand-in for uvicorn's request cycle whose writes stay paused
until the peer reads or the transport is aborted, as uvicorn's do.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from prometheus_client import REGISTRY

from consumers.progress import PartitionProgress
from consumers.store import Transition
from gateway.sse import EventPosition, event_id, parse_event_id
from gateway.subscriber import StreamSubscriber
from schemas import SessionStatus


class FakeTransport:
    def __init__(self, cycle: PausedCycle) -> None:
        self._cycle = cycle
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True
        self._cycle.resumed.set()  # uvicorn: connection_lost() resumes writing, so a pending send returns

    def is_closing(self) -> bool:
        return self.aborted


class PausedCycle:
    """Stands for uvicorn's request cycle while writing is paused (``send`` awaits ``flow.drain()``)."""

    def __init__(self) -> None:
        self.resumed = asyncio.Event()
        self.transport = FakeTransport(self)
        self.written: list[bytes] = []

    async def send(self, message: MutableMapping[str, Any]) -> None:
        await self.resumed.wait()
        if self.transport.aborted:
            return  # uvicorn: a send on a lost connection does nothing
        body = message.get("body", b"")
        assert isinstance(body, bytes)
        self.written.append(body)


async def writing_subscriber(max_buffered: int = 1024) -> tuple[PausedCycle, StreamSubscriber, asyncio.Task[str]]:
    """A subscriber whose first write (its initial event) is stuck in a paused transport."""
    cycle = PausedCycle()
    subscriber = StreamSubscriber("session", "subject", float("inf"), max_buffered, cycle.send)
    assert subscriber.transport is cycle.transport, "the subscriber no longer finds uvicorn's transport"
    subscriber.queue(b"id: 0-1\nevent: message\ndata: {}\n\n")
    task = asyncio.create_task(subscriber.run())
    for _ in range(10):
        await asyncio.sleep(0)
    assert subscriber.writing
    return cycle, subscriber, task


def slow_client_cuts() -> float:
    return REGISTRY.get_sample_value("gateway_slow_client_disconnects_total") or 0.0


async def test_stalled_stream_is_aborted_once_its_buffer_overflows() -> None:
    before = slow_client_cuts()
    cycle, subscriber, task = await writing_subscriber(max_buffered=1024)
    frame = b"x" * 300
    for _ in range(3):
        subscriber.deliver(frame, 0, False)
    assert subscriber.close_reason is None, "cut before the buffer was full"
    subscriber.deliver(frame, 0, False)  # 1200 bytes > 1024
    assert await asyncio.wait_for(task, 1.0) == "slow_client"
    assert cycle.transport.aborted
    assert cycle.written == [], "nothing may be written to an aborted connection"
    assert slow_client_cuts() - before == 1
    subscriber.deliver(frame, 0, True)  # later deliveries are dropped quietly
    assert subscriber.close_reason == "slow_client"


async def test_a_reader_that_resumes_in_time_gets_everything() -> None:
    cycle, subscriber, task = await writing_subscriber(max_buffered=1024)
    subscriber.deliver(b"a" * 400, 0, False)
    cycle.resumed.set()  # the client reads again
    subscriber.deliver(b"b" * 400, 0, True)
    assert await asyncio.wait_for(task, 1.0) == "terminal"
    assert not cycle.transport.aborted
    assert b"".join(cycle.written).endswith(b"a" * 400 + b"b" * 400)


@pytest.mark.parametrize("reason", ["draining", "token_expired", "session_deleted"])
async def test_close_ends_a_stream_whose_write_is_paused(reason: str) -> None:
    cycle, subscriber, task = await writing_subscriber()
    subscriber.close(reason)
    done, _ = await asyncio.wait({task}, timeout=0.5)
    cycle.transport.abort()  # let the stuck writer go, whatever happened
    await asyncio.wait_for(task, 1.0)
    assert done, f"close({reason!r}) did not end a stream stuck in a paused write"


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
    await asyncio.sleep(0.01)
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
