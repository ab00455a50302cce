"""One connection of the HTTP edge: bounded request heads, then a native stream or requests one at a time.

uvicorn's own protocol cannot be bounded from outside (no header limit, no deadline for a request head,
an unbounded queue of pipelined requests), so uvicorn's supported protocol hook (``Config(http=...)``)
gets ``EdgeProtocol``: our own ``asyncio.Protocol`` on httptools (the parser uvicorn itself uses). It
reads each request head under hard limits (idle timeout, head deadline, header bytes, a cap on all open
sockets and a share per client address, see ``gateway.admission.registry.ClientAddresses``), then:

- ``GET /session/{id}/events`` (public port) is admitted by ``gateway.admission.endpoint`` and written straight
  to the connection (``gateway.streams.stream``): no ASGI cycle, task or coroutine per open stream; the
  stream ends the connection's reuse;
- a CORS preflight of the stream route is answered here;
- any other request is one ASGI call of the app (FastAPI), with keep-alive: requests on a connection are
  read one at a time (the next head is not parsed before the answer to the previous one is written, and
  what a client sends ahead is bounded by the head limit), each under the same limits.

What this relies on of uvicorn is checked at start-up in ``gateway.edge.uvicorn_seam``; a request that is
not a stream is answered by ``gateway.edge.request``. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools
from starlette.types import ASGIApp

from gateway import metrics
from gateway.admission.endpoint import STREAM_HEADERS, Admission, Answer, EventsEndpoint, StreamRequest
from gateway.edge.request import Request, keep_alive
from gateway.edge.route import match
from gateway.runtime.logging_setup import log_value
from gateway.streams.stream import NativeStream

try:  # Linux: bytes in a socket's send queue not yet acknowledged by the peer
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - other platforms rely on the buffer bound
    _OUTQ = None

log = logging.getLogger("gateway.edge")
access_log = logging.getLogger("uvicorn.access")

_MAX_BODY = 1024 * 1024  # a request body (only the dev routes take one)
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
    app: ASGIApp  # every request that is not a stream or its preflight
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
    """One connection: bounded request heads, then a native stream, or requests answered one at a time."""

    __slots__ = (
        "_address",
        "_body_left",
        "_buffer",
        "_client_key",
        "_counted",
        "_disconnected",
        "_extra",
        "_headers",
        "_lingering",
        "_pending",
        "_reading_paused",
        "_request",
        "_started",
        "_task",
        "_timer",
        "_trusted_peer",
        "_url",
        "_writable",
        "chunked",
        "internal",
        "loop",
        "state",
        "stream",
        "transport",
    )

    def __init__(self, state: EdgeState, **uvicorn_kwargs: Any) -> None:
        self.state = state
        self.loop = uvicorn_kwargs.get("_loop") or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.stream: NativeStream | None = None
        self.internal = False
        self.chunked = True
        self._buffer = bytearray()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._request: Request | None = None  # the request being answered (not a stream)
        self._body_left = 0  # body bytes of ``_request`` still to come
        self._pending: bytearray | None = None  # what the client sent ahead of the current answer
        self._reading_paused = False
        self._writable: asyncio.Event | None = None  # set while the transport takes writes (flow control)
        self._disconnected: asyncio.Future[None] | None = None
        self._counted = False
        self._address: str | None = None  # the key this socket is counted under in the per-address share
        self._client_key: str | None = None  # the client address key for admission (waiting shares)
        self._trusted_peer = False
        self._lingering = False
        self._extra = 0
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
                self._address = self._client_key = key
            self.state.sockets += 1
            self._counted = True
            metrics.OPEN_SOCKETS.inc()
        self._timer = self.loop.call_later(limits.idle_timeout, self._timed_out, "idle")

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self.stream is not None or (self._task is not None and self._request is None):
            self._extra += len(data)  # a stream's client has nothing more to say
            if self._extra > _MAX_TRAILING_BYTES and self.transport is not None:
                self.transport.abort()
            return
        if self._request is not None or self._pending is not None:
            self._request_data(data)
            return
        self._head_data(data)

    def _head_data(self, data: bytes) -> None:
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

    def _request_data(self, data: bytes) -> None:
        """Bytes while a request is answered: the rest of its body, then what the client sends ahead."""
        request = self._request
        if request is not None and self._body_left > 0:
            part, data = data[: self._body_left], data[self._body_left :]
            request.body += part
            self._body_left -= len(part)
            if self._body_left == 0:
                self._start_app(request)
        if data:
            pending = self._pending = self._pending or bytearray()
            pending += data
            self._flow()

    def _flow(self) -> None:
        """What the client sends ahead is not parsed before the answer before it is written, and is bounded
        like a head: reading pauses while more than ``max_header_bytes`` of it wait."""
        over = self._pending is not None and len(self._pending) > self.state.limits.max_header_bytes
        if over != self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = over
            if over:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def eof_received(self) -> bool | None:
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
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)
        if self._writable is not None:
            self._writable.set()  # a send waiting for the peer to read ends now (its writes go nowhere)
        if self._task is not None and not self._task.done() and self._request is None:
            self._task.cancel()  # a stream's admission: nobody is left to answer
        stream = self.stream
        if stream is not None:
            if stream.close_reason is None:
                stream.close("client_disconnected")
            # Breaks the stream <-> protocol cycle, so both are freed by reference counting at once
            # instead of by a (pausing) collection of the cyclic garbage collector.
            self.stream = None

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()
        if self._pending is not None and self._request is None and self._task is None:
            self.loop.call_soon(self._read_ahead)

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
        if self._trusted_peer and self._address is None and not self._count_forwarded():
            self._refuse(429, [(b"retry-after", b"5")])
            return
        session_id = None
        if method in (b"GET", b"OPTIONS") and (not self.internal or not self.state.limits.internal_port):
            session_id = match(url.path, self.state.limits.root_path)
        target, headers = self._url, self._headers
        self._url, self._headers = b"", []
        if session_id is not None and method == b"GET":
            self.chunked = version != "1.0"
            request_headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
            stream_request = StreamRequest(session_id, url.query or b"", request_headers, self._client_key)
            self._started = time.monotonic()
            log_target = (target.decode("latin-1"), version)
            self._task = self.loop.create_task(self._serve_stream(stream_request, log_target))
            return
        length = 0
        for name, value in headers:
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
        if not 0 <= length <= _MAX_BODY:
            self._refuse(413)
            return
        request = Request(method, version, target, url, headers, keep_alive=keep_alive(version, headers))
        self._request = request
        if session_id is not None:  # OPTIONS: the stream route's CORS preflight
            self._answer_preflight(request)
            self._request_data(rest)
            return
        self._body_left = length
        expects = any(name == b"expect" and value.lower() == b"100-continue" for name, value in headers)
        if expects and self.transport is not None and length > 0 and len(rest) < length:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not length:
            self._start_app(request)
        self._request_data(rest)

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
        self._address = self._client_key = key
        return True

    # Requests that are not streams: answered one at a time, with keep-alive ------------------------
    def _answer_preflight(self, request: Request) -> None:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers}
        answer = self.state.events.preflight(headers)
        self._write_head(request, answer.status, list(answer.headers))
        self._log_access((request.target.decode("latin-1"), request.version), answer.status, method=b"OPTIONS")
        self._finish(request)

    def _start_app(self, request: Request) -> None:
        self._task = self.loop.create_task(self._run_app(request))

    async def _run_app(self, request: Request) -> None:
        transport = self.transport
        assert transport is not None
        sockname = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        client = (self._client_key or peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
        url = request.url
        raw_path = url.path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.version,
            "method": request.method.decode("ascii", errors="replace"),
            "scheme": "http",
            "path": unquote_to_bytes(raw_path).decode("utf-8", errors="surrogateescape"),
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": request.headers,
            "client": client,
            "server": tuple(sockname[:2]) if isinstance(sockname, tuple) else None,
            "state": {},
        }
        self._disconnected = self.loop.create_future()
        try:
            await self.state.app(scope, request.receive(self), request.send(self))
        except Exception:
            log.exception("the app failed on %s %s", scope["method"], log_value(scope["path"]))
        if not request.started:
            request.keep_alive = False
            self._write_head(request, 500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error")
        elif not request.finished:  # the app failed or returned in the middle of its answer
            request.keep_alive = False
            request.end_body(self)
        self._log_access((request.target.decode("latin-1"), request.version), request.status, method=request.method)
        self._finish(request)

    def _write_head(self, request: Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        """Writes a whole answer (head and body) that is not produced by the app."""
        request.started = request.finished = True
        request.status = status
        if body or status not in (204, 304):
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(request.head(status, headers) + (b"" if request.method == b"HEAD" else body))

    def _finish(self, request: Request) -> None:
        """The answer is written: reads the next request on this connection, or closes it."""
        self._task = None
        self._request = None
        self._body_left = 0
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not request.keep_alive or self.state.events.connections.draining:
            self._linger()
            return
        self._rearm(self.state.limits.idle_timeout, "idle")
        if self._pending is not None:
            # Not at once (no recursion through pipelined answers), and only while the client reads them.
            if self._writable is None or self._writable.is_set():
                self.loop.call_soon(self._read_ahead)
        else:
            self._flow()

    def _read_ahead(self) -> None:
        """Parses what the client sent ahead of the last answer, once that answer is written."""
        pending, self._pending = self._pending, None
        if pending is None or self._request is not None or self.transport is None or self.transport.is_closing():
            self._pending = pending
            return
        self._head_data(bytes(pending))
        self._flow()  # reading resumes only once what waits is within the bound again

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

    # StreamChannel (gateway.streams.stream) -----------------------------------------------------
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
        self._linger()

    def _linger(self) -> None:
        """Closes after what was written, discarding what the client still sends (at most ``_LINGER_SECONDS``)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._cancel_timer()
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
            # A client that does not read its answers would keep a graceful close waiting forever.
            if self.transport.get_write_buffer_size():
                self.transport.abort()
            else:
                self.transport.close()

    def _rearm(self, delay: float, which: str) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, self._timed_out, which)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _log_access(self, target: tuple[str, str], status: int, reason: str = "", method: bytes = b"GET") -> None:
        """The access line; a refused request's names its reason and is folded per reason (its only line)."""
        if self.state.limits.access_log and access_log.isEnabledFor(logging.INFO):
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
            path = log_value(target[0])
            if not reason:
                verb = method.decode("ascii", errors="replace")
                access_log.info('%s - "%s %s HTTP/%s" %d', client, verb, path, target[1], status)
                return
            self.state.events.refusal_log.log(
                logging.INFO,
                reason,
                '%s - "GET %s HTTP/%s" %d reason=%s',
                client,
                path,
                target[1],
                status,
                reason,
                logger=access_log,
            )
