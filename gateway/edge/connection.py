"""The HTTP edge: everything that depends on how uvicorn works inside lives in this module, and only here.

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

What we rely on of uvicorn: the ``Config(http=callable)`` hook, and ``Server.handle_exit`` and
``Server.on_tick`` (see ``GatewayServer``). ``check_engine()`` verifies them at start-up against the
versions tested (pinned in pyproject.toml); on any other version the gateway refuses to start and names
the supported ones. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import logging
import signal
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import FrameType
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools
import uvicorn
from starlette.types import ASGIApp, Message

from gateway import metrics
from gateway.admission.endpoint import STREAM_HEADERS, Admission, Answer, EventsEndpoint, StreamRequest
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

# The versions this module was written and tested against (pyproject pins the same ranges).
TESTED_UVICORN = ("0.54.",)
TESTED_HTTPTOOLS = ("0.6.", "0.7.", "0.8.", "0.9.")
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


def check_engine() -> str | None:
    """None when the edge can run on the installed uvicorn and httptools, else why not."""
    version = getattr(uvicorn, "__version__", "?")
    if not version.startswith(TESTED_UVICORN):
        return f"uvicorn {version} is not a tested version"
    parser_version = getattr(httptools, "__version__", "?")
    if not parser_version.startswith(TESTED_HTTPTOOLS):
        return f"httptools {parser_version} is not a tested version"
    for hook in ("handle_exit", "on_tick"):
        if not callable(getattr(uvicorn.Server, hook, None)):
            return f"uvicorn.Server.{hook} is gone"
    if "http" not in inspect.signature(uvicorn.Config.__init__).parameters:
        return "uvicorn.Config no longer takes http="
    return None


def supported_versions() -> str:
    uvicorn_versions = ", ".join(v + "x" for v in TESTED_UVICORN)
    return f"uvicorn {uvicorn_versions} with httptools {', '.join(v + 'x' for v in TESTED_HTTPTOOLS)}"


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
        "_client",
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
        self._request: _Request | None = None  # the request being answered (not a stream)
        self._body_left = 0  # body bytes of ``_request`` still to come
        self._pending: bytearray | None = None  # what the client sent ahead of the current answer
        self._reading_paused = False
        self._writable: asyncio.Event | None = None  # set while the transport takes writes (flow control)
        self._disconnected: asyncio.Future[None] | None = None
        self._counted = False
        self._address: str | None = None  # the key this socket is counted under in the per-address share
        self._client: str | None = None  # the client address key for admission (waiting shares)
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
                self._address = self._client = key
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
            stream_request = StreamRequest(session_id, url.query or b"", request_headers, self._client)
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
        request = _Request(method, version, target, url, headers, keep_alive=_keep_alive(version, headers))
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
        self._address = self._client = key
        return True

    # Requests that are not streams: answered one at a time, with keep-alive ------------------------
    def _answer_preflight(self, request: _Request) -> None:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers}
        answer = self.state.events.preflight(headers)
        self._write_head(request, answer.status, list(answer.headers))
        self._log_access((request.target.decode("latin-1"), request.version), answer.status, method=b"OPTIONS")
        self._finish(request)

    def _start_app(self, request: _Request) -> None:
        self._task = self.loop.create_task(self._run_app(request))

    async def _run_app(self, request: _Request) -> None:
        transport = self.transport
        assert transport is not None
        sockname = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        client = (self._client or peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
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

    def _write_head(
        self, request: _Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> None:
        """Writes a whole answer (head and body) that is not produced by the app."""
        request.started = request.finished = True
        request.status = status
        if body or status not in (204, 304):
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(request.head(status, headers) + (b"" if request.method == b"HEAD" else body))

    def _finish(self, request: _Request) -> None:
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


def _keep_alive(version: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """HTTP/1.1 keeps a connection unless the client says otherwise; HTTP/1.0 ends it after the answer."""
    if version != "1.1":
        return False
    return not any(name == b"connection" and b"close" in value.lower() for name, value in headers)


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


class _Request:
    """One request that is not a stream: its head, its body, and the ASGI ``receive``/``send`` of its answer."""

    __slots__ = (
        "_chunked",
        "_delivered",
        "_head_written",
        "body",
        "finished",
        "headers",
        "keep_alive",
        "method",
        "started",
        "status",
        "target",
        "url",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        version: str,
        target: bytes,
        url: Any,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.version = version
        self.target = target
        self.url = url
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = b""
        self.status = 0
        self.started = self.finished = False
        self._head_written = self._chunked = self._delivered = False

    def head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _phrase(status))]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        lines.append(b"date: " + _Clock.date() + b"\r\n")
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def receive(self, protocol: EdgeProtocol) -> Callable[[], Awaitable[Message]]:
        async def receive() -> Message:
            if not self._delivered:
                self._delivered = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            if protocol._disconnected is not None:
                await protocol._disconnected
            return {"type": "http.disconnect"}

        return receive

    def send(self, protocol: EdgeProtocol) -> Callable[[Message], Awaitable[None]]:
        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                if self.started:
                    raise RuntimeError("the response was started already")
                self.started = True
                self.status = int(message["status"])
                self.headers = [(bytes(name).lower(), bytes(value)) for name, value in message.get("headers", ())]
                return
            if kind != "http.response.body" or not self.started or self.finished:
                raise RuntimeError(f"unexpected ASGI message {kind!r}")
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            transport = protocol.transport
            if transport is None or transport.is_closing():
                self.finished = not more
                return
            out = b"" if self._head_written else self._start(len(body), more)
            if body and self.method != b"HEAD":
                out += b"%x\r\n%b\r\n" % (len(body), body) if self._chunked else body
            if not more:
                self.finished = True
                if self._chunked and self.method != b"HEAD":
                    out += b"0\r\n\r\n"
            if out:
                transport.write(out)
            writable = protocol._writable
            if writable is not None and not writable.is_set():
                # The client reads slower than the app writes: wait for it, as long as a silent client may.
                try:
                    await asyncio.wait_for(writable.wait(), protocol.state.limits.idle_timeout)
                except TimeoutError:
                    metrics.EDGE_REFUSALS.labels("idle_timeout").inc()
                    transport.abort()

        return send

    def end_body(self, protocol: EdgeProtocol) -> None:
        """Ends a response the app left unfinished (a chunked body gets its terminator)."""
        self.finished = True
        if protocol.transport is not None and not protocol.transport.is_closing():
            if not self._head_written:
                protocol.transport.write(self._start(0, False))
            elif self._chunked and self.method != b"HEAD":
                protocol.transport.write(b"0\r\n\r\n")

    def _start(self, length: int, more: bool) -> bytes:
        self._head_written = True
        headers = self.headers
        if any(name == b"connection" and b"close" in value.lower() for name, value in headers):
            self.keep_alive = False
            headers = [(name, value) for name, value in headers if name != b"connection"]
        if not any(name == b"content-length" for name, _ in headers) and self.status not in (204, 304):
            if not more:
                headers = [*headers, (b"content-length", b"%d" % length)]
            elif self.version == "1.1":
                self._chunked = True
                headers = [*headers, (b"transfer-encoding", b"chunked")]
            else:
                self.keep_alive = False  # HTTP/1.0: the end of the connection ends the body
        return self.head(self.status, headers)


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class GatewayServer(uvicorn.Server):
    """uvicorn's server with a graceful drain on the first SIGTERM (see ``gateway.runtime.server``).

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
