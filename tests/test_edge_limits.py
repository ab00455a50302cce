"""The HTTP edge under a hostile client, against a real gateway process on the native engine, over raw sockets.

Each limit every internet-facing server has: a deadline for the request head (slowloris), an idle
timeout, a cap on header bytes (431), no unbounded reading ahead of pipelined requests, and one cap
on all open sockets (the internal port stays reachable). Memory is read from the process (RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import pytest_asyncio

from tests.gateway_support import GatewayProcess, JwksServer, gateway_env, mint, rsa_key, sse
from tests.kafka_support import create_topic, event_bytes, produce, unique_topic
from tests.support import new_session, wait_until

pytestmark = pytest.mark.timeout(240)

TENANT = "tenant-a"
MAX_SOCKETS = 60


@dataclass
class Edge:
    gateway: GatewayProcess
    topic: str
    token: str
    bootstrap: str

    def rss(self) -> int:
        assert self.gateway.process is not None
        return int(psutil.Process(self.gateway.process.pid).memory_info().rss)


@pytest_asyncio.fixture(scope="module")
async def edge(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    key = rsa_key("edge-limits")
    jwks = JwksServer(keys=[key]).start()
    topic = unique_topic("edge-limits")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    env = gateway_env(
        kafka_bootstrap,
        topic,
        jwks,
        GATEWAY_HTTP_ENGINE="native",
        GATEWAY_IDLE_TIMEOUT="1.5",
        GATEWAY_REQUEST_HEAD_TIMEOUT="2",
        GATEWAY_MAX_HEADER_BYTES="16384",
        GATEWAY_MAX_SOCKETS=str(MAX_SOCKETS),
        GATEWAY_UNKNOWN_SESSION_WAIT="0",
    )
    gateway = GatewayProcess(env, tmp_path_factory.mktemp("edge-limits") / "gateway.log").start()
    try:
        await gateway.wait_ready(60)
        yield Edge(gateway, topic, mint(key, tenant=TENANT), kafka_bootstrap)
    finally:
        gateway.stop()
        jwks.stop()


async def connect(edge: Edge) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", edge.gateway.port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float]:
    """Everything the server sent until it closed the connection, and after how long."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), seconds)
    return data, time.monotonic() - started


async def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(edge: Edge) -> None:
    reader, writer = await connect(edge)
    data, after = await closed_within(reader, 15)
    writer.close()
    assert data == b"" and 1.0 <= after <= 12, after


async def test_slowloris_gets_408_at_the_head_deadline(edge: Edge) -> None:
    reader, writer = await connect(edge)
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Drip: "
    started = time.monotonic()
    writer.write(head)

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(0.5)
                writer.write(b"a")
                await writer.drain()

    dripping = asyncio.create_task(drip())
    try:
        data = await asyncio.wait_for(reader.read(), 20)
    finally:
        dripping.cancel()
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 "), data[:80]
    assert time.monotonic() - started < 15


async def test_oversized_headers_get_431_without_holding_their_bytes(edge: Edge) -> None:
    before = edge.rss()

    async def one() -> bytes:
        reader, writer = await connect(edge)
        answer = asyncio.ensure_future(reader.read(200))  # read while writing, as a browser would
        try:
            writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * 65536
            with contextlib.suppress(ConnectionError, TimeoutError):
                for _ in range(20 * 16):  # 20 MB unless the server hangs up first
                    if answer.done():
                        break
                    writer.write(chunk)
                    await asyncio.wait_for(writer.drain(), 5)
            return await asyncio.wait_for(answer, 15)
        finally:
            writer.close()

    answers = await asyncio.gather(*(one() for _ in range(10)))
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers), [a[:40] for a in answers]
    growth = edge.rss() - before
    assert growth < 30e6, f"RSS grew by {growth / 1e6:.1f} MB for 10 oversized heads"


async def test_a_pipelining_flood_is_not_read_ahead(edge: Edge) -> None:
    """6 MB of pipelined requests from a client that never reads: answered once, then cut, memory bounded."""
    before = edge.rss()
    reader, writer = await connect(edge)
    request = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
    sent = 0
    with contextlib.suppress(ConnectionError, TimeoutError):
        while sent < 6_000_000:
            writer.write(request * 1000)
            sent += len(request) * 1000
            await asyncio.wait_for(writer.drain(), 10)
    data = b""
    with contextlib.suppress(ConnectionError):
        data = await asyncio.wait_for(reader.read(), 15)  # returns (or is reset) once the server closed
    writer.close()
    assert data.count(b"HTTP/1.1 200") <= 1, "pipelined requests beyond the first were answered"
    growth = edge.rss() - before
    assert growth < 30e6, f"RSS grew by {growth / 1e6:.1f} MB for a pipelining flood"
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{edge.gateway.url}/livez")).status_code == 200


async def test_a_stream_client_that_keeps_sending_is_cut(edge: Edge) -> None:
    session = new_session("talker")
    await produce(edge.bootstrap, edge.topic, [(session.encode(), event_bytes(session, TENANT, "active"))])
    for _ in range(100):  # until the record reached the store
        reader, writer = await connect(edge)
        writer.write(f"GET /session/{session}/events?token={edge.token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        if head.startswith(b"HTTP/1.1 200 "):
            break
        writer.close()
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the session never streamed")
    with contextlib.suppress(ConnectionError):
        for _ in range(200):
            writer.write(b"x" * 4096)
            await writer.drain()
    with contextlib.suppress(ConnectionError):  # a reset is how the server drops it
        await asyncio.wait_for(reader.read(), 15)  # times out (fails) if the server never drops it
    writer.close()


async def test_one_cap_on_all_sockets_and_the_internal_port_stays_reachable(edge: Edge, tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []
    try:
        # Fill the public port with connections that each keep sending a slow head (not idle, not done).
        for _ in range(MAX_SOCKETS + 5):
            _, writer = await connect(edge)
            writer.write(b"GET /livez HTTP/1.1\r\n")
            held.append(writer)
        reader, writer = await connect(edge)
        refused = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503 "), refused[:60]
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{edge.gateway.internal_url}/livez")).status_code == 200
            metrics = (await client.get(f"{edge.gateway.internal_url}/metrics")).text
            assert 'gateway_limit_refusals_total{limit="max_sockets"}' in metrics
    finally:
        for writer in held:
            writer.close()

    async def streams_again() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(f"{edge.gateway.url}/livez")).status_code == 200

    await wait_until(streams_again, 30, "the public port did not recover after the sockets closed")
    session = new_session("after-cap")
    await produce(edge.bootstrap, edge.topic, [(session.encode(), event_bytes(session, TENANT, "active"))])
    async with httpx.AsyncClient(timeout=20) as client:
        for _ in range(150):  # up to ~30 s: the record may still be on its way to the store
            async with sse(client, f"{edge.gateway.url}/session/{session}/events", params={"token": edge.token}) as s:
                if s.status == 404:
                    await asyncio.sleep(0.2)
                    continue
                assert s.status == 200
                break
        else:
            raise AssertionError("no stream after the cap")


async def test_malformed_request_lines_get_400(edge: Edge) -> None:
    for garbage in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
    ):
        reader, writer = await connect(edge)
        writer.write(garbage)
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert data.startswith(b"HTTP/1.1 400 "), (garbage, data[:60])
