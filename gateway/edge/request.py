"""One request that is not a stream, answered as one ASGI call of the app on a keep-alive connection.

Its head and body, the ASGI ``receive``/``send`` of its answer, and the framing of that answer
(content-length, chunked, HEAD, ``connection: close``); ``gateway.edge.connection`` reads requests one at
a time and calls the app. See docs/http-api.md.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.types import Message

from gateway import metrics

if TYPE_CHECKING:
    from gateway.edge.connection import EdgeProtocol


def keep_alive(version: str, headers: list[tuple[bytes, bytes]]) -> bool:
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


class Request:
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
