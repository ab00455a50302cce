"""The floor under figure 2 (issue 24 item 2): what one stream opening costs a server that does nothing else.

``BENCH_GATEWAY_CMD="python -m benchmarks.connection_floor" python -m benchmarks --only 2 --gateway-only``

Stands in for the gateway in the storm benchmark: a bare ``asyncio.Protocol`` on uvloop (the loop, the
socket options and the backlog the gateway's uvicorn uses), which answers every request head on
``GATEWAY_PORT`` with a byte-for-byte copy of the gateway's stream head, ``retry:`` frame and first event in
one write, checks nothing, logs nothing and keeps the connection until the client closes it. Its server
CPU per stream is what the kernel (accept, recv, send over loopback, close) and uvloop cost per stream on
this machine, a floor no change to the gateway's own code can go under. ``GATEWAY_INTERNAL_PORT`` answers
``/readyz`` with 200 so that the orchestrator sees it ready.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\nx-accel-buffering: no\r\n"
    b"referrer-policy: no-referrer\r\nx-content-type-options: nosniff\r\n"
    b"x-request-id: 0123456789abcdef0123456789abcdef\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
)
_FRAMES = (
    b"retry: 3000\n\n",
    b'id: 0-1\nevent: message\ndata: {"id":"00000000-0000-0000-0000-000000000000","status":"active",'
    b'"updatedAt":"2026-12-07T00:00:00.000Z"}\n\n',
)
ANSWER = _HEAD + b"".join(b"%x\r\n%b\r\n" % (len(frame), frame) for frame in _FRAMES)
READY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\nconnection: close\r\n\r\n"
READY += b'{"ready": true}'


class Bare(asyncio.Protocol):
    """A stream that costs nothing but its socket: the answer on a whole head, then silence."""

    __slots__ = ("answer", "buffer", "close", "transport")

    def __init__(self, answer: bytes, close: bool) -> None:
        self.answer = answer
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.close = close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.buffer is None:
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and self.transport is not None:
            self.buffer = None  # type: ignore[assignment]
            self.transport.write(self.answer)
            if self.close:
                self.transport.close()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    public = await loop.create_server(
        lambda: Bare(ANSWER, False), host, int(os.environ["GATEWAY_PORT"]), backlog=4096, reuse_address=True
    )
    internal = await loop.create_server(
        lambda: Bare(READY, True), host, int(os.environ["GATEWAY_INTERNAL_PORT"]), reuse_address=True
    )
    for server in (public, internal):
        for sock in server.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    public.close()
    internal.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve())
