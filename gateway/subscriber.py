"""One open SSE stream: a bounded buffer of encoded events and the loop that writes it out.

No task or timer of its own: the hub and the shared clock append to the buffer and wake the
connection's request coroutine through a single future. A client that stops reading is cut (it
resumes with Last-Event-ID), so a stalled browser neither grows memory nor delays anyone else:
- when more than ``max_buffered_bytes`` wait in our buffer while uvicorn's transport is paused;
- or, since a status stream carries a few hundred bytes and the kernel would absorb megabytes
  before uvicorn ever pauses, when bytes are pending towards the peer (transport buffer plus the
  socket's unsent/unacknowledged queue) at two heartbeat checks in a row and none of them drained
  in between: the peer's receive window is closed, or the peer is gone without a FIN.

Under uvicorn the connection's transport is reachable from ``send`` (a bound method of uvicorn's
request cycle). Then a disconnect is noticed by the shared clock (``transport.is_closing()``), and
a stalled client is cut with ``transport.abort()``. Portable ASGI would need a task per connection
awaiting ``receive()``; that task costs about 2 KB per stream (measured with tracemalloc), a sixth
of the whole budget, so it is only the fallback for other servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from typing import Any

try:  # Linux: bytes in a socket's send queue not yet acknowledged by the peer
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - other platforms rely on the buffer bound
    _OUTQ = None

from starlette.types import Send

from gateway import metrics
from gateway.sse import HEARTBEAT

# Reasons after which nothing more is written, not even what is buffered.
_ABORT_REASONS = frozenset({"slow_client", "client_disconnected"})


class StreamSubscriber:
    __slots__ = (
        "__weakref__",
        "_buffer",
        "_buffered",
        "_seen_pending",
        "_seen_written",
        "_send",
        "_stamps",
        "_task",
        "_waiter",
        "close_reason",
        "direct",
        "end_after_flush",
        "expires_at",
        "last_write",
        "max_buffered",
        "session_id",
        "slot",
        "subject",
        "transport",
        "writing",
        "written",
    )

    def __init__(self, session_id: str, subject: str, expires_at: float, max_buffered: int, send: Send) -> None:
        self.session_id = session_id
        self.subject = subject
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
        self.transport: Any = transport_of(send)
        self.written = 0
        self.direct = False
        self._seen_pending = 0
        self._seen_written = 0

    # Called by the hub (consumers) -------------------------------------------------------------
    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        if self.close_reason is not None:
            return
        if self._write_direct(frame):
            now_ms = time.time() * 1000
            metrics.DELIVERY_DELAY.observe(max(0.0, now_ms - record_timestamp_ms) / 1000)
            metrics.EVENTS_DELIVERED.inc()
            if terminal:
                self.end_after_flush = True
                self._wake()
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
        if not self._buffer and not self.writing and self.close_reason is None and not self._write_direct(HEARTBEAT):
            self._buffer.append(HEARTBEAT)
            self._stamps.append(-1)
            self._wake()

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            if self.writing:
                # uvicorn's send only yields while the transport is paused: the peer is not reading.
                self._abort_connection()
            self._wake()

    async def run(self) -> str:
        """Writes events until the stream ends; returns why it ended."""
        send = self._send
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer and self.close_reason is None:
                waiter = self._waiter = loop.create_future()
                await waiter
                self._waiter = None
            if self.close_reason in _ABORT_REASONS or (self.close_reason and not self._buffer):
                return self.close_reason or "closed"
            if not self._buffer:
                if self.end_after_flush:  # the terminal event went out by a direct write
                    return "terminal"
                continue
            buffer, stamps = self._buffer, self._stamps
            self._buffer, self._stamps, self._buffered = [], [], 0
            body = b"".join(buffer)
            self.written += len(body)
            self.writing = True
            try:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            except asyncio.CancelledError:
                # Fallback for servers whose transport we cannot abort: the task was cancelled instead.
                if self.close_reason == "slow_client" and self._task is not None:
                    self._task.uncancel()
                    return self.close_reason
                raise
            finally:
                self.writing = False
            self.last_write = time.monotonic()
            self._observe(stamps)
            if self.end_after_flush and not self._buffer:
                return "terminal"

    @staticmethod
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

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cut_slow_client(self) -> None:
        if self.close_reason is None:
            metrics.SLOW_CLIENT_DISCONNECTS.inc()
            self.close("slow_client")
            self._abort_connection()

    def stalled(self) -> bool:
        """True when bytes were pending at the previous check and none drained since (see module doc)."""
        pending = pending_bytes(self.transport)
        drained = self._seen_pending + (self.written - self._seen_written) - pending
        stalled = pending > 0 and self._seen_pending > 0 and drained <= 0
        self._seen_pending, self._seen_written = pending, self.written
        return stalled or pending + self._buffered > self.max_buffered

    def enable_direct_writes(self) -> None:
        """Allows ``_write_direct`` once uvicorn has started a chunked response on this connection."""
        cycle = getattr(self._send, "__self__", None)
        self.direct = self.transport is not None and getattr(cycle, "chunked_encoding", None) is True

    def _write_direct(self, frame: bytes) -> bool:
        """Writes one event straight to an idle, writable connection, as the chunk uvicorn would write.

        Waking the stream's coroutine to pass the same bytes through uvicorn's ``send`` costs several
        times more than the write itself; with thousands of subscribers per event that is the whole
        budget (see benchmarks/README.md). Only when nothing else is queued, so order is kept, and only
        under uvicorn with chunked encoding; otherwise the event takes the coroutine path.
        """
        transport = self.transport
        if (
            not self.direct
            or self._buffer
            or self.writing
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(frame), frame))
        self.written += len(frame)
        self.last_write = time.monotonic()
        return True

    def disconnected(self) -> bool:
        transport = self.transport
        return transport is not None and transport.is_closing()

    def _abort_connection(self) -> None:
        """Drops a stalled connection at once (a close would wait for its full send buffer to drain)."""
        if self.transport is not None:
            self.transport.abort()
        elif self._task is not None:
            self._task.cancel()


def pending_bytes(transport: Any) -> int:
    """Bytes written but not yet taken by the peer: transport buffer plus the socket's send queue."""
    if transport is None:
        return 0
    pending: int = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None and _OUTQ is not None:
        with contextlib.suppress(OSError, ValueError):
            pending += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
    return pending


def transport_of(send: Send) -> Any:
    """The asyncio transport behind uvicorn's ``send``, or None under another server."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort") and hasattr(transport, "is_closing"):
        return transport
    return None
