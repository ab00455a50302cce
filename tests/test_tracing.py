"""Tracing without a collector: where a record's trace context is read, the record span, the switch, the logs.

The spans go to the SDK's in-memory exporter here; the same spans reach a real collector in
``test_tracing_collector.py``. Hostile trace contexts (malformed, oversized, not ASCII, of the wrong type)
never reject a record: the record is applied and traced as a new trace, or not at all.
"""

from __future__ import annotations

import io
import json
import logging
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import consumers.tracing
from consumers.tracing import configuration_problem, enabled_by, from_environment, sampling
from consumers.tracing.carrier import MAX_TRACEPARENT, record_carrier
from consumers.tracing.otel import Tracing, current_ids, session_hash
from consumers.tracing.sampling import DROP, ROOT, SDK, SamplingPlan, decide, parent_sampled, plan_from
from gateway.runtime.logging_setup import JsonFormatter, TextFormatter
from tests.gateway_support import clean_env
from tests.kafka_support import RecordingSubscriber
from tests.test_batch_apply import FIRST, applying, record, status

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
PARENT_HEADER = f"00-{TRACE}-{PARENT}-01".encode()


# --- where the context comes from -------------------------------------------------------------------------


def test_the_traceparent_header_comes_first_then_the_binary_cloudevent_then_the_structured_one() -> None:
    other = f"00-{'1' * 32}-{'2' * 16}-01".encode()
    both = [("ce_traceparent", other), ("TraceParent", PARENT_HEADER), ("tracestate", b"a=1")]
    assert record_carrier(both, None, 1000) == {"traceparent": PARENT_HEADER.decode(), "tracestate": "a=1"}
    assert record_carrier([("ce_traceparent", other), ("ce_tracestate", b"b=2")], None, 1000) == {
        "traceparent": other.decode(),
        "tracestate": "b=2",
    }
    value = json.dumps({"specversion": "1.0", "traceparent": PARENT_HEADER.decode(), "tracestate": "c=3"}).encode()
    structured = [("content-type", b"application/cloudevents+json; charset=utf-8")]
    assert record_carrier(structured, value, 1000) == {"traceparent": PARENT_HEADER.decode(), "tracestate": "c=3"}


@pytest.mark.parametrize(
    ("headers", "value"),
    [
        ([("traceparent", None)], None),
        ([("traceparent", b"")], None),
        ([("traceparent", b"\xff\xfe" * 20)], None),
        ([("traceparent", b"0" * (MAX_TRACEPARENT + 1))], None),
        ([("tracestate", b"a=1")], None),  # a state without a parent is no context
        ([("content-type", b"application/json")], json.dumps({"traceparent": "x"}).encode()),  # not a CloudEvent
        ([("content-type", b"application/cloudevents+json")], b"{not json"),
        ([("content-type", b"application/cloudevents+json")], b"[1, 2]"),
        ([("content-type", b"application/cloudevents+json")], json.dumps({"traceparent": 42}).encode()),
        ([("content-type", b"application/cloudevents+json")], json.dumps({"traceparent": "0" * 200}).encode()),
        ([("content-type", None)], None),
    ],
)
def test_what_is_not_a_trace_context_is_ignored(headers: list[tuple[str, bytes | None]], value: bytes | None) -> None:
    assert record_carrier(headers, value, 1000) is None


def test_a_structured_event_over_the_size_limit_is_not_parsed_for_its_context() -> None:
    value = json.dumps({"traceparent": PARENT_HEADER.decode(), "pad": "x" * 100}).encode()
    assert record_carrier([("content-type", b"application/cloudevents+json")], value, len(value) - 1) is None


# --- the sampling decision, before any span ----------------------------------------------------------------

SAMPLED = f"00-{TRACE}-{PARENT}-01"
UNSAMPLED = f"00-{TRACE}-{PARENT}-00"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, SamplingPlan("parentbased_always_on", True, 1.0)),
        ({"OTEL_TRACES_SAMPLER": " ParentBased_TraceIdRatio "}, SamplingPlan("parentbased_traceidratio", True, 1.0)),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            SamplingPlan("parentbased_traceidratio", True, 0.01, 0.01),
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            SamplingPlan("traceidratio", False, 1),
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"},
            SamplingPlan("traceidratio", False, 1),
        ),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, SamplingPlan("always_off", False, 0.0)),
        ({"OTEL_TRACES_SAMPLER": "my_entry_point"}, SamplingPlan("my_entry_point")),
    ],
)
def test_the_plan_reads_the_sampler_as_the_sdk_does(environ: dict[str, str], expected: SamplingPlan) -> None:
    assert plan_from(environ) == expected


def test_a_parent_decides_under_a_parent_based_sampler_and_a_draw_decides_a_new_trace() -> None:
    one_percent = plan_from({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"})
    assert decide(one_percent, {"traceparent": SAMPLED}, draw=lambda: 0.99) == sampling.PARENT
    assert decide(one_percent, {"traceparent": UNSAMPLED}, draw=lambda: 0.0) == DROP
    assert decide(one_percent, None, draw=lambda: 0.005) == ROOT
    assert decide(one_percent, None, draw=lambda: 0.01) == DROP
    # A malformed parent counts as none: a new trace, drawn for.
    assert decide(one_percent, {"traceparent": "00-xyz"}, draw=lambda: 0.5) == DROP
    assert decide(one_percent, {"traceparent": "00-xyz"}, draw=lambda: 0.0) == ROOT
    assert decide(plan_from({"OTEL_TRACES_SAMPLER": "always_off"}), {"traceparent": SAMPLED}) == SDK
    assert decide(plan_from({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}), None, draw=lambda: 0.0) == DROP
    assert decide(SamplingPlan("my_entry_point"), None) == SDK
    drawn = [decide(one_percent, None) for _ in range(20_000)]
    assert 100 <= drawn.count(ROOT) <= 320, "a 1% sampler kept far from 1% of 20,000 new traces"


@pytest.mark.parametrize(
    ("traceparent", "sampled"),
    [
        (SAMPLED, True),
        (UNSAMPLED, False),
        (f"00-{TRACE}-{PARENT}-03", True),
        (f"01-{TRACE}-{PARENT}-00-future", False),  # a later version may add fields
        (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 may not
        (f"ff-{TRACE}-{PARENT}-01", None),
        (f"00-{'0' * 32}-{PARENT}-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE.upper()}-{PARENT}-01", None),
        (f"00-{TRACE}-{PARENT}", None),
        ("", None),
        ("00-" + "a" * 10_000, None),
    ],
)
def test_only_a_valid_traceparent_is_a_parent(traceparent: str, sampled: bool | None) -> None:
    assert parent_sampled(traceparent) is sampled


# --- the record span ----------------------------------------------------------------------------------------


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def tracing(exporter: InMemorySpanExporter, sampler: str = "always_on", ratio: str = "") -> Tracing:
    environ = (
        {"OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": ratio}
        if ratio
        else {"OTEL_TRACES_SAMPLER": sampler}
    )
    return Tracing(SimpleSpanProcessor(exporter), plan_from(environ))


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


def test_an_applied_record_continues_its_producers_trace_with_its_deliveries(exported: InMemorySpanExporter) -> None:
    world = applying()
    world.applier.tracing = tracing(exported, "parentbased_always_off")
    subscribers = [world.subscribe("s-1"), world.subscribe("s-1")]
    world.applier.apply(FIRST, [status("s-1", "active", 0, headers=[("traceparent", PARENT_HEADER)])])
    assert all(len(subscriber.frames) == 1 for subscriber in subscribers)
    span = only(exported)
    assert span.name == "session.apply"
    assert format(span.context.trace_id, "032x") == TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT
    attributes = dict(span.attributes or {})
    assert attributes["gateway.outcome"] == "applied"
    assert attributes["gateway.delivered_streams"] == 2
    assert attributes["gateway.tenant"] == "tenant"
    assert attributes["gateway.session.id_hash"] == session_hash("s-1") != "s-1"
    assert attributes["messaging.kafka.offset"] == 0
    assert isinstance(attributes["gateway.last_delivery_unix_ms"], int)
    assert attributes["gateway.last_delivery_unix_ms"] >= 1_700_000_000_000
    assert "gateway.last_delivery_delay_ms" in attributes


def test_every_outcome_is_a_span_and_no_record_is_lost(exported: InMemorySpanExporter) -> None:
    world = applying()
    world.applier.tracing = tracing(exported)
    consumers.tracing.install_ids(current_ids)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("gateway.consumer").addHandler(handler)
    records = [
        status("s-1", "active", 0),
        status("s-1", "active", 1),  # duplicate
        record(b"s-2", b"{not json", 2),  # rejected
        status("s-3", "active", 3, headers=[("traceparent", b"00-" + b"0" * 32 + b"-" + b"1" * 16 + b"-01")]),
        status("s-4", "active", 4, headers=[("traceparent", "00-ünï-côdé".encode())]),
        record(b"s-1", None, 5),  # tombstone
    ]
    try:
        world.applier.apply(FIRST, records)
    finally:
        logging.getLogger("gateway.consumer").removeHandler(handler)
        consumers.tracing.install_ids(None)
    (rejected_line,) = [json.loads(line) for line in lines.getvalue().splitlines() if "malformed" in line]
    rejected_span = exported.get_finished_spans()[2]
    assert rejected_line["trace_id"] == format(rejected_span.context.trace_id, "032x")
    assert rejected_line["span_id"] == format(rejected_span.context.span_id, "016x")
    outcomes = [
        (dict(span.attributes or {})["gateway.outcome"], dict(span.attributes or {}).get("gateway.reason"))
        for span in exported.get_finished_spans()
    ]
    assert outcomes == [
        ("applied", None),
        ("duplicate", None),
        ("rejected", "not_json"),
        ("applied", None),
        ("applied", None),
        ("deleted", None),
    ]
    assert world.store.get("s-3") is not None and world.store.get("s-4") is not None
    # An invalid parent (all-zero trace id, not ASCII) starts a trace of its own.
    for span in exported.get_finished_spans()[3:5]:
        assert span.parent is None


def test_new_traces_are_drawn_for_and_runs_of_dropped_records_are_applied_in_order(
    exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = applying()
    world.applier.tracing = tracing(exported, "parentbased_traceidratio", "0.5")
    draws = iter([0.9, 0.9, 0.1, 0.9, 0.1])  # records 2 and 4 are kept
    monkeypatch.setattr(random, "random", lambda: next(draws))
    subscriber = world.subscribe("s-1")
    statuses = ["active", "fetched", "completed"]
    world.applier.apply(
        FIRST,
        [status(f"s-{i}", statuses[0], i) for i in range(2)]
        + [status("s-1", "fetched", 2)]
        + [status("s-3", "active", 3), status("s-1", "completed", 4)],
    )
    assert len(subscriber.frames) == 3
    assert world.statuses("s-1") == [("active", 0, 1), ("fetched", 0, 2), ("completed", 0, 4)]
    spans = exported.get_finished_spans()
    assert [dict(span.attributes or {})["messaging.kafka.offset"] for span in spans] == [2, 4]
    assert all(span.parent is None for span in spans)
    assert [dict(span.attributes or {})["gateway.delivered_streams"] for span in spans] == [1, 1]
    assert counted_consumed() >= 5


def counted_consumed() -> float:
    from tests.kafka_support import metric

    return metric("gateway_records_consumed_total")


def test_a_sampled_out_record_costs_no_span_and_is_applied(exported: InMemorySpanExporter) -> None:
    world = applying()
    world.applier.tracing = tracing(exported, "parentbased_always_off")
    subscriber: RecordingSubscriber = world.subscribe("s-1")
    unsampled = f"00-{TRACE}-{PARENT}-00".encode()
    world.applier.apply(
        FIRST, [status("s-1", "active", 0), status("s-1", "fetched", 1, headers=[("traceparent", unsampled)])]
    )
    assert exported.get_finished_spans() == ()
    assert len(subscriber.frames) == 2
    assert world.statuses("s-1") == [("active", 0, 0), ("fetched", 0, 1)]


def test_a_tracer_that_raises_stops_the_batch_like_any_failure_outside_a_record(
    exported: InMemorySpanExporter,
) -> None:
    world = applying()
    broken = tracing(exported)

    def explode(*args: object) -> None:
        raise RuntimeError("exporter bug")

    broken.record_done = explode  # type: ignore[method-assign,assignment]
    world.applier.tracing = broken
    with pytest.raises(RuntimeError):
        world.applier.apply(FIRST, [status("s-1", "active", 0)])
    assert world.store.get("s-1") is not None, "the record was applied before its span failed"


# --- the switch -------------------------------------------------------------------------------------------


def test_tracing_is_off_without_an_endpoint() -> None:
    assert not enabled_by({})
    assert not enabled_by({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"})
    assert not enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "   "})
    assert not enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"})
    assert not enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})
    assert enabled_by({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert from_environment({}) is None
    assert consumers.tracing.current_ids() is None


def test_an_unsupported_protocol_stops_the_start_with_the_variables_name() -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    problem = configuration_problem(environ)
    assert problem is not None and "OTEL_EXPORTER_OTLP_PROTOCOL" in problem and "grpc" in problem
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        from_environment(environ)
    assert configuration_problem({**environ, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is None
    assert configuration_problem({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}) is None  # off: nothing to check


def test_from_the_environment_the_sdk_reads_service_and_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    made = from_environment()
    try:
        assert made is not None
        assert "0.01" in made.provider.sampler.get_description()
        assert made.provider.resource.attributes["service.name"] == "session-events-gateway"
        assert made.protocol == "http/protobuf"
        assert made.plan.root_ratio == 0.01
    finally:
        consumers.tracing.install_ids(None)
        if made is not None:
            made.shutdown()


# --- logs -------------------------------------------------------------------------------------------------


def log_record(message: str) -> logging.LogRecord:
    return logging.LogRecord("gateway.stream", logging.INFO, __file__, 1, message, None, None)


def test_logs_carry_the_active_spans_ids(exported: InMemorySpanExporter) -> None:
    made = tracing(exported)
    consumers.tracing.install_ids(current_ids)
    try:
        assert "trace_id" not in json.loads(JsonFormatter().format(log_record("outside")))
        with trace.use_span(made.provider.get_tracer("t").start_span("s"), end_on_exit=True) as span:
            ids = format(span.get_span_context().trace_id, "032x"), format(span.get_span_context().span_id, "016x")
            entry = json.loads(JsonFormatter().format(log_record("inside")))
            assert (entry["trace_id"], entry["span_id"]) == ids
            text = TextFormatter("%(levelname)s %(message)s").format(log_record("inside"))
            assert text == f"INFO inside trace_id={ids[0]} span_id={ids[1]}"
        assert "trace_id=" not in TextFormatter("%(message)s").format(log_record("after"))
    finally:
        consumers.tracing.install_ids(None)


def test_serve_refuses_an_unsupported_protocol_in_one_line() -> None:
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="http/json")
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 1, completed.stderr
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_an_untested_sdk_version_is_named_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from consumers.tracing import otel

    monkeypatch.setattr(otel, "version", lambda name: "2.3.0")
    with caplog.at_level(logging.WARNING, "gateway.tracing"):
        assert otel._check_version() == "2.3.0"
    assert "opentelemetry-sdk 2.3.0 is not a tested version" in caplog.text
    caplog.clear()
    monkeypatch.setattr(otel, "version", lambda name: "1.45.2")
    with caplog.at_level(logging.WARNING, "gateway.tracing"):
        otel._check_version()
    assert caplog.text == ""


# --- the quick drop of an unsampled parent agrees with the full reading ------------------------------------

_PARENT_BASED = plan_from({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"})


def _header_cases() -> list[list[tuple[str, bytes | None]]]:
    unsampled, sampled = f"00-{TRACE}-{PARENT}-00".encode(), PARENT_HEADER
    values: list[bytes | None] = [
        unsampled,
        sampled,
        f"00-{TRACE}-{PARENT}-02".encode(),
        f"00-{TRACE}-{PARENT}-0e".encode(),
        f"00-{TRACE}-{PARENT}-0f".encode(),
        f"00-{TRACE.upper()}-{PARENT}-00".encode(),
        f"00-{'0' * 32}-{PARENT}-00".encode(),
        f"00-{TRACE}-{'0' * 16}-00".encode(),
        f"01-{TRACE}-{PARENT}-00".encode(),
        f"ff-{TRACE}-{PARENT}-00".encode(),
        f" 00-{TRACE}-{PARENT}-00".encode(),
        f"00-{TRACE}-{PARENT}-00 ".encode(),
        f"00-{TRACE}-{PARENT}-0g".encode(),
        f"00-{TRACE}-{PARENT}-00-x".encode(),
        f"00_{TRACE}_{PARENT}_00".encode(),
        f"00-{TRACE}-{PARENT}-00\n".encode(),
        ("00-" + "é" * 16 + f"-{PARENT}-00").encode(),  # 55 characters, not 55 bytes
        ("00-" + TRACE[:31] + "é" + f"-{PARENT}-00").encode("latin-1"),  # 55 bytes, not ASCII
        b"",
        None,
        b"\x00" * 55,
        b"00-" + b"a" * 10_000,
    ]
    names = ["traceparent", "TraceParent", "TRACEPARENT", "ce_traceparent", "tracestate", "traceparenx", "x"]
    cases: list[list[tuple[str, bytes | None]]] = [[]]
    rng = random.Random(20261207)
    for value in values:
        cases.append([("traceparent", value)])
        cases.append([("content-type", b"application/json"), ("traceparent", value)])
        cases.append([("traceparent", value), ("traceparent", unsampled)])
        cases.append([("traceparent", value), ("traceparent", sampled)])
        cases.append([("TraceParent", value), ("traceparent", unsampled)])
        cases.append([("ce_traceparent", value), ("traceparent", unsampled)])
        cases.append([("traceparent", unsampled), ("ce_traceparent", value)])
    for _ in range(3000):  # random headers from the same parts, in random order
        cases.append([(rng.choice(names), rng.choice(values)) for _ in range(rng.randint(1, 4))])
    return cases


@pytest.mark.parametrize("drawn", [0.0, 0.0099, 0.01, 0.5, 0.999])
def test_the_quick_drop_never_disagrees_with_the_full_reading(exported: InMemorySpanExporter, drawn: float) -> None:
    """Per record and for the same draw, ``kept_records`` keeps what ``record_carrier`` + ``decide`` keep."""
    traced = tracing(exported, "parentbased_traceidratio", "0.01")
    cases = _header_cases()
    records = [record(b"s", b"{}", index, headers=headers) for index, headers in enumerate(cases)]  # type: ignore[arg-type]
    kept = dict(traced.kept_records(records, 1000, draw=lambda: drawn))
    shortcuts = 0
    for index, headers in enumerate(cases):
        full = decide(_PARENT_BASED, record_carrier(headers, None, 1000) if headers else None, draw=lambda: drawn)
        assert (index in kept) is (full != DROP), headers
        if index in kept:
            assert kept[index][0] == full, headers
        shortcuts += bool(headers) and sampling.unsampled_shape(headers)
    assert shortcuts >= 100  # the shortcut is taken for the common case, not only never wrong


def test_tracing_drops_an_unsampled_parent_keeps_a_sampled_one_and_a_malformed_one_at_the_ratio(
    exported: InMemorySpanExporter,
) -> None:
    traced = tracing(exported, "parentbased_traceidratio", "0.01")
    unsampled = f"00-{TRACE}-{PARENT}-00".encode()
    malformed = f"00-{TRACE.upper()}-{PARENT}-00".encode()  # the shape of an unsampled one, not valid
    records = [
        record(b"s", b"{}", index, headers=[("traceparent", value)])
        for index, value in enumerate([unsampled, PARENT_HEADER, malformed])
    ]
    assert [index for index, _ in traced.kept_records(records, 1000, draw=lambda: 0.5)] == [1]
    kept = traced.kept_records(records, 1000, draw=lambda: 0.001)
    assert [(index, decision) for index, (decision, _) in kept] == [(1, "parent"), (2, "root")]
    # Another spelling first: the full reading decides (here: that header's sampled parent is followed).
    first = [("TraceParent", PARENT_HEADER), ("traceparent", unsampled)]
    assert traced.record_sampling(first, None, 1000) is not None
    assert exported.get_finished_spans() == ()
