"""In-process micro-benchmark of issue 24 item 2 (connection cost): Python CPU per stream opening.

``python -m benchmarks.connection_cost [--streams N] [--rounds R] [--profile OUT]``

Drives the gateway's own ``EdgeProtocol`` (the app ``create_app`` builds, its real verifier, JWKS cache
loaded over HTTP from ``benchmarks.common.JwksServer``, ticket codec, registry, store and JSON access log
written to a file) with an in-memory transport: ``connection_made``, the request head an EventSource sends,
admission, the head and first frames, the access line, ``connection_lost``. What it leaves out is the
kernel and uvloop (accept, recv, send, close), which ``python -m benchmarks --only 2`` includes; what it
measures is the part of figure 2 that our code decides, without Kafka or load processes, so an A/B of a
change takes seconds. Per round: N never-seen RS256 tokens, the same N tokens again (verified-token cache),
N never-seen tickets; CPU (``time.process_time``) per stream, median and least over rounds (on a
shared machine the least is the figure least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import AUDIENCE, ISSUER, TENANT, JwksServer, TokenMinter, new_signing_key

TICKET_KEYS = "bench:" + "q0Jx3mV9sT2uW7yZ1aC4dF6gH8jK0lN3pR5tV7xZ9bD"


class MemoryTransport:
    """The part of an asyncio transport the edge uses; keeps nothing it is given."""

    __slots__ = ("closing", "written")

    _EXTRA = {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000), "socket": None}

    def __init__(self) -> None:
        self.closing = False
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._EXTRA.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


def request(session_id: str, parameter: str, credential: str) -> bytes:
    """What ``benchmarks.loadgen`` sends (an EventSource's request)."""
    return (
        f"GET /session/{session_id}/events?{parameter}={credential} HTTP/1.1\r\n"
        "Host: 127.0.0.1:8080\r\n"
        "Accept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n"
        "User-Agent: session-events-bench/1\r\n"
        "\r\n"
    ).encode()


async def _open_all(state: Any, heads: list[bytes]) -> float:
    """Opens one stream per head, one at a time, and closes it; CPU seconds per stream."""
    from gateway.edge.connection import EdgeProtocol

    loop = asyncio.get_running_loop()
    started = time.process_time()
    for head in heads:
        protocol = EdgeProtocol(state, _loop=loop)
        transport = MemoryTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(head)
        task = protocol._task
        if task is not None:
            await task
        if protocol.stream is None:
            raise SystemExit(f"no stream opened (wrote {transport.written} bytes)")
        protocol.connection_lost(None)
    return (time.process_time() - started) / len(heads)


async def run(streams: int, rounds: int, profile: str | None) -> dict[str, list[float]]:
    key = new_signing_key()
    jwks = JwksServer(key.as_dict(private=False)).start()
    log_fd, log_name = tempfile.mkstemp(prefix="connection-cost-", suffix=".log")
    os.environ.update(
        {
            "GATEWAY_JWKS_URL": jwks.url,
            "GATEWAY_JWT_ISSUER": ISSUER,
            "GATEWAY_JWT_AUDIENCE": AUDIENCE,
            "GATEWAY_TICKET_KEYS": TICKET_KEYS,
            "GATEWAY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "GATEWAY_LOG_LEVEL": "INFO",
        }
    )
    from consumers.records import StatusUpdate
    from consumers.settings import ConsumerSettings
    from gateway.auth.ticket_keys import parse_ticket_keys
    from gateway.auth.tickets import Grant, TicketCodec
    from gateway.edge.state import EdgeLimits, EdgeState
    from gateway.runtime.app import create_app
    from gateway.runtime.logging_setup import JsonFormatter, configure_logging
    from gateway.settings import GatewaySettings
    from schemas import SessionStatus

    settings = GatewaySettings()
    configure_logging("INFO", "json", "bench")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    sink = logging.StreamHandler(os.fdopen(log_fd, "w"))  # the server's stderr: a file, written line by line

    sink.setFormatter(JsonFormatter("bench"))
    root.addHandler(sink)
    app = create_app(settings, ConsumerSettings())
    runtime = app.runtime
    await runtime.jwks.load()
    runtime.progress.caught_up.set()
    limits = EdgeLimits(30.0, 10.0, 16384, 100_000, 0, "", settings.access_log)
    state = EdgeState(limits, app.events, app)
    minter = TokenMinter(key.as_dict(private=True))
    codec = TicketCodec(parse_ticket_keys([TICKET_KEYS]), 0.0)
    figures: dict[str, list[float]] = {"new_token": [], "known_token": [], "ticket": []}
    profiler = cProfile.Profile() if profile else None
    for number in range(rounds):
        ids = [f"s-{number}-{i}" for i in range(streams)]
        for offset, session_id in enumerate(ids):
            update = StatusUpdate(session_id, TENANT, SessionStatus.ACTIVE, int(time.time() * 1000), None)
            runtime.store.apply(update, 0, number * streams + offset)
        tokens = [minter.mint(f"user-{number}-{i}") for i in range(streams)]
        expires = int(time.time()) + 3600
        tickets = [codec.mint(Grant(f"t-{number}-{i}", TENANT, sid, expires)) for i, sid in enumerate(ids)]
        token_heads = [request(sid, "token", token) for sid, token in zip(ids, tokens, strict=True)]
        ticket_heads = [request(sid, "ticket", ticket) for sid, ticket in zip(ids, tickets, strict=True)]
        if profiler:
            profiler.enable()
        figures["new_token"].append(await _open_all(state, token_heads))
        figures["known_token"].append(await _open_all(state, token_heads))
        figures["ticket"].append(await _open_all(state, ticket_heads))
        if profiler:
            profiler.disable()
    if profiler and profile:
        profiler.dump_stats(profile)
        stats = pstats.Stats(profile, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
    jwks.stop()
    await runtime.http.aclose()
    sink.close()
    os.unlink(log_name)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connection_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", metavar="OUT", help="cProfile stats to OUT (figures are then slowed down)")
    args = parser.parse_args(argv)
    import uvloop

    figures = uvloop.run(run(args.streams, args.rounds, args.profile))
    load = os.getloadavg()[0]
    for name, values in figures.items():
        spread = ", ".join(f"{value * 1e6:.0f}" for value in values)
        median, least = statistics.median(values) * 1e6, min(values) * 1e6
        print(f"{name:12s} median {median:6.1f} min {least:6.1f} µs/stream  (rounds: {spread}; load {load:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
