"""Load processes: cheap SSE clients on raw asyncio sockets (uvloop), driven over a pipe.

Each stream is one ``asyncio.Protocol`` (no task or coroutine of its own once it is open): it writes
the GET request, parses the status line, de-chunks the body and splits it into SSE events. The first
event of a stream is the session's current state (the end of the handshake); every later one is a
live delivery, counted and, when it carries ``updatedAt``, turned into a produce-to-client delay.

The orchestrator (``benchmarks.run``) starts a few of these processes and sends them commands:
``mint``, ``mint_sessions``, ``open``, ``counters``, ``latencies``, ``reset``, ``close``, ``exit``. Every loop is
bounded in count and time and every address is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import socket
import struct
import time
from collections import Counter
from datetime import datetime
from typing import Any, cast

from benchmarks.common import HOST, TENANT, TokenMinter, raise_nofile_limit

_LINGER_ABORT = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT left behind on the client side
_UPDATED_AT = b'"updatedAt":"'
_STATUS = b'"status":"'


class Stats:
    """Counters of one load process, shared by all its streams."""

    def __init__(self) -> None:
        self.parse_latency = False
        self.reset()

    def reset(self, latency: bool = False) -> None:
        self.parse_latency = latency  # off: live events are only counted (fan-out), cheapest for us
        self.live_events = 0
        self.first_live = 0.0  # time.monotonic() of the first and last live delivery
        self.last_live = 0.0
        self.latencies_ms: dict[str, list[float]] = {}  # by the event's status
        self.ended = 0

    def live(self, blocks: list[bytes], mono: float, wall_ms: float) -> None:
        if not self.live_events:
            self.first_live = mono
        self.last_live = mono
        self.live_events += len(blocks)
        if not self.parse_latency:
            return
        for block in blocks:
            start = block.find(_UPDATED_AT)
            if start < 0:
                continue
            start += len(_UPDATED_AT)
            end = block.find(b'"', start)
            status_at = block.find(_STATUS)
            status = "?"
            if status_at >= 0:
                status_at += len(_STATUS)
                status = block[status_at : block.find(b'"', status_at)].decode()
            with contextlib.suppress(ValueError):
                stamp = datetime.fromisoformat(block[start:end].decode()).timestamp() * 1000
                self.latencies_ms.setdefault(status, []).append(wall_ms - stamp)


class SseClient(asyncio.Protocol):
    __slots__ = (
        "_chunked",
        "_events",
        "_head",
        "_need",
        "_rest",
        "_sse",
        "first",
        "first_at",
        "request",
        "started_at",
        "stats",
        "status",
        "transport",
    )

    def __init__(self, request: bytes, stats: Stats, first: asyncio.Future[None]) -> None:
        self.request = request
        self.stats = stats
        self.first = first
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.started_at = time.monotonic()
        self.first_at = 0.0
        self._head = b""
        self._rest = b""
        self._chunked = False
        self._need = -1  # bytes of the current chunk still expected; -1: a size line is next
        self._sse = b""
        self._events = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tcp = cast(asyncio.Transport, transport)  # uvloop's TCPTransport
        sock = tcp.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        tcp.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            try:
                self.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = 999
            self._chunked = b"transfer-encoding: chunked" in head.lower()
            if self.status != 200:
                self._fail(f"http_{self.status}")
                return
            if not self._chunked:
                self._sse += data
                self._split()
                return
        if not self._chunked:
            self._sse += data
            self._split()
            return
        stats = self.stats
        if self._events and not stats.parse_latency and not self._rest and self._need < 0 and not self._sse:
            # Count-only fast path (fan-out): whole chunks of whole events, as both servers write them.
            live = data.count(b"\ndata:")
            if live:
                self._events += live
                mono = time.monotonic()
                if not stats.live_events:
                    stats.first_live = mono
                stats.last_live = mono
                stats.live_events += live
            if data.endswith(b"0\r\n\r\n") and (data == b"0\r\n\r\n" or data.endswith(b"\r\n0\r\n\r\n")):
                stats.ended += 1
                if self.transport is not None:
                    self.transport.abort()
            return
        buffer = self._rest + data if self._rest else data
        position, size_of = 0, len(buffer)
        parts = []
        while True:
            if self._need < 0:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    break
                size = int(buffer[position:line_end].split(b";", 1)[0], 16)
                position = line_end + 2
                if size == 0:  # the server ended the stream
                    self.stats.ended += 1
                    position = size_of
                    if self.transport is not None:
                        self.transport.abort()
                    break
                self._need = size
            if size_of - position < self._need + 2:
                break
            parts.append(buffer[position : position + self._need])
            position += self._need + 2
            self._need = -1
        self._rest = buffer[position:]
        if parts:
            self._sse += b"".join(parts)
            self._split()

    def _split(self) -> None:
        text = self._sse.replace(b"\r\n", b"\n") if b"\r" in self._sse else self._sse
        blocks = text.split(b"\n\n")
        self._sse = blocks.pop()
        events = [block for block in blocks if block.startswith(b"data:") or b"\ndata:" in block]
        if not events:
            return
        if self._events == 0:
            self.first_at = time.monotonic()
            if not self.first.done():
                self.first.set_result(None)
            live = events[1:]
        else:
            live = events
        self._events += len(events)
        if live:
            self.stats.live(live, time.monotonic(), time.time() * 1000)

    def _fail(self, reason: str) -> None:
        if not self.first.done():
            self.first.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first.done():
            self.first.set_exception(ConnectionError("closed_before_first_event"))

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class LoadProcess:
    def __init__(self, config: dict[str, Any]) -> None:
        self.port: int = config["port"]
        self.flavour: str = config.get("flavour", "gateway")  # "centrifugo": its uni_sse path, a token per session
        self.minter = TokenMinter(config["private_jwk"])
        self.tokens: list[str] = []
        self.tickets: list[str] = []  # stream tickets, one per session of ``mint_tickets`` (in its order)
        self.session_tokens: dict[str, str] = {}  # centrifugo: the token subscribing to that session's channel
        self.stats = Stats()
        self.streams: list[SseClient] = []

    def request(self, session_id: str, token: str, parameter: str = "token") -> bytes:
        if self.flavour == "centrifugo":
            from benchmarks import centrifugo

            return centrifugo.request(session_id, token, HOST, self.port)
        return (
            f"GET /session/{session_id}/events?{parameter}={token} HTTP/1.1\r\n"
            f"Host: {HOST}:{self.port}\r\n"
            "Accept: text/event-stream\r\n"
            "Cache-Control: no-cache\r\n"
            "User-Agent: session-events-bench/1\r\n"
            "\r\n"
        ).encode()

    def mint(self, count: int, prefix: str) -> dict[str, Any]:
        started = time.monotonic()
        self.tokens = [self.minter.mint(f"{prefix}-{i}") for i in range(count)]
        return {"minted": count, "seconds": time.monotonic() - started}

    def mint_tickets(self, sessions: list[str], keys: str, prefix: str) -> dict[str, Any]:
        """One stream ticket per session, in order, as a backend holding the ticket key mints them (docs/tickets.md)."""
        from gateway.auth.ticket_keys import parse_ticket_keys
        from gateway.auth.tickets import Grant, TicketCodec

        started = time.monotonic()
        codec = TicketCodec(parse_ticket_keys(keys.split(",")), 0.0)
        expires = int(time.time()) + 3600
        self.tickets = [codec.mint(Grant(f"{prefix}-{i}", TENANT, s, expires)) for i, s in enumerate(sessions)]
        return {"minted": len(sessions), "seconds": time.monotonic() - started}

    def mint_sessions(self, sessions: list[str], prefix: str) -> dict[str, Any]:
        """Centrifugo: one token per session not seen yet, its ``channels`` claim naming the session's channel."""
        from benchmarks.centrifugo import channel

        started = time.monotonic()
        fresh = [sid for sid in dict.fromkeys(sessions) if sid not in self.session_tokens]
        for index, sid in enumerate(fresh):
            self.session_tokens[sid] = self.minter.mint(f"{prefix}-{index}", channels=[channel(sid)])
        return {"minted": len(fresh), "seconds": time.monotonic() - started}

    async def open(
        self,
        sessions: list[str],
        concurrency: int,
        timeout: float,
        deadline_s: float,
        distinct_tokens: bool,
        credential: str = "token",
    ) -> dict[str, Any]:
        """Opens one stream per entry of ``sessions`` (with ``credential``: ``token`` or ``ticket``); returns when
        each got its first event or failed."""
        loop = asyncio.get_running_loop()
        tokens = self.tickets if credential == "ticket" else self.tokens
        by_session = self.session_tokens if self.flavour == "centrifugo" else None
        if not tokens and by_session is None:
            raise RuntimeError("mint tokens first")
        if distinct_tokens and by_session is None and len(tokens) < len(sessions):
            raise RuntimeError(f"{len(sessions)} streams need as many tokens, have {len(tokens)}")
        errors: Counter[str] = Counter()
        handshakes: list[float] = []
        starts: list[float] = []
        firsts: list[float] = []
        next_index = 0
        deadline = time.monotonic() + deadline_s

        async def one(index: int) -> None:
            if by_session is not None:
                token = by_session[sessions[index]]
            else:
                token = tokens[index] if distinct_tokens else tokens[index % len(tokens)]
            first: asyncio.Future[None] = loop.create_future()
            client = SseClient(self.request(sessions[index], token, credential), self.stats, first)
            starts.append(client.started_at)
            try:
                await asyncio.wait_for(loop.create_connection(lambda: client, HOST, self.port), timeout)
                await asyncio.wait_for(first, timeout)
            except TimeoutError:
                errors["timeout"] += 1
                client.abort()
                return
            except (OSError, ConnectionError) as error:
                errors[str(error) if isinstance(error, ConnectionError) and error.args else type(error).__name__] += 1
                client.abort()
                return
            self.streams.append(client)
            handshakes.append((client.first_at - client.started_at) * 1000)
            firsts.append(client.first_at)

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(sessions) and time.monotonic() < deadline:
                index = next_index
                next_index += 1
                await one(index)

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(sessions))))))
        return {
            "ok": len(handshakes),
            "failed": sum(errors.values()),
            "not_attempted": len(sessions) - next_index,
            "errors": dict(errors),
            "first_start": min(starts) if starts else began,
            "last_first_event": max(firsts) if firsts else began,
            "handshake_ms": handshakes,
            "open_streams": sum(1 for s in self.streams if s.transport is not None and not s.transport.is_closing()),
        }

    def counters(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "live_events": stats.live_events,
            "first_live": stats.first_live,
            "last_live": stats.last_live,
            "ended": stats.ended,
            "cpu_s": time.process_time(),
            "open_streams": sum(1 for s in self.streams if s.transport is not None and not s.transport.is_closing()),
        }

    def close(self) -> dict[str, Any]:
        closed = 0
        for stream in self.streams:
            if stream.transport is not None and not stream.transport.is_closing():
                closed += 1
            stream.abort()
        self.streams = []
        return {"closed": closed}


async def _serve(conn: multiprocessing.connection.Connection, config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    process = LoadProcess(config)
    conn.send({"ready": True})
    while True:
        try:
            message: dict[str, Any] = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):
            break  # the orchestrator is gone
        command = message.pop("cmd")
        try:
            if command == "exit":
                process.close()
                conn.send({"bye": True})
                break
            if command == "mint":
                reply: dict[str, Any] = process.mint(**message)
            elif command == "mint_tickets":
                reply = process.mint_tickets(**message)
            elif command == "mint_sessions":
                reply = process.mint_sessions(**message)
            elif command == "open":
                reply = await process.open(**message)
            elif command == "counters":
                reply = process.counters()
            elif command == "latencies":
                reply = {"latencies_ms": process.stats.latencies_ms}
            elif command == "reset":
                process.stats.reset(**message)
                reply = {}
            elif command == "close":
                reply = process.close()
                await asyncio.sleep(0.2)  # let the aborts reach the sockets
            else:
                reply = {"error": f"unknown command {command}"}
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        conn.send(reply)


def child_main(conn: multiprocessing.connection.Connection, config: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides when we stop
    raise_nofile_limit()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(conn, config))


class LoadGroup:
    """A few load processes; commands go to all of them at once, replies come back as a list."""

    def __init__(self, processes: int, config: dict[str, Any]) -> None:
        self.flavour: str = config.get("flavour", "gateway")
        context = multiprocessing.get_context("spawn")
        self._children: list[tuple[Any, multiprocessing.connection.Connection]] = []
        for index in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(
                target=child_main, args=(child, {**config, "index": index}), name=f"bench-load-{index}", daemon=True
            )
            proc.start()
            child.close()
            self._children.append((proc, parent))
        for proc, conn in self._children:
            if not conn.poll(60):
                raise RuntimeError(f"load process {proc.name} did not start")
            conn.recv()

    def __len__(self) -> int:
        return len(self._children)

    def call(self, commands: list[dict[str, Any]], timeout: float = 600.0) -> list[dict[str, Any]]:
        """Sends one command to each process (all sent before any reply is awaited)."""
        for (_, conn), command in zip(self._children, commands, strict=True):
            conn.send(command)
        replies = []
        deadline = time.monotonic() + timeout
        for proc, conn in self._children:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load process {proc.name} did not answer {commands[0]['cmd']} in {timeout:.0f}s")
            reply: dict[str, Any] = conn.recv()
            if "error" in reply:
                raise RuntimeError(f"load process {proc.name}: {reply['error']}")
            replies.append(reply)
        return replies

    def broadcast(self, command: dict[str, Any], timeout: float = 600.0) -> list[dict[str, Any]]:
        return self.call([dict(command) for _ in self._children], timeout)

    def stop(self) -> None:
        for proc, conn in self._children:
            if proc.is_alive():
                with contextlib.suppress(OSError, BrokenPipeError):
                    conn.send({"cmd": "exit"})
        for proc, conn in self._children:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            conn.close()
        self._children = []
