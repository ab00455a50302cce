"""The HTTP edge: everything that depends on how uvicorn works inside lives in this module, and only here.

Mechanism (chosen because uvicorn's own protocol cannot be bounded from outside: it parses without a
header limit, has no deadline for a request head, and queues pipelined requests without bound):
uvicorn's supported protocol hook (``Config(http=...)``) gets ``EdgeProtocol``, our own
``asyncio.Protocol`` on httptools (the parser uvicorn itself uses). It reads each connection's request
head under hard limits (idle timeout, head deadline, header bytes, a cap on all open sockets and a
share of them per client address: the TCP peer at accept time, or for a trusted proxy's connection
the client it names, once the head is read; see ``gateway.connections.ClientAddresses``), then:

- ``GET /session/{id}/events`` on the public port is served natively: admission is the shared code
  in ``gateway.subscribe``, and the stream is written straight to the connection
  (``gateway.native_stream``): no ASGI cycle, no task or coroutine per open stream;
- anything else is handed to uvicorn's own ``HttpToolsProtocol`` for exactly one request (with
  ``connection: close``, the body bounded by its ``content-length``; more pipelined bytes are
  dropped), which runs the ASGI app (FastAPI) as usual.

What we rely on of uvicorn: the ``Config(http=callable)`` hook and the keyword arguments it calls the
protocol with, the constructor of ``HttpToolsProtocol``, and ``Server.handle_exit`` (see
``GatewayServer``). ``check_engine()`` verifies them at start-up against the versions tested; when
they do not match, or with ``GATEWAY_HTTP_ENGINE=asgi``, the gateway runs on uvicorn's stock
protocol and the portable ASGI path (``EventsEndpoint.__call__``), slower, with uvicorn's own
(weaker) limits. CI runs the stream tests on both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import struct
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from types import FrameType
from typing import Any, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import metrics
from gateway.native_stream import NativeStream
from gateway.stream_route import match
from gateway.subscribe import STREAM_HEADERS, Admission, Answer, EventsEndpoint, StreamRequest

try:  # Linux: bytes in a socket's send queue not yet acknowledged by the peer
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - other platforms rely on the buffer bound
    _OUTQ = None

log = logging.getLogger("gateway.edge")
access_log = logging.getLogger("uvicorn.access")

# The versions this module was written and tested against (pyproject pins the same ranges).
TESTED_UVICORN = ("0.54.",)
TESTED_HTTPTOOLS = ("0.6.", "0.7.", "0.8.", "0.9.")
_MAX_HANDOVER_BODY = 1024 * 1024
_LINGER_SECONDS = 2.0
_MAX_TRAILING_BYTES = 64 * 1024  # what a stream's client may send after its request before it is cut


@dataclass
class EdgeLimits:
    idle_timeout: float
    head_timeout: float
    max_header_bytes: int
    max_sockets: int
    internal_port: int
    root_path: str = ""
    access_log: bool = True


@dataclass
class EdgeState:
    """Shared by every connection of one process."""

    limits: EdgeLimits
    events: EventsEndpoint
    sockets: int = 0
    # Open public sockets per client address (``ClientAddresses``): at most ``per_address_share`` each.
    per_address: dict[str, int] = field(default_factory=dict)
    per_address_share: int = 0

    def __post_init__(self) -> None:
        if not self.per_address_share:
            self.per_address_share = self.events.settings.sockets_per_address

    def count_address(self, address: str) -> bool:
        """Counts one more socket of ``address``; False (nothing counted) when it holds its share already."""
        held = self.per_address.get(address, 0)
        if held >= self.per_address_share:
            metrics.LIMIT_REFUSALS.labels("sockets_per_address").inc()
            return False
        self.per_address[address] = held + 1
        return True

    def uncount_address(self, address: str) -> None:
        held = self.per_address.get(address, 0) - 1
        if held > 0:
            self.per_address[address] = held
        else:
            self.per_address.pop(address, None)


def check_engine() -> str | None:
    """None when the native engine can run on the installed uvicorn, else why not."""
    version = getattr(uvicorn, "__version__", "?")
    if not version.startswith(TESTED_UVICORN):
        return f"uvicorn {version} is not a tested version ({', '.join(TESTED_UVICORN)}x)"
    parser_version = getattr(httptools, "__version__", "?")
    if not parser_version.startswith(TESTED_HTTPTOOLS):
        return f"httptools {parser_version} is not a tested version"
    parameters = inspect.signature(HttpToolsProtocol.__init__).parameters
    missing = {"config", "server_state", "app_state", "_loop"} - set(parameters)
    if missing:
        return f"uvicorn's HttpToolsProtocol no longer takes {sorted(missing)}"
    if not callable(getattr(uvicorn.Server, "handle_exit", None)):
        return "uvicorn.Server.handle_exit is gone"
    return None


def _simple_response(status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode("ascii"))]
    for name, value in headers or ():
        lines.append(name + b": " + value + b"\r\n")
    if status != 204:  # a 204 carries no content-length (RFC 9110 8.6)
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"connection: close\r\n\r\n")
    lines.append(body)
    return b"".join(lines)


class EdgeProtocol(asyncio.Protocol):
    """One connection: a bounded request head, then a native stream or one request handed to uvicorn."""

    __slots__ = (
        "_address",
        "_buffer",
        "_client",
        "_counted",
        "_extra",
        "_headers",
        "_inner_left",
        "_kwargs",
        "_lingering",
        "_started",
        "_task",
        "_timer",
        "_trusted_peer",
        "_url",
        "chunked",
        "inner",
        "internal",
        "loop",
        "state",
        "stream",
        "transport",
    )

    def __init__(self, state: EdgeState, **uvicorn_kwargs: Any) -> None:
        self.state = state
        self._kwargs = uvicorn_kwargs  # what uvicorn passes to a protocol, for the handover
        self.loop = uvicorn_kwargs.get("_loop") or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None
        self.stream: NativeStream | None = None
        self.internal = False
        self.chunked = True
        self._buffer = bytearray()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._counted = False
        self._address: str | None = None  # the key this socket is counted under in the per-address share
        self._client: str | None = None  # the client address key for admission (waiting shares)
        self._trusted_peer = False
        self._lingering = False
        self._extra = 0
        self._inner_left = 0
        self._started = 0.0

    # asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        limits = self.state.limits
        sockname = transport.get_extra_info("sockname")
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) > 1 else None
        self.internal = bool(limits.internal_port) and port == limits.internal_port
        if not self.internal:  # probes and metrics must get through when the public port is full
            if self.state.sockets >= limits.max_sockets:
                metrics.LIMIT_REFUSALS.labels("max_sockets").inc()
                transport.write(_simple_response(503, headers=[(b"retry-after", b"5")]))
                transport.close()
                return
            # One client address holds at most its share of the sockets. A trusted proxy's connection is
            # counted for the client it names, once its request head is read (``_count_forwarded``).
            peer = transport.get_extra_info("peername")
            key, self._trusted_peer = self.state.events.addresses.peer(
                peer[0] if isinstance(peer, tuple) and peer else None
            )
            if key is not None and not self._trusted_peer:
                if not self.state.count_address(key):
                    transport.write(_simple_response(429, headers=[(b"retry-after", b"5")]))
                    transport.close()
                    return
                self._address = self._client = key
            self.state.sockets += 1
            self._counted = True
            metrics.OPEN_SOCKETS.inc()
        self._timer = self.loop.call_later(limits.idle_timeout, self._timed_out, "idle")

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self.inner is not None:
            self._forward(data)
            return
        if self._task is not None or self.stream is not None:
            self._extra += len(data)  # a stream's client has nothing more to say
            if self._extra > _MAX_TRAILING_BYTES and self.transport is not None:
                self.transport.abort()
            return
        if not self._buffer:
            self._rearm(self.state.limits.head_timeout, "head")
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        size = end + 4 if end >= 0 else len(self._buffer)
        if size > self.state.limits.max_header_bytes:
            metrics.EDGE_REFUSALS.labels("header_too_large").inc()
            self._refuse(431)
            return
        if end >= 0:
            self._cancel_timer()
            head, rest = bytes(self._buffer[:size]), bytes(self._buffer[size:])
            self._buffer = bytearray()
            self._on_head(head, rest)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        if self._lingering and self.transport is not None:
            self._cancel_timer()
            self.transport.close()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._counted:
            self._counted = False
            self.state.sockets -= 1
            metrics.OPEN_SOCKETS.dec()
        if self._address is not None:
            self.state.uncount_address(self._address)
            self._address = None
        if self.inner is not None:
            self.inner.connection_lost(exc)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        stream = self.stream
        if stream is not None:
            if stream.close_reason is None:
                stream.close("client_disconnected")
            # Breaks the stream <-> protocol cycle, so both are freed by reference counting at once
            # instead of by a (pausing) collection of the cyclic garbage collector.
            self.stream = None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # httptools callbacks -----------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    # The request head ---------------------------------------------------------------------------
    def _on_head(self, head: bytes, rest: bytes) -> None:
        parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(head)
            method = parser.get_method()
            version = parser.get_http_version()
            url = httptools.parse_url(self._url)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            metrics.EDGE_REFUSALS.labels("bad_request").inc()
            self._refuse(400)
            return
        if self._trusted_peer and not self._count_forwarded():
            self._refuse(429, [(b"retry-after", b"5")])
            return
        session_id = None
        if method == b"GET" and not self.internal:
            session_id = match(url.path, self.state.limits.root_path)
        if session_id is None:
            self._hand_over(head, rest)
            return
        self.chunked = version != "1.0"
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in self._headers}
        request = StreamRequest(session_id, url.query or b"", headers, self._client)
        log_target = (self._url.decode("latin-1"), version)
        self._url, self._headers = b"", []
        self._started = time.monotonic()
        self._task = self.loop.create_task(self._serve_stream(request, log_target))

    def _count_forwarded(self) -> bool:
        """A trusted proxy's request: counts the socket for the client the proxy names; False beyond its share."""
        addresses = self.state.events.addresses
        wanted = addresses.header.encode("latin-1")
        forwarded = b",".join(value for name, value in self._headers if name == wanted)
        key = addresses.forwarded(forwarded.decode("latin-1")) if forwarded else None
        if key is None:
            return True  # the proxy names no client: only the cap on all sockets applies
        if not self.state.count_address(key):
            return False
        self._address = self._client = key
        return True

    def _hand_over(self, head: bytes, rest: bytes) -> None:
        """Gives this one request to uvicorn's own protocol (which runs the ASGI app) and closes after it."""
        transport = self.transport
        assert transport is not None
        length = 0
        for name, value in self._headers:
            if name == b"transfer-encoding":
                metrics.EDGE_REFUSALS.labels("chunked_request").inc()
                self._refuse(411)
                return
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    self._refuse(400)
                    return
        if not 0 <= length <= _MAX_HANDOVER_BODY:
            self._refuse(413)
            return
        self._url, self._headers = b"", []
        inner = HttpToolsProtocol(**self._kwargs)
        self.inner = inner
        inner.connection_made(transport)
        # One request per connection: uvicorn closes after answering, and nothing pipelined is parsed.
        head = head[:-2] + b"connection: close\r\n\r\n"
        body, self._inner_left = rest[:length], length - min(length, len(rest))
        inner.data_received(head + body)

    def _forward(self, data: bytes) -> None:
        if self._inner_left > 0 and self.inner is not None:
            body = data[: self._inner_left]
            self._inner_left -= len(body)
            self.inner.data_received(body)

    # The native stream --------------------------------------------------------------------------
    async def _serve_stream(self, request: StreamRequest, log_target: tuple[str, str]) -> None:
        events = self.state.events
        result = await events.admit(request)
        del request
        transport = self.transport
        if transport is None or transport.is_closing():
            if isinstance(result, Admission):
                events.connections.release(result.ticket)
            return
        if isinstance(result, Answer):
            transport.write(_simple_response(result.status, result.body, result.headers))
            transport.close()
            self._log_access(log_target, result.status, result.reason)
            return
        self._open(result)
        self._log_access(log_target, 200)

    def _open(self, admission: Admission) -> None:
        events = self.state.events
        transport = self.transport
        assert transport is not None
        session_id, ticket = admission.snapshot.session_id, admission.ticket
        started = self._started

        def closed(stream: NativeStream, reason: str) -> None:
            events.closed(stream, session_id, ticket, reason, started)

        stream = NativeStream(
            self, session_id, events.expires_at(admission.principal), events.settings.max_buffered_bytes, closed
        )
        head = [b"HTTP/1.1 200 OK\r\n"]
        for name, value in (*STREAM_HEADERS, *admission.headers):
            head.append(name + b": " + value + b"\r\n")
        # The connection ends with the stream (clients must not pool it for another request).
        head.append(b"connection: close\r\n")
        head.append(b"transfer-encoding: chunked\r\n\r\n" if self.chunked else b"\r\n")
        transport.write(b"".join(head))
        metrics.STREAMS_OPENED.inc()
        self.stream = stream
        frames, ends = events.first_frames(admission)
        for number, frame in enumerate(frames):
            stream.queue(frame, is_event=number > 0)
        if ends:
            stream.close("terminal")
        else:
            events.register(stream, session_id, ticket)
            if events.connections.draining:
                stream.close("draining")

    # StreamChannel (gateway.native_stream) -----------------------------------------------------
    def write_event(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def end(self, last: bytes = b"") -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self.chunked:
                transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last) if last else b"0\r\n\r\n")
            elif last:
                transport.write(last)
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def buffered_bytes(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def pending_bytes(self) -> int:
        transport = self.transport
        if transport is None:
            return 0
        pending = transport.get_write_buffer_size()
        sock = transport.get_extra_info("socket")
        if sock is not None and _OUTQ is not None:
            with contextlib.suppress(OSError, ValueError):
                pending += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
        return pending

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    # Helpers ----------------------------------------------------------------------------------------
    def _refuse(self, status: int, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answers ``status`` and closes, lingering so that the client can read the answer.

        Closing at once with unread bytes from the client would send a reset, and the client's TCP
        would drop our answer; so our side is shut for writing and what the client still sends is
        discarded, for at most ``_LINGER_SECONDS``.
        """
        self._cancel_timer()
        self._buffer = bytearray()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(_simple_response(status, headers=headers))
        self._lingering = True
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = self.loop.call_later(_LINGER_SECONDS, transport.close)
        else:
            transport.close()

    def _timed_out(self, which: str) -> None:
        self._timer = None
        metrics.EDGE_REFUSALS.labels(f"{which}_timeout").inc()
        if which == "head":
            self._refuse(408)
        elif self.transport is not None:
            self.transport.close()

    def _rearm(self, delay: float, which: str) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, self._timed_out, which)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _log_access(self, target: tuple[str, str], status: int, reason: str = "") -> None:
        """The access line; a refused request's names its reason and is folded per reason (its only line)."""
        if self.state.limits.access_log and access_log.isEnabledFor(logging.INFO):
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
            if not reason:
                access_log.info('%s - "GET %s HTTP/%s" %d', client, target[0], target[1], status)
                return
            self.state.events.refusal_log.log(
                logging.INFO,
                reason,
                '%s - "GET %s HTTP/%s" %d reason=%s',
                client,
                target[0],
                target[1],
                status,
                reason,
                logger=access_log,
            )


class GatewayServer(uvicorn.Server):
    """uvicorn's server with a graceful drain on the first SIGTERM (see ``gateway.server``).

    ``handle_exit`` is uvicorn's signal hook: the first signal is only recorded (the drain runs in
    the event loop), a second one exits at once. uvicorn's own bookkeeping of captured signals (it
    re-raises them after shutdown) is skipped on purpose: after a completed drain the process exits 0.
    """

    def __init__(self, config: uvicorn.Config, drain: Any) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_signal: int | None = None
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_signal is None:
            self._drain_signal = sig  # picked up by on_tick, inside the event loop
            return
        self.should_exit = True
        self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_signal is not None and self._drain_task is None:
            self._drain_task = asyncio.create_task(self._run_drain(self._drain_signal))
        return await super().on_tick(counter)

    async def _run_drain(self, sig: int) -> None:
        await self._drain(signal.Signals(sig))
        self.should_exit = True
