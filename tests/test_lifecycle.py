"""Stream lifecycle against the real broker and real ``session-gateway serve`` processes.

Resume with Last-Event-ID (on the same and on another process), 204 after a terminal event, the
resume wait, heartbeats and ``retry:`` jitter, slow clients, token expiry, connection limits, the
graceful drain on SIGTERM, and a rolling restart under load that must lose and duplicate nothing.

Gateways of this module (each a subprocess on its own port, logs under pytest's temp dir):

- ``pair.first`` and ``pair.second`` share one topic, so a client can move from one to the other.
  Both: 1 s heartbeats, 3 s resume wait, 2 s unknown-session wait, 0.5 s broker probe and store sweep,
  ``GATEWAY_MAX_BUFFERED_BYTES=1024`` (the minimum). ``second`` also has a 10 s terminal retention
  (finished sessions leave its store quickly) and ``GATEWAY_CLOSE_ON_TOKEN_EXPIRY=false``.
- ``limits``: tiny connection limits, on a topic of its own.
- the drain and the rolling-restart tests start gateways of their own, since they stop them.

Run with ``-s`` to see the figures the tests print (the rolling restart's count of lost and
duplicated transitions above all).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from tests.gateway_support import (
    GatewayProcess,
    JwksServer,
    SigningKey,
    SseEvent,
    SseStream,
    gateway_env,
    gateway_world,
    mint,
    rsa_key,
    sample,
    scrape,
    sse,
    wait_applied,
)
from tests.kafka_support import (
    create_topic,
    event_bytes,
    produce,
    send,
    started_producer,
    unique_topic,
    wait_until,
)
from tests.support import event_id, new_session

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(autouse=True)
def _quiet_httpx() -> Iterable[None]:
    """httpx logs every request at INFO (with the token in the URL); hundreds of them drown a failure."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


TENANT = "tenant-a"
PARTITIONS = 3
RESUME_WAIT = 3.0
UNKNOWN_SESSION_WAIT = 2.0
RETRY_MS = 3000
RETRY_JITTER = 0.5
TERMINAL = frozenset({"completed", "expired", "failed", "cancelled"})
# pair.second's GATEWAY_TERMINAL_RETENTION: long enough for a stream admitted right after a session ended to
# still find it (test_resume_on_another_gateway_process), far below the age of the records that test the
# eviction (EVICTED_AGE).
SECOND_TERMINAL_RETENTION = 10
EVICTED_AGE = 30


# --------------------------------------------------------------------------------------------------
# Sessions on the broker


def position(event_id_: str) -> tuple[int, int]:
    partition, offset = event_id_.split("-")[:2]
    return int(partition), int(offset)


async def publish(
    bootstrap: str,
    topic: str,
    session_id: str,
    *statuses: str,
    updated_at: datetime | None = None,
    producer: AIOKafkaProducer | None = None,
) -> list[str]:
    """Writes the transitions of one session in order; returns their event ids.

    With ``producer`` (started beforehand), the call takes only the send: for tests that time a delivery.
    """
    records: list[tuple[bytes | None, bytes | None]] = [
        (session_id.encode(), event_bytes(session_id, TENANT, status, updated_at)) for status in statuses
    ]
    if producer is None:
        positions = await produce(bootstrap, topic, records)
    else:
        positions = await send(producer, topic, records)
    return [event_id((p, o), status in TERMINAL) for (p, o), status in zip(positions, statuses, strict=True)]


async def publish_many(
    bootstrap: str, topic: str, transitions: list[tuple[str, str]], producer: AIOKafkaProducer | None = None
) -> dict[str, list[str]]:
    """Writes ``(session, status)`` records with one producer; returns the event ids by session.

    With ``producer`` (started beforehand), the call takes only the send, as ``publish``.
    """
    records: list[tuple[bytes | None, bytes | None]] = [
        (sid.encode(), event_bytes(sid, TENANT, status)) for sid, status in transitions
    ]
    if producer is None:
        positions = await produce(bootstrap, topic, records)
    else:
        positions = await send(producer, topic, records)
    ids: dict[str, list[str]] = {}
    for (sid, status), (p, o) in zip(transitions, positions, strict=True):
        ids.setdefault(sid, []).append(event_id((p, o), status in TERMINAL))
    return ids


# --------------------------------------------------------------------------------------------------
# HTTP side: clients, streams watched in the background, metrics


def http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, read=None),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
    )


def resume_request(token: str, last_event_id: str | None, via: str) -> tuple[dict[str, str], dict[str, str]]:
    """Query parameters and headers of a stream request; ``via`` is "header" (EventSource) or "query"."""
    params = {"token": token}
    headers: dict[str, str] = {}
    if last_event_id is not None:
        if via == "header":
            headers["Last-Event-ID"] = last_event_id
        else:
            params["lastEventId"] = last_event_id
    return params, headers


@dataclass
class Watch:
    """One stream request whose events, comments and end are collected by a background task."""

    url: str
    status: int = 0
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    body: bytes = b""
    stream: SseStream | None = None
    events: list[SseEvent] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    opened_at: float = 0.0
    ended_at: float | None = None
    error: BaseException | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    new_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def ids(self) -> list[str | None]:
        return [event.id for event in self.events]

    @property
    def statuses(self) -> list[str]:
        return [str(event.json()["status"]) for event in self.events]

    @property
    def comments(self) -> int:
        return self.stream.comments if self.stream is not None else 0

    @property
    def retry(self) -> int | None:
        return self.stream.retry if self.stream is not None else None

    async def run(self, client: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str]) -> None:
        try:
            async with sse(client, self.url, params, headers) as stream:
                self.stream, self.status, self.headers = stream, stream.status, stream.headers
                self.opened_at = time.monotonic()
                if stream.status != 200:
                    self.body = stream.response.content
                self.answered.set()
                if stream.status != 200:
                    return
                while (event := await stream.next_event(timeout=3600)) is not None:
                    self.events.append(event)
                    self.arrivals.append(time.monotonic())
                    self.new_event.set()
        except Exception as error:
            self.error = error
        finally:
            self.ended_at = time.monotonic()
            self.answered.set()
            self.new_event.set()

    async def wait_events(self, count: int, timeout: float = 10.0) -> list[SseEvent]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            if self.ended_at is not None:
                raise AssertionError(f"{self.url}: stream ended after {self.ids} (error {self.error!r})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.url}: {len(self.events)} events {self.ids}, expected {count}")
            self.new_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.new_event.wait(), remaining)
        return self.events

    async def wait_end(self, timeout: float = 10.0) -> list[SseEvent]:
        assert self.task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.url}: stream still open after {timeout}s, events {self.ids}") from None
        return self.events

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def open_watch(
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    session_id: str,
    token: str,
    last_event_id: str | None = None,
    via: str = "header",
    timeout: float = 15.0,
) -> Watch:
    """Sends the request and returns once the response's status line arrived (the stream stays open)."""
    params, headers = resume_request(token, last_event_id, via)
    watch = Watch(f"{gateway.url}/session/{session_id}/events")
    watch.task = asyncio.create_task(watch.run(client, params, headers))
    try:
        await asyncio.wait_for(watch.answered.wait(), timeout)
    except TimeoutError:
        await watch.close()
        raise AssertionError(f"{watch.url}: no answer within {timeout}s") from None
    if watch.error is not None:
        raise AssertionError(f"{watch.url}: request failed: {watch.error!r}") from watch.error
    return watch


@contextlib.asynccontextmanager
async def watching(
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    session_id: str,
    token: str,
    last_event_id: str | None = None,
    via: str = "header",
    timeout: float = 15.0,
) -> AsyncIterator[Watch]:
    watch = await open_watch(client, gateway, session_id, token, last_event_id, via, timeout)
    try:
        yield watch
    finally:
        await watch.close()


async def fetch_stream(
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    session_id: str,
    token: str,
    last_event_id: str | None = None,
    via: str = "header",
    timeout: float = 15.0,
) -> Watch:
    """A stream request read to its end (for streams that end by themselves, and refusals)."""
    watch = await open_watch(client, gateway, session_id, token, last_event_id, via, timeout)
    try:
        await watch.wait_end(timeout)
    finally:
        await watch.close()
    return watch


async def open_streams(client: httpx.AsyncClient, gateway: GatewayProcess) -> float:
    return sample(await scrape(client, gateway), "gateway_open_streams")


async def wait_open_streams(client: httpx.AsyncClient, gateway: GatewayProcess, count: int) -> None:
    async def reached() -> bool:
        return await open_streams(client, gateway) == count

    await wait_until(reached, 10, f"{gateway.url}: open streams never became {count}", interval=0.1)


async def waiting_requests(client: httpx.AsyncClient, gateway: GatewayProcess) -> float:
    """Requests waiting on ``gateway`` (for their session or their resume position)."""
    return sample(await scrape(client, gateway), "gateway_waiting_requests")


async def wait_waiting(client: httpx.AsyncClient, gateway: GatewayProcess, count: int, what: str) -> None:
    async def reached() -> bool:
        return await waiting_requests(client, gateway) == count

    await wait_until(reached, 10, what, interval=0.05)


async def wait_exit(gateway: GatewayProcess, timeout: float) -> int:
    process = gateway.process
    assert process is not None
    await wait_until(
        lambda: process.poll() is not None, timeout, lambda: f"gateway still running:\n{gateway.logs()[-3000:]}"
    )
    return int(process.returncode)


async def exit_time(gateway: GatewayProcess, timeout: float) -> tuple[int, float]:
    """The exit code and the ``time.monotonic()`` at which the process was seen gone."""
    code = await wait_exit(gateway, timeout)
    return code, time.monotonic()


# --------------------------------------------------------------------------------------------------
# Gateways


@dataclass
class Pair:
    bootstrap: str
    topic: str
    first: GatewayProcess
    second: GatewayProcess
    key: SigningKey

    def token(self, **claims: Any) -> str:
        return mint(self.key, **claims)

    async def publish(
        self,
        session_id: str,
        *statuses: str,
        updated_at: datetime | None = None,
        producer: AIOKafkaProducer | None = None,
    ) -> list[str]:
        return await publish(
            self.bootstrap, self.topic, session_id, *statuses, updated_at=updated_at, producer=producer
        )


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lifecycle-logs")


@pytest.fixture(scope="module")
def jwks() -> Iterable[JwksServer]:
    server = JwksServer(keys=[rsa_key("lifecycle")]).start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def running(*gateways: GatewayProcess) -> AsyncIterator[None]:
    try:
        for gateway in gateways:
            gateway.start()
        await asyncio.gather(*(gateway.wait_ready() for gateway in gateways))
        yield
    finally:
        for gateway in gateways:
            gateway.stop()


@pytest_asyncio.fixture(scope="module")
async def pair(kafka_bootstrap: str, jwks: JwksServer, logs: Path) -> AsyncIterator[Pair]:
    common = {
        "GATEWAY_HEARTBEAT_INTERVAL": "1",
        "GATEWAY_RESUME_WAIT": str(RESUME_WAIT),
        "GATEWAY_UNKNOWN_SESSION_WAIT": str(UNKNOWN_SESSION_WAIT),
        "GATEWAY_KAFKA_HEALTH_INTERVAL": "0.5",
        "GATEWAY_STORE_EVICTION_INTERVAL": "0.5",
        "GATEWAY_MAX_BUFFERED_BYTES": "1024",
        "GATEWAY_RETRY_MS": str(RETRY_MS),
        "GATEWAY_RETRY_JITTER": str(RETRY_JITTER),
        "GATEWAY_JWT_LEEWAY": "0",  # streams close at exp + leeway: 0 makes that exp itself
    }
    second = {
        "GATEWAY_TERMINAL_RETENTION": str(SECOND_TERMINAL_RETENTION),
        "GATEWAY_CLOSE_ON_TOKEN_EXPIRY": "false",
    }
    async with gateway_world(
        kafka_bootstrap,
        logs,
        "lifecycle",
        partitions=PARTITIONS,
        keys=jwks.keys,
        jwks=jwks,
        common=common,
        gateways={"pair-first": {}, "pair-second": second},
    ) as world:
        yield Pair(kafka_bootstrap, world.topic, world["pair-first"], world["pair-second"], world.key)


# --------------------------------------------------------------------------------------------------
# Resume with Last-Event-ID


@pytest.mark.parametrize("via", ["header", "query"])
async def test_resume_sends_exactly_the_missed_transitions_in_order(pair: Pair, via: str) -> None:
    """A client that saw ``active`` and missed ``fetched`` and ``completed`` gets those two, in order."""
    session = new_session("resume")
    token = pair.token()
    (active,) = await pair.publish(session, "active")
    async with http_client() as client:
        async with watching(client, pair.first, session, token) as first:
            await first.wait_events(1)
            assert first.ids == [active]
            assert first.statuses == ["active"]
        fetched, completed = await pair.publish(session, "fetched", "completed")
        resumed = await fetch_stream(client, pair.first, session, token, last_event_id=active, via=via)
        # And a client that also saw ``fetched`` gets only ``completed``.
        rest = await fetch_stream(client, pair.first, session, token, last_event_id=fetched, via=via)
    assert resumed.status == 200
    assert resumed.ids == [fetched, completed]
    assert resumed.statuses == ["fetched", "completed"]
    assert completed.endswith("-end")
    assert rest.ids == [completed]


@pytest.mark.parametrize("via", ["header", "query"])
async def test_resume_on_another_gateway_process(pair: Pair, via: str) -> None:
    """The id encodes the Kafka position, so a client can resume on any replica, without loss or duplicate.

    The client reads ``active`` and ``fetched`` from the first process, then reconnects to the
    second, which has never seen the client, and gets exactly ``completed``. Produced right before
    the reconnect, ``completed`` may not be consumed yet by the second process: it then waits.
    """
    session = new_session("cross")
    token = pair.token()
    (active,) = await pair.publish(session, "active")
    async with http_client() as client:
        async with watching(client, pair.first, session, token) as first:
            await first.wait_events(1)
            (fetched,) = await pair.publish(session, "fetched")
            await first.wait_events(2)
            seen = list(first.ids)
        (completed,) = await pair.publish(session, "completed")
        resumed = await fetch_stream(client, pair.second, session, token, last_event_id=fetched, via=via)
        # A client that only saw ``active`` (on the first) also gets the rest from the second.
        from_active = await fetch_stream(client, pair.second, session, token, last_event_id=active, via=via)
    assert seen == [active, fetched]
    assert resumed.status == 200
    assert resumed.ids == [completed]
    assert from_active.ids == [fetched, completed]
    delivered = seen + resumed.ids
    assert len(delivered) == len(set(delivered)) == 3


async def test_up_to_date_client_gets_no_initial_event_but_later_transitions(pair: Pair) -> None:
    """Resuming with the id of the current state (from the other process): no initial event, then live ones."""
    session = new_session("uptodate")
    token = pair.token()
    (active,) = await pair.publish(session, "active")
    async with http_client() as client:
        async with watching(client, pair.first, session, token) as first:
            await first.wait_events(1)
        async with watching(client, pair.second, session, token, last_event_id=active) as resumed:
            assert resumed.status == 200
            await wait_until(lambda: resumed.comments >= 1, 5, "no heartbeat on the resumed stream")
            assert resumed.events == [], "an up-to-date client must not get the current state again"
            fetched, completed = await pair.publish(session, "fetched", "completed")
            await resumed.wait_end(10)
    assert first.ids == [active]
    assert resumed.ids == [fetched, completed]


def malformed_ids(partition: int, offset: int) -> list[str]:
    """Last-Event-IDs that are not the position of a session whose current event is ``partition-offset``."""
    other = (partition + 1) % PARTITIONS
    return [
        "garbage",
        "0-",
        "-5",
        "0--1",
        "1-2-3",
        f"{partition}-{offset}-END",
        f"{partition}-{offset}-end-x",
        f"{partition}:{offset}",
        f"{partition}-{offset}.5",
        f"{partition}-0x10",
        f"{other}-{offset}",  # another partition's id
        f"{other}-{offset}-end",
        f"{other}-0",
        "1" * 10 + f"-{offset}",  # partition wider than 9 digits
        f"{partition}-" + "9" * 20,  # offset wider than 19 digits
        f"{partition}-" + "1" * 400,
        "x" * 4000,
        "../../etc/passwd",
        '{"partition": 0}',
    ]


async def test_malformed_or_foreign_last_event_id_is_treated_as_absent(pair: Pair) -> None:
    """Garbage, another partition's id, numbers wider than a Kafka position: the current state is sent.

    Never a 500, never a refusal, never a wait. Every case has a session and a subject of its own,
    so the streams of earlier cases (released within a second) never count against a limit.
    """
    cases = [(via, index) for via in ("header", "query") for index in range(len(malformed_ids(0, 0)))]
    sessions = {case: new_session("garbage") for case in cases}
    ids = await publish_many(
        pair.bootstrap, pair.topic, [(sid, status) for sid in sessions.values() for status in ("active", "fetched")]
    )
    # Every session applied before the first request: one still on its way would wait for it, for the consumer's lag.
    token = pair.token(sub="garbage-probe")
    for session in sessions.values():
        await wait_applied(pair.first, session, token)
    failures: list[str] = []
    async with http_client() as client:
        for (via, index), session in sessions.items():
            fetched = ids[session][-1]
            bad = malformed_ids(*position(fetched))[index]
            token = pair.token(sub=f"garbage-{via}-{index}")
            started = time.monotonic()
            async with watching(client, pair.first, session, token, last_event_id=bad, via=via) as watch:
                if watch.status == 200:
                    await watch.wait_events(1, timeout=5)
            elapsed = time.monotonic() - started
            if watch.status != 200 or watch.ids[:1] != [fetched] or elapsed > 1.5:
                failures.append(
                    f"{via} {bad[:40]!r}: status {watch.status} events {watch.ids} after {elapsed:.1f}s {watch.body!r}"
                )
    assert not failures, "\n".join(failures)


async def test_offset_beyond_any_kafka_position_is_treated_as_absent(pair: Pair) -> None:
    """``P-9223372036854775808`` on the session's own partition cannot be a real position (offsets are int64).

    It fits the id pattern (up to 19 digits), so the gateway takes it for a position it has not
    reached yet, waits the whole resume wait and answers 503: a client holding such an id (a
    corrupted or forged one) is refused forever instead of getting the current state.
    """
    session = new_session("int64")
    token = pair.token()
    (active,) = await pair.publish(session, "active")
    partition, _ = position(active)
    async with http_client() as client:
        started = time.monotonic()
        async with watching(client, pair.first, session, token, last_event_id=f"{partition}-{2**63}") as watch:
            if watch.status == 200:
                await watch.wait_events(1, timeout=5)
        elapsed = time.monotonic() - started
    assert watch.status == 200, f"status {watch.status} after {elapsed:.1f}s: {watch.body!r}"
    assert watch.ids == [active]


# --------------------------------------------------------------------------------------------------
# 204 after a terminal event


async def test_terminal_last_event_id_gets_204(pair: Pair) -> None:
    """The client's last event was terminal: 204 No Content, so EventSource stops reconnecting."""
    session = new_session("done")
    token = pair.token()
    active, completed = await pair.publish(session, "active", "completed")
    partition, offset = position(completed)
    async with http_client() as client:
        # Without an id: the final state, then the stream ends by itself.
        plain = await fetch_stream(client, pair.first, session, token)
        answers = {
            (last_id, via): await fetch_stream(client, pair.first, session, token, last_event_id=last_id, via=via)
            for last_id in (completed, f"{partition}-{offset}")  # with "-end", or the terminal position itself
            for via in ("header", "query")
        }
    assert plain.status == 200
    assert plain.ids == [completed]
    for (last_id, via), answer in answers.items():
        assert answer.status == 204, f"{last_id} via {via}: {answer.status} {answer.ids}"
        assert answer.body == b""
        assert answer.events == []
    assert active != completed


async def test_terminal_last_event_id_gets_204_after_the_session_was_evicted(pair: Pair) -> None:
    """The second process keeps finished sessions 10 s only; a "-end" id still gets 204 once the session is gone.

    The records carry an ``updatedAt`` 30 s old, so the session is evicted at the next store
    sweep (every 0.5 s). That it is gone is checked from outside: without an id, the same request
    then waits for the session to appear and answers 404.
    """
    session = new_session("evicted")
    token = pair.token()
    old = datetime.now(UTC) - timedelta(seconds=EVICTED_AGE)
    async with http_client() as client:
        # Scraped before the records exist, so this session's eviction cannot be in it.
        evicted_before = await evicted_for_retention(client, pair.second)
        _active, completed = await pair.publish(session, "active", "completed", updated_at=old)
        deadline = time.monotonic() + 20
        while True:
            probe = await fetch_stream(client, pair.second, session, token, timeout=UNKNOWN_SESSION_WAIT + 5)
            if probe.status == 404:
                break
            assert time.monotonic() < deadline, f"never evicted: {probe.status} {probe.ids}"
            await asyncio.sleep(0.5)
        header = await fetch_stream(client, pair.second, session, token, last_event_id=completed)
        query = await fetch_stream(client, pair.second, session, token, last_event_id=completed, via="query")

        # A session past its retention is already not served before the sweep removes it: wait for the count.
        async def counted() -> bool:
            return await evicted_for_retention(client, pair.second) - evicted_before >= 1

        await wait_until(counted, 10, "the eviction was never counted in gateway_sessions_evicted_total")
    assert header.status == 204, f"{header.status} {header.body!r}"
    assert query.status == 204, f"{query.status} {query.body!r}"


async def evicted_for_retention(client: httpx.AsyncClient, gateway: GatewayProcess) -> float:
    return sample(await scrape(client, gateway), "gateway_sessions_evicted_total", reason="terminal_retention")


# --------------------------------------------------------------------------------------------------
# Resume wait: the replica has not consumed up to the client's position yet


async def test_resume_beyond_the_partition_end_waits_then_503(pair: Pair) -> None:
    """Last-Event-ID beyond the end of the session's partition: the replica cannot tell a position it
    has not consumed yet from one that does not exist, so it waits ``GATEWAY_RESUME_WAIT`` (3 s here)
    for its consumer to get there rather than send stale state, then answers 503 with Retry-After;
    it never sends the current state instead.
    """
    session = new_session("behind")
    token = pair.token()
    (active,) = await pair.publish(session, "active")
    partition, offset = position(active)
    async with http_client() as client:
        started = time.monotonic()
        answer = await fetch_stream(
            client, pair.first, session, token, last_event_id=f"{partition}-{offset + 1000}", timeout=RESUME_WAIT + 5
        )
        elapsed = time.monotonic() - started
    assert answer.status == 503, f"{answer.status} {answer.ids}"
    assert answer.headers.get("retry-after", "").isdigit()
    assert answer.events == []
    assert RESUME_WAIT - 0.5 <= elapsed <= RESUME_WAIT + 2.0, f"answered after {elapsed:.2f}s"


async def test_resume_waits_for_a_position_that_arrives_within_the_wait(pair: Pair) -> None:
    """The client's position is produced while the request waits: the stream then sends what follows it.

    The client claims to have seen the next record of the partition (which will be this session's
    ``fetched``); ``fetched`` and ``completed`` are produced once the request waits, and the stream
    sends ``completed`` only.
    """
    session = new_session("arrives")
    token = pair.token()
    (active,) = await pair.publish(session, "active")
    partition, offset = position(active)
    claimed = f"{partition}-{offset + 1}"
    # Started beforehand: a fresh producer's start-up could take the rest of the wait on a loaded machine.
    async with http_client() as client, started_producer(pair.bootstrap) as producer:
        await wait_waiting(client, pair.first, 0, "requests of an earlier test still wait")
        started = time.monotonic()
        request = asyncio.create_task(
            fetch_stream(client, pair.first, session, token, last_event_id=claimed, timeout=RESUME_WAIT + 5)
        )
        await wait_waiting(client, pair.first, 1, "the request did not wait for the position")
        assert not request.done(), "the request did not wait for the position"
        fetched, completed = await pair.publish(session, "fetched", "completed", producer=producer)
        answer = await request
        elapsed = time.monotonic() - started
    assert position(fetched) == (partition, offset + 1), "someone else wrote to the partition"
    assert answer.status == 200, f"{answer.status} {answer.body!r}"
    assert answer.ids == [completed]
    assert elapsed < RESUME_WAIT + 1.0


# --------------------------------------------------------------------------------------------------
# Heartbeat and retry


async def test_idle_stream_gets_heartbeats_every_second(pair: Pair) -> None:
    session = new_session("heartbeat")
    token = pair.token()
    (active,) = await pair.publish(session, "active")
    async with http_client() as client, watching(client, pair.first, session, token) as watch:
        await watch.wait_events(1)
        before = watch.comments
        await asyncio.sleep(3.5)
        heartbeats = watch.comments - before
        assert watch.ended_at is None
    print(f"\nheartbeats in 3.5 s with GATEWAY_HEARTBEAT_INTERVAL=1: {heartbeats}")
    assert 2 <= heartbeats <= 6
    assert watch.ids == [active]


async def test_retry_field_is_jittered_within_bounds(pair: Pair) -> None:
    session = new_session("retry")
    token = pair.token()
    await pair.publish(session, "active")
    values: list[int] = []
    async with http_client() as client:
        for _ in range(10):
            async with watching(client, pair.first, session, token) as watch:
                await watch.wait_events(1)
                assert watch.retry is not None
                values.append(watch.retry)
    low, high = RETRY_MS * (1 - RETRY_JITTER), RETRY_MS * (1 + RETRY_JITTER)
    print(f"\nretry values: {values}")
    assert all(low <= value <= high for value in values), values
    assert len(set(values)) > 1, f"no jitter: {values}"


# --------------------------------------------------------------------------------------------------
# Slow client


async def test_stalled_reader_is_cut_while_a_normal_reader_keeps_receiving(
    kafka_bootstrap: str, jwks: JwksServer, logs: Path
) -> None:
    """A reader that sends its GET and never reads (minimal receive buffer) sits beside a normal reader.

    Once the stalled reader's receive window is closed, bytes stay pending towards it; at the next
    two heartbeat checks nothing drained, so the gateway cuts it and counts a slow-client disconnect,
    while the normal reader on the same session gets every transition promptly. A long session id
    (big events) and fast heartbeats fill the ~1.2 KB window in seconds instead of minutes.

    Seeing bytes pending towards the peer is the native engine's (it owns the connection); the portable
    ASGI path cuts a stalled reader only once ``GATEWAY_MAX_BUFFERED_BYTES`` wait in its own buffer
    (``test_lifecycle_unit``), so this test runs the native engine on both passes of the suite.
    """
    session = new_session("stalled-" + "x" * 200)
    token = mint(jwks.keys[0])
    loop = asyncio.get_running_loop()
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel rounds it up to its minimum
    stalled.setblocking(False)
    latencies: list[float] = []
    # The producer is started beforehand: a latency below measures the send and the delivery, not its start-up.
    async with (
        gateway_world(
            kafka_bootstrap,
            logs,
            "lifecycle-slow",
            partitions=PARTITIONS,
            keys=jwks.keys,
            jwks=jwks,
            GATEWAY_HEARTBEAT_INTERVAL="0.25",
        ) as world,
        http_client() as client,
        started_producer(kafka_bootstrap) as producer,
    ):
        gateway, topic = world.gateway, world.topic
        try:
            (active,) = await publish(kafka_bootstrap, topic, session, "active", producer=producer)
            await loop.sock_connect(stalled, ("127.0.0.1", gateway.port))
            request = (
                f"GET /session/{session}/events?token={token} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{gateway.port}\r\nAccept: text/event-stream\r\n\r\n"
            )
            await loop.sock_sendall(stalled, request.encode())
            async with watching(client, gateway, session, token) as normal:
                await normal.wait_events(1)
                await wait_open_streams(client, gateway, 2)
                started = time.monotonic()
                produced = time.monotonic()
                (fetched,) = await publish(kafka_bootstrap, topic, session, "fetched", producer=producer)
                await normal.wait_events(2, timeout=5)
                latencies.append(normal.arrivals[-1] - produced)
                await wait_open_streams_at_most(client, gateway, 1, timeout=40)
                cut_after = time.monotonic() - started
                cut = sample(await scrape(client, gateway), "gateway_slow_client_disconnects_total")
                produced = time.monotonic()
                (completed,) = await publish(kafka_bootstrap, topic, session, "completed", producer=producer)
                await normal.wait_end(5)
                latencies.append(normal.arrivals[-1] - produced)
        finally:
            stalled.close()
    print(
        f"\nslow client cut after {cut_after:.1f}s; normal reader latencies {[f'{x * 1000:.0f} ms' for x in latencies]}"
    )
    assert cut == 1
    assert normal.ids == [active, fetched, completed]
    assert max(latencies) < 1.5, latencies


async def wait_open_streams_at_most(
    client: httpx.AsyncClient, gateway: GatewayProcess, count: int, timeout: float
) -> None:
    async def reached() -> bool:
        return await open_streams(client, gateway) <= count

    await wait_until(reached, timeout, f"{gateway.url}: open streams never fell to {count}", interval=0.2)


# --------------------------------------------------------------------------------------------------
# Token expiry


def token_exp(token: str) -> int:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return int(claims["exp"])


async def test_stream_ends_when_its_token_expires_unless_disabled(pair: Pair) -> None:
    """A token that expires 3 s from now is accepted (30 s leeway), but the stream ends at ``exp``.

    On the second process (``GATEWAY_CLOSE_ON_TOKEN_EXPIRY=false``) the same stream stays open and
    still delivers transitions after ``exp``.
    """
    session = new_session("expiry")
    await pair.publish(session, "active")
    token = pair.token(ttl=3, sub="expiring")
    exp = token_exp(token)
    async with http_client() as client:
        before = sample(await scrape(client, pair.first), "gateway_streams_closed_total", reason="token_expired")
        async with (
            watching(client, pair.first, session, token) as closing,
            watching(client, pair.second, session, token) as staying,
        ):
            await closing.wait_events(1)
            await staying.wait_events(1)
            await closing.wait_end(8)
            assert closing.ended_at is not None
            ended_wall = time.time() - (time.monotonic() - closing.ended_at)
            await asyncio.sleep(max(0.0, exp + 2.5 - time.time()))
            assert staying.ended_at is None, "the stream closed although GATEWAY_CLOSE_ON_TOKEN_EXPIRY=false"
            (fetched,) = await pair.publish(session, "fetched")
            await staying.wait_events(2, timeout=5)
        after = sample(await scrape(client, pair.first), "gateway_streams_closed_total", reason="token_expired")
    print(f"\ntoken expiry: stream closed {ended_wall - exp:+.2f}s after exp")
    assert closing.error is None, f"the stream was not ended cleanly: {closing.error!r}"
    # The expiry sweep runs once a second: up to 1 s of the bound is by design, the rest for a loaded machine.
    assert -0.5 <= ended_wall - exp <= 3.0
    assert closing.statuses == ["active"]
    assert staying.ids[-1] == fetched
    assert after - before == 1


# --------------------------------------------------------------------------------------------------
# Connection limits

LIMIT_TOTAL = 6
LIMIT_SUBJECT = 3
LIMIT_SESSION = 2


@dataclass
class Limited:
    gateway: GatewayProcess
    bootstrap: str
    topic: str
    key: SigningKey


@pytest_asyncio.fixture(scope="module")
async def limited(kafka_bootstrap: str, jwks: JwksServer, logs: Path) -> AsyncIterator[Limited]:
    async with gateway_world(
        kafka_bootstrap,
        logs,
        "limits",
        partitions=PARTITIONS,
        keys=jwks.keys,
        jwks=jwks,
        GATEWAY_MAX_CONNECTIONS=str(LIMIT_TOTAL),
        GATEWAY_MAX_CONNECTIONS_PER_SUBJECT=str(LIMIT_SUBJECT),
        GATEWAY_MAX_CONNECTIONS_PER_SESSION=str(LIMIT_SESSION),
        GATEWAY_UNKNOWN_SESSION_WAIT="5",
    ) as world:
        yield Limited(world.gateway, kafka_bootstrap, world.topic, world.key)


async def test_connection_limits_refuse_with_retry_after_and_count_in_metrics(limited: Limited) -> None:
    gateway, key = limited.gateway, limited.key
    sessions = [new_session(f"limit{i}") for i in range(7)]
    await publish_many(limited.bootstrap, limited.topic, [(s, "active") for s in sessions])
    refused: dict[str, Watch] = {}
    async with http_client() as client, contextlib.AsyncExitStack() as stack:
        before = await scrape(client, gateway)

        async def stream(session: str, sub: str) -> Watch:
            watch = await stack.enter_async_context(watching(client, gateway, session, mint(key, sub=sub)))
            if watch.status == 200:
                await watch.wait_events(1)
            return watch

        # Per session: two subjects on session 0, a third is refused.
        assert (await stream(sessions[0], "u1")).status == 200
        assert (await stream(sessions[0], "u2")).status == 200
        refused["per_session"] = await stream(sessions[0], "u3")
        # Per subject: u4 on three sessions, a fourth is refused.
        for session in sessions[1:4]:
            assert (await stream(session, "u4")).status == 200
        refused["per_subject"] = await stream(sessions[4], "u4")
        # Whole process: a sixth stream fits, a seventh is refused.
        sixth = await stream(sessions[4], "u5")
        assert sixth.status == 200
        assert await open_streams(client, gateway) == LIMIT_TOTAL
        refused["max_connections"] = await stream(sessions[5], "u6")
        after = await scrape(client, gateway)
        # A closed stream frees its place.
        await sixth.close()
        await wait_open_streams(client, gateway, LIMIT_TOTAL - 1)
        freed = await stream(sessions[5], "u6")
        assert freed.status == 200
    expected = {"per_session": 429, "per_subject": 429, "max_connections": 503}
    for limit, status in expected.items():
        answer = refused[limit]
        assert answer.status == status, f"{limit}: {answer.status} {answer.body!r}"
        assert answer.headers.get("retry-after", "").isdigit(), f"{limit}: no Retry-After"
        assert int(answer.headers["retry-after"]) > 0
        counted = sample(after, "gateway_limit_refusals_total", limit=limit) - sample(
            before, "gateway_limit_refusals_total", limit=limit
        )
        assert counted == 1, f"{limit} counted {counted} times"


async def test_requests_waiting_for_their_session_cannot_exceed_the_subject_limit(limited: Limited) -> None:
    """Five concurrent requests of one subject for sessions that do not exist yet all pass the first
    check (nothing is open) and wait for their session; once the sessions appear, only three (the
    subject's limit) get a stream, and the other two get 429.
    """
    gateway = limited.gateway
    token = mint(limited.key, sub="burst")
    sessions = [new_session(f"burst{i}") for i in range(5)]
    # Started beforehand: a fresh producer's start-up could take the rest of the wait on a loaded machine.
    async with http_client() as client, started_producer(limited.bootstrap) as producer:
        await wait_open_streams(client, gateway, 0)
        watches = [asyncio.create_task(open_watch(client, gateway, s, token, timeout=10)) for s in sessions]

        async def all_arrived() -> bool:  # each request waits for its session, or was answered at once
            return await waiting_requests(client, gateway) + sum(watch.done() for watch in watches) == len(watches)

        await wait_until(all_arrived, 10, "the requests never reached the gateway")
        await publish_many(limited.bootstrap, limited.topic, [(s, "active") for s in sessions], producer)
        opened = await asyncio.gather(*watches)
        try:
            admitted = [w for w in opened if w.status == 200]
            statuses = sorted(w.status for w in opened)
            at_once = await open_streams(client, gateway)
        finally:
            for watch in opened:
                await watch.close()
    print(f"\nwaiting requests: statuses {statuses}, {at_once:.0f} streams open for one subject")
    assert len(admitted) == LIMIT_SUBJECT, f"{len(admitted)} streams admitted for one subject: {statuses}"
    assert statuses == [200] * LIMIT_SUBJECT + [429] * (len(sessions) - LIMIT_SUBJECT), statuses
    assert at_once == LIMIT_SUBJECT, f"{at_once} streams open at once for one subject"


# --------------------------------------------------------------------------------------------------
# Graceful drain


async def test_sigterm_drains_open_streams_gradually_and_exits(
    kafka_bootstrap: str, jwks: JwksServer, logs: Path
) -> None:
    """SIGTERM: /readyz fails at once, open streams close spread over the drain, and the process
    exits within drain + a small margin. A new stream during the drain gets its current state and an
    immediate end of stream (not an error status, which would make a browser's EventSource give up
    for good), so the client reconnects to another replica after its retry delay.
    """
    drain = 4.0
    count = 40
    sessions = [new_session(f"drain{i}") for i in range(count)]
    token = mint(jwks.keys[0])
    watches: list[Watch] = []
    async with (
        gateway_world(
            kafka_bootstrap,
            logs,
            "lifecycle-drain",
            partitions=PARTITIONS,
            records=[(s.encode(), event_bytes(s, TENANT, "active")) for s in sessions],
            keys=jwks.keys,
            jwks=jwks,
            GATEWAY_DRAIN_SECONDS=str(drain),
            GATEWAY_HEARTBEAT_INTERVAL="2",
            GATEWAY_MAX_CONNECTIONS_PER_SUBJECT="1000",
        ) as world,
        http_client() as client,
    ):
        gateway = world.gateway
        try:
            watches = list(await asyncio.gather(*(open_watch(client, gateway, s, token) for s in sessions)))
            await asyncio.gather(*(w.wait_events(1) for w in watches))
            assert await open_streams(client, gateway) == count
            signalled = time.monotonic()
            gateway.signal(signal.SIGTERM)
            exiting = asyncio.create_task(exit_time(gateway, drain + 10))
            not_ready = await gateway.wait_status("/readyz", 503, timeout=3)
            not_ready_after = time.monotonic() - signalled
            late = await open_watch(client, gateway, sessions[0], token)
            await late.wait_end(3)
            await late.close()
            await asyncio.gather(*(w.wait_end(drain + 5) for w in watches))
            code, exited_at = await exiting
            exited_after = exited_at - signalled
        finally:
            for watch in watches:
                await watch.close()
    closes = sorted(w.ended_at - signalled for w in watches if w.ended_at is not None)
    spread = closes[-1] - closes[0]
    busiest = max(sum(1 for c in closes if start <= c < start + 0.5) for start in closes)
    print(
        f"\ndrain of {count} streams over {drain:.0f}s: /readyz 503 after {not_ready_after * 1000:.0f} ms; "
        f"closes from {closes[0]:.2f}s to {closes[-1]:.2f}s (spread {spread:.2f}s, at most {busiest} in 0.5 s); "
        f"process exited with {code} after {exited_after:.2f}s"
    )
    assert not_ready.json()["checks"]["accepting_streams"] is False
    assert not_ready_after < 1.0
    assert late.status == 200, f"new stream during the drain: {late.status}"
    assert late.statuses == ["active"] and late.ended_at is not None
    assert all(w.error is None for w in watches), [repr(w.error) for w in watches if w.error]
    assert all(w.statuses == ["active"] for w in watches)
    assert spread > 1.5
    assert closes[-1] <= drain + 2.0
    assert busiest <= count // 2
    assert exited_after < drain + 8
    assert code == 0


# --------------------------------------------------------------------------------------------------
# Rolling restart under load


@dataclass
class Router:
    """Stands for the load balancer: sends every new request to the current gateway."""

    url: str


@dataclass
class EventSourceClient:
    """Mimics a browser's EventSource for one session: reconnects with Last-Event-ID after ``retry``.

    On a refusal (503 while a replica drains or loads) it retries after a short delay, as an app
    wrapping EventSource would; 204 ends it, as it ends EventSource.
    """

    session: str
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (id, status, gateway url)
    last_event_id: str | None = None
    retry_ms: int = 3000
    answers: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what happened)
    done: bool = False

    def gaps(self) -> list[float]:
        """Seconds from each end of a stream (or failed attempt) to the next stream (200).

        The wait for the 204 that follows a terminal event is not counted: nothing was missing then.
        """
        gaps: list[float] = []
        ended: float | None = None
        for moment, what in self.timeline:
            if what.startswith(("200", "204")):
                if ended is not None and what.startswith("200"):
                    gaps.append(moment - ended)
                ended = None
            elif ended is None and (what == "end" or what.startswith(("error", "503"))):
                ended = moment
        return gaps

    async def run(self, client: httpx.AsyncClient, router: Router, token: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            base = router.url
            params, headers = resume_request(token, self.last_event_id, "header")
            try:
                async with sse(client, f"{base}/session/{self.session}/events", params, headers) as stream:
                    self.answers[stream.status] += 1
                    self.timeline.append((time.monotonic(), f"{stream.status} {base}"))
                    if stream.status == 204:
                        self.done = True
                        return
                    if stream.status != 200:
                        await asyncio.sleep(random.uniform(0.2, 0.5))
                        continue
                    while (event := await stream.next_event(timeout=60)) is not None:
                        assert event.id is not None
                        self.events.append((event.id, str(event.json()["status"]), base))
                        self.last_event_id = event.id
                    self.timeline.append((time.monotonic(), "end"))
                    if stream.retry is not None:
                        self.retry_ms = stream.retry
            except (httpx.HTTPError, OSError, TimeoutError) as error:
                self.errors[type(error).__name__] += 1
                self.timeline.append((time.monotonic(), f"error {type(error).__name__} {base}"))
                await asyncio.sleep(random.uniform(0.2, 0.5))
                continue
            await asyncio.sleep(self.retry_ms / 1000)


async def publish_over_time(
    bootstrap: str, topic: str, schedule: list[tuple[float, str, str]], started: float
) -> dict[str, list[str]]:
    """Writes ``(at, session, status)`` records at their time (seconds after ``started``); returns the ids."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    sent: list[tuple[str, str, asyncio.Future[Any]]] = []
    try:
        for at, session, status in schedule:
            delay = started + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            future = await producer.send(topic, key=session.encode(), value=event_bytes(session, TENANT, status))
            sent.append((session, status, future))
        await producer.flush()
        ids: dict[str, list[str]] = {}
        for session, status, future in sent:
            meta = await future
            ids.setdefault(session, []).append(event_id((int(meta.partition), int(meta.offset)), status in TERMINAL))
        return ids
    finally:
        await producer.stop()


async def test_rolling_restart_loses_and_duplicates_nothing(kafka_bootstrap: str, jwks: JwksServer, logs: Path) -> None:
    """200 streams on process A while transitions flow for ~10 s; A gets SIGTERM (3 s drain) and B starts.

    Every client reconnects (to B once it is ready) with Last-Event-ID and must end with every
    transition of its session exactly once, in order, ending with ``completed`` (then 204).
    """
    count = 200
    drain = 3.0
    topic = unique_topic("lifecycle-restart")
    await create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    sessions = [f"restart-{uuid.uuid4().hex[:8]}-{i:03d}" for i in range(count)]
    expected = await publish_many(kafka_bootstrap, topic, [(s, "active") for s in sessions])
    env = gateway_env(
        kafka_bootstrap,
        topic,
        jwks,
        GATEWAY_DRAIN_SECONDS=str(drain),
        GATEWAY_RETRY_MS="500",
        GATEWAY_HEARTBEAT_INTERVAL="5",
        GATEWAY_MAX_CONNECTIONS_PER_SUBJECT="1000",
        GATEWAY_ACCESS_LOG="false",
    )
    first = GatewayProcess(env, logs / "restart-a.log")
    second = GatewayProcess(env, logs / "restart-b.log")
    rng = random.Random(20261128)
    schedule: list[tuple[float, str, str]] = []
    for session in sessions:
        fetched_at = rng.uniform(0.2, 7.0)
        schedule.append((fetched_at, session, "fetched"))
        schedule.append((fetched_at + rng.uniform(0.3, 3.0), session, "completed"))
    schedule.sort()
    clients = [EventSourceClient(s) for s in sessions]
    token = mint(jwks.keys[0], sub="restart")
    producing: asyncio.Task[dict[str, list[str]]] | None = None
    try:
        first.start()
        await first.wait_ready()
        router = Router(first.url)
        async with http_client() as client:
            deadline = time.monotonic() + 90
            tasks = [asyncio.create_task(c.run(client, router, token, deadline)) for c in clients]
            try:
                await wait_until(
                    lambda: all(c.events for c in clients),
                    30,
                    lambda: f"{sum(1 for c in clients if c.events)} of {count} streams got their first event",
                )
                started = time.monotonic()
                producing = asyncio.create_task(publish_over_time(kafka_bootstrap, topic, schedule, started))
                await asyncio.sleep(3.0)
                signalled = time.monotonic()
                first.signal(signal.SIGTERM)
                exiting = asyncio.create_task(exit_time(first, drain + 10))
                second.start()
                await second.wait_ready()
                router.url = second.url
                switched = time.monotonic() - signalled
                later = await producing
                first_code, first_exit_time = await exiting
                first_exited = first_exit_time - signalled
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if producing is not None and not producing.done():
            producing.cancel()
            await asyncio.gather(producing, return_exceptions=True)
        first.stop()
        second.stop()
    for session, ids in later.items():
        expected[session].extend(ids)
    published = sum(len(ids) for ids in expected.values())
    delivered = sum(len(c.events) for c in clients)
    lost = duplicated = 0
    out_of_order: list[str] = []
    for c in clients:
        got = [event_id_ for event_id_, _, _ in c.events]
        lost += len(set(expected[c.session]) - set(got))
        duplicated += len(got) - len(set(got))
        if got != expected[c.session]:
            out_of_order.append(f"{c.session}: got {got}, expected {expected[c.session]}")
    answers = sum((c.answers for c in clients), Counter[int]())
    errors = sum((c.errors for c in clients), Counter[str]())
    via_first = sum(1 for c in clients for *_, url in c.events if url == first.url)
    resumed_on_second = sum(1 for c in clients if any(url == second.url for *_, url in c.events))
    gaps = sorted(gap for c in clients for gap in c.gaps())
    print(
        f"\nrolling restart, {count} sessions, drain {drain:.0f}s: transitions published={published} "
        f"delivered={delivered} lost={lost} duplicated={duplicated} wrong_order={len(out_of_order)}\n"
        f"  events via A={via_first} via B={delivered - via_first}; clients that resumed on B={resumed_on_second}; "
        f"answers {dict(sorted(answers.items()))}; connection errors {dict(errors)}\n"
        f"  B ready {switched:.2f}s after SIGTERM to A; A exited with {first_code} {first_exited:.2f}s after SIGTERM; "
        f"time without a stream after one ended: median {gaps[len(gaps) // 2]:.2f}s, max {gaps[-1]:.2f}s "
        f"({len(gaps)} reconnections)"
    )
    assert lost == 0
    assert duplicated == 0
    assert not out_of_order, "\n".join(out_of_order[:10])
    assert all(c.done for c in clients), [c.session for c in clients if not c.done][:10]
    assert all(c.events[-1][1] == "completed" for c in clients)
    assert resumed_on_second > 0
    assert first_exited < drain + 8
