"""Applying one fetched batch (``consumers.consuming.batch``), without a broker: records built by hand.

What a batch does to the store, the hub, the record metrics and the dead-letter sink; the same paths run
against a real broker in ``test_consumer.py``, ``test_event_bus_kafka.py`` and ``test_resilience.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from consumers.consuming.batch import HANDLER_ERROR, BatchApplier
from consumers.hub import Hub
from consumers.log_aggregation import ReasonFolding
from consumers.partitions import global_partition
from consumers.progress import PartitionProgress
from consumers.records import RejectReason, StatusUpdate
from consumers.settings import ConsumerSettings
from consumers.store import Outcome, SessionStore, Transition
from tests.kafka_support import RecordingSubscriber, encode_frame, event_bytes, make_store, metric

FIRST, SECOND = "orders", "payments"  # two topics: the second's partitions get numbers of their own
TIMESTAMP = 1_700_000_000_000


def record(
    key: bytes | None,
    value: bytes | None,
    offset: int,
    *,
    topic: str = FIRST,
    partition: int = 0,
    headers: Sequence[tuple[str, bytes]] = (),
    timestamp: int = TIMESTAMP,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic, partition, offset, timestamp, 0, key, value, None, len(key or b""), len(value or b""), list(headers)
    )


def status(session_id: str, value: str, offset: int, **kwargs: Any) -> ConsumerRecord[bytes, bytes]:
    return record(session_id.encode(), event_bytes(session_id, "tenant", value), offset, **kwargs)


@dataclass
class Sink:
    """A dead-letter sink that keeps what it was offered."""

    offered: list[tuple[Any, str, str, str]] = field(default_factory=list)

    def offer(self, record: Any, topic: str, reason: str, detail: str) -> bool:
        self.offered.append((record, topic, reason, detail))
        return True


@dataclass
class Applying:
    applier: BatchApplier
    store: SessionStore
    hub: Hub
    progress: PartitionProgress
    sink: Sink

    def subscribe(self, session_id: str) -> RecordingSubscriber:
        subscriber = RecordingSubscriber()
        self.hub.subscribe(session_id, subscriber)
        return subscriber

    def statuses(self, session_id: str) -> list[tuple[str, int, int]]:
        snapshot = self.store.get(session_id)
        assert snapshot is not None, f"{session_id} is not in the store"
        return [(t.status.value, t.partition, t.offset) for t in snapshot.transitions]


def applying(store: SessionStore | None = None, **overrides: Any) -> Applying:
    settings = ConsumerSettings(kafka_topic=f"{FIRST},{SECOND}", **overrides)
    store = store if store is not None else make_store(settings)
    hub = Hub(encode=encode_frame)
    progress = PartitionProgress()
    sink = Sink()
    applier = BatchApplier(
        settings,
        settings.kafka_topics,
        store,
        hub,
        progress,
        sink,
        ReasonFolding(logging.getLogger("gateway.consumer")),
    )
    return Applying(applier, store, hub, progress, sink)


def counted(name: str, reason: str | None = None) -> float:
    return metric(name) if reason is None else metric(name, reason=reason)


def test_a_valid_record_reaches_the_store_and_the_hub() -> None:
    world = applying()
    subscriber = world.subscribe("s-1")
    consumed, applied = counted("gateway_records_consumed_total"), counted("gateway_records_applied_total")

    world.applier.apply(FIRST, [status("s-1", "active", 7, timestamp=TIMESTAMP + 5)])

    assert world.statuses("s-1") == [("active", 0, 7)]
    assert subscriber.frames == [b"s-1:active:7"]
    assert subscriber.timestamps == [TIMESTAMP + 5]  # the record's own timestamp, for the delivery delay
    assert subscriber.terminal == [False]
    assert counted("gateway_records_consumed_total") - consumed == 1
    assert counted("gateway_records_applied_total") - applied == 1
    assert world.sink.offered == []


def test_records_of_another_topic_carry_its_partition_number() -> None:
    world = applying()
    subscriber = world.subscribe("s-2")

    world.applier.apply(SECOND, [status("s-2", "active", 3, topic=SECOND, partition=2)])

    assert world.statuses("s-2") == [("active", global_partition(1, 2), 3)]
    assert subscriber.frames == [b"s-2:active:3"]


def test_a_malformed_record_is_counted_dead_lettered_and_does_not_stop_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = applying()
    bad = record(b"bad", b'{"secret": "payload", not json', 1)
    consumed = counted("gateway_records_consumed_total")
    not_json = counted("gateway_records_rejected_total", RejectReason.NOT_JSON.value)

    with caplog.at_level(logging.WARNING, logger="gateway.consumer"):
        world.applier.apply(FIRST, [status("good-1", "active", 0), bad, status("good-2", "active", 2)])

    assert world.statuses("good-1") == [("active", 0, 0)]
    assert world.statuses("good-2") == [("active", 0, 2)]
    assert "bad" not in world.store
    assert counted("gateway_records_consumed_total") - consumed == 3
    assert counted("gateway_records_rejected_total", RejectReason.NOT_JSON.value) - not_json == 1
    assert world.sink.offered == [(bad, FIRST, "not_json", "value is not JSON")]
    [line] = [r for r in caplog.records if r.getMessage().startswith("skipped malformed record")]
    assert line.getMessage() == "skipped malformed record: value is not JSON"
    # The position and the reason are fields of the line (issue 25.9), written by both log formats.
    assert getattr(line, "fields", None) == {"topic": FIRST, "partition": 0, "offset": 1, "reason": "not_json"}
    assert "secret" not in caplog.text


def test_records_of_the_replay_are_rejected_but_not_dead_lettered() -> None:
    """Only records that reached the log after this replica started are copied (no copy per restart)."""
    world = applying()
    world.progress.set_targets({0: 5})  # partition 0 ended at offset 5 when this replica started
    key_mismatch = counted("gateway_records_rejected_total", RejectReason.KEY_MISMATCH.value)
    old = record(b"old", event_bytes("someone-else", "tenant", "active"), 4)
    new = record(b"new", event_bytes("someone-else", "tenant", "active"), 5)

    world.applier.apply(FIRST, [old, new])

    assert counted("gateway_records_rejected_total", RejectReason.KEY_MISMATCH.value) - key_mismatch == 2
    assert [(letter[0].offset, letter[2]) for letter in world.sink.offered] == [(5, "key_mismatch")]


class _ExplodingStore(SessionStore):
    """A store that fails on one session, as a bug in the store would."""

    def apply(
        self, update: StatusUpdate, partition: int, offset: int, now_ms: int | None = None
    ) -> tuple[Outcome, Transition | None]:
        if update.session_id == "boom":
            raise RuntimeError("store failure quoting the secret payload")
        return super().apply(update, partition, offset, now_ms)


def test_a_record_whose_handling_raises_is_skipped_alone(caplog: pytest.LogCaptureFixture) -> None:
    world = applying(_ExplodingStore(60_000, 3_600_000, 1000))
    subscriber = world.subscribe("after")
    handler_errors = counted("gateway_records_rejected_total", HANDLER_ERROR)
    boom = status("boom", "active", 1)

    with caplog.at_level(logging.ERROR, logger="gateway.consumer"):
        world.applier.apply(FIRST, [status("before", "active", 0), boom, status("after", "active", 2)])

    assert world.statuses("before") == [("active", 0, 0)]
    assert world.statuses("after") == [("active", 0, 2)]
    assert subscriber.frames == [b"after:active:2"]
    assert counted("gateway_records_rejected_total", HANDLER_ERROR) - handler_errors == 1
    [(letter, topic, reason, detail)] = world.sink.offered
    assert (letter, topic, reason) == (boom, FIRST, HANDLER_ERROR)
    assert detail.startswith("RuntimeError raised at ") and "secret" not in detail
    [line] = [r for r in caplog.records if getattr(r, "fields", {}).get("reason") == "handler_error"]
    assert line.getMessage().startswith("skipped record: RuntimeError raised at ")
    assert getattr(line, "fields", None) == {"topic": FIRST, "partition": 0, "offset": 1, "reason": "handler_error"}
    assert "secret" not in caplog.text


def test_a_tombstone_deletes_the_session_and_tells_its_subscribers() -> None:
    world = applying()
    subscriber = world.subscribe("gone")
    deleted = counted("gateway_sessions_deleted_total")
    unknown = counted("gateway_records_ignored_total", Outcome.UNKNOWN_DELETE.value)

    world.applier.apply(FIRST, [status("gone", "active", 0), record(b"gone", None, 1)])

    assert "gone" not in world.store
    assert subscriber.frames == [b"gone:active:0"]
    assert subscriber.deleted == 1
    assert counted("gateway_sessions_deleted_total") - deleted == 1

    world.applier.apply(FIRST, [record(b"never-seen", None, 2)])
    assert counted("gateway_records_ignored_total", Outcome.UNKNOWN_DELETE.value) - unknown == 1
    assert counted("gateway_sessions_deleted_total") - deleted == 1
    assert world.sink.offered == []


def test_records_are_applied_in_their_order_within_a_partition() -> None:
    """Each record sees the store as the records before it in the batch left it."""
    world = applying()
    subscriber = world.subscribe("s")
    backward = counted("gateway_records_ignored_total", Outcome.BACKWARD.value)
    after_terminal = counted("gateway_records_ignored_total", Outcome.AFTER_TERMINAL.value)
    duplicate = counted("gateway_records_ignored_total", Outcome.DUPLICATE.value)

    world.applier.apply(
        FIRST,
        [
            status("s", "active", 10),
            status("s", "active", 11),  # duplicate
            status("s", "fetched", 12),
            status("s", "active", 13),  # backward
            status("s", "completed", 14),
            status("s", "failed", 15),  # after a terminal status
        ],
    )

    assert world.statuses("s") == [("active", 0, 10), ("fetched", 0, 12), ("completed", 0, 14)]
    assert subscriber.frames == [b"s:active:10", b"s:fetched:12", b"s:completed:14"]
    assert subscriber.terminal == [False, False, True]
    assert counted("gateway_records_ignored_total", Outcome.DUPLICATE.value) - duplicate == 1
    assert counted("gateway_records_ignored_total", Outcome.BACKWARD.value) - backward == 1
    assert counted("gateway_records_ignored_total", Outcome.AFTER_TERMINAL.value) - after_terminal == 1


def test_a_session_older_than_its_ttl_is_not_stored() -> None:
    world = applying(session_ttl=timedelta(hours=1))
    stale = counted("gateway_records_ignored_total", Outcome.STALE.value)
    old = datetime.now(UTC) - timedelta(hours=2)

    world.applier.apply(FIRST, [record(b"old", event_bytes("old", "tenant", "active", old), 0)])

    assert "old" not in world.store
    assert counted("gateway_records_ignored_total", Outcome.STALE.value) - stale == 1


def test_a_cloudevent_of_an_unused_type_is_ignored_not_rejected() -> None:
    world = applying(cloudevents_types=["session.status"])
    ignored = counted("gateway_records_ignored_total", "cloudevents_type")

    def cloudevent(session_id: str, kind: str, offset: int) -> ConsumerRecord[bytes, bytes]:
        value = {
            "specversion": "1.0",
            "id": f"event-{offset}",
            "source": "/sessions",
            "type": kind,
            "data": json.loads(event_bytes(session_id, "tenant", "active")),
        }
        headers = [("content-type", b"application/cloudevents+json")]
        return record(session_id.encode(), json.dumps(value).encode(), offset, headers=headers)

    world.applier.apply(FIRST, [cloudevent("other", "something.else", 0), cloudevent("used", "session.status", 1)])

    assert "other" not in world.store
    assert world.statuses("used") == [("active", 0, 1)]
    assert counted("gateway_records_ignored_total", "cloudevents_type") - ignored == 1
    assert world.sink.offered == []
