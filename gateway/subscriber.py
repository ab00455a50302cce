"""One open SSE stream on the portable ASGI path: a bounded buffer of encoded events and the loop that sends it.

This is how a stream runs under any ASGI server (and under uvicorn with ``GATEWAY_HTTP_ENGINE=asgi``):
the hub and the shared clock append to the buffer and wake the request's coroutine through one
future; a second task per stream waits for ``http.disconnect``. It needs nothing of the server
beyond the ASGI specification. The native engine (``gateway.native_stream`` behind
``gateway.uvicorn_edge``) does the same work without a coroutine per stream.

A client that stops reading is cut (it resumes with Last-Event-ID) once more than
``max_buffered_bytes`` wait in the buffer; ASGI offers no view of the socket's own queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.types import Send

from gateway import metrics
from gateway.sse import HEARTBEAT

# Reasons after which nothing more is written, not even what is buffered.
ABORT_REASONS = frozenset({"slow_client", "client_disconnected"})


def observe_delivery(record_timestamp_ms: int) -> None:
    """Counts one delivered live event and its delay from the record's timestamp."""
    metrics.DELIVERY_DELAY.observe(max(0.0, time.time() * 1000 - record_timestamp_ms) / 1000)
    metrics.EVENTS_DELIVERED.inc()


class StreamSubscriber:
    __slots__ = (
        "__weakref__",
        "_buffer",
        "_buffered",
        "_send",
        "_stamps",
        "_task",
        "_waiter",
        "close_reason",
        "end_after_flush",
        "expires_at",
        "last_write",
        "max_buffered",
        "on_close",
        "session_id",
        "slot",
        "writing",
    )

    def __init__(self, session_id: str, expires_at: float, max_buffered: int, send: Send) -> None:
        self.session_id = session_id
        self.expires_at = expires_at
        self.max_buffered = max_buffered
        self._send = send
        self._buffer: list[bytes] = []
        self._stamps: list[int] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[Any] | None = asyncio.current_task()
        self.close_reason: str | None = None
        self.end_after_flush = False
        self.writing = False
        self.last_write = time.monotonic()
        self.slot = 0
        self.on_close: Callable[[], None] | None = None

    # Called by the hub (consumers) -------------------------------------------------------------
    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        if self.close_reason is not None:
            return
        self._buffer.append(frame)
        self._stamps.append(record_timestamp_ms)
        self._buffered += len(frame)
        if terminal:
            self.end_after_flush = True
        if self._buffered > self.max_buffered:
            self.cut_slow_client()
            return
        self._wake()

    def session_deleted(self) -> None:
        self.close("session_deleted")

    # Called by the gateway -----------------------------------------------------------------------
    def queue(self, frame: bytes, is_event: bool = True) -> None:
        """Queues a frame from the gateway itself: ``retry:``, initial state or resumed transitions."""
        self._buffer.append(frame)
        self._stamps.append(0 if is_event else -1)
        self._buffered += len(frame)

    def heartbeat(self) -> None:
        if not self._buffer and not self.writing and self.close_reason is None:
            self._buffer.append(HEARTBEAT)
            self._stamps.append(-1)
            self._wake()

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self._release()
            if self.writing and self._task is not None:
                self._task.cancel()  # send() only blocks while the peer is not reading: nothing more gets through
            self._wake()

    def _release(self) -> None:
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    async def run(self) -> str:
        """Writes events until the stream ends; returns why it ended."""
        send = self._send
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer and self.close_reason is None:
                waiter = self._waiter = loop.create_future()
                await waiter
                self._waiter = None
            if self.close_reason in ABORT_REASONS or (self.close_reason and not self._buffer):
                return self.close_reason or "closed"
            if not self._buffer:
                continue
            buffer, stamps = self._buffer, self._stamps
            self._buffer, self._stamps, self._buffered = [], [], 0
            self.writing = True
            try:
                await send({"type": "http.response.body", "body": b"".join(buffer), "more_body": True})
            except asyncio.CancelledError:
                if self.close_reason is not None and self._task is not None:
                    self._task.uncancel()  # our own cancel (close() above), not the server's: public API since 3.11
                    return self.close_reason
                raise
            finally:
                self.writing = False
            self.last_write = time.monotonic()
            _observe(stamps)
            if self.end_after_flush and not self._buffer:
                self._release()
                return "terminal"

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cut_slow_client(self) -> None:
        if self.close_reason is None:
            metrics.SLOW_CLIENT_DISCONNECTS.inc()
            self.close("slow_client")

    def stalled(self) -> bool:
        return self._buffered > self.max_buffered

    def disconnected(self) -> bool:
        return False  # the disconnect watcher closes the stream itself


def _observe(stamps: list[int]) -> None:
    """Counts written events; live ones (with a Kafka timestamp) also feed the delay histogram."""
    now_ms = time.time() * 1000
    events = 0
    for stamp in stamps:
        if stamp >= 0:
            events += 1
            if stamp:
                metrics.DELIVERY_DELAY.observe(max(0.0, now_ms - stamp) / 1000)
    if events:
        metrics.EVENTS_DELIVERED.inc(events)
