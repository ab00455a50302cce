"""``GET /tenant/events``: a tenant's live view, against real gateway processes and a real broker.

Gateways of this module's topic (4 partitions): ``main`` (the tenant stream on, scope ``sessions:watch``
or the Keycloak-style role claim, 2 tenant streams per tenant, 1 s resume wait), ``small`` (a snapshot
bound of 3) and ``off`` (the tenant stream not configured). Every test uses tenants of its own. The
restart test runs two gateways of its own. ``small`` also has no JWT leeway and 1 s heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.streams.cursor import encode_cursor, parse_cursor
from tests.gateway_support import GatewayWorld, SseEvent, SseStream, gateway_world, sse
from tests.kafka_support import event_bytes, produce, send, started_producer
from tests.support import new_session, wait_until

pytestmark = pytest.mark.timeout(180)

SCOPE = "sessions:watch"
ROLES_CLAIM = "realm_access.roles"
PATH = "/tenant/events"


def new_tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:10]}"


@dataclass
class World:
    made: GatewayWorld

    def token(self, tenant: str | None, *, scope: str | None = SCOPE, **extra: Any) -> str:
        claims: dict[str, Any] = dict(extra)
        if scope is not None:
            claims["scope"] = f"openid {scope}"
        return self.made.token(tenant, extra=claims)

    def url(self, name: str = "main") -> str:
        return self.made[name].url + PATH

    async def publish(self, tenant: str, *events: tuple[str, str]) -> list[tuple[int, int]]:
        records: list[tuple[bytes | None, bytes | None]] = [
            (session_id.encode(), event_bytes(session_id, tenant, status)) for session_id, status in events
        ]
        return await produce(self.made.bootstrap, self.made.topic, records)


@pytest_asyncio.fixture(scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    on = {
        "GATEWAY_TENANT_STREAM_SCOPE": SCOPE,
        "GATEWAY_TENANT_STREAM_ROLES_CLAIM": ROLES_CLAIM,
        # These tests open many streams of one tenant in a row; the opening rate has its own test below.
        "GATEWAY_TENANT_STREAM_OPENING_RATE": "1000",
        "GATEWAY_TENANT_STREAM_OPENING_BURST": "1000",
    }
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "tenant-stream",
        partitions=4,
        gateways={
            "main": {**on, "GATEWAY_MAX_TENANT_STREAMS_PER_TENANT": "2", "GATEWAY_RESUME_WAIT": "1"},
            "small": {
                **on,
                "GATEWAY_TENANT_STREAM_MAX_SNAPSHOT": "3",
                "GATEWAY_JWT_LEEWAY": "0",
                "GATEWAY_HEARTBEAT_INTERVAL": "1",
            },
            "off": {},
            "rate": {
                "GATEWAY_TENANT_STREAM_SCOPE": SCOPE,
                "GATEWAY_TENANT_STREAM_OPENING_RATE": "0.1",
                "GATEWAY_TENANT_STREAM_OPENING_BURST": "2",
            },
        },
    ) as made:
        yield World(made)


async def events_for(stream: SseStream, count: int, timeout: float = 20.0) -> list[SseEvent]:
    events: list[SseEvent] = []
    while len(events) < count:
        event = await stream.next_event(timeout)
        assert event is not None, f"the stream ended after {events}"
        events.append(event)
    return events


def pairs(events: list[SseEvent]) -> list[tuple[str, str]]:
    return [(event.json()["id"], event.json()["status"]) for event in events]


async def session_ended(client: httpx.AsyncClient, world: World, tenant: str, session_id: str) -> None:
    """Reads the session's own stream to its end: the gateway has applied the session's terminal record."""
    url = f"{world.made['main'].url}/session/{session_id}/events"
    async with sse(client, url, params={"token": world.made.token(tenant)}) as stream:
        assert stream.status == 200
        events = await stream.events_until_end()
        assert events[-1].json()["status"] == "completed"


# --------------------------------------------------------------------------------------------------
# What a tenant stream carries


async def test_every_transition_of_its_tenant_and_none_of_another(world: World, client: httpx.AsyncClient) -> None:
    tenant, other = new_tenant(), new_tenant()
    mine = [new_session("mine") for _ in range(3)]
    theirs = [new_session("theirs") for _ in range(3)]
    async with sse(client, world.url(), params={"token": world.token(tenant)}) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["cache-control"] == "no-store"
        for status in ("active", "fetched", "completed"):
            interleaved = [
                pair for ours, foreign in zip(mine, theirs, strict=True) for pair in ((ours, status), (foreign, status))
            ]
            for session_id, _ in interleaved:
                owner = tenant if session_id in mine else other
                await world.publish(owner, (session_id, status))
        events = await events_for(stream, 9)
        assert all(event.event == "message" for event in events)
        assert all(event.id is not None and event.id.startswith("c1.") for event in events)
        for event in events:
            assert list(event.json()) == ["id", "status", "updatedAt"]
        assert sorted(pairs(events)) == sorted((s, st) for s in mine for st in ("active", "fetched", "completed"))
        per_session = {s: [st for sid, st in pairs(events) if sid == s] for s in mine}
        assert all(statuses == ["active", "fetched", "completed"] for statuses in per_session.values())
        # The other tenant's sessions are applied (their own streams end) and still never reach this stream,
        # and the stream outlives its sessions' ends: the next event is the next session of this tenant.
        for session_id in theirs:
            await session_ended(client, world, other, session_id)
        later = new_session("later")
        await world.publish(other, (new_session("theirs"), "active"))
        await world.publish(tenant, (later, "active"))
        (event,) = await events_for(stream, 1)
        assert (event.json()["id"], event.json()["status"]) == (later, "active")


async def test_starts_with_the_live_sessions_and_filters(world: World, client: httpx.AsyncClient) -> None:
    tenant = new_tenant()
    states = {new_session("a"): "active", new_session("f"): "fetched", new_session("c"): "completed"}
    for session_id, status in states.items():
        chain = ["active", "fetched", "completed"]
        await world.publish(tenant, *((session_id, step) for step in chain[: chain.index(status) + 1]))
    await wait_until(lambda: snapshot_size(world, client, tenant, "main", 3), 20, "the sessions never arrived")
    async with sse(client, world.url(), params={"token": world.token(tenant)}) as stream:
        assert stream.status == 200
        snapshot = await events_for(stream, 3)
        assert sorted(pairs(snapshot)) == sorted(states.items())
    async with sse(client, world.url(), params={"token": world.token(tenant), "status": "active,fetched"}) as stream:
        assert stream.status == 200
        snapshot = await events_for(stream, 2)
        assert sorted(pairs(snapshot)) == sorted((s, st) for s, st in states.items() if st != "completed")
        # Live transitions are filtered too: a completed one is skipped, the next active one arrives.
        newer = new_session("n")
        await world.publish(tenant, (next(iter(states)), "completed"), (newer, "active"))
        (event,) = await events_for(stream, 1)
        assert pairs([event]) == [(newer, "active")]


async def test_a_deleted_session_is_announced_to_its_tenant_only(world: World, client: httpx.AsyncClient) -> None:
    """A tombstone takes the session out of its tenant's view: ``event: deleted`` with ``{"id"}``, whatever the
    stream's status filter, its id the cursor at the tombstone's position; another tenant hears nothing, a resume
    from that id neither repeats the deletion nor brings the session back."""
    tenant, other = new_tenant(), new_tenant()
    gone, later, theirs = new_session("gone"), new_session("later"), new_session("theirs")
    params = {"token": world.token(tenant), "status": "completed"}  # the filter does not hold deletions back
    async with (
        sse(client, world.url(), params=params) as filtered,
        sse(client, world.url(), params={"token": world.token(other)}) as foreign,
    ):
        assert filtered.status == foreign.status == 200
        await world.publish(tenant, (gone, "active"))
        await world.publish(other, (theirs, "active"))
        assert pairs(await events_for(foreign, 1)) == [(theirs, "active")]
        await wait_until(lambda: snapshot_size(world, client, tenant, "main", 1), 20, "the session never arrived")
        # A tombstone of a session no replica ever held tells nobody (no tenant is known for it); then the real one.
        [_, (partition, offset)] = await produce(
            world.made.bootstrap, world.made.topic, [(new_session("never").encode(), None), (gone.encode(), None)]
        )
        (deleted,) = await events_for(filtered, 1)
        assert (deleted.event, deleted.json()) == ("deleted", {"id": gone})
        assert deleted.id is not None and (parse_cursor(deleted.id) or {}).get(partition) == offset
        # The other tenant's stream got nothing of it: its next event is its own next transition.
        await world.publish(other, (theirs, "fetched"))
        assert pairs(await events_for(foreign, 1)) == [(theirs, "fetched")]
    # Resumed from the deletion's id: no repeat, no deleted session; the next event is the next transition.
    resume = {"Last-Event-ID": deleted.id}
    async with sse(client, world.url(), params={"token": world.token(tenant)}, headers=resume) as resumed:
        assert resumed.status == 200
        await world.publish(tenant, (later, "active"))
        (event,) = await events_for(resumed, 1)
        assert (event.event, pairs([event])) == ("message", [(later, "active")])


async def test_snapshot_bound_says_what_it_left_out(world: World, client: httpx.AsyncClient) -> None:
    tenant = new_tenant()
    sessions = [new_session("b") for _ in range(5)]
    # "Most recently updated" is the order the gateway applied them in, and records of several partitions in one
    # fetch are applied in partition order: each one applied by the small gateway before the next is written.
    for count, session_id in enumerate(sessions, start=1):
        await world.publish(tenant, (session_id, "active"))
        applied = functools.partial(snapshot_size, world, client, tenant, "small", count)
        await wait_until(applied, 20, f"the small gateway never saw {count}")
    await wait_until(lambda: snapshot_size(world, client, tenant, "main", 5), 20, "the main gateway never saw 5")
    async with sse(client, world.url("small"), params={"token": world.token(tenant)}) as stream:
        assert stream.status == 200
        first, *rest = await events_for(stream, 4)
        assert first.event == "truncated"
        assert first.id is None  # a client cut off during the opening gets it again
        assert json.loads(first.data) == {"leftOut": 2, "sent": 3}
        assert sorted(s for s, _ in pairs(rest)) == sorted(sessions[2:])  # the most recently updated


async def snapshot_size(world: World, client: httpx.AsyncClient, tenant: str, name: str, size: int) -> bool:
    """True once the gateway's snapshot of ``tenant`` holds ``size`` sessions (counting what a bound left out)."""
    async with sse(client, world.url(name), params={"token": world.token(tenant)}) as stream:
        if stream.status != 200:
            return False
        seen: set[str] = set()
        try:
            while True:
                event = await stream.next_event(1.0)
                if event is None:
                    return False
                if event.event == "truncated":
                    counts = json.loads(event.data)
                    return bool(counts["leftOut"] + counts["sent"] == size)
                seen.add(event.json()["id"])
                if len(seen) >= size:
                    return True
        except TimeoutError:
            return False


async def test_heartbeats_and_token_expiry_as_for_session_streams(world: World, client: httpx.AsyncClient) -> None:
    tenant = new_tenant()
    token = world.made.token(tenant, ttl=4, extra={"scope": SCOPE})
    started = time.monotonic()
    async with sse(client, world.url("small"), params={"token": token}) as stream:
        assert stream.status == 200
        assert await stream.next_event(20) is None  # nothing of this tenant: the stream ends at exp
        assert stream.comments >= 2  # heartbeats meanwhile
    assert 2 <= time.monotonic() - started < 15


# --------------------------------------------------------------------------------------------------
# Who may open it


async def test_refused_without_the_scope(world: World, client: httpx.AsyncClient) -> None:
    tenant = new_tenant()
    response = await client.get(world.url(), params={"token": world.token(tenant, scope=None)})
    assert response.status_code == 403
    assert response.json() == {"statusCode": 403, "message": "Insufficient scope", "error": "Forbidden"}
    assert response.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{SCOPE}"'
    response = await client.get(world.url(), params={"token": world.token(tenant, scope="sessions:watcher")})
    assert response.status_code == 403
    response = await client.get(world.url(), params={"token": world.token(None)})
    assert response.status_code == 403
    assert response.json() == {"statusCode": 403, "message": "Token names no tenant", "error": "Forbidden"}
    response = await client.get(world.url())
    assert response.status_code == 401
    # A role in the configured roles claim, or in `roles`, opens it too; a role elsewhere does not.
    for claims, allowed in (
        ({"realm_access": {"roles": ["x", SCOPE]}}, True),
        ({"roles": [SCOPE]}, True),
        ({"realm_access": {"roles": SCOPE}}, False),
        ({"resource_access": {"roles": [SCOPE]}}, False),
    ):
        token = world.token(tenant, scope=None, **claims)
        async with sse(client, world.url(), params={"token": token}) as stream:
            assert (stream.status == 200) is allowed, claims


async def test_cors_preflight_and_no_token_in_logs(world: World, client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        world.url(), headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"}
    )
    session_preflight = await client.options(
        f"{world.made['main'].url}/session/x/events",
        headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == session_preflight.status_code != 404  # answered like the session route's
    assert "access-control-allow-origin" not in preflight.headers  # no origin is allowed on this gateway
    token = world.token(new_tenant(), scope=None)
    before = refused_openings(world)
    response = await client.get(world.url(), params={"token": token})
    assert response.status_code == 403
    # This request's own line (written as the answer goes out: waited for), not the preflight's or an earlier test's.
    await wait_until(lambda: refused_openings(world) > before, 10, "no access line for the refused request")
    assert token not in world.made["main"].logs()
    assert token.split(".")[2] not in world.made["main"].logs()


# A refused opening's access line, plain or inside a JSON line (its quotes escaped).
REFUSED_OPENING = re.compile(r'"GET /tenant/events\S* HTTP/1\.1\\?" 403\b')


def refused_openings(world: World) -> int:
    """How many access lines of ``main`` say a ``GET /tenant/events`` was refused with 403."""
    return len(REFUSED_OPENING.findall(world.made["main"].logs()))


async def test_off_unless_configured_and_documented(world: World, client: httpx.AsyncClient) -> None:
    response = await client.get(world.url("off"), params={"token": world.token(new_tenant())})
    assert response.status_code == 404
    openapi = (await client.get(f"{world.made['main'].internal_url}/openapi.json")).json()
    operation = openapi["paths"][PATH]["get"]
    assert operation["operationId"] == "tenant_events"
    forbidden = operation["responses"]["403"]["content"]["application/json"]["example"]
    assert forbidden == {"statusCode": 403, "message": "Insufficient scope", "error": "Forbidden"}
    assert {p["name"] for p in operation["parameters"]} >= {"token", "status", "Last-Event-ID"}


async def test_limit_per_tenant(world: World, client: httpx.AsyncClient) -> None:
    tenant = new_tenant()
    token = world.token(tenant)
    async with (
        sse(client, world.url(), params={"token": token}) as one,
        sse(client, world.url(), params={"token": token}) as two,
    ):
        assert (one.status, two.status) == (200, 200)
        response = await client.get(world.url(), params={"token": token})
        assert response.status_code == 429
        assert response.json()["message"] == "Too many open tenant streams for this tenant"
        async with sse(client, world.url(), params={"token": world.token(new_tenant())}) as another:
            assert another.status == 200  # another tenant's share is its own


async def test_openings_are_rate_limited_per_tenant(world: World, client: httpx.AsyncClient) -> None:
    """Each opening reads the whole store once: a client holding the scope cannot repeat it at will (a
    tenant gets GATEWAY_TENANT_STREAM_OPENING_BURST at once, then GATEWAY_TENANT_STREAM_OPENING_RATE per
    second), and another tenant's openings are its own."""
    tenant = new_tenant()
    token = world.token(tenant)
    for _ in range(2):  # the burst: opened and closed again
        async with sse(client, world.url("rate"), params={"token": token}) as stream:
            assert stream.status == 200
    refused = await client.get(world.url("rate"), params={"token": token})
    assert refused.status_code == 429, refused.text
    assert refused.json()["message"] == "Too many tenant stream openings; retry later"
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    async with sse(client, world.url("rate"), params={"token": world.token(new_tenant())}) as other:
        assert other.status == 200


# --------------------------------------------------------------------------------------------------
# Hostile requests


@pytest.mark.parametrize(
    "last_event_id",
    ["garbage", "0-42", "c1.", "c1.!!!!", "c1.AA=", "c1.gICAgICAgICAgIA", "c1." + "A" * 6000, "c2.AAAA", "c1.BA"],
)
async def test_malformed_last_event_id_starts_over(world: World, client: httpx.AsyncClient, last_event_id: str) -> None:
    tenant = new_tenant()
    session_id = new_session("m")
    await world.publish(tenant, (session_id, "active"), (session_id, "fetched"))
    await wait_until(lambda: snapshot_size(world, client, tenant, "main", 1), 20, "the session never arrived")
    headers = {"Last-Event-ID": last_event_id}
    async with sse(client, world.url(), params={"token": world.token(tenant)}, headers=headers) as stream:
        assert stream.status == 200
        parsed = parse_cursor(last_event_id)
        if parsed is not None and any(partition >= 4 for partition in parsed):
            parsed = None  # names partitions the topic does not have: foreign
        (event,) = await events_for(stream, 1)
        if parsed is None:  # treated as absent: the snapshot, the current state only
            assert pairs([event]) == [(session_id, "fetched")]
        else:  # a well-formed cursor naming nothing of this tenant: everything the store holds
            assert pairs([event]) == [(session_id, "active")]


async def test_cursor_ahead_of_the_log_is_refused_after_the_resume_wait(
    world: World, client: httpx.AsyncClient
) -> None:
    ahead = encode_cursor({0: 10**9})
    response = await client.get(
        world.url(), params={"token": world.token(new_tenant())}, headers={"Last-Event-ID": ahead}
    )
    assert response.status_code == 503
    assert response.json()["message"] == "This server has not caught up with the stream yet"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("active,nope", "Unknown status in status"),
        ("", "Unknown status in status"),
        (",".join(["active"] * 500), "At most 6 statuses in status"),
        ("Active", "Unknown status in status"),
    ],
)
async def test_bad_filters_are_refused(world: World, client: httpx.AsyncClient, status: str, message: str) -> None:
    response = await client.get(world.url(), params={"token": world.token(new_tenant()), "status": status})
    assert response.status_code == 400
    assert response.json()["message"].startswith(message)
    assert response.json()["error"] == "Bad Request"


# --------------------------------------------------------------------------------------------------
# Resuming across restarts and replicas


async def test_resume_across_restarts_loses_and_repeats_nothing(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, client: httpx.AsyncClient
) -> None:
    """600 transitions (200 sessions: active, fetched, completed; a session has no more), read through a
    stream that is cut three times: its gateway stopped, the client resuming on the other replica, that one
    stopped, the first restarted."""
    on = {"GATEWAY_TENANT_STREAM_SCOPE": SCOPE, "GATEWAY_DRAIN_SECONDS": "0.5", "GATEWAY_RESUME_WAIT": "10"}
    async with gateway_world(
        kafka_bootstrap, tmp_path_factory, "tenant-resume", partitions=6, gateways={"a": on, "b": on}
    ) as made:
        tenant = new_tenant()
        world = World(made)
        sessions = [new_session("r") for _ in range(200)]
        expected = [(s, status) for status in ("active", "fetched", "completed") for s in sessions]
        # Records of another tenant between them: they move the partitions' offsets, never the stream.
        noise = [new_session("noise") for _ in range(50)]

        async def produce_all() -> None:
            async with started_producer(made.bootstrap) as producer:
                for start in range(0, len(expected), 12):
                    batch = [(s.encode(), event_bytes(s, tenant, st)) for s, st in expected[start : start + 12]]
                    batch += [
                        (n.encode(), event_bytes(n, "noise", "active")) for n in noise[start % 50 : start % 50 + 2]
                    ]
                    await send(producer, made.topic, batch)
                    await asyncio.sleep(0.05)

        received: list[tuple[str, str]] = []
        last_id: str | None = None

        async def read(name: str, until: int, then: Callable[[], object] | None = None) -> None:
            """Reads from gateway ``name`` (resuming at ``last_id``); past ``until`` events runs ``then`` (a stop)
            in a thread and reads on until the gateway ends the stream."""
            nonlocal last_id
            headers = {"Last-Event-ID": last_id} if last_id else {}
            url = made[name].url + PATH
            stopping: asyncio.Task[object] | None = None
            async with sse(client, url, params={"token": world.token(tenant)}, headers=headers) as stream:
                assert stream.status == 200, stream.response.text
                while len(received) < len(expected):
                    if then is not None and stopping is None and len(received) >= until:
                        stopping = asyncio.create_task(asyncio.to_thread(then))
                    if then is None and len(received) >= until:
                        break
                    try:
                        event = await stream.next_event(30)
                    except httpx.HTTPError:
                        event = None
                    if event is None:
                        break  # the gateway drained the stream: resume elsewhere
                    assert event.event == "message"
                    received.extend(pairs([event]))
                    last_id = event.id
                if len(received) >= len(expected):  # nothing after the last one: no duplicate comes late
                    with contextlib.suppress(TimeoutError):
                        extra = await stream.next_event(2)
                        assert extra is None, extra
            if stopping is not None:
                await stopping

        producer = asyncio.create_task(produce_all())
        try:
            await read("a", 150, made["a"].stop)
            phases = [len(received)]
            made["a"].start()
            await read("b", 350, made["b"].stop)
            phases.append(len(received))
            await made["a"].wait_ready()
            await read("a", len(expected))
            phases.append(len(received))
            await producer
        finally:
            producer.cancel()
        # Each of the three streams carried part of it (the cuts happened mid-way).
        assert 150 <= phases[0] < phases[1] < phases[2] == len(expected), phases
        duplicates = [pair for pair, count in Counter(received).items() if count > 1]
        assert duplicates == []
        assert sorted(received) == sorted(expected)
        for session_id in sessions:  # per session, in order
            assert [st for s, st in received if s == session_id] == ["active", "fetched", "completed"]
        assert last_id is not None and len(last_id) < 64, last_id  # 6 partitions: a short id
