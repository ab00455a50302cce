"""Admission under abuse, against a real gateway process: limits count waiting requests and are keyed per tenant.

- Requests parked on sessions that do not exist count from the moment they arrive: beyond
  ``GATEWAY_MAX_WAITING_REQUESTS`` they get 503 at once, and the process stays responsive.
- Another tenant's requests for a victim's session id never count against the victim's own limit.
- Tokens without ``sub`` share a bucket only within their tenant; the per-subject limit is off by
  default (many browsers share one client token in the reference deployment).
- A wait for a session is answered at the same time whether or not another tenant's session of
  that id received a transition meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from tests.gateway_support import GatewayProcess, JwksServer, gateway_env, mint, rsa_key, sse
from tests.kafka_support import create_topic, event_bytes, produce, send, started_producer, unique_topic
from tests.support import new_session, wait_until

pytestmark = pytest.mark.timeout(240)

WAIT = 2.0
MAX_WAITING = 20
PER_SESSION = 3


@dataclass
class World:
    key: Any
    bootstrap: str
    topic: str
    gateway: GatewayProcess

    def token(self, tenant: str, **claims: Any) -> str:
        return mint(self.key, tenant=tenant, **claims)

    def url(self, session_id: str) -> str:
        return f"{self.gateway.url}/session/{session_id}/events"


@contextlib.asynccontextmanager
async def own_world(kafka_bootstrap: str, logs: Path, label: str, **settings: str) -> AsyncIterator[World]:
    """A JWKS server, a topic and a ready gateway of their own, configured by ``settings``."""
    key = rsa_key(label)
    jwks = JwksServer(keys=[key]).start()
    topic = unique_topic(label)
    await create_topic(kafka_bootstrap, topic, partitions=1)
    gateway = GatewayProcess(gateway_env(kafka_bootstrap, topic, jwks, **settings), logs / "gateway.log").start()
    try:
        await gateway.wait_ready(60)
        yield World(key, kafka_bootstrap, topic, gateway)
    finally:
        gateway.stop()
        jwks.stop()


@pytest_asyncio.fixture(scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with own_world(
        kafka_bootstrap,
        tmp_path_factory.mktemp("admission"),
        "admission",
        GATEWAY_UNKNOWN_SESSION_WAIT=str(WAIT),
        GATEWAY_MAX_WAITING_REQUESTS=str(MAX_WAITING),
        GATEWAY_MAX_CONNECTIONS_PER_SESSION=str(PER_SESSION),
    ) as world:
        yield world


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        yield http


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
    token = world.token("tenant-a")
    started = time.monotonic()
    parked = [
        asyncio.ensure_future(client.get(world.url(new_session("parked")), params={"token": token}))
        for _ in range(MAX_WAITING + 15)
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
    assert statuses == [404] * MAX_WAITING + [503] * 15, statuses
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
    await asyncio.sleep(0.5)  # the attacker's requests are waiting now
    async with sse(client, world.url(victim_session), params={"token": victim_token}) as stream:
        assert stream.status == 200, stream.response.text
        event = await stream.next_event()
        assert event is not None and event.json()["status"] == "active"
    answers = await asyncio.gather(*probes)
    statuses = {r.status_code for r in answers}
    assert statuses <= {404, 429}, statuses  # the attacker is limited on its own key only


async def test_tokens_without_sub_share_a_bucket_only_within_their_tenant(kafka_bootstrap: str, tmp_path: Path) -> None:
    sessions = {tenant: [new_session(tenant) for _ in range(3)] for tenant in ("tenant-a", "tenant-b")}
    records = [(s.encode(), event_bytes(s, tenant, "active")) for tenant, ids in sessions.items() for s in ids]
    limit = {"GATEWAY_MAX_CONNECTIONS_PER_SUBJECT": "2"}
    async with (
        own_world(kafka_bootstrap, tmp_path, "no-sub", **limit) as world,
        httpx.AsyncClient(timeout=20) as client,
    ):
        await produce(kafka_bootstrap, world.topic, records)
        for tenant, ids in sessions.items():
            await wait_visible(world, client, ids[-1], world.token(tenant, sub=None))
        opened: list[Any] = []
        statuses: dict[str, list[int]] = {}
        try:
            for tenant, ids in sessions.items():
                token = world.token(tenant, sub=None)
                for session_id in ids:
                    context = sse(client, world.url(session_id), params={"token": token})
                    stream = await context.__aenter__()
                    opened.append(context)
                    statuses.setdefault(tenant, []).append(stream.status)
        finally:
            for context in reversed(opened):
                await context.__aexit__(None, None, None)
    assert statuses == {"tenant-a": [200, 200, 429], "tenant-b": [200, 200, 429]}, statuses


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
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    session, finished = new_session("draining"), new_session("finished")
    settings = {"GATEWAY_MAX_CONNECTIONS_PER_SESSION": "2", "GATEWAY_DRAIN_SECONDS": "30"}
    async with own_world(kafka_bootstrap, tmp_path, "drain-admit", **settings) as world:
        gateway, token = world.gateway, world.token("tenant-a")
        await produce(
            kafka_bootstrap,
            world.topic,
            [
                (session.encode(), event_bytes(session, "tenant-a", "active")),
                (finished.encode(), event_bytes(finished, "tenant-a", "completed")),
            ],
        )
        async with httpx.AsyncClient(timeout=20) as client:
            await wait_visible(world, client, session, token)
            await wait_visible(world, client, finished, token)
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
