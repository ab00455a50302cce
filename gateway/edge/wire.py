"""The outbound side of one edge connection: how bytes reach the socket, how much waits, and the close.

One ``Wire`` per connection, used by whatever answers on it: a request's answer (``gateway.edge.request``)
and a native stream, whose ``StreamChannel`` it is (``gateway.streams.stream``). Kept apart from the
connection's reading side so that the stream's hot path stays visible: one delivery is one
``write_event``, one ``transport.write``. Every answer head is framed by ``response_head``, so a stream's
head, a refusal and the app's answers differ only in what they say. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import struct
import time
from collections.abc import Iterable
from http import HTTPStatus

try:  # Linux: bytes in a socket's send queue not yet acknowledged by the peer
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - other platforms rely on the buffer bound
    _OUTQ = None

_CORK: int | None = getattr(socket, "TCP_CORK", None)

Headers = list[tuple[bytes, bytes]]
LAST_CHUNK = b"0\r\n\r\n"  # the end of a chunked body


class _Clock:
    """The ``date`` header, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, email.utils.formatdate(now, usegmt=True).encode("ascii")
        return cls.value


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def response_head(
    status: int, headers: Iterable[tuple[bytes, bytes]], *, date: bool = False, close: bool = False
) -> bytes:
    """The status line and headers of an answer, then ``date`` and ``connection: close`` when asked for."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _phrase(status))]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    if date:
        lines.append(b"date: " + _Clock.date() + b"\r\n")
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def with_length(status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> Headers:
    """``headers`` and the content-length of ``body``, which a 204 or 304 without a body does not carry
    (RFC 9110 8.6); for an answer whose whole body is known when its head is written."""
    if body or status not in (204, 304):
        return [*headers, (b"content-length", b"%d" % len(body))]
    return list(headers)


def closing_answer(status: int, body: bytes = b"", headers: Headers | None = None) -> bytes:
    """A whole answer after which the connection closes: the edge's refusals and a stream request's answer
    when it gets no stream (no ``date``, as before any stream)."""
    return response_head(status, with_length(status, headers or (), body), close=True) + body


def _cork(transport: asyncio.Transport) -> None:
    """Holds a closing socket's partial segments until it closes (Linux ``TCP_CORK``; close sends them)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)


class Wire:
    """Writes to one connection's transport, tracks whether the peer takes what is written, and closes it."""

    __slots__ = ("_corked", "_gone", "_lost", "_writable", "chunked", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.chunked = True  # a native stream's body: chunked, except towards an HTTP/1.0 client
        self._writable: asyncio.Event | None = None  # set while the transport takes writes (flow control)
        self._lost: asyncio.Future[None] | None = None
        self._gone = False
        self._corked: list[bytes] | None = None  # writes held by ``cork`` until ``uncork``

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def cork(self) -> None:
        """Holds the following writes until ``uncork``: a stream's head and first frames leave in one
        ``transport.write`` (one send, one wake-up of the client) instead of one each."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked and not self.transport.is_closing():
            self.transport.write(b"".join(corked))

    # Flow control (the protocol's pause_writing/resume_writing and connection_lost) ---------------
    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()

    def writable(self) -> bool:
        """False while the transport holds more than its high-water mark (the peer does not read)."""
        return self._writable is None or self._writable.is_set()

    async def drain(self, timeout: float) -> bool:
        """Waits until the transport takes writes again; False when that did not happen within ``timeout``."""
        if self._writable is not None and not self._writable.is_set():
            try:
                await asyncio.wait_for(self._writable.wait(), timeout)
            except TimeoutError:
                return False
        return True

    def lost(self) -> None:
        """The connection is gone: a wait for the peer to read ends (writes go nowhere), ``disconnected`` returns."""
        self._gone = True
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._writable is not None:
            self._writable.set()

    async def disconnected(self) -> None:
        """Returns once the connection is lost."""
        if not self._gone:
            if self._lost is None:
                self._lost = asyncio.get_running_loop().create_future()
            # Shielded: a waiter that is cancelled (Starlette cancels its disconnect listener when an answer
            # is complete) must not cancel the future the next request on this connection waits on.
            await asyncio.shield(self._lost)

    # StreamChannel (gateway.streams.stream): the native stream's hot path ------------------------
    def write_event(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
            return
        transport = self.transport
        if not transport.is_closing():
            transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def end(self, last: bytes = b"") -> None:
        self.uncork()
        transport = self.transport
        if not transport.is_closing():
            data = last
            if self.chunked:
                data = b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last) if last else LAST_CHUNK
            if data:
                # Corked, the last frame and the FIN leave in one segment when the socket closes (2.6 segments
                # per ended stream instead of 4.1, 24.8 µs of CPU instead of 28.8: benchmarks/fanout_path.py).
                # Only with nothing queued: a flow-controlled stream's queue drains as before.
                if _CORK is not None and not transport.get_write_buffer_size():
                    _cork(transport)
                transport.write(data)
            transport.close()

    def abort(self) -> None:
        self._corked = None
        self.transport.abort()

    def buffered_bytes(self) -> int:
        return self.transport.get_write_buffer_size()

    def pending_bytes(self) -> int:
        transport = self.transport
        pending = transport.get_write_buffer_size()
        sock = transport.get_extra_info("socket")
        if sock is not None and _OUTQ is not None:
            with contextlib.suppress(OSError, ValueError):
                pending += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
        return pending

    def is_closing(self) -> bool:
        return self.transport.is_closing()
