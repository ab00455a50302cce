"""The event-bus features against the real broker, with the consumer in this process: mixed formats in
one partition, several topics and readiness, every reject reason copied to the dead-letter topic with
its headers, and a dead-letter outage that never stops delivery."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

from consumers.consuming.batch import HANDLER_ERROR
from consumers.dead_letter import (
    HEADER_DETAIL,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TIMESTAMP,
    HEADER_TOPIC,
)
from consumers.partitions import global_partition
from consumers.records import RejectReason, StatusUpdate
from tests.kafka_support import (
    create_topic,
    event_bytes,
    metric,
    rfc3339,
    running_consumer,
    topic_partitions,
    unique_topic,
)

pytestmark = pytest.mark.timeout(120)

TENANT = "tenant-bus"
TYPE = "eu.example.wallet.session.status.v1"
Headers = list[tuple[str, bytes | None]]
Sent = tuple[bytes | None, bytes | None, Headers]


async def send(bootstrap: str, topic: str, records: Sequence[Sent], partition: int | None = 0) -> list[int]:
    """Writes ``(key, value, headers)`` records in order; returns their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=key, value=value, headers=headers, partition=partition)
            for key, value, headers in records
        ]
        return [int(meta.offset) for meta in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


@dataclass
class Letter:
    key: bytes | None
    value: bytes | None
    headers: Headers

    def header(self, name: str) -> str:
        values = [raw for header, raw in self.headers if header == name]
        assert len(values) == 1 and values[0] is not None, (name, self.headers)
        return values[0].decode()


async def read_letters(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Letter]:
    """The first ``count`` records of a one-partition topic (fails after ``timeout`` with what it got)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    letters: list[Letter] = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout
        while len(letters) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                letters.extend(Letter(r.key, r.value, list(r.headers)) for r in records)
    finally:
        await consumer.stop()
    assert len(letters) >= count, f"{len(letters)} of {count} records on {topic}: {letters}"
    return letters


def cloudevent(data: Any, mode: str = "binary", **attributes: Any) -> tuple[bytes, Headers]:
    event = CloudEvent({"type": TYPE, "source": "/issuer", **attributes}, data=data)
    message = ce_kafka.to_binary_event(event) if mode == "binary" else ce_kafka.to_structured_event(event)
    return message.value, list(message.headers.items())


def plain(session_id: str, status: str, **extra: Any) -> bytes:
    return event_bytes(session_id, TENANT, status, **extra)


MAPPING: dict[str, Any] = {
    "id": "/ref",
    "tenantId": "/org",
    "status": "/state",
    "updatedAt": "/at",
    "statusValues": {"STARTED": "active", "DONE": "completed"},
}


def foreign(ref: str, state: Any, **extra: Any) -> bytes:
    at = rfc3339(datetime.now(UTC))
    return json.dumps({"ref": ref, "org": TENANT, "state": state, "at": at, **extra}).encode()


async def test_mixed_formats_in_one_partition_keep_their_order(kafka_bootstrap: str) -> None:
    topic = unique_topic("bus-mixed")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    session = "mixed-1"
    fetched, fetched_headers = cloudevent({"tenantId": TENANT, "status": "fetched"}, subject=session)
    ignored, ignored_headers = cloudevent({"tenantId": TENANT, "status": "failed"}, subject=session, type="other")
    done, done_headers = cloudevent({"tenantId": TENANT, "status": "completed"}, "structured", subject=session)
    skipped = metric("gateway_records_ignored_total", reason="cloudevents_type")
    async with running_consumer(
        kafka_bootstrap, topic, subscribe=[session], cloudevents_types=[TYPE], kafka_health_interval=0.5
    ) as running:
        await running.wait_caught_up()
        offsets = await send(
            kafka_bootstrap,
            topic,
            [
                (session.encode(), plain(session, "active"), [("traceparent", b"00-1-2-01")]),
                (session.encode(), fetched, fetched_headers),
                (session.encode(), ignored, ignored_headers),
                (session.encode(), done, done_headers),
            ],
        )
        subscriber = running.subscribers[session]
        await running.wait_until(lambda: len(subscriber.statuses) == 3, 20, "three transitions")
        assert subscriber.statuses == ["active", "fetched", "completed"]
        assert subscriber.offsets == [offsets[0], offsets[1], offsets[3]]
        assert metric("gateway_records_ignored_total", reason="cloudevents_type") - skipped == 1


async def test_two_topics_number_their_partitions_and_readiness_waits_for_both(kafka_bootstrap: str) -> None:
    first, second = unique_topic("bus-issuance"), unique_topic("bus-presentation")
    await create_topic(kafka_bootstrap, first, partitions=2)
    await send(kafka_bootstrap, first, [(b"i-1", plain("i-1", "active"), [])], partition=1)
    async with running_consumer(kafka_bootstrap, f"{first},{second}", subscribe=["p-1"]) as running:
        # The second topic does not exist yet: the replica must not turn ready without it.
        await running.wait_until(
            lambda: second in (running.progress.last_error or ""), 20, "the missing topic is reported"
        )
        assert not running.progress.caught_up.is_set()
        await create_topic(kafka_bootstrap, second, partitions=1)
        await send(kafka_bootstrap, second, [(b"p-1", plain("p-1", "active", type="presentation"), [])])
        await running.wait_caught_up(40)
        issuance, presentation = running.store.get("i-1"), running.store.get("p-1")
        assert issuance is not None and issuance.current.partition == global_partition(0, 1) == 1
        assert presentation is not None and presentation.current.partition == global_partition(1, 0)
        assert set(running.progress.targets) == {0, 1, global_partition(1, 0)}
        await running.wait_until(
            lambda: (
                metric("gateway_consumer_lag_records", partition="t1.0") == 0
                and metric("gateway_consumer_position", partition="t1.0") == 1
            ),
            15,
            "lag and position of the second topic's partition",
        )


async def test_every_reject_reason_lands_on_the_dead_letter_topic_with_its_headers(kafka_bootstrap: str) -> None:
    native, mapped, dlq = unique_topic("bus-native"), unique_topic("bus-foreign"), unique_topic("bus-dlq")
    for topic in (native, mapped, dlq):
        await create_topic(kafka_bootstrap, topic, partitions=1)
    # Rejected during the initial replay: not copied (a running writer copied it when it arrived).
    await send(kafka_bootstrap, native, [(b"old", b"{not json", [])])
    tracing: Headers = [("traceparent", b"00-abc-01"), ("binary", b"\xff\x00\xfe"), ("empty", None)]
    bad_ce, bad_ce_headers = cloudevent({"tenantId": TENANT, "status": "active"}, "structured", subject="ce")
    bad_ce = bad_ce.replace(b'"specversion": "1.0"', b'"specversion": "0.3"')
    assert b'"0.3"' in bad_ce
    native_records: list[tuple[str, Sent]] = [
        (RejectReason.MISSING_KEY, (None, plain("k", "active"), tracing)),
        (RejectReason.INVALID_UTF8, (b"u", b'{"id": "\xff"}', [])),
        (RejectReason.TOO_LARGE, (b"big", plain("big", "active", pad="x" * 2000), [])),
        (RejectReason.NOT_JSON, (b"nj", b"{not json", tracing)),
        (RejectReason.SCHEMA, (b"sc", plain("sc", "exploded"), [])),
        (RejectReason.KEY_MISMATCH, (b"km", plain("other", "active"), [])),
        (RejectReason.TIME_OUT_OF_RANGE, (b"tr", event_bytes("tr", TENANT, "active", "0001-01-01T00:30:00+01:00"), [])),
        (RejectReason.CLOUDEVENTS, (b"ce", bad_ce, bad_ce_headers)),
        (HANDLER_ERROR, (b"boom", event_bytes("boom", "explodes-in-the-store", "active"), [])),
    ]
    mapped_records: list[tuple[str, Sent]] = [
        (RejectReason.MAPPING, (b"m1", foreign("m1", "DONE", org=None), [])),
        (RejectReason.UNMAPPED_STATUS, (b"m2", foreign("m2", "PAUSED"), [])),
    ]
    expected_reasons = {str(reason) for reason in RejectReason} | {HANDLER_ERROR}
    assert {str(reason) for reason, _ in native_records + mapped_records} == expected_reasons
    written = metric("gateway_dlq_records_written_total")
    async with running_consumer(
        kafka_bootstrap,
        f"{native},{mapped}",
        subscribe=["fine", "m-fine"],
        max_record_bytes=1024,
        record_mapping=json.dumps({**MAPPING, "topics": [mapped]}),
        dlq_topic=dlq,
    ) as running:
        await running.wait_caught_up()
        original = running.store.apply

        def apply(update: StatusUpdate, partition: int, offset: int, now_ms: int | None = None) -> Any:
            if update.tenant_id == "explodes-in-the-store":
                raise RuntimeError("store failure")
            return original(update, partition, offset, now_ms)

        running.store.apply = apply  # type: ignore[method-assign]
        native_offsets = await send(kafka_bootstrap, native, [sent for _, sent in native_records])
        mapped_offsets = await send(kafka_bootstrap, mapped, [sent for _, sent in mapped_records])
        await send(kafka_bootstrap, native, [(b"fine", plain("fine", "active"), [])])
        await send(kafka_bootstrap, mapped, [(b"m-fine", foreign("m-fine", "STARTED"), [])])
        await running.wait_until(
            lambda: (
                running.subscribers["fine"].statuses == ["active"]
                and running.subscribers["m-fine"].statuses == ["active"]
            ),
            20,
            "good records around the bad ones are delivered",
        )
        letters = await read_letters(kafka_bootstrap, dlq, len(expected_reasons))
        await running.wait_until(
            lambda: metric("gateway_dlq_records_written_total") - written == len(expected_reasons), 10, "counted"
        )
    assert len(letters) == len(expected_reasons), "the replayed rejection and the good records are not copied"
    by_reason = {letter.header(HEADER_REASON): letter for letter in letters}
    assert set(by_reason) == expected_reasons
    positions = {
        str(reason): (native, offset) for (reason, _), offset in zip(native_records, native_offsets, strict=True)
    }
    positions |= {
        str(reason): (mapped, offset) for (reason, _), offset in zip(mapped_records, mapped_offsets, strict=True)
    }
    sent = {str(reason): record for reason, record in native_records + mapped_records}
    for reason, letter in by_reason.items():
        key, value, headers = sent[reason]
        assert (letter.key, letter.value) == (key, value), reason
        assert letter.headers[: len(headers)] == headers, reason  # the original headers, unchanged and first
        topic, offset = positions[reason]
        assert letter.header(HEADER_TOPIC) == topic
        assert letter.header(HEADER_PARTITION) == "0"
        assert letter.header(HEADER_OFFSET) == str(offset)
        assert int(letter.header(HEADER_TIMESTAMP)) > 0
        detail = letter.header(HEADER_DETAIL)
        assert detail and "\n" not in detail
    assert by_reason[HANDLER_ERROR].header(HEADER_DETAIL).startswith("RuntimeError raised at")
    assert "store failure" not in by_reason[HANDLER_ERROR].header(HEADER_DETAIL)


async def test_a_missing_dead_letter_topic_never_stops_delivery_and_queued_copies_follow(kafka_bootstrap: str) -> None:
    topic, dlq = unique_topic("bus-dlq-outage"), unique_topic("bus-dlq-missing")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    errors = metric("gateway_dlq_errors_total")
    dropped = metric("gateway_dlq_records_dropped_total", reason="queue_full")
    written = metric("gateway_dlq_records_written_total")
    sessions = [f"live-{i}" for i in range(5)]
    async with running_consumer(
        kafka_bootstrap, topic, subscribe=sessions, dlq_topic=dlq, kafka_request_timeout_ms=1000
    ) as running:
        writer = running.consumer.dead_letters
        assert writer is not None
        writer.max_queued_bytes = 4096  # small, so that the outage fills it
        await running.wait_caught_up()
        bad: list[Sent] = [(f"bad-{i}".encode(), b"{broken" + b"x" * 400, []) for i in range(30)]
        good: list[Sent] = [(s.encode(), plain(s, "active"), []) for s in sessions]
        await send(kafka_bootstrap, topic, bad[:15] + good[:2] + bad[15:] + good[2:])
        await running.wait_until(
            lambda: all(running.subscribers[s].statuses == ["active"] for s in sessions), 20, "delivery goes on"
        )
        assert 0 < writer.queued < len(bad)
        assert metric("gateway_dlq_records_dropped_total", reason="queue_full") - dropped == len(bad) - writer.queued
        await running.wait_until(lambda: metric("gateway_dlq_errors_total") > errors, 20, "the failure is counted")
        # The topic appears: what waited in the queue is written, nothing else blocks.
        queued = writer.queued
        await create_topic(kafka_bootstrap, dlq, partitions=1)
        await running.wait_until(lambda: writer.queued == 0, 40, "queued copies written once the topic exists")
        await running.wait_until(
            lambda: metric("gateway_dlq_records_written_total") - written == queued, 20, "written copies counted"
        )
        letters = await read_letters(kafka_bootstrap, dlq, queued)
        assert [letter.key for letter in letters] == [key for key, _, _ in bad[:queued]]
        assert await topic_partitions(kafka_bootstrap, dlq)


async def test_a_replica_that_is_not_the_writer_copies_nothing(kafka_bootstrap: str) -> None:
    topic, dlq = unique_topic("bus-nowriter"), unique_topic("bus-nowriter-dlq")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    await create_topic(kafka_bootstrap, dlq, partitions=1)
    async with running_consumer(
        kafka_bootstrap, topic, subscribe=["after"], dlq_topic=dlq, dlq_writer=False
    ) as running:
        assert running.consumer.dead_letters is None and "dead-letter-writer" not in running.consumer.tasks()
        await running.wait_caught_up()
        await send(kafka_bootstrap, topic, [(b"bad", b"{", []), (b"after", plain("after", "active"), [])])
        await running.wait_until(lambda: running.subscribers["after"].statuses == ["active"], 20)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(dlq, 0)])
    finally:
        await consumer.stop()
    assert ends[TopicPartition(dlq, 0)] == 0
