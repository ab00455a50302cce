"""OpenTelemetry traces end to end, against a real collector (Jaeger all-in-one, ``tests/tracing_support.py``).

A producer's ``traceparent`` (a header, a binary CloudEvent's ``ce_traceparent``, a structured CloudEvent's
attribute) is continued by the gateway's ``session.apply`` span, found through Jaeger's query API under the
producer's trace id with the deliveries it made; a stream admission has its span (``stream.admit``) with
outcome, reason and tenant, and a refused token's material reaches neither the spans nor the logs. One
gateway exports over OTLP/HTTP, the other over OTLP/gRPC. See docs/observability.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from tests.deploy_support import tool
from tests.gateway_support import GatewayWorld, gateway_world, mint, rsa_key, sse
from tests.kafka_support import event_bytes
from tests.tracing_support import Jaeger, parent_span_id, tags, wait_for_spans

pytestmark = pytest.mark.timeout(600)


@pytest_asyncio.fixture(scope="module")
async def jaeger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jaeger]:
    collector = Jaeger(tool("jaeger", request.config), tmp_path_factory.mktemp("jaeger")).start()
    try:
        await collector.wait_ready()
        yield collector
    finally:
        collector.stop()


def trace_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


async def produce_with_headers(
    bootstrap: str, topic: str, key: str, value: bytes, headers: Sequence[tuple[str, bytes]]
) -> tuple[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        meta = await (await producer.send(topic, value=value, key=key.encode(), headers=list(headers)))
        return int(meta.partition), int(meta.offset)
    finally:
        await producer.stop()


def tracing_env(endpoint: str, protocol: str, service: str, sampler: str, arg: str = "") -> dict[str, str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_SERVICE_NAME": service,
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        "OTEL_TRACES_SAMPLER": sampler,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "GATEWAY_LOG_FORMAT": "json",
    }
    if arg:
        env["OTEL_TRACES_SAMPLER_ARG"] = arg
    return env


@pytest_asyncio.fixture(scope="module")
async def http_world(
    kafka_bootstrap: str, jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayWorld]:
    """Exports over OTLP/HTTP; the sampler keeps nothing on its own (ratio 0): only a sampled parent is traced."""
    env = tracing_env(jaeger.otlp_http, "http/protobuf", "gateway-http", "parentbased_traceidratio", "0")
    async with gateway_world(kafka_bootstrap, tmp_path_factory, "tracing-http", common=env) as world:
        yield world


@pytest_asyncio.fixture(scope="module")
async def grpc_world(
    kafka_bootstrap: str, jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayWorld]:
    """Exports over OTLP/gRPC; every trace is kept, refusals are logged by the gateway itself (no access log)."""
    env = tracing_env(jaeger.otlp_grpc, "grpc", "gateway-grpc", "always_on")
    env["GATEWAY_ACCESS_LOG"] = "false"
    async with gateway_world(kafka_bootstrap, tmp_path_factory, "tracing-grpc", common=env) as world:
        yield world


def log_entries(path: Path) -> list[dict[str, object]]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


async def test_a_producers_trace_continues_through_the_record_and_its_delivery(
    http_world: GatewayWorld, jaeger: Jaeger, client: httpx.AsyncClient
) -> None:
    world = http_world
    session = f"traced-{secrets.token_hex(4)}"
    await produce_with_headers(world.bootstrap, world.topic, session, event_bytes(session, "tenant-a", "active"), [])
    producer_trace, producer_span = trace_ids()
    token = world.token(tenant="tenant-a")
    async with sse(client, world.url(session), params={"token": token}) as stream:
        assert stream.status == 200
        first = await stream.next_event()
        assert first is not None and first.json()["status"] == "active"
        partition, offset = await produce_with_headers(
            world.bootstrap,
            world.topic,
            session,
            event_bytes(session, "tenant-a", "fetched"),
            [("traceparent", traceparent(producer_trace, producer_span).encode()), ("tracestate", b"vendor=1")],
        )
        second = await stream.next_event()
        assert second is not None and second.json()["status"] == "fetched"

    found = await wait_for_spans(jaeger, producer_trace, {"session.apply"})
    (applied,) = [span for span in found["spans"] if span["operationName"] == "session.apply"]
    assert applied["traceID"] == producer_trace
    assert parent_span_id(applied) == producer_span, "the gateway's span is not under the producer's"
    attributes = tags(applied)
    assert attributes["messaging.destination.name"] == world.topic
    assert attributes["messaging.destination.partition.id"] == str(partition)
    assert attributes["messaging.kafka.offset"] == offset
    assert attributes["gateway.outcome"] == "applied"
    assert attributes["gateway.tenant"] == "tenant-a"
    assert attributes["gateway.session.id_hash"] == session_hash(session)
    assert attributes["gateway.delivered_streams"] == 1
    assert attributes["gateway.last_delivery_unix_ms"] > 0
    assert session not in json.dumps(found), "the session id itself reached the trace"
    process = found["processes"][applied["processID"]]
    assert process["serviceName"] == "gateway-http"
    assert {"key": "deployment.environment", "type": "string", "value": "test"} in process["tags"]


async def test_cloudevents_carry_the_trace_in_both_modes(http_world: GatewayWorld, jaeger: Jaeger) -> None:
    world = http_world
    binary_session, structured_session = f"ce-bin-{secrets.token_hex(4)}", f"ce-str-{secrets.token_hex(4)}"
    binary_trace, binary_parent = trace_ids()
    structured_trace, structured_parent = trace_ids()
    await produce_with_headers(
        world.bootstrap,
        world.topic,
        binary_session,
        event_bytes(binary_session, "tenant-b", "active"),
        [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"e-1"),
            ("ce_source", b"/issuer"),
            ("ce_type", b"session.status"),
            ("ce_traceparent", traceparent(binary_trace, binary_parent).encode()),
            ("content-type", b"application/json"),
        ],
    )
    structured = {
        "specversion": "1.0",
        "id": "e-2",
        "source": "/issuer",
        "type": "session.status",
        "traceparent": traceparent(structured_trace, structured_parent),
        "datacontenttype": "application/json",
        "data": json.loads(event_bytes(structured_session, "tenant-b", "active")),
    }
    await produce_with_headers(
        world.bootstrap,
        world.topic,
        structured_session,
        json.dumps(structured).encode(),
        [("content-type", b"application/cloudevents+json; charset=utf-8")],
    )
    for trace_id, parent, session in (
        (binary_trace, binary_parent, binary_session),
        (structured_trace, structured_parent, structured_session),
    ):
        found = await wait_for_spans(jaeger, trace_id, {"session.apply"})
        (applied,) = found["spans"]
        assert parent_span_id(applied) == parent
        assert tags(applied)["gateway.session.id_hash"] == session_hash(session)
        assert tags(applied)["gateway.outcome"] == "applied"
        assert tags(applied)["gateway.delivered_streams"] == 0


async def test_records_without_a_parent_follow_the_sampler(
    http_world: GatewayWorld, grpc_world: GatewayWorld, jaeger: Jaeger
) -> None:
    # Both gateways read their own topic; an unsampled parent (flags 00) is not traced under ratio 0 ...
    dropped_trace, dropped_parent = trace_ids()
    session = f"unsampled-{secrets.token_hex(4)}"
    await produce_with_headers(
        http_world.bootstrap,
        http_world.topic,
        session,
        event_bytes(session, "tenant-a", "active"),
        [("traceparent", traceparent(dropped_trace, dropped_parent, sampled=False).encode())],
    )
    # ... and a record without one is traced by the always_on gateway, as a trace of its own.
    rooted = f"rooted-{secrets.token_hex(4)}"
    _, offset = await produce_with_headers(
        grpc_world.bootstrap, grpc_world.topic, rooted, event_bytes(rooted, "tenant-a", "active"), []
    )
    spans_found: list[dict[str, object]] = []
    for _ in range(100):
        traces = await jaeger.find_traces("gateway-grpc", "session.apply")
        spans_found = [
            span
            for trace in traces
            for span in trace["spans"]
            if tags(span).get("gateway.session.id_hash") == session_hash(rooted)
        ]
        if spans_found:
            break
        await asyncio.sleep(0.3)
    assert spans_found, "the always_on gateway exported no span for a record without traceparent"
    (span,) = spans_found
    assert parent_span_id(span) is None
    assert tags(span)["messaging.kafka.offset"] == offset
    # A sampled record behind the unsampled one (one partition): once its span is there, the first was applied.
    behind_trace, behind_parent = trace_ids()
    await produce_with_headers(
        http_world.bootstrap,
        http_world.topic,
        session,
        event_bytes(session, "tenant-a", "fetched"),
        [("traceparent", traceparent(behind_trace, behind_parent).encode())],
    )
    await wait_for_spans(jaeger, behind_trace, {"session.apply"})
    assert await jaeger.trace(dropped_trace) is None, "a record whose parent was not sampled was traced"


async def test_a_refused_admission_has_its_reason_and_no_token_material(
    grpc_world: GatewayWorld, jaeger: Jaeger, client: httpx.AsyncClient
) -> None:
    world = grpc_world
    session = f"refused-{secrets.token_hex(4)}"
    trace_id, parent = trace_ids()
    foreign = mint(rsa_key("not-published"), tenant="tenant-a")  # a well-formed token no key of ours signed
    headers = {"traceparent": traceparent(trace_id, parent), "x-request-id": f"req-{trace_id[:8]}"}
    response = await client.get(world.url(session), params={"token": foreign}, headers=headers)
    assert response.status_code == 401

    found = await wait_for_spans(jaeger, trace_id, {"stream.admit"})
    (admit,) = found["spans"]
    assert parent_span_id(admit) == parent
    attributes = tags(admit)
    assert attributes["gateway.outcome"] == "refused"
    assert attributes["http.response.status_code"] == 401
    assert attributes["gateway.reason"], "no reason on a refused admission"
    exported = json.dumps(found)
    for material in (foreign, *foreign.split(".")):
        assert material not in exported, "token material reached the exported trace"
    assert "token" not in " ".join(attributes), "an attribute is named after the token"

    # The refusal's log line carries the span's ids, and no token either.
    lines = [
        entry for entry in log_entries(world.gateway.log_path) if "stream refused" in str(entry.get("message", ""))
    ]
    mine = [entry for entry in lines if entry.get("trace_id") == trace_id]
    assert mine, f"no refusal line with trace_id {trace_id}: {lines[-3:]}"
    assert mine[0]["span_id"] == admit["spanID"]
    assert foreign.split(".")[1] not in world.gateway.logs()


async def test_an_admitted_stream_is_traced_with_its_tenant(
    grpc_world: GatewayWorld, jaeger: Jaeger, client: httpx.AsyncClient
) -> None:
    world = grpc_world
    session = f"admitted-{secrets.token_hex(4)}"
    await produce_with_headers(world.bootstrap, world.topic, session, event_bytes(session, "tenant-c", "active"), [])
    trace_id, parent = trace_ids()
    token = world.token(tenant="tenant-c")
    async with sse(
        client, world.url(session), params={"token": token}, headers={"traceparent": traceparent(trace_id, parent)}
    ) as stream:
        assert stream.status == 200
        assert await stream.next_event() is not None
    found = await wait_for_spans(jaeger, trace_id, {"stream.admit"})
    (admit,) = [span for span in found["spans"] if span["operationName"] == "stream.admit"]
    attributes = tags(admit)
    assert attributes["gateway.outcome"] == "admitted"
    assert attributes["gateway.tenant"] == "tenant-c"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gateway.session.id_hash"] == session_hash(session)
    assert token.split(".")[1] not in json.dumps(found)
