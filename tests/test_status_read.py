"""``GET /session/{id}``, the status read, against a real gateway process and a real broker.

The latest state (the stream's event data, byte for byte) with its ETag (the same on two replicas), 304
for a matching ``If-None-Match``, the stream's tenant and unknown-session rules and bodies, ``?wait=N`` for an unknown
session and as a long poll (answered by the hub's delivery), the waiting limits under a flood, CORS, and
1,000 reads on one keep-alive connection without the process's sockets growing. Hostile input (bad
``wait`` values, many ``If-None-Match`` values, another tenant's ETag) is kept here as tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

import httpx
import psutil
import pytest
import pytest_asyncio

from tests.gateway_support import GatewayWorld, gateway_world, sse
from tests.kafka_support import event_bytes, produce, send, started_producer
from tests.support import new_session, wait_until

pytestmark = pytest.mark.timeout(240)

TENANT = "tenant-a"
OTHER = "tenant-b"
ORIGIN = "https://app.example"
COOKIE = "sess_token"
UNKNOWN_WAIT = 4.0
# Per address: a quarter of the waiting requests (GATEWAY_MAX_WAITING_REQUESTS_PER_ADDRESS's default).
MAX_WAITING = 8
ADDRESS_SHARE = MAX_WAITING // 4
TENANT_SHARE = MAX_WAITING // 2  # GATEWAY_MAX_WAITING_REQUESTS_PER_TENANT's default
ETAG = re.compile(r'"[A-Za-z0-9_-]{16}"')


@pytest_asyncio.fixture(scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayWorld]:
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "status-read",
        GATEWAY_UNKNOWN_SESSION_WAIT=str(UNKNOWN_WAIT),
        GATEWAY_MAX_WAITING_REQUESTS=str(MAX_WAITING),
        GATEWAY_CORS_ORIGINS=ORIGIN,
        GATEWAY_TOKEN_COOKIE=COOKIE,
        gateways={"replica-a": {}, "replica-b": {}},  # the ETag is the same on every replica
    ) as world:
        yield world


def status_url(world: GatewayWorld, session_id: str) -> str:
    return f"{world.gateway.url}/session/{session_id}"


async def publish(world: GatewayWorld, session_id: str, *statuses: str, tenant: str = TENANT) -> None:
    await produce(
        world.bootstrap, world.topic, [(session_id.encode(), event_bytes(session_id, tenant, s)) for s in statuses]
    )


async def read(
    client: httpx.AsyncClient, world: GatewayWorld, session_id: str, token: str | None, **headers: str
) -> httpx.Response:
    params = {"token": token} if token else {}
    return await client.get(status_url(world, session_id), params=params, headers=headers)


async def until_status(client: httpx.AsyncClient, world: GatewayWorld, session_id: str, status: str) -> httpx.Response:
    """Reads until the gateway has applied ``status`` (the consumer is asynchronous to the producer)."""
    token = world.token(TENANT)
    answers: list[httpx.Response] = []

    async def applied() -> bool:
        answers.append(await read(client, world, session_id, token))
        return answers[-1].status_code == 200 and answers[-1].json()["status"] == status

    await wait_until(applied, 30, lambda: f"last answer {answers[-1].status_code} {answers[-1].text}")
    return answers[-1]


async def waiting_requests(world: GatewayWorld) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{world.gateway.internal_url}/metrics")).text
    found = re.search(r"^gateway_waiting_requests (\S+)$", text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


async def test_the_latest_state_is_the_streams_event_data_with_an_etag_and_304(world: GatewayWorld) -> None:
    session = new_session("latest")
    await publish(world, session, "active", "fetched")
    token = world.token(TENANT)
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await until_status(client, world, session, "fetched")
        assert answer.headers["content-type"] == "application/json; charset=utf-8"
        assert answer.headers["cache-control"] == "no-store"
        etag = answer.headers["etag"]
        assert ETAG.fullmatch(etag), etag  # quoted, strong (no W/), opaque
        assert set(answer.json()) == {"id", "status", "updatedAt"}
        async with sse(client, world.url(session), {"token": token}) as stream:
            event = await stream.next_event()
            assert event is not None
        assert answer.content == event.data.encode()  # exactly the stream's payload
        # The same token from every place the stream takes it, the same answer and tag.
        bearer = await read(client, world, session, None, authorization=f"Bearer {token}")
        cookie = await read(client, world, session, None, cookie=f"{COOKIE}={token}")
        for other in (bearer, cookie):
            assert (other.status_code, other.content, other.headers["etag"]) == (200, answer.content, etag)
        # If-None-Match: the tag, its weak form, in a list, or * gives 304 with the tag and no body.
        for condition in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
            not_modified = await read(client, world, session, token, **{"if-none-match": condition})
            assert not_modified.status_code == 304, condition
            assert not_modified.content == b""
            assert not_modified.headers["etag"] == etag
            assert not_modified.headers["cache-control"] == "no-store"
        # Another replica that read as far computes the same tag: a poller may land on either. Each replica
        # consumes on its own, so this one is read from until it has applied the same record (404, then 200 with
        # "active" before that); its tag must then be this one's.
        replica_b: list[httpx.Response] = []

        async def replica_b_caught_up() -> bool:
            replica_b.append(await client.get(f"{world['replica-b'].url}/session/{session}", params={"token": token}))
            return replica_b[-1].status_code == 200 and replica_b[-1].json()["status"] == "fetched"

        await wait_until(
            replica_b_caught_up, 30, lambda: f"replica-b: {replica_b[-1].status_code} {replica_b[-1].text}"
        )
        assert replica_b[-1].headers["etag"] == etag and replica_b[-1].content == answer.content
        other_replica = await client.get(
            f"{world['replica-b'].url}/session/{session}", params={"token": token}, headers={"if-none-match": etag}
        )
        assert other_replica.status_code == 304 and other_replica.headers["etag"] == etag
        stale = await read(client, world, session, token, **{"if-none-match": '"something-else"'})
        assert stale.status_code == 200 and stale.content == answer.content
        # HEAD: the GET's head without its body.
        head = await client.head(status_url(world, session), params={"token": token})
        assert head.status_code == 200 and head.content == b""
        assert head.headers["etag"] == etag and int(head.headers["content-length"]) == len(answer.content)
        # A transition: a new state and a new tag; the old tag no longer matches.
        await publish(world, session, "completed")
        done = await until_status(client, world, session, "completed")
        assert done.headers["etag"] != etag
        changed = await read(client, world, session, token, **{"if-none-match": etag})
        assert changed.status_code == 200 and changed.json()["status"] == "completed"


async def test_tenants_and_unknown_sessions_answer_like_the_stream(world: GatewayWorld) -> None:
    session = new_session("tenant")
    await publish(world, session, "active")
    async with httpx.AsyncClient(timeout=30) as client:
        mine = await until_status(client, world, session, "active")
        etag = mine.headers["etag"]
        timings: dict[str, float] = {}

        async def timed(name: str, token: str | None, **headers: str) -> httpx.Response:
            started = time.monotonic()
            answer = await read(client, world, session if name != "unknown" else unknown, token, **headers)
            timings[name] = time.monotonic() - started
            return answer

        unknown = new_session("unknown")
        other = await timed("other_tenant", world.token(OTHER))
        absent = await timed("unknown", world.token(TENANT))
        claim = await timed("session_claim", world.token(TENANT, session="another-session"))
        # Another tenant's ETag (or *) reveals nothing: still the unknown session's 404, never 304.
        with_tag = await timed("other_tenant_etag", world.token(OTHER), **{"if-none-match": etag})
        star = await timed("other_tenant_star", world.token(OTHER), **{"if-none-match": "*"})
        expected = {"statusCode": 404, "message": f"Session {session} not found", "error": "Not Found"}
        for answer in (other, claim, with_tag, star):
            assert (answer.status_code, answer.json()) == (404, expected)
            assert "etag" not in answer.headers
        assert absent.status_code == 404
        assert absent.json() == {**expected, "message": f"Session {unknown} not found"}
        # None of them waited for the session (no ?wait): all answered well before GATEWAY_UNKNOWN_SESSION_WAIT.
        assert max(timings.values()) < UNKNOWN_WAIT, timings
        print(f"404 timings (s): { {k: round(v, 4) for k, v in timings.items()} }")
        # The stream's 404 body for the other tenant is the same (after its wait for the session).
        async with sse(client, world.url(session), {"token": world.token(OTHER)}) as stream:
            assert stream.status == 404 and stream.response.json() == expected
        # 401: no token, and a bad one, with the stream's bodies and headers.
        for token in (None, "not-a-jwt", world.token(TENANT, ttl=-3600)):
            answer = await read(client, world, session, token)
            async with sse(client, world.url(session), {"token": token} if token else None) as stream:
                assert answer.status_code == stream.status == 401
                assert answer.content == await stream.response.aread()
                assert answer.headers["www-authenticate"] == stream.headers["www-authenticate"]


async def test_wait_for_an_unknown_session_and_bad_wait_values(world: GatewayWorld) -> None:
    token = world.token(TENANT)
    async with httpx.AsyncClient(timeout=30) as client:
        # It appears while the read waits: answered with its state. The producer is started beforehand: a fresh
        # one's start-up could take the rest of the read's wait on a loaded machine.
        session = new_session("appears")
        async with started_producer(world.bootstrap) as producer:
            waiting = asyncio.ensure_future(
                client.get(status_url(world, session), params={"token": token, "wait": "3.5"})
            )
            await wait_until(lambda: _some_waiting(world), 10, "the read to wait (counted)")
            await send(producer, world.topic, [(session.encode(), event_bytes(session, TENANT, "active"))])
            answer = await waiting
        assert answer.status_code == 200 and answer.json()["status"] == "active"
        # A wait beyond GATEWAY_UNKNOWN_SESSION_WAIT is cut to it: 404 after that wait, not after 100000 s.
        started = time.monotonic()
        never = await client.get(status_url(world, new_session("never")), params={"token": token, "wait": "100000"})
        waited = time.monotonic() - started
        assert never.status_code == 404 and UNKNOWN_WAIT - 0.5 <= waited < 60, waited
        # What a careless client sends as wait: 400 with the NestJS-shaped body; a valid token comes first.
        for value in ("abc", "-1", "1e9", "nan", "inf", "", "1234567890", "0x10", "1,5", " 1"):
            bad = await client.get(status_url(world, session), params={"token": token, "wait": value})
            assert bad.status_code == 400, value
            assert bad.json() == {
                "statusCode": 400,
                "message": "wait must be a number of seconds",
                "error": "Bad Request",
            }
        unauthenticated = await client.get(status_url(world, session), params={"wait": "abc"})
        assert unauthenticated.status_code == 401
        assert await waiting_requests(world) == 0


async def test_a_long_poll_answers_when_the_state_changes_or_304_after_its_wait(world: GatewayWorld) -> None:
    session = new_session("poll")
    await publish(world, session, "active")
    token = world.token(TENANT)
    async with httpx.AsyncClient(timeout=30) as client:
        etag = (await until_status(client, world, session, "active")).headers["etag"]
        # Nothing changes: 304 with the same tag after the wait.
        started = time.monotonic()
        quiet = await client.get(
            status_url(world, session), params={"token": token, "wait": "1"}, headers={"if-none-match": etag}
        )
        assert quiet.status_code == 304 and quiet.headers["etag"] == etag
        assert time.monotonic() - started >= 0.9
        # A transition while it waits: 200 with the new state, soon after the producer's acknowledgement. The
        # producer is started before the polls: its start-up inside a poll's wait could outlast the wait.
        delays = []
        async with started_producer(world.bootstrap) as producer:
            for status in ("fetched", "completed"):
                poll = asyncio.ensure_future(
                    client.get(
                        status_url(world, session),
                        params={"token": token, "wait": "4"},
                        headers={"if-none-match": etag},
                    )
                )
                await wait_until(lambda: _some_waiting(world), 10, "the long poll to wait")
                await send(producer, world.topic, [(session.encode(), event_bytes(session, TENANT, status))])
                acknowledged = time.monotonic()
                answer = await poll
                delays.append(time.monotonic() - acknowledged)
                assert answer.status_code == 200 and answer.json()["status"] == status
                assert answer.headers["etag"] != etag
                etag = answer.headers["etag"]
        print(f"long poll answered after the producer's ack (s): {[round(d, 4) for d in delays]}")
        assert await waiting_requests(world) == 0


async def test_a_flood_of_waiting_reads_is_bounded_by_the_waiting_limits(world: GatewayWorld) -> None:
    """Waiting reads hold a waiting stream request's ticket: the per-address share (the client a trusted proxy
    names; loopback is a trusted proxy by default) and the tenant's share bound them, with the stream's 429."""
    token = world.token(TENANT)
    for headers, share, message in (
        ({"x-forwarded-for": "203.0.113.7"}, ADDRESS_SHARE, "Too many requests waiting from this address"),
        ({}, TENANT_SHARE, "Too many requests waiting for this tenant"),
    ):
        # New connections each round: a proxy's connection counts for the first client it named.
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
            flood = [
                client.get(
                    status_url(world, new_session("flood")), params={"token": token, "wait": "3"}, headers=headers
                )
                for _ in range(12)
            ]
            answers = await asyncio.gather(*flood)
            refused = [a for a in answers if a.status_code == 429]
            waited = [a for a in answers if a.status_code == 404]
            assert len(waited) == share and len(refused) == len(answers) - share, [a.status_code for a in answers]
            assert refused[0].json()["message"] == message
            assert refused[0].headers["retry-after"] == "5"
    # A client that hangs up while its long poll waits gives its place back at once.
    reader, writer = await asyncio.open_connection("127.0.0.1", world.gateway.port)
    writer.write(f"GET /session/{new_session('gone')}?token={token}&wait=4 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await wait_until(lambda: _some_waiting(world), 10, "the read to wait")
    writer.close()
    started = time.monotonic()
    # Well before its wait (GATEWAY_UNKNOWN_SESSION_WAIT) would have ended it.
    await wait_until(lambda: _none_waiting(world), UNKNOWN_WAIT - 1, "the hung-up read to release its place")
    print(f"a hung-up long poll released its place after {time.monotonic() - started:.3f}s")
    del reader


async def _none_waiting(world: GatewayWorld) -> bool:
    return await waiting_requests(world) == 0


async def _some_waiting(world: GatewayWorld) -> bool:
    return await waiting_requests(world) > 0


async def test_cors_like_the_stream_and_the_preflight_allows_if_none_match(world: GatewayWorld) -> None:
    session = new_session("cors")
    await publish(world, session, "active")
    token = world.token(TENANT)
    async with httpx.AsyncClient(timeout=30) as client:
        await until_status(client, world, session, "active")
        allowed = await read(client, world, session, token, origin=ORIGIN)
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert allowed.headers["access-control-expose-headers"] == "ETag"
        foreign = await read(client, world, session, token, origin="https://evil.example")
        assert "access-control-allow-origin" not in foreign.headers
        # A cookie sent by another site's page is refused before it counts, as for the stream.
        cookie = await read(client, world, session, None, origin="https://evil.example", cookie=f"{COOKIE}={token}")
        assert cookie.status_code == 403
        preflight = await client.options(
            status_url(world, session),
            headers={
                "origin": ORIGIN,
                "access-control-request-method": "GET",
                "access-control-request-headers": "authorization, if-none-match",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-headers"] == "authorization, if-none-match"
        assert preflight.headers["access-control-allow-methods"] == "GET, HEAD"
        refused = await client.options(
            status_url(world, session), headers={"origin": ORIGIN, "access-control-request-method": "DELETE"}
        )
        assert refused.status_code == 400
        # The stream's preflight is unchanged.
        stream = await client.options(
            world.url(session), headers={"origin": ORIGIN, "access-control-request-method": "GET"}
        )
        assert stream.status_code == 204
        assert stream.headers["access-control-allow-methods"] == "GET"
        assert stream.headers["access-control-allow-headers"] == "authorization, last-event-id"
        # Not on the internal port, and other methods are not a status read.
        internal = await client.get(f"{world.gateway.internal_url}/session/{session}", params={"token": token})
        assert internal.status_code == 404 and "etag" not in internal.headers
        post = await client.post(status_url(world, session), params={"token": token})
        assert post.status_code in (404, 405) and "etag" not in post.headers
        # The OpenAPI document (internal port) describes the route.
        document = (await client.get(f"{world.gateway.internal_url}/openapi.json")).json()
        operation = document["paths"]["/session/{id}"]["get"]
        assert {"200", "304", "401", "404"} <= set(operation["responses"])


async def test_many_if_none_match_values(world: GatewayWorld) -> None:
    session = new_session("many")
    await publish(world, session, "active")
    token = world.token(TENANT)
    async with httpx.AsyncClient(timeout=30) as client:
        etag = (await until_status(client, world, session, "active")).headers["etag"]
        decoys = ", ".join(f'"decoy-{n:05d}"' for n in range(400))
        assert (await read(client, world, session, token, **{"if-none-match": decoys})).status_code == 200
        hit = await read(client, world, session, token, **{"if-none-match": f"{decoys}, {etag}"})
        assert hit.status_code == 304
        # Several If-None-Match headers count together.
        several = await client.get(
            status_url(world, session),
            params={"token": token},
            headers=[("if-none-match", '"a"'), ("if-none-match", etag), ("if-none-match", '"b"')],
        )
        assert several.status_code == 304
        # Beyond the head limit: the edge's 431, as for any request.
        huge = ", ".join(f'"decoy-{n:06d}"' for n in range(4000))
        assert (await read(client, world, session, token, **{"if-none-match": huge})).status_code == 431


async def test_a_thousand_status_reads_on_one_keep_alive_connection(world: GatewayWorld) -> None:
    session = new_session("keepalive")
    await publish(world, session, "active")
    token = world.token(TENANT)
    async with httpx.AsyncClient(timeout=30) as client:
        etag = (await until_status(client, world, session, "active")).headers["etag"].encode()
    assert world.gateway.process is not None
    process = psutil.Process(world.gateway.process.pid)
    port = world.gateway.port

    def public_sockets() -> int:
        return sum(1 for c in process.net_connections() if c.laddr.port == port and c.status != "LISTEN")

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET /session/{session}?token={token} HTTP/1.1\r\nHost: x\r\n".encode()
        # One read first, so that the server has accepted this connection before its sockets are counted.
        writer.write(request + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        sockets_before = public_sockets()
        assert sockets_before >= 1
        counts = {200: 0, 304: 0}
        for number in range(1000):
            conditional = number % 2 == 1
            writer.write(request + (b"if-none-match: " + etag + b"\r\n" if conditional else b"") + b"\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lower = head.lower()
            assert b"connection: close" not in lower, (number, head)
            if conditional:
                assert head.startswith(b"HTTP/1.1 304 "), (number, head)
                assert b"content-length" not in lower
                counts[304] += 1
            else:
                assert head.startswith(b"HTTP/1.1 200 "), (number, head)
                length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
                assert json.loads(await reader.readexactly(length))["status"] == "active"
                counts[200] += 1
        assert counts == {200: 500, 304: 500}
        assert public_sockets() <= sockets_before
        # Pipelined: ten reads in one write, ten answers in order.
        writer.write((request + b"\r\n") * 10)
        for _ in range(10):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert json.loads(await reader.readexactly(length))["id"] == session
        # Connection: close ends it after the answer.
        writer.write(request + b"connection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)
        assert rest.startswith(b"HTTP/1.1 200 ") and b"connection: close" in rest.lower()
    finally:
        writer.close()
