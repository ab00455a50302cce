"""The HTTP edge under a hostile client, against a real gateway process on the native engine, over raw sockets.

Each limit every internet-facing server has: a deadline for the request head (slowloris), an idle
timeout, a cap on header bytes (431), no unbounded reading ahead of pipelined requests, and one cap
on all open sockets (the internal port stays reachable). Memory is read from the process (RSS).

Per client address (the ``shared`` gateway; clients bind 127.0.0.2 and 127.0.0.3 as their source,
Linux routes all of 127.0.0.0/8 to the loopback): one address holds at most its share of the sockets,
so it cannot make another address's requests fail; behind a trusted proxy (127.0.0.1 there) the share
applies per client the proxy names in X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import pytest_asyncio

from tests.gateway_support import GatewayProcess, GatewayWorld, gateway_world, sse
from tests.kafka_support import event_bytes, produce
from tests.support import new_session, wait_until

pytestmark = pytest.mark.timeout(240)

TENANT = "tenant-a"
MAX_SOCKETS = 60
SHARED_SOCKETS = 40
ADDRESS_SHARE = SHARED_SOCKETS // 2  # the default: half of GATEWAY_MAX_SOCKETS


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
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayWorld]:
    """The two gateways of this module, started together: ``edge`` (tight edge limits) and ``shared`` (a share of
    the sockets per client address)."""
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "edge-limits",
        gateways={
            "edge": {
                "GATEWAY_IDLE_TIMEOUT": "1.5",
                "GATEWAY_REQUEST_HEAD_TIMEOUT": "2",
                "GATEWAY_MAX_HEADER_BYTES": "16384",
                "GATEWAY_MAX_SOCKETS": str(MAX_SOCKETS),
                "GATEWAY_UNKNOWN_SESSION_WAIT": "0",
            },
            "shared": {
                "GATEWAY_MAX_SOCKETS": str(SHARED_SOCKETS),
                "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
                "GATEWAY_IDLE_TIMEOUT": "30",  # the attacker's sockets are held for the whole test
                "GATEWAY_UNKNOWN_SESSION_WAIT": "20",
            },
        },
    ) as world:
        yield world


@pytest.fixture(scope="module")
def edge(world: GatewayWorld) -> Edge:
    return Edge(world["edge"], world.topic, world.token(TENANT), world.bootstrap)


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
    """6 MB of pipelined requests from a client that never reads: answered only as far as it reads, then cut.

    (Before keep-alive: answered once, then closed.)

    Keep-alive answers pipelined requests one at a time; what a client sends ahead is not parsed before
    the answer to the request before it is written, and reading stops beyond the head limit while the
    client does not take its answers. So memory stays bounded, and the silent reader is cut after
    ``GATEWAY_IDLE_TIMEOUT``.
    """
    before = edge.rss()
    _reader, writer = await connect(edge)
    request = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
    sent = 0
    with contextlib.suppress(ConnectionError, TimeoutError):
        while sent < 6_000_000:
            writer.write(request * 1000)
            sent += len(request) * 1000
            await asyncio.wait_for(writer.drain(), 10)
    # The kernel's socket buffers on loopback can take the whole flood; what the server holds is bounded.
    growth = edge.rss() - before
    assert growth < 30e6, f"RSS grew by {growth / 1e6:.1f} MB for a pipelining flood"
    # A client that does not read its answers is cut (GATEWAY_IDLE_TIMEOUT, 1.5 s here): the server's side of
    # the connection goes. (A client that reads them is a pipelining client, answered to the end.)
    assert edge.gateway.process is not None
    process = psutil.Process(edge.gateway.process.pid)
    ours = writer.get_extra_info("sockname")[1]

    def cut() -> bool:
        return not any(c.raddr and c.raddr.port == ours for c in process.net_connections())

    # Answered until the socket buffers between us are full, then cut: seconds here, longer on a loaded machine.
    await wait_until(cut, 90, "the server kept a client that never reads its answers")
    writer.close()
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{edge.gateway.url}/livez")).status_code == 200


async def test_one_connection_serves_a_thousand_requests_without_growing(edge: Edge) -> None:
    """Keep-alive: 1,000 sequential requests over one connection are all answered; sockets do not grow."""
    assert edge.gateway.process is not None
    process = psutil.Process(edge.gateway.process.pid)
    reader, writer = await connect(edge)
    try:
        port = edge.gateway.port

        def public_sockets() -> set[tuple[str, int]]:
            """The peers of the server's public-port connections (a connection another test left closing may
            still be listed; it can only go)."""
            return {
                (c.raddr.ip, c.raddr.port)
                for c in process.net_connections()
                if c.laddr.port == port and c.status != "LISTEN" and c.raddr
            }

        async def livez(number: int) -> None:
            writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), (number, head)
            assert b"connection: close" not in head.lower()
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert json.loads(await reader.readexactly(length)) == {"status": "alive"}

        await livez(0)  # answered: the server has accepted this connection, so it is counted below
        sockets_before = public_sockets()
        ours = writer.get_extra_info("sockname")[:2]
        assert (ours[0], ours[1]) in sockets_before
        for number in range(1, 1000):
            await livez(number)
        # A socket the server opened for these requests would stay; one that another test's client left in
        # the accept queue is accepted late and closed at once: wait for that to pass, not for a leak.
        await wait_until(lambda: not public_sockets() - sockets_before, 5, "the requests left a socket behind")
        # Pipelined: ten requests in one write, ten answers in order.
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
        for _ in range(10):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert json.loads(await reader.readexactly(length)) == {"status": "alive"}
        # HTTP/1.0, or Connection: close, ends the connection after the answer.
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)
        assert rest.startswith(b"HTTP/1.1 200 ") and b"connection: close" in rest.lower()
    finally:
        writer.close()


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


# --------------------------------------------------------------------------------------------------
# A share of the sockets per client address


@pytest.fixture(scope="module")
def shared(world: GatewayWorld) -> Edge:
    return Edge(world["shared"], world.topic, world.token(TENANT), world.bootstrap)


async def connect_from(edge: Edge, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", edge.gateway.port, local_addr=(source, 0))


async def answer_of(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed the connection (b"" for a reset)."""
    try:
        return await reader.read()
    except ConnectionError:
        return b""


async def hold(
    edge: Edge, source: str, count: int, request: bytes
) -> tuple[list[asyncio.StreamWriter], list[asyncio.Task[bytes]]]:
    """``count`` connections from ``source`` that each send ``request`` (if any) and keep their socket open."""
    writers, answers = [], []
    for _ in range(count):
        reader, writer = await connect_from(edge, source)
        if request:
            writer.write(request)
        writers.append(writer)
        answers.append(asyncio.create_task(answer_of(reader)))
    return writers, answers


async def refused_now(answers: list[asyncio.Task[bytes]], count: int) -> list[bytes]:
    def answered() -> bool:
        return sum(answer.done() for answer in answers) >= count

    await wait_until(answered, 20, f"{count} connections were never refused")
    return [answer.result() for answer in answers if answer.done()]


async def open_sockets(edge: Edge) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{edge.gateway.internal_url}/metrics")).text
    found = re.search(r"^gateway_open_sockets (\S+)$", text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


async def test_one_address_holding_its_share_cannot_make_another_addresss_requests_fail(shared: Edge) -> None:
    """The issue's attack: one address opens more idle connections than the whole socket cap and holds them."""
    attempts = SHARED_SOCKETS + 10
    writers, answers = await hold(shared, "127.0.0.2", attempts, b"")
    try:

        async def all_seen() -> bool:  # each connection is either refused (answered) or held open
            return sum(answer.done() for answer in answers) + await open_sockets(shared) >= attempts

        await wait_until(all_seen, 20, "the server never saw every connection")
        # Meanwhile another address's requests all get through: several rounds, below its own share each.
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        failures: list[str] = []
        async with httpx.AsyncClient(timeout=10, transport=transport) as victim:

            async def one() -> None:
                try:
                    response = await victim.get(f"{shared.gateway.url}/livez")
                    if response.status_code != 200:
                        failures.append(str(response.status_code))
                except httpx.HTTPError as error:
                    failures.append(type(error).__name__)

            rounds = 5
            for _ in range(rounds):
                await asyncio.gather(*(one() for _ in range(ADDRESS_SHARE - 2)))
            assert failures == [], f"{len(failures)} of {rounds * (ADDRESS_SHARE - 2)} failed: {failures[:5]}"
            stream = await victim.get(f"{shared.gateway.url}/session/{new_session('victim')}/events")
            assert stream.status_code == 401, stream.text  # admitted to authentication, not refused by the edge
        # The attacker holds exactly its share; every connection beyond it was refused at once.
        refused = [answer.result() for answer in answers if answer.done()]
        assert len(refused) == attempts - ADDRESS_SHARE, len(refused)
        assert all(answer.startswith(b"HTTP/1.1 429 ") for answer in refused), {a[:40] for a in refused}
        assert all(b"retry-after: " in answer for answer in refused)
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = (await client.get(f"{shared.gateway.internal_url}/metrics")).text
        assert 'gateway_limit_refusals_total{limit="sockets_per_address"}' in metrics
    finally:
        for writer in writers:
            writer.close()
        for answer in answers:
            answer.cancel()


async def test_behind_a_trusted_proxy_the_share_is_per_forwarded_client(shared: Edge) -> None:
    """127.0.0.1 is a trusted proxy: its connections count for the client X-Forwarded-For names, after the head."""

    def waiting_request(forwarded: str | None) -> bytes:
        line = f"X-Forwarded-For: {forwarded}\r\n" if forwarded else ""
        path = f"/session/{new_session('unknown')}/events?token={shared.token}"
        return f"GET {path} HTTP/1.1\r\nHost: gateway\r\n{line}\r\n".encode()

    async def waiting(count: int) -> None:
        async with httpx.AsyncClient(timeout=10) as client:

            async def reached() -> bool:
                text = (await client.get(f"{shared.gateway.internal_url}/metrics")).text
                return f"gateway_waiting_requests {float(count)}" in text

            await wait_until(reached, 20, f"not {count} requests waiting")

    held: list[asyncio.StreamWriter] = []
    tasks: list[asyncio.Task[bytes]] = []
    try:
        # Requests for sessions that never appear wait (20 s), holding their sockets.
        for _ in range(ADDRESS_SHARE + 3):
            writers, answers = await hold(shared, "127.0.0.1", 1, waiting_request("192.0.2.50, 203.0.113.9"))
            held += writers
            tasks += answers
        refused = await refused_now(tasks, 3)
        assert all(answer.startswith(b"HTTP/1.1 429 ") for answer in refused), {a[:40] for a in refused}
        assert all(b"content-length: 0\r\n" in answer for answer in refused)  # by the edge, not by admission
        # Another client behind the same proxy still gets in.
        others, other_answers = await hold(shared, "127.0.0.1", 2, waiting_request("203.0.113.10"))
        held += others
        tasks += other_answers
        await waiting(ADDRESS_SHARE + 2)
        assert sum(answer.done() for answer in tasks) == 3
    finally:
        for writer in held:
            writer.close()
        for answer in tasks:
            answer.cancel()
    await waiting(0)
    # The proxy's own requests, which name no client, have no per-address share (only the cap on all sockets).
    held, tasks = [], []
    for _ in range(ADDRESS_SHARE + 3):  # each for a session of its own (the per-session limit is 20)
        writers, answers = await hold(shared, "127.0.0.1", 1, waiting_request(None))
        held += writers
        tasks += answers
    try:
        await waiting(ADDRESS_SHARE + 3)
        assert not any(answer.done() for answer in tasks)
    finally:
        for writer in held:
            writer.close()
        for answer in tasks:
            answer.cancel()
