"""Failure boundaries: no record, subscriber or task takes a replica (or, through the shared topic, the fleet) down.

- Property-based: any schema-valid record either is rejected at decode time with its own reason, or
  goes through store, encoder and subscriber without raising and reads back as the same state.
- The same edge values through a real broker to a real gateway: the consumer survives, and a canary
  session keeps receiving its later transitions.
- Fault injection (in-process, real broker): a subscriber that raises, a record whose handling
  raises, a probe that raises, a stream-clock tick that raises: each is contained, counted, restarted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.consuming.batch import HANDLER_ERROR
from consumers.hub import Hub
from consumers.log_aggregation import RepeatedLogFilter
from consumers.records import MAX_UPDATED_MS, MIN_UPDATED_MS, Rejected, RejectReason, StatusUpdate, decode_record
from consumers.store import SessionStore, Transition
from consumers.supervision import Supervisor
from gateway.admission.clock import StreamClock
from gateway.settings import GatewaySettings
from gateway.streams.sse import encode_transition, iso_millis
from schemas import SessionStatus
from tests.gateway_support import gateway_world, sse
from tests.kafka_support import (
    RecordingSubscriber,
    create_topic,
    event_bytes,
    metric,
    produce,
    produce_unparseable_batch,
    running_consumer,
    unique_topic,
)
from tests.support import new_session, wait_until

TENANT = "tenant-a"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --------------------------------------------------------------------------------------------------
# Property-based: decode -> store -> encode -> subscriber

_offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(lambda m: timedelta(minutes=m))
_moments = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)),
    st.sampled_from(
        [
            datetime(1, 1, 1),
            datetime(1, 1, 1, 23, 59, 59, 999999),
            datetime(9999, 12, 31),
            datetime(9999, 12, 31, 23, 59, 59, 999999),
            datetime(999, 5, 1, 12),
            datetime(1969, 12, 31, 23, 59, 59, 999000),
            datetime(1970, 1, 1),
        ]
    ),
)
_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1, max_size=256
)


def _format(local: datetime, offset: timedelta, style: int) -> str:
    """RFC 3339 text of a local time with an offset, in one of several producer styles."""
    base = (
        local.strftime("%Y-%m-%dT%H:%M:%S")
        if local.year >= 1000
        else f"{local.year:04d}" + local.strftime("-%m-%dT%H:%M:%S")
    )
    fraction = ["", f".{local.microsecond // 1000:03d}", f".{local.microsecond:06d}"][style % 3]
    minutes = int(offset.total_seconds()) // 60
    if minutes == 0 and style % 2 == 0:
        zone = "Z"
    else:
        sign = "+" if minutes >= 0 else "-"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return base + fraction + zone


def _utc_ms(local: datetime, offset: timedelta, text: str) -> int | None:
    """Exact UTC milliseconds the text denotes, or None when its UTC instant leaves years 1-9999."""
    parsed_local = datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
    ms = (parsed_local - EPOCH.replace(tzinfo=None)) // timedelta(milliseconds=1) - int(offset.total_seconds()) * 1000
    return ms if MIN_UPDATED_MS <= ms <= MAX_UPDATED_MS else None


class _Frames:
    """A hub subscriber keeping the encoded frames it received."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        self.frames.append(frame)

    def session_deleted(self) -> None:
        return None

    def close(self, reason: str) -> None:
        raise AssertionError(f"a healthy subscriber was closed: {reason}")


def _sse_data(frame: bytes) -> dict[str, Any]:
    lines = frame.decode("utf-8").split("\n")
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert len(data) == 1, frame
    parsed: dict[str, Any] = json.loads(data[0])
    return parsed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    session_id=_text,
    tenant=_text,
    local=_moments,
    offset=_offsets,
    style=st.integers(0, 5),
    statuses=st.lists(st.sampled_from(list(SessionStatus)), min_size=1, max_size=4),
)
def test_every_accepted_record_can_be_encoded_and_reads_back_the_same(
    session_id: str, tenant: str, local: datetime, offset: timedelta, style: int, statuses: list[SessionStatus]
) -> None:
    text = _format(local, offset, style)
    expected_ms = _utc_ms(local, offset, text)
    # The record arrives when it happened: the store counts a record dated ahead of its arrival from its arrival.
    arrival = MIN_UPDATED_MS if expected_ms is None else expected_ms
    store = SessionStore(60_000, 3_600_000, 1000, clock=lambda: arrival)
    hub = Hub(encode_transition)
    frames = _Frames()
    hub.subscribe(session_id, frames)
    key = session_id.encode("utf-8")
    applied: list[Transition] = []
    for offset_in_log, status in enumerate(statuses):
        value = json.dumps({"id": session_id, "tenantId": tenant, "status": status.value, "updatedAt": text}).encode()
        decoded = decode_record(key, value, 64 * 1024)
        if expected_ms is None:
            assert isinstance(decoded, Rejected) and decoded.reason is RejectReason.TIME_OUT_OF_RANGE, (text, decoded)
            return
        assert isinstance(decoded, StatusUpdate), (text, decoded)
        assert decoded.updated_ms == expected_ms
        _, transition = store.apply(decoded, 0, offset_in_log)
        if transition is not None:
            hub.publish(transition, 0)
            applied.append(transition)
    assert expected_ms is not None
    assert len(frames.frames) == len(applied) >= 1
    for frame, transition in zip(frames.frames, applied, strict=True):
        data = _sse_data(frame)
        assert data == {"id": session_id, "status": transition.status.value, "updatedAt": iso_millis(expected_ms)}
        # What a browser would parse back is the same instant, to the millisecond.
        printed = datetime.fromisoformat(data["updatedAt"].replace("Z", "+00:00"))
        assert (printed - EPOCH) // timedelta(milliseconds=1) == expected_ms
        assert len(data["updatedAt"]) == 24  # toISOString's form: four-digit year, millis, Z
    snapshot = store.get(session_id, now_ms=expected_ms)
    assert snapshot is not None and snapshot.current == applied[-1]
    assert encode_transition(snapshot.current) == frames.frames[-1]


# --------------------------------------------------------------------------------------------------
# The same edges through a real broker to a real gateway


EDGE_TIMES = {
    "year-1-utc": "0001-01-01T00:00:00Z",
    "year-1-east": "0001-01-01T23:30:00+23:00",
    "year-999": "0999-05-01T12:00:00.5Z",
    "last-ms": "9999-12-31T23:59:59.999Z",
    "last-west": "9999-12-31T00:59:59.999-23:00",
    "epoch-minus-1ms": "1969-12-31T23:59:59.999Z",
}
HOSTILE_TIMES = {"year-10000": "9999-12-31T23:59:59-01:00", "year-0": "0001-01-01T00:30:00+01:00"}


async def test_edge_records_through_a_real_broker_neither_stop_nor_break_a_replica(
    kafka_bootstrap: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    canary = new_session("canary")
    long_unicode = "ß" * 200 + "-\u2028-\U0001f600"
    # A TTL of ~12,700 years, so that sessions dated year 1 are still served (they are past any real TTL).
    # One partition keeps the order: once the canary's next step is delivered, every record before it
    # was consumed. The unknown-session wait covers the canary's first record still on its way.
    async with gateway_world(
        kafka_bootstrap, tmp_path, "edges", GATEWAY_UNKNOWN_SESSION_WAIT="3", GATEWAY_SESSION_TTL="4e11"
    ) as world:
        gateway, topic, token = world.gateway, world.topic, world.token(TENANT)
        await produce(kafka_bootstrap, topic, [(canary.encode(), event_bytes(canary, TENANT, "active"))])
        async with sse(client, f"{gateway.url}/session/{canary}/events", params={"token": token}) as stream:
            assert stream.status == 200
            first = await stream.next_event(20)
            assert first is not None and first.json()["status"] == "active"
            # Hostile and edge records for watched and unwatched sessions, then the canary's next step.
            records = [
                (f"{name}-{topic}".encode(), event_bytes(f"{name}-{topic}", TENANT, "active", when))
                for name, when in {**HOSTILE_TIMES, **EDGE_TIMES}.items()
            ]
            records.append((long_unicode.encode(), event_bytes(long_unicode, "tenänt-ü", "active")))
            records.append((canary.encode(), event_bytes(canary, TENANT, "fetched")))
            await produce(kafka_bootstrap, topic, records)
            event = await stream.next_event(30)
            assert event is not None and event.json()["status"] == "fetched", "the consumer stopped delivering"

        for name, when in EDGE_TIMES.items():
            session = f"{name}-{topic}"
            async with sse(client, f"{gateway.url}/session/{session}/events", params={"token": token}) as edge:
                assert edge.status == 200, (name, edge.response.text)
                event = await edge.next_event(20)
                assert event is not None
                printed = event.json()["updatedAt"]
                expected = datetime.fromisoformat(when.replace("Z", "+00:00")).astimezone(UTC)
                assert printed == iso_millis((expected - EPOCH) // timedelta(milliseconds=1)), (name, printed)
        for name in HOSTILE_TIMES:
            url = f"{gateway.url}/session/{name}-{topic}/events"
            async with sse(client, url, params={"token": token}) as refused:
                assert refused.status == 404, "a record outside the printable range must never enter the store"
        unicode_url = f"{gateway.url}/session/{urllib.parse.quote(long_unicode)}/events"
        async with sse(client, unicode_url, params={"token": world.token("tenänt-ü")}) as stream:
            assert stream.status == 200
            event = await stream.next_event(20)
            assert event is not None and event.json()["id"] == long_unicode
        metrics = (await client.get(f"{gateway.internal_url}/metrics")).text
        assert 'gateway_records_rejected_total{reason="time_out_of_range"} 2.0' in metrics
        assert (await client.get(f"{gateway.url}/livez")).status_code == 200
        assert (await client.get(f"{gateway.internal_url}/readyz")).status_code == 200
        assert "Traceback" not in gateway.logs()


# --------------------------------------------------------------------------------------------------
# Fault injection: each failure stays where it happened


class _Raising(RecordingSubscriber):
    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        raise RuntimeError("this subscriber is broken")


async def test_a_subscriber_that_raises_is_closed_and_the_others_still_get_the_event(kafka_bootstrap: str) -> None:
    topic = unique_topic("raising-subscriber")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    errors = metric("gateway_subscriber_errors_total")
    async with running_consumer(kafka_bootstrap, topic) as running:
        await running.wait_caught_up()
        broken, before, after = _Raising(), RecordingSubscriber(), RecordingSubscriber()
        running.hub.subscribe("s", before)
        running.hub.subscribe("s", broken)
        running.hub.subscribe("s", after)
        await produce(kafka_bootstrap, topic, [(b"s", event_bytes("s", TENANT, "active"))])
        await running.wait_until(lambda: len(before.frames) == 1 and len(after.frames) == 1, 15)
        assert broken.closed == "subscriber_error"
        assert running.hub.count("s") == 2
        assert metric("gateway_subscriber_errors_total") - errors == 1
        await produce(kafka_bootstrap, topic, [(b"s", event_bytes("s", TENANT, "fetched"))])
        await running.wait_until(lambda: before.statuses == after.statuses == ["active", "fetched"], 15)


async def test_a_record_whose_handling_raises_is_skipped_and_counted(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever goes wrong inside the handling of one record costs that record, never the consumer."""
    topic = unique_topic("handler-error")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    secret = "payload-that-must-not-be-logged"
    skipped = metric("gateway_records_rejected_total", reason=HANDLER_ERROR)
    async with running_consumer(kafka_bootstrap, topic, subscribe=["canary"]) as running:
        await running.wait_caught_up()
        original = running.store.apply

        def apply(update: StatusUpdate, partition: int, offset: int, now_ms: int | None = None) -> Any:
            if update.tenant_id == secret:
                raise ValueError(f"boom with {secret}")
            return original(update, partition, offset, now_ms)

        running.store.apply = apply  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="gateway.consumer"):
            await produce(
                kafka_bootstrap,
                topic,
                [
                    (b"poison", event_bytes("poison", secret, "active")),
                    (b"canary", event_bytes("canary", TENANT, "active")),
                ],
            )
            await running.wait_until(lambda: running.subscribers["canary"].statuses == ["active"], 15)
        assert metric("gateway_records_rejected_total", reason=HANDLER_ERROR) - skipped == 1
        lines = [r for r in caplog.records if getattr(r, "fields", {}).get("reason") == "handler_error"]
        assert len(lines) == 1 and "ValueError" in lines[0].getMessage(), lines
        assert getattr(lines[0], "fields", {})["offset"] == 0, lines
        assert secret not in caplog.text


async def test_a_probe_that_raises_is_restarted_and_counted(kafka_bootstrap: str) -> None:
    topic = unique_topic("raising-probe")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    restarts = metric("gateway_task_restarts_total", task="kafka-probe")
    async with running_consumer(kafka_bootstrap, topic, kafka_health_interval=0.2) as running:
        await running.wait_caught_up()
        original = running.consumer.probe.once
        calls = 0

        async def probe() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug in the probe")
            await original()

        running.consumer.probe.once = probe  # type: ignore[method-assign]
        running.supervisor.initial_backoff = 0.05
        await running.wait_until(lambda: calls >= 3, 15, "the probe was not restarted")
        assert metric("gateway_task_restarts_total", task="kafka-probe") - restarts == 1
        assert running.supervisor.running("kafka-probe")
        assert running.progress.broker_reachable


class _ClockSubscriber:
    """Just what the stream clock calls on a stream; ``broken`` ones raise on every call."""

    def __init__(self, session_id: str, broken: bool) -> None:
        self.session_id = session_id
        self.subject = "sub"
        self.broken = broken
        self.slot = 0
        self.last_write = 0.0
        self.expires_at = float("inf")
        self.close_reason: str | None = None
        self.heartbeats = 0

    def stalled(self) -> bool:
        if self.broken:
            raise RuntimeError("transport went strange")
        return False

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def disconnected(self) -> bool:
        return False

    def close(self, reason: str) -> None:
        self.close_reason = reason


async def test_a_clock_tick_that_raises_closes_that_stream_only() -> None:
    settings = GatewaySettings(heartbeat_interval=0.25)
    hub = Hub(encode_transition)
    clock = StreamClock(settings, hub)
    healthy, broken = _ClockSubscriber("ok", False), _ClockSubscriber("bad", True)
    for subscriber in (healthy, broken):
        clock.add(subscriber)  # type: ignore[arg-type]
    errors = metric("gateway_stream_clock_errors_total")
    restarts = metric("gateway_task_restarts_total", task="stream-clock")
    supervisor = Supervisor()
    supervisor.start("stream-clock", clock.run_clock)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while healthy.heartbeats < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert healthy.heartbeats >= 3, "the clock stopped heartbeating the healthy stream"
        assert broken.close_reason == "clock_error"
        assert len(clock) == 1
        assert metric("gateway_stream_clock_errors_total") - errors == 1
        assert metric("gateway_task_restarts_total", task="stream-clock") - restarts == 0
    finally:
        await supervisor.stop()


async def test_a_crashing_clock_is_restarted_by_the_supervisor() -> None:
    clock = StreamClock(GatewaySettings(), Hub(encode_transition))
    crashes = 0
    original = clock._sweep

    def sweep(wall: float) -> None:
        nonlocal crashes
        crashes += 1
        if crashes <= 2:
            raise RuntimeError("sweep bug")
        original(wall)

    clock._sweep = sweep  # type: ignore[method-assign]
    before = metric("gateway_task_restarts_total", task="stream-clock")
    supervisor = Supervisor(initial_backoff=0.01)
    supervisor.start("stream-clock", clock.run_clock)
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while crashes < 4 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert crashes >= 4
        assert metric("gateway_task_restarts_total", task="stream-clock") - before == 2
        assert supervisor.running("stream-clock") and supervisor.healthy()
    finally:
        await supervisor.stop()


# --------------------------------------------------------------------------------------------------
# The supervisor and the log aggregation (pure logic, injected clocks)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_supervisor_turns_unhealthy_only_when_a_task_keeps_crashing() -> None:
    clock = _Clock()
    supervisor = Supervisor(crash_limit=3, crash_window=60, initial_backoff=0, max_backoff=0, clock=clock)
    runs = 0
    release = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError("flaky")
        await release.wait()

    supervisor.start("flaky", flaky)
    while runs < 4:
        await asyncio.sleep(0.01)
    assert supervisor.healthy(), "three crashes are within the limit"
    assert supervisor.report()["flaky"] == {"running": True, "finished": False, "recent_crashes": 3}
    release.set()
    await supervisor.stop()

    always = Supervisor(crash_limit=3, crash_window=60, initial_backoff=0, max_backoff=0, clock=clock)
    crashes = 0

    async def broken() -> None:
        nonlocal crashes
        crashes += 1
        await asyncio.sleep(0)
        raise RuntimeError("broken for good")

    always.start("broken", broken)
    while crashes < 5:
        await asyncio.sleep(0.01)
    assert always.failing() == ["broken"]
    clock.now += 61  # the crashes age out of the window: healthy again (it would be restarted anyway)
    while crashes < 6:
        await asyncio.sleep(0.01)
    assert len(always.report()["broken"]) == 3
    await always.stop()


async def test_one_shot_tasks_are_not_restarted() -> None:
    supervisor = Supervisor(initial_backoff=0)
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("once")

    supervisor.start("once", once, restart=False)
    # Finished (a restarted task never is: it would crash again and again, backoff 0) after one run.
    await wait_until(lambda: supervisor.report()["once"]["finished"] is True, 5, "the task never ran to its end")
    assert runs == 1
    await supervisor.stop()


def test_repeated_kafka_client_errors_are_folded_into_one_line_per_interval() -> None:
    clock = _Clock()
    folding = RepeatedLogFilter(interval=60, clock=clock)
    emitted: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            emitted.append(record.getMessage())

    handler = Collect()
    handler.addFilter(folding)
    logger = logging.getLogger("aiokafka.conn.test-folding")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for node in range(2000):
            logger.error("Unable connect to node with id %s: %s", node % 3, "Connect call failed")
        logger.warning("a different message")
        logging.getLogger("gateway.consumer").addHandler(handler)
        assert len(emitted) == 2, emitted
        clock.now += 61
        folding.flush()
        assert len(emitted) == 3
        assert "repeated 1999 more times" in emitted[-1]
    finally:
        logger.removeHandler(handler)
        logging.getLogger("gateway.consumer").removeHandler(handler)


def test_our_own_lines_are_never_folded() -> None:
    folding = RepeatedLogFilter(interval=60)
    record = logging.LogRecord("gateway.consumer", logging.WARNING, __file__, 1, "same", None, None)
    assert all(folding.filter(record) for _ in range(10))


def test_iso_millis_matches_javascript_at_the_range_ends() -> None:
    assert iso_millis(MIN_UPDATED_MS) == "0001-01-01T00:00:00.000Z"
    assert iso_millis(MAX_UPDATED_MS) == "9999-12-31T23:59:59.999Z"
    assert iso_millis(-1) == "1969-12-31T23:59:59.999Z"
    moment = datetime(999, 5, 1, 12, tzinfo=UTC)
    assert iso_millis((moment - EPOCH) // timedelta(milliseconds=1)) == "0999-05-01T12:00:00.000Z"


@settings(max_examples=3000, deadline=None)
@given(st.integers(min_value=MIN_UPDATED_MS, max_value=MAX_UPDATED_MS) | st.integers(-86_400_001, 86_400_001))
def test_iso_millis_is_what_datetime_prints(updated_ms: int) -> None:
    """The day-cached form (issue 24) against the datetime arithmetic it replaced, over the store's whole range."""
    moment = EPOCH + timedelta(milliseconds=updated_ms)
    assert iso_millis(updated_ms) == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_a_record_the_kafka_client_cannot_parse_is_skipped_alone(kafka_bootstrap: str) -> None:
    """One batch: a good record, an unparseable one, a good one. The consumer survives and goes on.

    The record before is applied. The client cannot parse past the bad record within its batch, so the
    record behind it in the same batch is skipped too, and both are counted as unreadable.
    """
    topic = unique_topic("unparseable")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    offsets = await produce_unparseable_batch(kafka_bootstrap, topic, "u", behind=1, after=0, before=1)
    assert offsets[0] == 0, "the three records should share one batch, in order"
    skipped = metric("gateway_records_rejected_total", reason="unreadable")
    async with running_consumer(kafka_bootstrap, topic, subscribe=["canary"]) as running:
        await running.wait_caught_up(30)
        assert "u-before-0" in running.store
        assert "u-poison" not in running.store and "u-behind-0" not in running.store
        assert metric("gateway_records_rejected_total", reason="unreadable") - skipped == 2
        await produce(kafka_bootstrap, topic, [(b"canary", event_bytes("canary", TENANT, "active"))], partition=0)
        await running.wait_until(lambda: running.subscribers["canary"].statuses == ["active"], 15)
