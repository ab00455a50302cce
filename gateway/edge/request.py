"""One request that is not a stream, answered as one ASGI call of the app on a keep-alive connection.

The app (FastAPI) sees a plain ASGI ``http`` scope; what the edge adds is the framing of its answer
(content-length, chunked, HEAD, ``connection: close``) and a bound on a client that does not read it.
``gateway.edge.connection`` reads requests one at a time and starts each one here. See docs/http-api.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message

from gateway import metrics
from gateway.edge.head import Head
from gateway.edge.wire import LAST_CHUNK, Headers, Wire, response_head, with_length
from gateway.runtime.redaction import log_value

log = logging.getLogger("gateway.edge")


class Request:
    """One request that is not a stream: its head and body, and the state of its answer."""

    __slots__ = (
        "_answer_headers",
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

    def __init__(self, head: Head) -> None:
        self.method = head.method
        self.version = head.version
        self.target = head.target
        self.url = head.url
        self.headers = head.headers
        self.keep_alive = head.keep_alive()
        self.body = b""
        self.status = 0
        self.started = self.finished = False
        self._answer_headers: Headers = []
        self._head_written = self._chunked = self._delivered = False

    async def run(
        self, app: ASGIApp, wire: Wire, client: tuple[str, int] | None, server: tuple[Any, ...] | None, timeout: float
    ) -> None:
        """Calls the app once and sees its answer written: a 500 when it failed before answering, the end of
        the body when it stopped in the middle (and then the connection ends). ``timeout``: how long a send
        waits for a client that does not read (the idle timeout)."""
        raw_path = self.url.path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.version,
            "method": self.method.decode("ascii", errors="replace"),
            "scheme": "http",
            "path": unquote_to_bytes(raw_path).decode("utf-8", errors="surrogateescape"),
            "raw_path": raw_path,
            "query_string": self.url.query or b"",
            "root_path": "",
            "headers": self.headers,
            "client": client,
            "server": server,
            "state": {},
        }
        try:
            await app(scope, self._receive(wire), self._send(wire, timeout))
        except Exception:
            log.exception("the app failed on %s %s", scope["method"], log_value(scope["path"]))
        if not self.started:
            self.keep_alive = False
            self.write_whole(wire, 500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error")
        elif not self.finished:  # the app failed or returned in the middle of its answer
            self.keep_alive = False
            self._end_body(wire)

    def write_whole(self, wire: Wire, status: int, headers: Headers, body: bytes = b"") -> None:
        """Writes a whole answer (head and body) that is not produced by the app."""
        self.started = self.finished = True
        self.status = status
        head = self._head(status, with_length(status, headers, body))
        wire.write(head + (b"" if self.method == b"HEAD" else body))

    def _head(self, status: int, headers: Headers) -> bytes:
        return response_head(status, headers, date=True, close=not self.keep_alive)

    def _receive(self, wire: Wire) -> Callable[[], Awaitable[Message]]:
        async def receive() -> Message:
            if not self._delivered:
                self._delivered = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await wire.disconnected()
            return {"type": "http.disconnect"}

        return receive

    def _send(self, wire: Wire, timeout: float) -> Callable[[Message], Awaitable[None]]:
        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                if self.started:
                    raise RuntimeError("the response was started already")
                self.started = True
                self.status = int(message["status"])
                self._answer_headers = [
                    (bytes(name).lower(), bytes(value)) for name, value in message.get("headers", ())
                ]
                return
            if kind != "http.response.body" or not self.started or self.finished:
                raise RuntimeError(f"unexpected ASGI message {kind!r}")
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            if wire.is_closing():
                self.finished = not more
                return
            out = b"" if self._head_written else self._start(len(body), more)
            if body and self.method != b"HEAD":
                out += b"%x\r\n%b\r\n" % (len(body), body) if self._chunked else body
            if not more:
                self.finished = True
                if self._chunked and self.method != b"HEAD":
                    out += LAST_CHUNK
            if out:
                wire.write(out)
            # The client reads slower than the app writes: wait for it, as long as a silent client may.
            if not wire.writable() and not await wire.drain(timeout):
                metrics.EDGE_REFUSALS.labels("idle_timeout").inc()
                wire.abort()

        return send

    def _end_body(self, wire: Wire) -> None:
        """Ends an answer the app left unfinished (a chunked body gets its terminator)."""
        self.finished = True
        if not wire.is_closing():
            if not self._head_written:
                wire.write(self._start(0, False))
            elif self._chunked and self.method != b"HEAD":
                wire.write(LAST_CHUNK)

    def _start(self, length: int, more: bool) -> bytes:
        self._head_written = True
        headers = self._answer_headers
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
        return self._head(self.status, headers)
