"""The fan-out path in one process, over real sockets: CPU per delivery of the hub, stream and wire.

``python -m benchmarks.fanout_path`` opens ``sessions x subscribers`` loopback TCP connections to this
process from a reader process (uvloop, closes with RST like ``benchmarks.loadgen``), makes each accepted
connection a real ``NativeStream`` on a real ``Wire`` subscribed to a real ``Hub`` (its close does the
hub's, the clock's and the closed-stream metric's bookkeeping, as ``gateway.admission.endpoint`` does),
then publishes one ``fetched`` and one ``completed`` transition per session, as benchmark 4 does. It
reports this process's CPU time (user + kernel: the sends are most of it) per delivery for each status,
rounds interleaved; no Kafka, no HTTP handshake, no access line, so the figure is the part of the
fan-out benchmark that ``consumers/hub.py``, ``gateway/streams/`` and ``gateway/edge/wire.py`` own.
A/B: run it with ``PYTHONPATH`` on an export of another commit (``git archive``), alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import resource
import socket
import statistics
import struct
import time
from typing import Any

import uvloop

from benchmarks.common import raise_nofile_limit
from consumers.hub import Hub
from consumers.store import Transition
from gateway import metrics
from gateway.admission.clock import StreamClock
from gateway.edge.wire import Wire
from gateway.settings import StreamSettings
from gateway.streams.sse import encode_transition
from gateway.streams.stream import NativeStream
from schemas import SessionStatus

_LINGER_ABORT = struct.pack("ii", 1, 0)


class _Reader(asyncio.Protocol):
    __slots__ = ("stats",)

    def __init__(self, stats: list[int]) -> None:
        self.stats = stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)

    def data_received(self, data: bytes) -> None:
        self.stats[0] += len(data)


async def _read(port: int, conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    stats = [0]
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command[0] == "open":
            for _ in range(command[1]):
                await loop.create_connection(lambda: _Reader(stats), "127.0.0.1", port)
            conn.send("opened")
        elif command[0] == "bytes":
            conn.send(stats[0])
        else:
            return


def _reader_main(port: int, conn: multiprocessing.connection.Connection) -> None:
    raise_nofile_limit()
    uvloop.run(_read(port, conn))


class _Server(asyncio.Protocol):
    """An accepted connection made a native stream of ``session_id`` (as ``gateway.edge.connection`` does)."""

    def __init__(self, world: _World) -> None:
        self.world = world
        self.stream: NativeStream | None = None
        self.wire: Wire | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        world = self.world
        self.wire = Wire(transport)  # type: ignore[arg-type]  # uvloop's transport is not an asyncio.Transport
        session_id = world.next_session()
        self.stream = NativeStream(self.wire, session_id, float("inf"), 1 << 20, world.closed)
        world.hub.subscribe(session_id, self.stream)
        world.clock.add(self.stream)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.wire is not None
        self.wire.lost()
        if self.stream is not None and self.stream.close_reason is None:
            self.stream.close("client_disconnected")
        self.stream = None


class _World:
    def __init__(self) -> None:
        self.hub = Hub(encode_transition)
        self.clock = StreamClock(StreamSettings(), self.hub)
        self.assign: list[str] = []

    def next_session(self) -> str:
        return self.assign.pop()

    def closed(self, stream: NativeStream, reason: str) -> None:
        self.hub.unsubscribe(stream.session_id, stream)
        self.clock.remove(stream)
        metrics.STREAMS_CLOSED.labels(reason).inc()


def _segments() -> int:
    """TCP segments sent by this machine so far (every process: a hint only on a quiet machine)."""
    try:
        with open("/proc/net/snmp") as snmp:
            lines = [line.split() for line in snmp.read().splitlines() if line.startswith("Tcp:")]
    except OSError:
        return 0
    return int(lines[1][lines[0].index("OutSegs")])


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def _round(
    world: _World, conn: multiprocessing.connection.Connection, sessions: int, subscribers: int, number: int
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    ids = [f"r{number}-session-{index}" for index in range(sessions)]
    world.assign = [sid for sid in ids for _ in range(subscribers)]
    conn.send(("open", sessions * subscribers))
    await loop.run_in_executor(None, conn.recv)
    while world.assign or len(world.clock) < sessions * subscribers:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    result: dict[str, float] = {}
    for offset, status in enumerate((SessionStatus.FETCHED, SessionStatus.COMPLETED)):
        conn.send(("bytes",))
        before_bytes = await loop.run_in_executor(None, conn.recv)
        transitions = [Transition(sid, status, 1_000 + offset, 0, 10 * number + offset) for sid in ids]
        frames = sum(len(encode_transition(t)) for t in transitions) * subscribers
        start, segments = _cpu(), _segments()
        now_ms = int(time.time() * 1000)
        delivered = 0
        for transition in transitions:
            delivered += world.hub.publish(transition, now_ms, "tenant")
        # Let the closes complete (connection_lost) before the clock stops; the reader's bytes confirm.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            conn.send(("bytes",))
            if await loop.run_in_executor(None, conn.recv) - before_bytes >= frames:
                break
        if status is SessionStatus.COMPLETED:
            while len(world.clock) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        user, kernel = (after - before for after, before in zip(_cpu(), start, strict=True))
        assert delivered == sessions * subscribers, (delivered, sessions * subscribers)
        result[status.value] = (user + kernel) * 1e6 / delivered
        result[f"{status.value}_kernel"] = kernel * 1e6 / delivered
        result[f"{status.value}_segments"] = (_segments() - segments) / delivered
    return result


async def _main(args: argparse.Namespace) -> None:
    raise_nofile_limit()
    world = _World()
    server = await asyncio.get_running_loop().create_server(lambda: _Server(world), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    parent, child = multiprocessing.get_context("spawn").Pipe()
    reader = multiprocessing.get_context("spawn").Process(target=_reader_main, args=(port, child), daemon=True)
    reader.start()
    try:
        rounds: list[dict[str, float]] = []
        for number in range(args.rounds):
            rounds.append(await _round(world, parent, args.sessions, args.subscribers, number))
            print(
                f"round {number + 1}: fetched {rounds[-1]['fetched']:.2f} µs ({rounds[-1]['fetched_kernel']:.2f} in "
                f"the kernel), completed {rounds[-1]['completed']:.2f} µs ({rounds[-1]['completed_kernel']:.2f}) per "
                f"delivery; TCP segments per delivery {rounds[-1]['fetched_segments']:.2f} / "
                f"{rounds[-1]['completed_segments']:.2f} (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        fetched = statistics.median(r["fetched"] for r in rounds)
        completed = statistics.median(r["completed"] for r in rounds)
        both = (fetched + completed) / 2
        print(
            f"median of {len(rounds)}: fetched {fetched:.2f} µs, completed {completed:.2f} µs, both "
            f"{both:.2f} µs = {1e6 / both:,.0f} deliveries per CPU-second"
        )
    finally:
        parent.send(("exit",))
        reader.join(10)
        if reader.is_alive():
            reader.kill()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument(
        "--subscribers", type=int, default=100, help="per session (one open file per stream in each process)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    args: Any = parser.parse_args()
    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
