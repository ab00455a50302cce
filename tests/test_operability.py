"""What an operator relies on: /metrics, /readyz, /livez, logs without tokens, dev mode only when asked.

Real parts only: ``session-gateway serve`` processes, a real JWKS server, the shared broker, and for
the outage test a second broker of our own (``scripts/kafka.sh`` on free ports with its own state
dir) that the test stops and starts again. Metrics are read over HTTP and parsed with
``prometheus_client``'s parser; counters are compared as deltas around known traffic.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway_support import (
    DevIssuerProcess,
    GatewayProcess,
    GatewayWorld,
    JwksServer,
    dev_issuer_gateway_env,
    dev_mode_gateway,
    gateway_world,
    mint,
    rsa_key,
    sse,
    stopping,
)
from tests.kafka_support import (
    LocalBroker,
    Record,
    create_topic,
    event_bytes,
    produce,
    unique_topic,
)
from tests.support import new_session, wait_until

pytestmark = pytest.mark.timeout(240)

TENANT = "tenant-a"
PARTITIONS = 3
RECORD_AGE = 30  # seconds: how old the Kafka timestamps of the live records of the metrics test are


# --------------------------------------------------------------------------------------------------
# Metrics over HTTP

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Metrics:
    """One scrape of /metrics: every sample by (name, labels), plus the family types."""

    samples: dict[tuple[str, Labels], float]
    types: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples: dict[tuple[str, Labels], float] = {}
        types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        return cls(samples, types)

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it was never set (a labelled counter appears on first use)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def labelled(self, name: str, label: str) -> dict[str, float]:
        return {dict(key)[label]: value for (sample, key), value in self.samples.items() if sample == name}

    def delta(self, before: Metrics, name: str, **labels: str) -> float:
        return self.get(name, **labels) - before.get(name, **labels)


async def scrape(client: httpx.AsyncClient, gateway: GatewayProcess) -> Metrics:
    response = await client.get(f"{gateway.internal_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Metrics.parse(response.text)


async def readyz(client: httpx.AsyncClient, gateway: GatewayProcess) -> tuple[int, dict[str, Any]]:
    response = await client.get(f"{gateway.internal_url}/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


# --------------------------------------------------------------------------------------------------
# Fixtures


World = GatewayWorld


@pytest_asyncio.fixture(scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One gateway (dev mode off, JSON logs) on a topic of its own, with a JWKS server of its own."""
    # Not compacted: a compacted topic refuses keyless records, and the metrics test writes one on purpose.
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "operability",
        partitions=PARTITIONS,
        keys=[rsa_key("ops-key")],
        GATEWAY_UNKNOWN_SESSION_WAIT="0.5",
    ) as world:
        yield world


# --------------------------------------------------------------------------------------------------
# /livez and /metrics


async def test_livez(world: World, client: httpx.AsyncClient) -> None:
    response = await client.get(f"{world.gateway.url}/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


async def test_metrics_follow_known_traffic(kafka_bootstrap: str, world: World, client: httpx.AsyncClient) -> None:
    gateway, topic = world.gateway, world.topic

    async def steady() -> bool:
        # The gauges follow readiness within one consumer poll (about 200 ms).
        now = await scrape(client, gateway)
        return now.get("gateway_store_caught_up") == 1 and now.get("gateway_broker_reachable") == 1

    await wait_until(steady, 10, "gateway_store_caught_up and gateway_broker_reachable never became 1")
    before = await scrape(client, gateway)
    assert before.types["gateway_records_consumed"] == "counter"
    assert before.types["gateway_delivery_delay_seconds"] == "histogram"
    assert before.types["gateway_open_streams"] == "gauge"
    assert before.get("gateway_store_caught_up") == 1
    assert before.get("gateway_broker_reachable") == 1

    a, b, c = new_session("a"), new_session("b"), new_session("c")
    # Everything on partition 0, so the order of outcomes is the order written here.
    phase_one: list[Record] = [
        (a.encode(), event_bytes(a, TENANT, "active")),  # applied
        (a.encode(), event_bytes(a, TENANT, "active")),  # ignored: duplicate
        (b.encode(), event_bytes(b, TENANT, "completed")),  # applied
        (b.encode(), event_bytes(b, TENANT, "fetched")),  # ignored: after_terminal
        (c.encode(), event_bytes(c, TENANT, "active")),  # applied
        (c.encode(), event_bytes(c, "tenant-b", "fetched")),  # ignored: tenant_changed
        (new_session("gone").encode(), None),  # ignored: unknown_delete
        (None, event_bytes("no-key", TENANT, "active")),  # rejected: missing_key
        (b"e", b"{not json"),  # rejected: not_json
        (b"f", event_bytes("g", TENANT, "active")),  # rejected: key_mismatch
        (b"h", json.dumps({"id": "h"}).encode()),  # rejected: schema
        (b"\xff\xfe", event_bytes("x", TENANT, "active")),  # rejected: invalid_utf8
    ]
    await produce(kafka_bootstrap, topic, phase_one, partition=0)

    async def consumed(count: int) -> bool:
        return (await scrape(client, gateway)).delta(before, "gateway_records_consumed_total") >= count

    await wait_until(lambda: consumed(len(phase_one)), 20, "the gateway did not consume phase one")

    # A stream: open while it is open, then one live event (through the delay histogram) and the end.
    token = mint(world.key, tenant=TENANT, session=a)
    async with sse(client, f"{gateway.url}/session/{a}/events", params={"token": token}) as stream:
        assert stream.status == 200
        first = await stream.next_event()
        assert first is not None and first.json()["status"] == "active"
        during = await scrape(client, gateway)
        assert during.delta(before, "gateway_open_streams") == 1
        assert during.delta(before, "gateway_streams_opened_total") == 1
        phase_two: list[Record] = [
            (a.encode(), event_bytes(a, TENANT, "fetched")),  # applied, delivered live
            (a.encode(), event_bytes(a, TENANT, "active")),  # ignored: backward
            (a.encode(), event_bytes(a, TENANT, "completed")),  # applied, delivered live, ends the stream
        ]
        # Kafka timestamps RECORD_AGE seconds in the past: the delivery delay counts from them, so each live
        # event's delay is RECORD_AGE plus the time from this line to its write (before ``written`` below).
        stamped = time.time()
        timestamp_ms = int(stamped * 1000) - RECORD_AGE * 1000
        await produce(kafka_bootstrap, topic, phase_two, partition=0, timestamp_ms=timestamp_ms)
        rest = await stream.events_until_end(20)
        written = time.time()
        assert [event.json()["status"] for event in rest] == ["fetched", "completed"]

    # Refused streams, one per authentication failure reason.
    stranger = rsa_key("not-in-the-jwks")
    refusals = {
        "missing": {},
        "malformed": {"token": "not-a-jwt"},
        "expired": {"token": mint(world.key, tenant=TENANT, ttl=-3600)},
        "unknown_key": {"token": mint(stranger, tenant=TENANT)},
    }
    fetches_before = world.jwks.fetches
    # The unknown kid refetches the JWKS once: at once, or inside GATEWAY_JWKS_MIN_REFRESH (1 s) after the
    # deferred refetch it waits for.
    for params in refusals.values():
        response = await client.get(f"{gateway.url}/session/{a}/events", params=params)
        assert response.status_code == 401, response.text

    total = len(phase_one) + len(phase_two)
    partitions = [str(p) for p in range(PARTITIONS)]

    async def settled() -> bool:
        now = await scrape(client, gateway)
        return (
            now.delta(before, "gateway_records_consumed_total") >= total
            and now.get("gateway_open_streams") == before.get("gateway_open_streams")
            # A broker probe (every GATEWAY_KAFKA_HEALTH_INTERVAL) since the traffic: every partition, no lag.
            and now.labelled("gateway_consumer_lag_records", "partition") == dict.fromkeys(partitions, 0.0)
            and now.labelled("gateway_consumer_position", "partition").get("0", 0.0) >= total
        )

    await wait_until(settled, 20, "the gateway never settled after the traffic")
    after = await scrape(client, gateway)

    def delta(name: str, **labels: str) -> float:
        return after.delta(before, name, **labels)

    assert delta("gateway_records_consumed_total") == total
    assert delta("gateway_records_applied_total") == 5
    for reason in ("duplicate", "after_terminal", "tenant_changed", "unknown_delete", "backward"):
        assert delta("gateway_records_ignored_total", reason=reason) == 1, reason
    for reason in ("missing_key", "not_json", "key_mismatch", "schema", "invalid_utf8"):
        assert delta("gateway_records_rejected_total", reason=reason) == 1, reason
    assert delta("gateway_records_rejected_total", reason="too_large") == 0

    assert delta("gateway_events_delivered_total") == 3  # the current state, then two live transitions
    assert delta("gateway_delivery_delay_seconds_count") == 2  # live events only
    delay = delta("gateway_delivery_delay_seconds_sum")
    ceiling = 2 * (RECORD_AGE + written - stamped + 0.001)  # + 1 ms: the timestamp was rounded down
    assert 2 * RECORD_AGE <= delay <= ceiling, (
        f"{delay:.3f} s for two events written {RECORD_AGE} s after their records"
    )
    assert delta("gateway_delivery_delay_seconds_bucket", le="10.0") == 0  # neither delay was below RECORD_AGE
    assert after.get("gateway_delivery_delay_seconds_bucket", le="+Inf") == after.get(
        "gateway_delivery_delay_seconds_count"
    )
    assert delta("gateway_streams_opened_total") == 1
    assert delta("gateway_streams_closed_total", reason="terminal") == 1
    assert after.get("gateway_open_streams") == before.get("gateway_open_streams")

    for reason in refusals:
        assert delta("gateway_auth_failures_total", reason=reason) == 1, reason
    assert delta("gateway_stream_requests_refused_total", status="401") == len(refusals)

    assert world.jwks.fetches - fetches_before == 1
    assert delta("gateway_jwks_fetches_total") == 1
    assert after.get("gateway_jwks_fetches_total") == world.jwks.fetches  # every fetch is counted
    assert after.get("gateway_jwks_fetch_failures_total") == 0

    assert delta("gateway_store_sessions") == 3  # a, b, c
    lag = after.labelled("gateway_consumer_lag_records", "partition")
    assert sorted(lag) == [str(p) for p in range(PARTITIONS)]
    positions = after.labelled("gateway_consumer_position", "partition")
    assert sorted(positions) == [str(p) for p in range(PARTITIONS)]
    assert positions["0"] >= total


# --------------------------------------------------------------------------------------------------
# /readyz


async def test_readyz_waits_for_the_store_to_catch_up(
    kafka_bootstrap: str, world: World, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A gateway whose topic does not exist yet is alive but not ready; once it can replay, it is."""
    async with gateway_world(
        kafka_bootstrap, tmp_path, "late-topic", create=False, keys=[world.key], jwks=world.jwks, ready=False
    ) as late:
        gateway, topic = late.gateway, late.topic
        response = await gateway.wait_status("/livez", 200, 30)
        assert response.json() == {"status": "alive"}
        status, body = await readyz(client, gateway)
        assert status == 503, body
        assert body["status"] == "not ready"
        assert body["checks"]["store_caught_up"] is False
        assert "session store is still replaying the topic" in body["reasons"]

        async def reports_missing_topic() -> bool:
            return any(topic in reason for reason in (await readyz(client, gateway))[1]["reasons"])

        await wait_until(reports_missing_topic, 20, lambda: _describe_readyz(client, gateway))

        session = new_session("late")
        await create_topic(kafka_bootstrap, topic, partitions=2, compacted=True)
        await produce(kafka_bootstrap, topic, [(session.encode(), event_bytes(session, TENANT, "active"))])
        await gateway.wait_ready(45)
        status, body = await readyz(client, gateway)
        assert status == 200
        assert body["status"] == "ready"
        assert body["checks"] == {
            "store_caught_up": True,
            "signing_keys_loaded": True,
            "accepting_streams": True,
            "broker_reachable": True,
            "signing_keys_fresh": True,
        }
        assert body["reasons"] == []
        assert "warnings" not in body
        assert body["seconds_since_broker_contact"] >= 0
        assert body["seconds_since_keys_refreshed"] >= 0
        assert all(task["recent_crashes"] == 0 for task in body["tasks"].values()), body["tasks"]
        token = mint(world.key, tenant=TENANT)
        async with sse(client, f"{gateway.url}/session/{session}/events", params={"token": token}) as stream:
            assert stream.status == 200
            event = await stream.next_event()
            assert event is not None and event.json()["status"] == "active"


async def test_a_broker_outage_keeps_the_replica_ready_and_serving(
    world: World, client: httpx.AsyncClient, outage_broker: LocalBroker, tmp_path: Path
) -> None:
    """A broker of our own stops for 20 s under a ready gateway: it stays ready and serves from memory.

    Readiness is polled throughout the outage (an unready fleet answers 503 everywhere, and a browser's
    EventSource never retries after an error status). A second gateway in the opt-in strict mode shows
    the other choice: it turns unready. A stream opened during the outage gets the current state and,
    once the broker is back, the next transition.
    """
    broker = outage_broker
    session = new_session("outage")
    try:
        async with gateway_world(
            broker.bootstrap,
            tmp_path,
            "outage",
            partitions=2,
            compacted=True,
            records=[(session.encode(), event_bytes(session, TENANT, "active"))],
            keys=[world.key],
            jwks=world.jwks,
            gateways={"gateway": {}, "strict": {"GATEWAY_READINESS_STRICT": "true"}},
            GATEWAY_KAFKA_REQUEST_TIMEOUT_MS="3000",
        ) as outage:
            gateway, strict = outage["gateway"], outage["strict"]
            topic = outage.topic
            assert (await scrape(client, gateway)).get("gateway_broker_reachable") == 1

            await asyncio.to_thread(broker.stop)
            outage_started = time.monotonic()
            statuses: set[int] = set()

            async def outage_noticed() -> bool:
                status, body = await readyz(client, gateway)
                statuses.add(status)
                return body["checks"]["broker_reachable"] is False

            await wait_until(outage_noticed, 60, "the gateway never noticed the outage")
            status, body = await readyz(client, gateway)
            assert status == 200, body
            assert body["checks"]["store_caught_up"] is True
            assert any("broker" in warning.lower() for warning in body["warnings"]), body
            assert (await scrape(client, gateway)).get("gateway_broker_reachable") == 0
            await strict.wait_status("/readyz", 503, 30)
            assert (await client.get(f"{gateway.url}/livez")).status_code == 200

            token = mint(world.key, tenant=TENANT)
            async with sse(client, f"{gateway.url}/session/{session}/events", params={"token": token}) as stream:
                assert stream.status == 200
                event = await stream.next_event()
                assert event is not None and event.json()["status"] == "active"
                while time.monotonic() - outage_started < 20:  # readiness throughout a 20 s outage
                    statuses.add((await readyz(client, gateway))[0])
                    await asyncio.sleep(0.5)
                assert statuses == {200}, f"/readyz answered {statuses} during the outage"
                metrics = await scrape(client, gateway)
                assert metrics.get("gateway_kafka_last_fetch_age_seconds") >= 15
                # The client library's repeated connection errors are folded into a few lines.
                entries = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
                kafka_lines = [entry for entry in entries if entry["logger"].startswith("aiokafka")]
                assert len(kafka_lines) <= 40, f"{len(kafka_lines)} aiokafka lines during a 20 s outage"
                assert metrics.get("gateway_kafka_log_lines_suppressed_total") > 0

                await asyncio.to_thread(broker.start)
                await wait_until(
                    lambda: _ready_and_reachable(client, gateway), 90, lambda: _describe_readyz(client, gateway)
                )
                await strict.wait_ready(60)
                # The stream opened during the outage receives what is written after it.
                await produce(broker.bootstrap, topic, [(session.encode(), event_bytes(session, TENANT, "fetched"))])
                event = await stream.next_event(45)
                assert event is not None and event.json()["status"] == "fetched"
    finally:
        if broker.is_running():
            await asyncio.to_thread(broker.stop)


async def _ready_and_reachable(client: httpx.AsyncClient, gateway: GatewayProcess) -> bool:
    status, body = await readyz(client, gateway)
    return status == 200 and body["checks"]["broker_reachable"] is True


async def test_an_identity_provider_outage_keeps_the_replica_ready(
    kafka_bootstrap: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The JWKS endpoint goes away after the keys were loaded: ready throughout, cached keys still verify."""
    key = rsa_key("idp-outage")
    jwks = JwksServer(keys=[key], cache_control="max-age=1").start()
    session = new_session("idp")
    async with gateway_world(
        kafka_bootstrap,
        tmp_path,
        "idp-outage",
        records=[(session.encode(), event_bytes(session, TENANT, "active"))],
        keys=[key],
        jwks=jwks,
        GATEWAY_JWKS_CACHE_TTL="1",
        GATEWAY_JWKS_CACHE_MIN_TTL="0",
        GATEWAY_JWKS_MIN_REFRESH="1",
    ) as idp:
        gateway = idp.gateway
        jwks.stop()
        statuses: set[int] = set()

        async def refresh_failed() -> bool:
            status, body = await readyz(client, gateway)
            statuses.add(status)
            return body["checks"]["signing_keys_fresh"] is False

        await wait_until(refresh_failed, 30, lambda: _describe_readyz(client, gateway))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            statuses.add((await readyz(client, gateway))[0])
            await asyncio.sleep(0.5)
        assert statuses == {200}, f"/readyz answered {statuses} while the identity provider was down"
        _, body = await readyz(client, gateway)
        assert any("signing keys" in warning for warning in body["warnings"]), body
        metrics = await scrape(client, gateway)
        assert metrics.get("gateway_jwks_last_refresh_age_seconds") >= 10
        assert metrics.get("gateway_jwks_fetch_failures_total") >= 1
        token = mint(key, tenant=TENANT)
        async with sse(client, f"{gateway.url}/session/{session}/events", params={"token": token}) as stream:
            assert stream.status == 200
            event = await stream.next_event()
            assert event is not None and event.json()["status"] == "active"


async def _describe_readyz(client: httpx.AsyncClient, gateway: GatewayProcess) -> str:
    status, body = await readyz(client, gateway)
    return f"{status} {body}\n{gateway.logs()[-2000:]}"


# --------------------------------------------------------------------------------------------------
# Logs never hold a token


async def test_logs_never_contain_tokens(kafka_bootstrap: str, world: World, client: httpx.AsyncClient) -> None:
    gateway = world.gateway
    session = new_session("redact")
    await produce(kafka_bootstrap, world.topic, [(session.encode(), event_bytes(session, TENANT, "active"))])
    url = f"{gateway.url}/session/{session}/events"
    in_query = mint(world.key, tenant=TENANT, session=session)
    alt_query = mint(world.key, tenant=TENANT, sub="user-alt")
    in_header = mint(world.key, tenant=TENANT, sub="user-header")
    forged = mint(rsa_key("forger"), tenant=TENANT, sub="user-forged")
    expired = mint(world.key, tenant=TENANT, ttl=-3600, sub="user-expired")
    tokens = [in_query, alt_query, in_header, forged, expired]

    requests = 0

    async def visible() -> bool:
        # The gateway waits only 0.5 s for an unknown session: poll until it consumed the record.
        nonlocal requests
        requests += 1
        async with sse(client, url, params={"token": in_query}) as stream:
            return stream.status == 200

    await wait_until(visible, 30, f"{session} never streamed")
    for params, headers in [
        ({"token": in_query}, {}),
        ({"access_token": alt_query}, {}),
        ({}, {"authorization": f"Bearer {in_header}"}),
    ]:
        async with sse(client, url, params=params, headers=headers) as stream:
            assert stream.status == 200
            assert await stream.next_event() is not None
    for params, headers in [
        ({"token": forged}, {}),
        ({"token": expired, "lastEventId": "0-1"}, {}),
        ({}, {"authorization": f"Bearer {forged}"}),
    ]:
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 401

    def access_lines() -> list[str]:
        entries = [json.loads(line) for line in gateway.logs().splitlines() if '"uvicorn.access"' in line]
        return [entry["message"] for entry in entries if f"/session/{session}/events" in entry["message"]]

    # Every request above has its access line (the streams' once they ended): the log holds all there is to check.
    requests += 6
    await wait_until(lambda: len(access_lines()) >= requests, 10, lambda: f"access lines so far: {access_lines()}")
    logs = gateway.logs()
    for token in tokens:
        header, payload, signature = token.split(".")
        assert token not in logs
        assert signature not in logs
        assert f"{header}.{payload}" not in logs
    stream_lines = access_lines()
    assert len(stream_lines) >= 5, stream_lines
    assert any("?token=[REDACTED]" in line for line in stream_lines), stream_lines
    assert any("access_token=[REDACTED]" in line for line in stream_lines), stream_lines
    assert all("eyJ" not in line for line in stream_lines)


# --------------------------------------------------------------------------------------------------
# Dev mode


DEV_ROUTES = [
    ("GET", "/"),
    ("GET", "/demo"),
    ("GET", "/demo/static/demo.js"),
    ("POST", "/dev/sessions"),
    ("POST", "/dev/sessions/some-session/status"),
    ("GET", "/dev/metrics"),
    ("GET", "/dev/readyz"),
    ("GET", "/dev/docs"),
]


async def test_dev_endpoints_are_absent_without_dev_mode(world: World, client: httpx.AsyncClient) -> None:
    for method, path in DEV_ROUTES:
        response = await client.request(method, f"{world.gateway.url}{path}", json={"status": "fetched"})
        assert response.status_code == 404, (method, path, response.status_code)
    openapi = (await client.get(f"{world.gateway.internal_url}/openapi.json")).json()
    assert not any(path.startswith(("/dev", "/demo")) for path in openapi["paths"])
    assert "Development only" not in json.dumps(openapi)
    assert "DEV MODE" not in world.gateway.logs()


@dataclass
class DevWorld:
    issuer: DevIssuerProcess
    gateway: GatewayProcess
    topic: str


@pytest_asyncio.fixture
async def dev_world(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[DevWorld]:
    topic = unique_topic("operability-dev")
    await create_topic(kafka_bootstrap, topic, partitions=PARTITIONS, compacted=True)
    async with dev_mode_gateway(kafka_bootstrap, topic, tmp_path) as (issuer, gateway):
        yield DevWorld(issuer, gateway, topic)


async def test_dev_mode_serves_the_demo_and_publishes(dev_world: DevWorld, client: httpx.AsyncClient) -> None:
    base = dev_world.gateway.url
    root = await client.get(f"{base}/")
    assert root.status_code in (302, 307) and root.headers["location"] == "/demo"
    page = await client.get(f"{base}/demo")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Create session" in page.text and "/demo/static/demo.js" in page.text
    for asset, media in [("demo.js", "text/javascript"), ("demo.css", "text/css")]:
        response = await client.get(f"{base}/demo/static/{asset}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(media)
    for bad in ["nope.js", "..%2Fdev.py", "demo.html.bak", ".hidden.js"]:
        assert (await client.get(f"{base}/demo/static/{bad}")).status_code == 404, bad

    openapi = (await client.get(f"{dev_world.gateway.internal_url}/openapi.json")).json()
    for path in ("/dev/sessions", "/dev/sessions/{id}/status"):
        operation = openapi["paths"][path]["post"]
        assert operation["tags"] == ["Development only"], operation
        assert "DEV MODE ONLY" in operation["summary"]

    created = await client.post(f"{base}/dev/sessions", json={"tenant": "acme"})
    assert created.status_code == 201, created.text
    body = created.json()
    # Dev mode turns stream tickets on: the page gets a ticket, never the tenant token (docs/tickets.md).
    session, token, events_url = body["id"], body["ticket"], body["eventsUrl"]
    assert "token" not in body and token.startswith("v1.") and body["expiresAt"].endswith("Z")
    assert uuid.UUID(session).version == 4
    assert events_url.startswith(f"/session/{session}/events?ticket=")
    async with sse(client, base + events_url) as stream:
        assert stream.status == 200, stream.response.text
        first = await stream.next_event()
        assert first is not None and first.json()["status"] == "active"
        for status in ("fetched", "completed"):
            changed = await client.post(f"{base}/dev/sessions/{session}/status", json={"status": status})
            assert changed.status_code == 200, changed.text
            assert changed.json()["status"] == status and changed.json()["tenant"] == "acme"
        rest = await stream.events_until_end(20)
        assert [event.json()["status"] for event in rest] == ["fetched", "completed"]
    assert rest[-1].id is not None and rest[-1].id.endswith("-end")

    # The default tenant, and the ticket: it opens its one session only.
    default = (await client.post(f"{base}/dev/sessions")).json()
    assert default["tenant"] == "demo-tenant"
    async with sse(client, f"{base}/session/{default['id']}/events", params={"ticket": token}) as stream:
        assert stream.status == 404

    bad_status = await client.post(f"{base}/dev/sessions/{session}/status", json={"status": "bogus"})
    assert bad_status.status_code == 422
    unknown = await client.post(f"{base}/dev/sessions/{uuid.uuid4()}/status", json={"status": "fetched"})
    assert unknown.status_code == 404 and "tenant" in unknown.json()["detail"]
    # With its tenant, any session can be moved (e.g. one published by another tool).
    other = str(uuid.uuid4())
    given = await client.post(f"{base}/dev/sessions/{other}/status", json={"status": "active", "tenant": "acme"})
    assert given.status_code == 200, given.text

    logs = dev_world.gateway.logs()
    assert "DEV MODE" in logs
    assert token not in logs and token.split(".")[2] not in logs
    assert f"/session/{session}/events?ticket=[REDACTED]" in logs  # text format access log
    # The tenant token the dev server traded for the ticket is in no line either (a JWT: eyJ<header>.eyJ<claims>).
    assert not re.search(r"eyJ[\w-]+\.eyJ", logs)


async def test_dev_mode_explains_a_missing_topic_and_an_unreachable_issuer(
    kafka_bootstrap: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    topic = unique_topic("operability-dev-late")
    issuer = DevIssuerProcess(tmp_path / "never-started.log")  # its port stays closed
    gateway = GatewayProcess(
        dev_issuer_gateway_env(kafka_bootstrap, topic, issuer, GATEWAY_DEV_MODE="true"), tmp_path / "gateway.log"
    ).start()
    with stopping(gateway):
        await gateway.wait_status("/livez", 200, 30)
        response = await client.post(f"{gateway.url}/dev/sessions", json={})
        assert response.status_code == 503
        assert f"not reading topic '{topic}'" in response.json()["detail"], response.json()
        changed = await client.post(f"{gateway.url}/dev/sessions/s-1/status", json={"status": "fetched", "tenant": "t"})
        assert changed.status_code == 503

        await create_topic(kafka_bootstrap, topic, partitions=1)

        async def issuer_is_the_problem() -> bool:
            response = await client.post(f"{gateway.url}/dev/sessions", json={})
            return response.status_code == 502 and "dev issuer" in response.json()["detail"]

        await wait_until(issuer_is_the_problem, 30, lambda: _describe_readyz(client, gateway))
    assert "Traceback" not in gateway.logs()
