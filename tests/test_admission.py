"""Admission under abuse, against a real gateway process: limits count waiting requests and are keyed per tenant.

- Requests parked on sessions that do not exist count from the moment they arrive: beyond
  ``GATEWAY_MAX_WAITING_REQUESTS`` they get 503 at once, and the process stays responsive.
- Another tenant's requests for a victim's session id never count against the victim's own limit.
- The per-subject limit is off by default (many browsers share one client token in the reference
  deployment). Tokens without ``sub`` sharing a bucket only within their tenant, and each limit's answer,
  are checked in process (``test_admission_unit``): no process boundary is involved.
- A wait for a session is answered at the same time whether or not another tenant's session of
  that id received a transition meanwhile.
- The waiting budget is shared fairly (the ``fair`` gateway): one tenant holds at most its share, one
  client address (the TCP peer, or the client a trusted proxy names) at most its own, so another
  tenant's or client's browser that opens a stream just before its session's first record still
  gets it; a client that is not a trusted proxy cannot spread itself over forged addresses.
- Refusing a request costs the same CPU whether 20 or 3,000 streams are open: no walk over the
  open streams on the admission path.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from tests.gateway_support import GatewayWorld, gateway_world, sse
from tests.kafka_support import event_bytes, produce, send, started_producer
from tests.support import new_session, wait_until

pytestmark = pytest.mark.timeout(240)

WAIT = 2.0
MAX_WAITING = 20
PER_SESSION = 3
TENANT_SHARE = MAX_WAITING // 2  # the defaults: half of the waiting budget per tenant ...
ADDRESS_SHARE = MAX_WAITING // 4  # ... and a quarter per client address
FAIR_WAIT = 8.0


World = GatewayWorld


@pytest_asyncio.fixture(scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "admission",
        GATEWAY_UNKNOWN_SESSION_WAIT=str(WAIT),
        GATEWAY_MAX_WAITING_REQUESTS=str(MAX_WAITING),
        GATEWAY_MAX_CONNECTIONS_PER_SESSION=str(PER_SESSION),
    ) as world:
        yield world


@pytest_asyncio.fixture(scope="module")
async def fair(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """The default shares of a 20-request waiting budget, long waits, and only 127.0.0.1 as a trusted proxy."""
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "fair",
        GATEWAY_UNKNOWN_SESSION_WAIT=str(FAIR_WAIT),
        GATEWAY_MAX_WAITING_REQUESTS=str(MAX_WAITING),
        GATEWAY_MAX_CONNECTIONS_PER_SESSION=str(PER_SESSION),
        GATEWAY_TRUSTED_PROXIES="127.0.0.1/32",
    ) as world:
        yield world


async def publish(world: World, session_id: str, tenant: str, status: str = "active") -> None:
    await produce(world.bootstrap, world.topic, [(session_id.encode(), event_bytes(session_id, tenant, status))])


async def wait_visible(world: World, client: httpx.AsyncClient, session_id: str, token: str) -> None:
    async def streams() -> bool:
        async with sse(client, world.url(session_id), params={"token": token}) as stream:
            return stream.status == 200

    await wait_until(streams, 30, f"{session_id} never streamed")


async def test_parked_requests_are_bounded_and_the_process_stays_responsive(
    world: World, client: httpx.AsyncClient
) -> None:
    # Four tenants, each below its share: the cap on all waiting requests is what refuses.
    tokens = [world.token(f"tenant-{n}") for n in range(4)]
    started = time.monotonic()
    parked = [
        asyncio.ensure_future(client.get(world.url(new_session("parked")), params={"token": tokens[n % 4]}))
        for n in range(MAX_WAITING + 16)
    ]

    async def waiting_full() -> bool:
        text = (await client.get(f"{world.gateway.internal_url}/metrics")).text
        return f"gateway_waiting_requests {float(MAX_WAITING)}" in text

    await wait_until(waiting_full, 20, "the waiting requests never reached their cap")
    livez_started = time.monotonic()
    assert (await client.get(f"{world.gateway.url}/livez")).status_code == 200
    assert time.monotonic() - livez_started < 1.5
    responses = await asyncio.gather(*parked)
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [404] * MAX_WAITING + [503] * 16, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.json()["message"] == "Too many requests waiting on this server" for r in refused)
    assert all(int(r.headers["retry-after"]) > 0 for r in refused)
    assert time.monotonic() - started < WAIT + 20
    metrics = (await client.get(f"{world.gateway.internal_url}/metrics")).text
    assert "gateway_waiting_requests 0.0" in metrics


async def test_another_tenant_cannot_lock_a_victim_out_of_its_session(world: World, client: httpx.AsyncClient) -> None:
    victim_session = new_session("victim")
    await publish(world, victim_session, "tenant-a")
    victim_token = world.token("tenant-a", session=victim_session)
    await wait_visible(world, client, victim_session, victim_token)
    attacker = world.token("tenant-b")
    probes = [
        asyncio.ensure_future(client.get(world.url(victim_session), params={"token": attacker}))
        for _ in range(PER_SESSION * 4)
    ]

    async def attacker_at_its_limit() -> bool:
        # PER_SESSION of them wait for the session (it is not the attacker's), the rest were refused at once.
        refused = sum(probe.done() for probe in probes)
        return refused == len(probes) - PER_SESSION and await waiting_requests(world, client) == PER_SESSION

    await wait_until(attacker_at_its_limit, 20, "the attacker's requests never filled their own per-session limit")
    async with sse(client, world.url(victim_session), params={"token": victim_token}) as stream:
        assert stream.status == 200, stream.response.text
        event = await stream.next_event()
        assert event is not None and event.json()["status"] == "active"
    answers = await asyncio.gather(*probes)
    statuses = {r.status_code for r in answers}
    assert statuses <= {404, 429}, statuses  # the attacker is limited on its own key only


async def test_many_browsers_sharing_one_client_token_are_not_refused(world: World, client: httpx.AsyncClient) -> None:
    """The reference deployment's token is minted for the tenant's client: one sub for every browser."""
    token = world.token("tenant-a", sub="wallet-backend-client")
    sessions = [new_session("shared-sub") for _ in range(60)]
    await produce(world.bootstrap, world.topic, [(s.encode(), event_bytes(s, "tenant-a", "active")) for s in sessions])
    await wait_visible(world, client, sessions[-1], token)
    contexts = [sse(client, world.url(s), params={"token": token}) for s in sessions]
    streams = []
    try:
        for context in contexts:
            streams.append(await context.__aenter__())
        assert [stream.status for stream in streams] == [200] * len(sessions)
    finally:
        for context in reversed(contexts[: len(streams)]):
            await context.__aexit__(None, None, None)


async def test_a_wait_ends_at_the_same_time_whatever_happens_to_another_tenants_session(
    world: World, client: httpx.AsyncClient
) -> None:
    attacker = world.token("tenant-b")

    async def timed_404(session_id: str, during: float | None, producer: AIOKafkaProducer) -> float:
        started = time.monotonic()
        request = asyncio.ensure_future(client.get(world.url(session_id), params={"token": attacker}))
        if during is not None:
            await asyncio.sleep(during)
            record = (session_id.encode(), event_bytes(session_id, "tenant-a", "fetched"))
            await send(producer, world.topic, [record])
        response = await request
        assert response.status_code == 404
        return time.monotonic() - started

    existing = new_session("other-tenant")
    await publish(world, existing, "tenant-a")
    await wait_visible(world, client, existing, world.token("tenant-a"))
    # The touch is sent with a producer started beforehand: a fresh one's start-up and shutdown could outlast
    # the wait, and ``touched`` would measure them instead of the gateway's answer.
    async with started_producer(world.bootstrap) as producer:
        unknown = await timed_404(new_session("never"), None, producer)
        touched = await timed_404(existing, 0.5, producer)
    assert touched >= WAIT - 0.1, f"answered after {touched:.2f}s, before the full wait of {WAIT}s"
    assert abs(touched - unknown) < 1.0, (unknown, touched)


async def test_a_stream_for_a_session_whose_streams_are_draining_gets_its_state(
    kafka_bootstrap: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    session, finished = new_session("draining"), new_session("finished")
    records = [
        (session.encode(), event_bytes(session, "tenant-a", "active")),
        (finished.encode(), event_bytes(finished, "tenant-a", "completed")),
    ]
    settings = {"GATEWAY_MAX_CONNECTIONS_PER_SESSION": "2", "GATEWAY_DRAIN_SECONDS": "30"}
    # Written before the gateway starts: ready means it has read them.
    async with gateway_world(kafka_bootstrap, tmp_path, "drain-admit", records=records, common=settings) as world:
        gateway, token = world.gateway, world.token("tenant-a")
        async with (
            sse(client, world.url(session), params={"token": token}) as first,
            sse(client, world.url(session), params={"token": token}) as second,
        ):
            assert first.status == second.status == 200
            # SIGTERM: the two streams are closed at 7.5 s and 22.5 s of a 30 s drain, so both are still
            # open (the session at its limit) when the third request arrives.
            gateway.signal()
            await gateway.wait_status("/readyz", 503, 10)
            async with sse(client, world.url(session), params={"token": token}) as third:
                assert third.status == 200, third.response.text
                events = await third.events_until_end(10)
                assert [event.json()["status"] for event in events] == ["active"]
            async with sse(client, world.url(finished), params={"token": token}) as done:
                assert done.status == 200, done.response.text
                events = await done.events_until_end(10)
                assert [event.json()["status"] for event in events] == ["completed"]
        # With the two streams gone, the drain completes and the process exits by itself, cleanly.
        assert gateway.process is not None
        assert await asyncio.to_thread(gateway.process.wait, 30) == 0
    assert "Traceback" not in gateway.logs(), gateway.logs()[-3000:]


# --------------------------------------------------------------------------------------------------
# Fair shares of the waiting budget


async def waiting_requests(world: World, client: httpx.AsyncClient) -> float:
    text = (await client.get(f"{world.gateway.internal_url}/metrics")).text
    found = re.search(r"^gateway_waiting_requests (\S+)$", text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


async def wait_waiting(world: World, client: httpx.AsyncClient, count: int, what: str) -> None:
    async def reached() -> bool:
        return await waiting_requests(world, client) == count

    async def seen() -> str:
        return f"{what}: gateway_waiting_requests is {await waiting_requests(world, client)}, not {count}"

    await wait_until(reached, 20, seen)


def park(
    world: World, client: httpx.AsyncClient, token: str, count: int, headers: dict[str, str] | None = None
) -> list[asyncio.Future[httpx.Response]]:
    """``count`` requests that wait for sessions that never appear (404 after ``FAIR_WAIT``)."""
    return [
        asyncio.ensure_future(client.get(world.url(new_session("parked")), params={"token": token}, headers=headers))
        for _ in range(count)
    ]


async def refused_at_once(requests: Sequence[asyncio.Future[httpx.Response]], count: int) -> list[httpx.Response]:
    """The ``count`` requests answered while the others still wait (they are refused, not parked)."""

    def answered() -> bool:
        return sum(request.done() for request in requests) >= count

    await wait_until(answered, 20, f"{count} of the requests were never answered at once")
    return [request.result() for request in requests if request.done()]


async def stream_once_published(
    world: World, client: httpx.AsyncClient, tenant: str, waiting_before: int, **request: Any
) -> None:
    """A request for a session that does not exist yet waits (counted), and streams once its first record arrives."""
    session_id = new_session(f"first-{tenant}")

    async def first_event() -> tuple[int, Any]:
        async with sse(client, world.url(session_id), **request) as stream:
            if stream.status != 200:
                return stream.status, stream.response.text
            event = await stream.next_event()
            return 200, event.json() if event is not None else None

    async with started_producer(world.bootstrap) as producer:  # started beforehand: the request waits meanwhile
        opened = asyncio.ensure_future(first_event())

        async def parked() -> bool:
            return opened.done() or await waiting_requests(world, client) == waiting_before + 1

        await wait_until(parked, 20, f"the request of {tenant} never waited")
        assert not opened.done(), f"the request of {tenant} was answered without waiting: {opened.result()}"
        await send(producer, world.topic, [(session_id.encode(), event_bytes(session_id, tenant, "active"))])
        status, data = await asyncio.wait_for(opened, 30)
    assert status == 200, data
    assert data is not None and (data["id"], data["status"]) == (session_id, "active"), data


async def quiet(world: World, client: httpx.AsyncClient) -> None:
    await wait_waiting(world, client, 0, "requests of an earlier test still wait")


async def test_one_tenant_cannot_take_the_whole_waiting_budget(fair: World, client: httpx.AsyncClient) -> None:
    """Tenant A parks as many requests as the whole budget; tenant B's stream opened before its record still works."""
    await quiet(fair, client)
    greedy = park(fair, client, fair.token("tenant-a"), MAX_WAITING)
    refused = await refused_at_once(greedy, MAX_WAITING - TENANT_SHARE)
    assert {r.status_code for r in refused} == {429}, [(r.status_code, r.text) for r in refused]
    assert {r.json()["message"] for r in refused} == {"Too many requests waiting for this tenant"}
    assert all(int(r.headers["retry-after"]) > 0 for r in refused)
    await wait_waiting(fair, client, TENANT_SHARE, "tenant A does not hold exactly its share")
    # Tenant A still holds its share while tenant B's browser opens its stream and the record arrives.
    await stream_once_published(fair, client, "tenant-b", TENANT_SHARE, params={"token": fair.token("tenant-b")})
    assert {r.status_code for r in await asyncio.gather(*greedy)} == {404, 429}
    metrics = (await client.get(f"{fair.gateway.internal_url}/metrics")).text
    assert 'gateway_limit_refusals_total{limit="waiting_per_tenant"}' in metrics


async def test_one_client_address_cannot_take_its_tenants_waiting_share(fair: World, client: httpx.AsyncClient) -> None:
    """Behind a trusted proxy (127.0.0.1) each forwarded client has its share; the tenant's other clients still wait."""
    await quiet(fair, client)
    token = fair.token("tenant-a")
    greedy = park(fair, client, token, MAX_WAITING, headers={"x-forwarded-for": "192.0.2.1, 198.51.100.7"})
    refused = await refused_at_once(greedy, MAX_WAITING - ADDRESS_SHARE)
    assert {r.status_code for r in refused} == {429}, [(r.status_code, r.text) for r in refused]
    assert {r.json()["message"] for r in refused} == {"Too many requests waiting from this address"}
    await wait_waiting(fair, client, ADDRESS_SHARE, "the client does not hold exactly its share")
    # The client's own left-hand part of the header is not trusted: 192.0.2.1 is not the client either.
    other = {"token": token}
    await stream_once_published(
        fair, client, "tenant-a", ADDRESS_SHARE, params=other, headers={"x-forwarded-for": "198.51.100.8"}
    )
    assert {r.status_code for r in await asyncio.gather(*greedy)} == {404, 429}


async def test_a_client_that_is_not_a_trusted_proxy_cannot_forge_its_address(fair: World) -> None:
    """127.0.0.2 is not a trusted proxy: whatever X-Forwarded-For it sends, its requests count for 127.0.0.2."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits, transport=transport) as forger:
        await quiet(fair, forger)
        token = fair.token("tenant-a")
        requests = [
            asyncio.ensure_future(
                forger.get(
                    fair.url(new_session("forged")),
                    params={"token": token},
                    headers={"x-forwarded-for": f"203.0.113.{n}"},
                )
            )
            for n in range(ADDRESS_SHARE + 3)
        ]
        refused = await refused_at_once(requests, 3)
        assert [r.json()["message"] for r in refused] == ["Too many requests waiting from this address"] * 3
        assert sorted(r.status_code for r in await asyncio.gather(*requests)) == [404] * ADDRESS_SHARE + [429] * 3


# --------------------------------------------------------------------------------------------------
# The cost of a refusal


async def open_raw_stream(world: World, session_id: str, token: str) -> asyncio.StreamWriter:
    """A stream on a plain socket (cheap enough for thousands), open once its first event arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", world.gateway.port)
    writer.write(f"GET /session/{session_id}/events?token={token} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
    received = b""
    while b"data:" not in received:
        chunk = await asyncio.wait_for(reader.read(4096), 30)
        assert chunk, f"{session_id}: the stream ended: {received[:200]!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    return writer


async def raw_status(world: World, session_id: str, token: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", world.gateway.port)
    try:
        writer.write(
            f"GET /session/{session_id}/events?token={token} HTTP/1.1\r\nHost: gateway\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1])


async def refusals_cpu(world: World, session_id: str, token: str, count: int) -> float:
    """Seconds of the gateway's CPU per refused request (``count`` requests, 8 at a time)."""
    assert world.gateway.process is not None
    process = psutil.Process(world.gateway.process.pid)
    before = process.cpu_times()
    for start in range(0, count, 8):
        statuses = await asyncio.gather(*(raw_status(world, session_id, token) for _ in range(min(8, count - start))))
        assert set(statuses) == {429}, statuses
    after = process.cpu_times()
    return float(after.user + after.system - before.user - before.system) / count


async def test_a_refusal_costs_the_same_with_20_or_3000_open_streams(fair: World, client: httpx.AsyncClient) -> None:
    many, refusals = 3000, 500
    token = fair.token("tenant-a")
    full = new_session("full")
    others = [new_session("open") for _ in range(many)]
    records = [(s.encode(), event_bytes(s, "tenant-a", "active")) for s in [full, *others]]
    await produce(fair.bootstrap, fair.topic, records)
    await wait_visible(fair, client, others[-1], token)
    writers: list[asyncio.StreamWriter] = []
    try:
        # ``full`` at its limit, 20 streams open in all.
        writers += [await open_raw_stream(fair, full, token) for _ in range(PER_SESSION)]
        writers += [await open_raw_stream(fair, s, token) for s in others[: 20 - PER_SESSION]]
        await raw_status(fair, full, token)  # warm-up (first refusal, logging set-up)
        few = await refusals_cpu(fair, full, token, refusals)
        for start in range(20 - PER_SESSION, many - PER_SESSION, 50):
            batch = others[start : min(start + 50, many - PER_SESSION)]
            writers += await asyncio.gather(*(open_raw_stream(fair, s, token) for s in batch))
        assert len(writers) == many
        crowded = await refusals_cpu(fair, full, token, refusals)
    finally:
        for writer in writers:
            writer.close()
    print(f"CPU per refusal: {few * 1e6:.0f} us with 20 open streams, {crowded * 1e6:.0f} us with {many}")
    # Before: a refusal walked every open stream, about 0.4 us each: 500 us with 20 streams, 1,260 us with 2,000.
    assert crowded < 1.6 * few + 50e-6, (few, crowded)
