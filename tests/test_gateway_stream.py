"""``GET /session/{id}/events``: what a stream carries, against real processes only.

Records go to the real broker (the produce helper or ``python -m gateway publish``), a real
``session-gateway serve`` subprocess reads them, and the client reads the bytes it wrote over a
socket. Two gateways share this module's topic: ``main`` (CORS for http://app.test, the default
5 s wait for unknown sessions) and ``quick`` (a 1 s wait). The "still replaying" test runs a
gateway of its own against a topic that does not exist yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
import pytest_asyncio

from tests.gateway_support import (
    REPO,
    GatewayProcess,
    JwksServer,
    SigningKey,
    SseEvent,
    SseStream,
    gateway_world,
    mint,
    sse,
)
from tests.kafka_support import create_topic, event_bytes, produce, send, started_producer, wait_until
from tests.support import event_id, new_session

pytestmark = pytest.mark.timeout(90)

TENANT = "tenant-a"
ALLOWED_ORIGIN = "http://app.test"
PLUS_TWO = timezone(timedelta(hours=2))


@dataclass
class World:
    bootstrap: str
    topic: str
    key: SigningKey
    jwks: JwksServer
    main: GatewayProcess
    quick: GatewayProcess

    def token(self, sub: str = "user-1", tenant: str = TENANT) -> str:
        return mint(self.key, sub=sub, tenant=tenant)

    def url(self, gateway: GatewayProcess, session_id: str) -> str:
        return f"{gateway.url}/session/{session_id}/events"

    async def publish(self, *events: tuple[str, str, str | None]) -> list[tuple[int, int]]:
        """Writes ``(session_id, status, updatedAt or None for now)`` records; returns their positions."""
        records: list[tuple[bytes | None, bytes | None]] = [
            (session_id.encode(), event_bytes(session_id, TENANT, status, updated_at))
            for session_id, status, updated_at in events
        ]
        return await produce(self.bootstrap, self.topic, records)


def js_iso(moment: datetime) -> str:
    """What JavaScript's ``Date.prototype.toISOString()`` prints for ``moment``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def data_json(session_id: str, status: str, updated_at: str) -> str:
    """``JSON.stringify({id, status, updatedAt})``: compact, in that key order."""
    return json.dumps({"id": session_id, "status": status, "updatedAt": updated_at}, separators=(",", ":"))


@pytest_asyncio.fixture(scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "gateway-stream",
        partitions=3,
        gateways={"main": {"GATEWAY_CORS_ORIGINS": ALLOWED_ORIGIN}, "quick": {"GATEWAY_UNKNOWN_SESSION_WAIT": "1"}},
    ) as made:
        yield World(kafka_bootstrap, made.topic, made.key, made.jwks, made["main"], made["quick"])


class RawReader:
    """The exact text of a response body as it arrives."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_text()
        self.text = ""
        self.ended = False

    async def read_until(self, done: Callable[[str], bool], timeout: float = 15.0) -> None:
        async def loop() -> None:
            while not done(self.text):
                try:
                    self.text += await anext(self._chunks)
                except StopAsyncIteration:
                    self.ended = True
                    return

        await asyncio.wait_for(loop(), timeout)

    async def read_to_end(self, timeout: float = 15.0) -> None:
        await self.read_until(lambda _: False, timeout)


# --------------------------------------------------------------------------------------------------
# Wire format


async def test_stream_headers(world: World, client: httpx.AsyncClient) -> None:
    session_id = new_session()
    await world.publish((session_id, "active", None))
    async with sse(client, world.url(world.main, session_id), params={"token": world.token()}) as stream:
        assert stream.status == 200
        headers = stream.headers
        assert headers["content-type"] == "text/event-stream"
        assert headers["cache-control"] == "no-store"
        assert headers["x-accel-buffering"] == "no"
        assert headers["referrer-policy"] == "no-referrer"
        assert "access-control-allow-origin" not in headers  # no Origin, no CORS headers
        first = await stream.next_event()
        assert first is not None and first.json()["id"] == session_id


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [(ALLOWED_ORIGIN, True), ("http://evil.test", False), ("http://app.test.evil.test", False)],
)
async def test_cors_echoes_only_the_configured_origin(
    world: World, client: httpx.AsyncClient, origin: str, allowed: bool
) -> None:
    session_id = new_session()
    await world.publish((session_id, "active", None))
    headers = {"origin": origin}
    async with sse(client, world.url(world.main, session_id), {"token": world.token()}, headers) as stream:
        assert stream.status == 200
        if allowed:
            assert stream.headers["access-control-allow-origin"] == origin
            assert stream.headers["access-control-allow-credentials"] == "true"
        else:
            assert "access-control-allow-origin" not in stream.headers
            assert "access-control-allow-credentials" not in stream.headers


async def test_exact_bytes_retry_current_status_then_each_transition_then_end(
    world: World, client: httpx.AsyncClient
) -> None:
    """``retry:`` first, then the current status, then each transition; ``updatedAt`` as toISOString()."""
    session_id = new_session()
    # Producers may write any RFC 3339 offset and precision; clients get UTC, milliseconds and 'Z'.
    created = datetime.now(PLUS_TWO).replace(microsecond=0) - timedelta(seconds=30)
    fetched = created + timedelta(seconds=10, milliseconds=500)
    completed = (created + timedelta(seconds=20)).astimezone(UTC).replace(microsecond=123456)
    created_text = created.isoformat()  # e.g. 2026-01-02T03:04:05+02:00
    fetched_text = fetched.isoformat(timespec="milliseconds")  # e.g. 2026-01-02T03:04:15.500+02:00
    completed_text = completed.isoformat().replace("+00:00", "Z")  # e.g. 2026-01-02T01:04:25.123456Z
    assert created_text.endswith("+02:00") and "." not in created_text

    [first] = await world.publish((session_id, "active", created_text))
    async with client.stream("GET", world.url(world.main, session_id), params={"token": world.token()}) as response:
        assert response.status_code == 200
        reader = RawReader(response)
        await reader.read_until(lambda text: text.count("\n\n") >= 2)
        [second] = await world.publish((session_id, "fetched", fetched_text))
        await reader.read_until(lambda text: text.count("\n\n") >= 3)
        [third] = await world.publish((session_id, "completed", completed_text))
        await reader.read_to_end()
    assert reader.ended, "the server did not end the stream after the terminal status"

    match = re.fullmatch(r"retry: (\d+)\n\n(.*)", reader.text, re.DOTALL)
    assert match is not None, reader.text
    assert 1500 <= int(match.group(1)) <= 4500  # 3000 ms with up to ±50 % jitter
    expected = [
        (event_id(first), data_json(session_id, "active", js_iso(created))),
        (event_id(second), data_json(session_id, "fetched", js_iso(fetched))),
        (event_id(third, terminal=True), data_json(session_id, "completed", js_iso(completed))),
    ]
    assert match.group(2) == "".join(f"id: {eid}\nevent: message\ndata: {data}\n\n" for eid, data in expected)
    assert js_iso(created).endswith(".000Z") and js_iso(fetched).endswith(".500Z")
    assert js_iso(completed).endswith(".123Z")


async def test_offset_timestamp_is_normalised_like_to_iso_string(world: World, client: httpx.AsyncClient) -> None:
    """The brief's example: ``2026-01-02T03:04:05+02:00`` is sent as ``2026-01-02T01:04:05.000Z``.

    The record's time is today's, in the same shape, so the store's 24 h session TTL keeps it.
    """
    session_id = new_session()
    moment = datetime.now(PLUS_TWO).replace(microsecond=0)
    written = moment.strftime("%Y-%m-%dT%H:%M:%S+02:00")
    sent = (moment - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    await world.publish((session_id, "active", written))
    async with sse(client, world.url(world.main, session_id), params={"token": world.token()}) as stream:
        event = await stream.next_event()
    assert event is not None
    assert event.data == data_json(session_id, "active", sent)


async def test_already_terminal_session_sends_one_event_and_ends(world: World, client: httpx.AsyncClient) -> None:
    session_id = new_session()
    positions = await world.publish((session_id, "active", None), (session_id, "expired", None))
    async with sse(client, world.url(world.main, session_id), params={"token": world.token()}) as stream:
        assert stream.status == 200
        events = await stream.events_until_end(15.0)
    assert [e.json()["status"] for e in events] == ["expired"]
    assert events[0].id == event_id(positions[1], terminal=True)
    assert stream.retry is not None


async def _current_status(world: World, client: httpx.AsyncClient, session_id: str) -> str | None:
    async with sse(client, world.url(world.main, session_id), params={"token": world.token()}) as stream:
        event = await stream.next_event() if stream.status == 200 else None
    return None if event is None else str(event.json()["status"])


async def test_resume_with_last_event_id_sends_only_what_was_missed(world: World, client: httpx.AsyncClient) -> None:
    session_id = new_session("resume")
    [created] = await world.publish((session_id, "active", None))
    [fetched] = await world.publish((session_id, "fetched", None))
    deadline = time.monotonic() + 15
    while await _current_status(world, client, session_id) != "fetched":
        assert time.monotonic() < deadline, "the gateway never saw the second record"
        await asyncio.sleep(0.1)

    headers = {"last-event-id": event_id(created)}
    async with sse(client, world.url(world.main, session_id), {"token": world.token()}, headers) as stream:
        assert stream.status == 200
        missed = await stream.next_event()
        [completed] = await world.publish((session_id, "completed", None))
        rest = await stream.events_until_end(20.0)
    assert missed is not None and (missed.id, missed.json()["status"]) == (event_id(fetched), "fetched")
    assert [(e.id, e.json()["status"]) for e in rest] == [(event_id(completed, terminal=True), "completed")]

    # After the terminal event there is nothing more: 204 tells EventSource to stop reconnecting.
    headers = {"last-event-id": event_id(completed, terminal=True)}
    done = await client.get(world.url(world.main, session_id), params={"token": world.token()}, headers=headers)
    assert done.status_code == 204


# --------------------------------------------------------------------------------------------------
# Sessions that do not exist yet


async def test_subscribe_before_the_session_is_created(world: World, client: httpx.AsyncClient) -> None:
    session_id = new_session("early")

    async def subscribe() -> tuple[int, SseEvent | None, float]:
        async with sse(client, world.url(world.main, session_id), params={"token": world.token()}) as stream:
            answered = time.monotonic()
            first = await stream.next_event() if stream.status == 200 else None
            return stream.status, first, answered

    await wait_waiting(client, world.main, 0, "requests of an earlier test still wait")
    # The producer is started beforehand: a fresh one's start-up could take the rest of the wait on a loaded machine.
    async with started_producer(world.bootstrap) as producer:
        started = time.monotonic()
        task = asyncio.create_task(subscribe())
        await wait_waiting(client, world.main, 1, "the request never waited for its session")
        assert not task.done(), "the gateway answered before the session existed"
        publishing = time.monotonic()
        record = (session_id.encode(), event_bytes(session_id, TENANT, "active"))
        [position] = await send(producer, world.topic, [record])
        status, first, answered = await task
    assert status == 200
    assert first is not None and first.id == event_id(position)
    assert first.json()["status"] == "active"
    # Answered once the record was written, well within the 5 s wait for an unknown session.
    assert publishing <= answered < started + 5.0


async def waiting_requests(client: httpx.AsyncClient, gateway: GatewayProcess) -> float:
    text = (await client.get(f"{gateway.internal_url}/metrics")).text
    found = re.search(r"^gateway_waiting_requests (\S+)$", text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


async def wait_waiting(client: httpx.AsyncClient, gateway: GatewayProcess, count: int, what: str) -> None:
    """Waits until ``count`` requests wait on ``gateway`` (for a session, a position or the replay)."""

    async def reached() -> bool:
        return await waiting_requests(client, gateway) == count

    await wait_until(reached, 20, what)


async def test_never_created_session_is_404_after_the_wait(world: World, client: httpx.AsyncClient) -> None:
    session_id = new_session("never")
    started = time.monotonic()
    async with sse(client, world.url(world.quick, session_id), params={"token": world.token()}) as stream:
        elapsed = time.monotonic() - started
        assert stream.status == 404
        body = json.loads(stream.response.content)
    assert body == {"statusCode": 404, "message": f"Session {session_id} not found", "error": "Not Found"}
    assert 0.9 <= elapsed < 3.0, f"answered after {elapsed:.2f}s with GATEWAY_UNKNOWN_SESSION_WAIT=1"


# --------------------------------------------------------------------------------------------------
# Fan-out


async def _follow(client: httpx.AsyncClient, url: str, token: str, opened: list[str], label: str) -> list[SseEvent]:
    """Reads a whole stream; appends ``label`` to ``opened`` once the first event arrived."""
    async with sse(client, url, params={"token": token}) as stream:
        assert stream.status == 200, f"{label}: {stream.status} {stream.response.content!r}"
        first = await stream.next_event(20.0)
        assert first is not None
        opened.append(label)
        return [first, *await stream.events_until_end(30.0)]


async def test_two_subscribers_of_one_session_both_get_every_transition(
    world: World, client: httpx.AsyncClient
) -> None:
    session_id = new_session()
    positions = await world.publish((session_id, "active", None))
    opened: list[str] = []
    url = world.url(world.main, session_id)
    tasks = [
        asyncio.create_task(_follow(client, url, world.token(sub=f"viewer-{n}"), opened, str(n))) for n in range(2)
    ]
    await wait_until(lambda: len(opened) == 2 or any(t.done() for t in tasks), 20, "both streams open")
    positions += await world.publish((session_id, "fetched", None))
    positions += await world.publish((session_id, "failed", None))
    expected = [
        (event_id(positions[0]), "active"),
        (event_id(positions[1]), "fetched"),
        (event_id(positions[2], terminal=True), "failed"),
    ]
    for events in await asyncio.gather(*tasks):
        assert [(e.id, e.json()["status"]) for e in events] == expected
        assert {e.json()["id"] for e in events} == {session_id}


async def test_one_hundred_concurrent_streams_each_get_only_their_own_session(
    world: World, client: httpx.AsyncClient
) -> None:
    count = 100
    sessions = [new_session(f"many{n}") for n in range(count)]
    created = await world.publish(*((s, "active", None) for s in sessions))
    opened: list[str] = []
    tasks = [
        asyncio.create_task(_follow(client, world.url(world.main, s), world.token(sub=f"user-{n}"), opened, s))
        for n, s in enumerate(sessions)
    ]
    await wait_until(lambda: len(opened) == count or any(t.done() for t in tasks), 45, f"{count} streams open")
    fetched = await world.publish(*((s, "fetched", None) for s in sessions))
    completed = await world.publish(*((s, "completed", None) for s in sessions))
    results = await asyncio.gather(*tasks)
    for n, (session_id, events) in enumerate(zip(sessions, results, strict=True)):
        assert [(e.json()["id"], e.json()["status"]) for e in events] == [
            (session_id, "active"),
            (session_id, "fetched"),
            (session_id, "completed"),
        ]
        assert [e.id for e in events] == [
            event_id(created[n]),
            event_id(fetched[n]),
            event_id(completed[n], terminal=True),
        ]


async def test_a_stream_the_client_closed_stops_counting_against_the_session_limit(
    world: World, client: httpx.AsyncClient
) -> None:
    """GATEWAY_MAX_CONNECTIONS_PER_SESSION (default 20) counts open streams, not streams whose client left.

    A page reloaded a few times in a row (each reload drops one stream and opens the next) must not be
    refused with 429 because the streams it dropped a moment ago are still counted.
    """
    limit = 20
    session_id = new_session("limit")
    await world.publish((session_id, "active", None))
    url = world.url(world.main, session_id)
    for round_number in range(3):
        before = await open_streams(client, world.main)
        async with contextlib.AsyncExitStack() as streams:
            for n in range(limit):
                stream = await streams.enter_async_context(
                    sse(client, url, params={"token": world.token(sub=f"tab-{round_number}-{n}")})
                )
                assert stream.status == 200, f"stream {n}: {stream.status} {stream.response.content!r}"
                assert await stream.next_event() is not None
        # All of them are closed now; once the server saw the hang-ups (the gauge is back down), reload. At most:
        # the previous round's reload stream may still have been counted in ``before``.
        await wait_until(
            functools.partial(_open_streams_at_most, client, world.main, before),
            10,
            f"round {round_number}: gateway_open_streams never fell back to {before}",
            interval=0.05,
        )
        async with sse(client, url, params={"token": world.token(sub=f"reload-{round_number}")}) as stream:
            assert stream.status == 200, (
                f"round {round_number}: {stream.status} {stream.response.content!r} after {limit} "
                "streams of this session were closed by their clients and no longer counted as open"
            )


async def open_streams(client: httpx.AsyncClient, gateway: GatewayProcess) -> float:
    """``gateway_open_streams`` (a stream's ticket is released before the gauge goes down, on both engines)."""
    response = await client.get(f"{gateway.internal_url}/metrics")
    assert response.status_code == 200
    match = re.search(r"^gateway_open_streams (\S+)$", response.text, re.MULTILINE)
    assert match is not None, response.text[:2000]
    return float(match.group(1))


async def _open_streams_at_most(client: httpx.AsyncClient, gateway: GatewayProcess, count: float) -> bool:
    return await open_streams(client, gateway) <= count


# --------------------------------------------------------------------------------------------------
# End to end through the CLI


async def _cli_publish(world: World, session_id: str, status: str) -> tuple[int, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "publish",
        session_id,
        status,
        "--tenant",
        TENANT,
        "--bootstrap-servers",
        world.bootstrap,
        "--topic",
        world.topic,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    found = re.search(r"partition (\d+) offset (\d+)", out.decode())
    assert found is not None, out.decode()
    return int(found.group(1)), int(found.group(2))


async def test_status_published_with_the_cli_reaches_the_browser(world: World, client: httpx.AsyncClient) -> None:
    session_id = new_session("cli")
    created = await _cli_publish(world, session_id, "active")
    async with sse(client, world.url(world.main, session_id), params={"token": world.token()}) as stream:
        assert stream.status == 200
        first = await stream.next_event()
        completed = await _cli_publish(world, session_id, "completed")
        rest = await stream.events_until_end(20.0)
    assert first is not None and first.id == event_id(created) and first.json()["status"] == "active"
    assert [(e.id, e.json()["status"]) for e in rest] == [(event_id(completed, terminal=True), "completed")]


# --------------------------------------------------------------------------------------------------
# Not caught up yet


async def test_503_while_the_store_is_not_caught_up(
    kafka_bootstrap: str, world: World, client: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A gateway whose topic does not exist yet cannot have loaded the store: 503 + Retry-After after the
    replay wait (here 1 s), until it has; a request that arrives during the replay waits for it and streams."""
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "gateway-not-yet",
        create=False,
        keys=[world.key],
        jwks=world.jwks,
        ready=False,
        GATEWAY_REPLAY_WAIT="1",
    ) as late:
        gateway, topic = late.gateway, late.topic
        session_id = new_session("later")
        stream: SseStream
        async with sse(client, world.url(gateway, session_id), params={"token": world.token()}) as stream:
            assert stream.status == 503
            assert json.loads(stream.response.content) == {
                "statusCode": 503,
                "message": "Session state is still loading",
                "error": "Service Unavailable",
            }
            assert int(stream.headers["retry-after"]) > 0
        assert (await client.get(f"{gateway.internal_url}/readyz")).status_code == 503

        await create_topic(kafka_bootstrap, topic, partitions=1)
        await produce(kafka_bootstrap, topic, [(session_id.encode(), event_bytes(session_id, TENANT, "active"))])
        await gateway.wait_ready(30.0)
        async with sse(client, world.url(gateway, session_id), params={"token": world.token()}) as stream:
            assert stream.status == 200
            first = await stream.next_event()
        assert first is not None and first.json()["status"] == "active"


async def test_a_request_during_the_replay_waits_for_it(
    kafka_bootstrap: str, world: World, client: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A browser reconnecting to a replica that restarted alone gets its stream, not a 503 that ends it."""
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "gateway-replaying",
        create=False,
        keys=[world.key],
        jwks=world.jwks,
        ready=False,
        GATEWAY_REPLAY_WAIT="30",
    ) as replaying:
        gateway, topic = replaying.gateway, replaying.topic
        session_id = new_session("replay-wait")
        request = asyncio.ensure_future(
            client.get(world.url(gateway, session_id), params={"token": world.token()}, timeout=60)
        )
        await wait_waiting(client, gateway, 1, "the request did not wait for the replay")
        assert not request.done(), "the request should wait for the replay"
        await create_topic(kafka_bootstrap, topic, partitions=1)
        await produce(kafka_bootstrap, topic, [(session_id.encode(), event_bytes(session_id, TENANT, "completed"))])
        response = await asyncio.wait_for(request, 45)
        assert response.status_code == 200, response.text
        assert '"status":"completed"' in response.text


# --------------------------------------------------------------------------------------------------
# Documentation


async def test_openapi_documents_the_events_endpoint(world: World, client: httpx.AsyncClient) -> None:
    docs = await client.get(f"{world.main.internal_url}/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "swagger" in docs.text.lower()

    spec = (await client.get(f"{world.main.internal_url}/openapi.json")).json()
    operation = spec["paths"]["/session/{id}/events"]["get"]
    parameters = {(p["name"], p["in"]) for p in operation["parameters"]}
    assert {("id", "path"), ("token", "query")} <= parameters
    assert {"401", "404", "503"} <= set(operation["responses"])
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    examples = {code: operation["responses"][code]["content"]["application/json"]["example"] for code in ("401", "404")}
    assert examples["401"]["statusCode"] == 401 and examples["401"]["error"] == "Unauthorized"
    assert examples["404"] == {"statusCode": 404, "message": "Session abc not found", "error": "Not Found"}
