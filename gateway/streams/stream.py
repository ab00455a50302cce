"""One open SSE stream: events go straight to the connection, no coroutine per stream.

After the handshake a stream is this object, its ``StreamChannel`` (the connection's
``gateway.edge.wire.Wire``) and the transport: the hub writes an event with one ``write`` call, the
shared clock (``gateway.admission.registry``) writes heartbeats and checks for stalls. A client that
stops reading is cut (it resumes with Last-Event-ID): when more than ``max_buffered`` bytes wait in the
transport, or when bytes are pending towards the peer (transport buffer plus the socket's
unacknowledged queue) at two clock checks in a row and none of them drained in between (the peer's
window is closed, or it is gone without a FIN). Limits: docs/security.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from gateway import metrics
from gateway.streams.sse import HEARTBEAT

# Reasons after which nothing more is written, not even what is buffered.
ABORT_REASONS = frozenset({"slow_client", "client_disconnected"})


def observe_delivery(record_timestamp_ms: int) -> None:
    """Counts one delivered live event and its delay from the record's timestamp."""
    metrics.DELIVERY_DELAY.observe(max(0.0, time.time() * 1000 - record_timestamp_ms) / 1000)
    metrics.EVENTS_DELIVERED.inc()


class StreamChannel(Protocol):
    """How a stream reaches its client (implemented by ``gateway.edge.wire.Wire``; tests use their own)."""

    def write_event(self, data: bytes) -> None:
        """Writes one body chunk."""

    def end(self, last: bytes = b"") -> None:
        """Writes ``last`` (one body chunk, may be empty) and the end of the response in one write, then
        closes the connection once it is written."""

    def abort(self) -> None:
        """Drops the connection at once, discarding what is buffered."""

    def pending_bytes(self) -> int:
        """Bytes written but not yet taken by the peer."""

    def buffered_bytes(self) -> int:
        """Bytes waiting in our own transport buffer."""

    def is_closing(self) -> bool: ...


class NativeStream:
    __slots__ = (
        "_seen_pending",
        "_seen_written",
        "channel",
        "close_reason",
        "expires_at",
        "last_write",
        "max_buffered",
        "on_close",
        "session_id",
        "slot",
        "written",
    )

    def __init__(
        self,
        channel: StreamChannel,
        session_id: str,
        expires_at: float,
        max_buffered: int,
        on_close: Callable[[NativeStream, str], None],
    ) -> None:
        self.channel = channel
        self.session_id = session_id
        self.expires_at = expires_at
        self.max_buffered = max_buffered
        self.on_close: Callable[[NativeStream, str], None] | None = on_close
        self.close_reason: str | None = None
        self.last_write = time.monotonic()
        self.slot = 0
        self.written = 0
        self._seen_pending = 0
        self._seen_written = 0

    # Called by the hub ---------------------------------------------------------------------------
    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        if self.close_reason is not None:
            return
        if terminal:  # the last event and the end of the response go out in one write (one syscall)
            self.written += len(frame)
            observe_delivery(record_timestamp_ms)
            self.close("terminal", frame)
            return
        self._write(frame)
        observe_delivery(record_timestamp_ms)
        if self.channel.buffered_bytes() > self.max_buffered:
            self.cut_slow_client()

    def session_deleted(self) -> None:
        self.close("session_deleted")

    # Called by the gateway and the clock -------------------------------------------------------
    def queue(self, frame: bytes, is_event: bool = True) -> None:
        """Writes a frame of the gateway's own (``retry:``, initial state, resumed transitions)."""
        self._write(frame)
        if is_event:
            metrics.EVENTS_DELIVERED.inc()

    def heartbeat(self) -> None:
        if self.close_reason is None:
            self._write(HEARTBEAT)

    def _write(self, frame: bytes) -> None:
        self.channel.write_event(frame)
        self.written += len(frame)
        self.last_write = time.monotonic()

    def close(self, reason: str, last: bytes = b"") -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if reason in ABORT_REASONS:
            self.channel.abort()
        else:
            self.channel.end(last)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(self, reason)

    def cut_slow_client(self) -> None:
        if self.close_reason is None:
            metrics.SLOW_CLIENT_DISCONNECTS.inc()
            self.close("slow_client")

    def stalled(self) -> bool:
        """True when bytes were pending at the previous check and none drained since (see module doc)."""
        pending = self.channel.pending_bytes()
        drained = self._seen_pending + (self.written - self._seen_written) - pending
        stalled = pending > 0 and self._seen_pending > 0 and drained <= 0
        self._seen_pending, self._seen_written = pending, self.written
        return stalled or self.channel.buffered_bytes() > self.max_buffered

    def disconnected(self) -> bool:
        return self.channel.is_closing()
