"""One connection of the HTTP edge: bounded request heads, then a native stream or requests one at a time.

uvicorn's own protocol cannot be bounded from outside (no header limit, no deadline for a request head,
an unbounded queue of pipelined requests), so uvicorn's supported protocol hook (``Config(http=...)``,
checked in ``gateway.edge.uvicorn_seam``) gets ``EdgeProtocol``: our own ``asyncio.Protocol``, the
connection's life from the socket caps to the closing linger. It stays one class: the same few fields
(``_request``, ``_task``, ``_pending``, ``stream``, ``_lingering``, the timer) decide what the next bytes
mean, and split over objects pointing back at each other that state machine would be harder to follow.

- ``GET /session/{id}/events`` (public port) is admitted by ``gateway.admission.endpoint`` and written
  straight to the connection's ``Wire`` (``gateway.streams.stream``): no ASGI cycle, task or coroutine per
  open stream; the stream ends the connection's reuse;
- ``GET /tenant/events`` (public port, when enabled) likewise, admitted by ``gateway.admission.tenant``;
- a CORS preflight of the stream route is answered here;
- ``GET``/``HEAD /session/{id}`` (public port), the status read, is answered by ``gateway.reads.status`` and
  written here, with keep-alive like the app's answers (and its preflight too);
- any other request is one ASGI call of the app (``gateway.edge.request``), with keep-alive: the next
  head is not parsed before the answer to the previous one is written, and what a client sends ahead is
  bounded by the head limit.

Heads are parsed in ``gateway.edge.head``, bytes reach the socket through ``gateway.edge.wire``, the
counts shared by all connections live in ``gateway.edge.state``. Limits: docs/security.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

from consumers.log_fields import session_hash
from gateway import metrics
from gateway.admission.endpoint import STREAM_HEADERS, Admission, Answer, StreamRequest
from gateway.admission.tenant import TenantAdmission
from gateway.admission.ticket_endpoint import MAX_BODY as MAX_TICKET_BODY
from gateway.admission.ticket_endpoint import SUFFIX as TICKET
from gateway.edge.access_line import log_access
from gateway.edge.head import Head, parse_head
from gateway.edge.request import Request
from gateway.edge.route import match, match_status
from gateway.edge.state import EdgeState
from gateway.edge.tenant_route import match_tenant
from gateway.edge.wire import Headers, Wire, closing_answer, response_head
from gateway.reads.status import StatusRead
from gateway.runtime.redaction import log_value
from gateway.streams.stream import NativeStream

log = logging.getLogger("gateway.edge")

_LINGER_SECONDS = 2.0
_MAX_TRAILING_BYTES = 64 * 1024  # what a stream's client may send after its request before it is cut
_RETRY_LATER = [(b"retry-after", b"5")]


class EdgeProtocol(asyncio.Protocol):
    """One connection: bounded request heads, then a native stream, or requests answered one at a time."""

    __slots__ = (
        "_address",
        "_body_left",
        "_buffer",
        "_client_key",
        "_counted",
        "_extra",
        "_lingering",
        "_pending",
        "_reading_paused",
        "_request",
        "_started",
        "_status_id",
        "_task",
        "_timer",
        "_trusted_peer",
        "internal",
        "loop",
        "state",
        "stream",
        "transport",
        "wire",
    )

    def __init__(self, state: EdgeState, **uvicorn_kwargs: Any) -> None:
        self.state = state
        self.loop = uvicorn_kwargs.get("_loop") or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.wire: Wire | None = None  # the connection's outbound side, from connection_made on
        self.stream: NativeStream | None = None
        self.internal = False
        self._buffer = bytearray()  # the request head being read
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None  # the app's answer, or a stream's admission
        self._request: Request | None = None  # the request being answered (not a stream)
        self._body_left = 0  # body bytes of ``_request`` still to come
        self._pending: bytearray | None = None  # what the client sent ahead of the current answer
        self._reading_paused = False
        self._counted = False
        self._address: str | None = None  # the key this socket is counted under in the per-address share
        self._client_key: str | None = None  # the client address key for admission (waiting shares)
        self._trusted_peer = False
        self._lingering = False
        self._extra = 0  # bytes a stream's client sent after its request
        self._started = 0.0
        self._status_id: str | None = None  # the session of the status read being answered

    # asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.wire = Wire(transport)
        limits = self.state.limits
        sockname = transport.get_extra_info("sockname")
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) > 1 else None
        self.internal = bool(limits.internal_port) and port == limits.internal_port
        if not self.internal:  # probes and metrics must get through when the public port is full
            if self.state.sockets >= limits.max_sockets:
                metrics.LIMIT_REFUSALS.labels("max_sockets").inc()
                transport.write(closing_answer(503, headers=_RETRY_LATER))
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
                    transport.write(closing_answer(429, headers=_RETRY_LATER))
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
        if self.wire is not None:
            self.wire.lost()
        if self._task is not None and not self._task.done() and (self._request is None or self._status_id is not None):
            self._task.cancel()  # a stream's admission or a waiting status read: nobody is left to answer
        stream = self.stream
        if stream is not None:
            if stream.close_reason is None:
                stream.close("client_disconnected")
            # Breaks the cycle stream -> wire -> transport -> protocol -> stream, so all are freed by
            # reference counting at once instead of by a (pausing) collection of the cyclic garbage collector.
            self.stream = None

    def pause_writing(self) -> None:
        if self.wire is not None:
            self.wire.pause_writing()

    def resume_writing(self) -> None:
        if self.wire is not None:
            self.wire.resume_writing()
        if self._pending is not None and self._request is None and self._task is None:
            self.loop.call_soon(self._read_ahead)

    # Reading: heads under limits, bodies, what a client sends ahead -------------------------------
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

    def _read_ahead(self) -> None:
        """Parses what the client sent ahead of the last answer, once that answer is written."""
        pending, self._pending = self._pending, None
        if pending is None or self._request is not None or self.transport is None or self.transport.is_closing():
            self._pending = pending
            return
        self._head_data(bytes(pending))
        self._flow()  # reading resumes only once what waits is within the bound again

    # A whole head: a stream, the stream's preflight, or a request for the app ---------------------
    def _on_head(self, data: bytes, rest: bytes) -> None:
        head = parse_head(data)
        if head is None:
            metrics.EDGE_REFUSALS.labels("bad_request").inc()
            self._refuse(400)
            return
        if self._trusted_peer and self._address is None and not self._count_forwarded(head):
            self._refuse(429, _RETRY_LATER)
            return
        session_id = status_id = None
        method = head.method
        public = not self.internal or not self.state.limits.internal_port
        if method in (b"GET", b"OPTIONS") and public:
            session_id = match(head.url.path, self.state.limits.root_path)
            tenant_stream = session_id is None and self.state.events.tenants is not None  # when enabled
            if tenant_stream and match_tenant(head.url.path, self.state.limits.root_path):
                if method == b"GET":
                    self._start_stream(None, head)
                    return
                session_id = ""  # the tenant stream's CORS preflight, below
        if session_id is not None and method == b"GET":
            self._start_stream(session_id, head)
            return
        if session_id is None and method in (b"GET", b"HEAD", b"OPTIONS") and public:
            status_id = match_status(head.url.path, self.state.limits.root_path)
        length, refusal = head.body_length()
        if method == b"POST" and length > MAX_TICKET_BODY and match(head.url.path, self.state.limits.root_path, TICKET):
            refusal = 413  # refused before the body is read (docs/tickets.md)
        if refusal:
            if refusal == 411:
                metrics.EDGE_REFUSALS.labels("chunked_request").inc()
            self._refuse(refusal)
            return
        request = self._request = Request(head)
        if session_id is not None or (status_id is not None and method == b"OPTIONS"):  # a CORS preflight
            self._answer_preflight(request, head, status=status_id is not None)
            self._request_data(rest)
            return
        self._status_id = status_id  # a status read: answered once its (ignored) body is read, like the app's
        self._body_left = length
        if length > 0 and len(rest) < length and head.expects_continue() and self.wire is not None:
            self.wire.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not length:
            self._start_app(request)
        self._request_data(rest)

    def _count_forwarded(self, head: Head) -> bool:
        """A trusted proxy's request: counts the socket for the client the proxy names; False beyond its share."""
        addresses = self.state.events.addresses
        wanted = addresses.header.encode("latin-1")
        forwarded = b",".join(value for name, value in head.headers if name == wanted)
        key = addresses.forwarded(forwarded.decode("latin-1")) if forwarded else None
        if key is None:
            return True  # the proxy names no client: only the cap on all sockets applies
        if not self.state.count_address(key):
            return False
        self._address = self._client_key = key
        return True

    # Requests that are not streams: answered one at a time, with keep-alive ------------------------
    def _answer_preflight(self, request: Request, head: Head, *, status: bool = False) -> None:
        assert self.wire is not None
        answer = (self.state.reads if status else self.state.events).preflight(head.text_headers())
        request.write_whole(self.wire, answer.status, list(answer.headers))
        self._log_access((request.target.decode("latin-1"), request.version), answer.status, method=b"OPTIONS")
        self._finish(request)

    def _start_app(self, request: Request) -> None:
        if self._status_id is not None:
            self._task = self.loop.create_task(self._serve_status(request, self._status_id))
            return
        self._task = self.loop.create_task(self._run_app(request))

    async def _serve_status(self, request: Request, session_id: str) -> None:
        """A status read (``gateway.reads.status``): its whole answer, then the next request."""
        headers = request.headers
        read = StatusRead(
            session_id,
            request.url.query or b"",
            {name.decode("latin-1"): value.decode("latin-1") for name, value in headers},
            b",".join(value for name, value in headers if name == b"if-none-match"),
            self._client_key,
        )
        try:
            answer = await self.state.reads.read(read)
        except Exception:  # a bug must not leave the connection without an answer (as ``Request.run`` for the app)
            log.exception("the status read of session %r failed", log_value(session_id))
            request.keep_alive = False
            answer = Answer(500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error")
        del read
        if self.wire is None or self.wire.is_closing():
            return
        request.write_whole(self.wire, answer.status, answer.headers, answer.body)
        self._log_access(
            (request.target.decode("latin-1"), request.version), answer.status, answer.reason, request.method
        )
        self._finish(request)

    async def _run_app(self, request: Request) -> None:
        transport, wire = self.transport, self.wire
        assert transport is not None and wire is not None
        sockname = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        client = (self._client_key or peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
        server = tuple(sockname[:2]) if isinstance(sockname, tuple) else None
        await request.run(self.state.app, wire, client, server, self.state.limits.idle_timeout)
        self._log_access((request.target.decode("latin-1"), request.version), request.status, method=request.method)
        self._finish(request)

    def _finish(self, request: Request) -> None:
        """The answer is written: reads the next request on this connection, or closes it."""
        self._task = None
        self._request = None
        self._status_id = None
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
            if self.wire is None or self.wire.writable():
                self.loop.call_soon(self._read_ahead)
        else:
            self._flow()

    # The native stream --------------------------------------------------------------------------
    def _start_stream(self, session_id: str | None, head: Head) -> None:
        """A session's stream, or with no ``session_id`` the tenant stream (``gateway.admission.tenant``)."""
        assert self.wire is not None
        self.wire.chunked = head.version != "1.0"
        stream_request = StreamRequest(session_id or "", head.url.query or b"", head.text_headers(), self._client_key)
        self._started = time.monotonic()
        log_target = (head.target.decode("latin-1"), head.version)
        self._task = self.loop.create_task(self._serve_stream(stream_request, log_target, session_id is None))

    async def _serve_stream(self, request: StreamRequest, log_target: tuple[str, str], tenant: bool = False) -> None:
        events = self.state.events
        result = await (events.tenants.admit(request) if tenant and events.tenants else events.admit(request))
        del request
        transport = self.transport
        if transport is None or transport.is_closing():
            if not isinstance(result, Answer):
                events.connections.release(result.ticket)
            return
        if isinstance(result, Answer):
            transport.write(closing_answer(result.status, result.body, result.headers))
            transport.close()
            self._log_access(log_target, result.status, result.reason, fields=result.log_fields)
            return
        if isinstance(result, Admission):
            self._open(result)
            opened = {"status": 200, "session_hash": session_hash(result.snapshot.session_id)}
            self._log_access(log_target, 200, fields={**opened, "tenant": result.principal.tenant})
        else:
            self._open_tenant(result)
            self._log_access(log_target, 200, fields={"status": 200, "tenant": result.tenant})

    def _open(self, admission: Admission) -> None:
        """Writes the stream's head and first frames, then hands the stream to the hub (``events.register``)."""
        events, wire = self.state.events, self.wire
        assert wire is not None
        session_id, ticket = admission.snapshot.session_id, admission.ticket
        started = self._started

        def closed(stream: NativeStream, reason: str) -> None:
            events.closed(stream, session_id, ticket, reason, started)

        stream = NativeStream(
            wire, session_id, events.expires_at(admission.principal), events.settings.max_buffered_bytes, closed
        )
        wire.cork()  # the head and the first frames in one write
        try:
            self._write_stream_head(admission.headers)
            self.stream = stream
            frames, ends = events.first_frames(admission)
            for number, frame in enumerate(frames):
                stream.queue(frame, is_event=number > 0)
        finally:
            wire.uncork()
        if ends:
            stream.close("terminal")
        else:
            events.register(stream, session_id, ticket)
            if events.connections.draining:
                stream.close("draining")

    def _write_stream_head(self, headers: Headers) -> None:
        wire = self.wire
        assert wire is not None
        # The connection ends with the stream (clients must not pool it for another request).
        framing: Headers = [(b"connection", b"close")]
        if wire.chunked:
            framing.append((b"transfer-encoding", b"chunked"))
        wire.write(response_head(200, (*STREAM_HEADERS, *headers, *framing)))
        metrics.STREAMS_OPENED.inc()

    def _open_tenant(self, admission: TenantAdmission) -> None:
        tenants = self.state.events.tenants
        assert tenants is not None and self.wire is not None
        self._write_stream_head(admission.headers)
        self.stream = tenants.open(admission, self.wire, self._started)

    # Closing, timeouts, the access line -------------------------------------------------------------
    def _refuse(self, status: int, headers: Headers | None = None) -> None:
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
        transport.write(closing_answer(status, headers=headers))
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

    def _log_access(
        self,
        target: tuple[str, str],
        status: int,
        reason: str = "",
        method: bytes = b"GET",
        fields: Mapping[str, object] | None = None,
    ) -> None:
        """The access line (``gateway.edge.access_line``), unless GATEWAY_ACCESS_LOG=false."""
        if self.state.limits.access_log:
            log_access(self.transport, self.state.events.refusal_log, target, status, reason, method, fields)
