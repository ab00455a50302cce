"""SessionStatusConsumer against a real broker; every test writes to a topic of its own."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from consumers.records import RejectReason
from consumers.store import Outcome
from tests.kafka_support import (
    LocalBroker,
    Record,
    RecordingSubscriber,
    RunningConsumer,
    add_partitions,
    create_topic,
    event_bytes,
    metric,
    produce,
    read_all,
    running_consumer,
    unique_topic,
)

TERMINALS = ("completed", "expired", "failed", "cancelled")


def ignored(reason: Outcome) -> float:
    return metric("gateway_records_ignored_total", reason=reason.value)


def rejected(reason: RejectReason) -> float:
    return metric("gateway_records_rejected_total", reason=reason.value)


def statuses(running: RunningConsumer, session_id: str) -> list[str]:
    snapshot = running.store.get(session_id)
    assert snapshot is not None, f"{session_id} is not in the store"
    return [t.status.value for t in snapshot.transitions]


def frame(session_id: str, status: str, offset: int) -> bytes:
    return f"{session_id}:{status}:{offset}".encode()


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# --------------------------------------------------------------------------------------------------
# Replay


async def test_replay_of_many_sessions_builds_exactly_the_right_state(kafka_bootstrap: str) -> None:
    topic = unique_topic("replay")
    await create_topic(kafka_bootstrap, topic, partitions=6)
    rng = random.Random(20240501)
    start = datetime.now(UTC) - timedelta(minutes=5)
    paths: dict[str, list[str]] = {}
    tenants: dict[str, str] = {}
    kinds: dict[str, str | None] = {}
    for i in range(3000):
        session_id = f"replay-{i:05d}"
        terminal = rng.choice(TERMINALS)
        paths[session_id] = rng.choice(
            [["active"], ["active", "fetched"], ["active", "fetched", terminal], ["active", terminal], ["fetched"]]
        )
        tenants[session_id] = f"tenant-{i % 11}"
        kinds[session_id] = rng.choice(["issuance", "presentation", None])
    # Sessions interleave: every session's first step, then every second step, ...
    records: list[Record] = []
    steps: list[tuple[str, int]] = []
    for step in range(3):
        for session_id, path in paths.items():
            if step < len(path):
                at = start + timedelta(seconds=step, milliseconds=rng.randrange(1000))
                extra = {"type": kinds[session_id]} if kinds[session_id] else {}
                records.append(
                    (session_id.encode(), event_bytes(session_id, tenants[session_id], path[step], at, **extra))
                )
                steps.append((session_id, step))
    placed = await produce(kafka_bootstrap, topic, records)
    where = dict(zip(steps, placed, strict=True))
    ends: dict[int, int] = defaultdict(int)
    for partition, offset in placed:
        ends[partition] = max(ends[partition], offset + 1)
    assert len(ends) == 6, "key partitioning should have used every partition"

    consumed, applied = metric("gateway_records_consumed_total"), metric("gateway_records_applied_total")
    begun = time.monotonic()
    async with running_consumer(kafka_bootstrap, topic) as running:
        await running.wait_caught_up(60)
        replay_seconds = time.monotonic() - begun
        assert running.progress.targets == dict(ends)
        assert running.progress.positions == dict(ends)
        assert running.progress.broker_reachable
        assert len(running.store) == 3000
        for session_id, path in paths.items():
            snapshot = running.store.get(session_id)
            assert snapshot is not None, session_id
            assert snapshot.tenant_id == tenants[session_id]
            assert (snapshot.type.value if snapshot.type else None) == kinds[session_id]
            assert [t.status.value for t in snapshot.transitions] == path, session_id
            assert [(t.partition, t.offset) for t in snapshot.transitions] == [
                where[(session_id, step)] for step in range(len(path))
            ], session_id
    assert metric("gateway_records_consumed_total") - consumed == len(records)
    assert metric("gateway_records_applied_total") - applied == len(records)
    assert replay_seconds < 30


async def test_forward_only_over_kafka(kafka_bootstrap: str) -> None:
    topic = unique_topic("forward")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    now = datetime.now(UTC)
    stamp = ms(now) - 1234

    def rec(session_id: str, status: str, seconds: int, tenant: str = "tenant-a") -> Record:
        return session_id.encode(), event_bytes(session_id, tenant, status, now + timedelta(seconds=seconds))

    records = [
        rec("fw-1", "active", 0),
        rec("fw-1", "fetched", 1),
        rec("fw-1", "active", 2),  # backward
        rec("fw-1", "fetched", 3),  # duplicate
        rec("fw-1", "completed", 4),
        rec("fw-1", "failed", 5),  # after terminal
        rec("fw-1", "active", 6),  # after terminal
        rec("fw-2", "active", 0),
        rec("fw-2", "fetched", 1, tenant="tenant-b"),  # tenant changed
        rec("fw-2", "active", 2),  # duplicate
        (b"fw-unknown", None),  # tombstone of a session never seen
    ]
    kinds = (
        Outcome.BACKWARD,
        Outcome.DUPLICATE,
        Outcome.AFTER_TERMINAL,
        Outcome.TENANT_CHANGED,
        Outcome.UNKNOWN_DELETE,
    )
    before = {kind: ignored(kind) for kind in kinds}
    applied = metric("gateway_records_applied_total")
    placed = await produce(kafka_bootstrap, topic, records, timestamp_ms=stamp)
    offsets = [offset for _, offset in placed]

    async with running_consumer(kafka_bootstrap, topic, subscribe=["fw-1", "fw-2"]) as running:
        await running.wait_caught_up(30)
        fw1, fw2 = running.subscribers["fw-1"], running.subscribers["fw-2"]
        assert fw1.frames == [
            frame("fw-1", "active", offsets[0]),
            frame("fw-1", "fetched", offsets[1]),
            frame("fw-1", "completed", offsets[4]),
        ]
        assert fw1.terminal == [False, False, True]
        assert fw1.timestamps == [stamp] * 3
        assert fw2.frames == [frame("fw-2", "active", offsets[7])]
        assert statuses(running, "fw-1") == ["active", "fetched", "completed"]
        assert statuses(running, "fw-2") == ["active"]
        snapshot = running.store.get("fw-2")
        assert snapshot is not None
        assert snapshot.tenant_id == "tenant-a"
        assert "fw-unknown" not in running.store
        assert {kind: ignored(kind) - before[kind] for kind in kinds} == {
            Outcome.BACKWARD: 1,
            Outcome.DUPLICATE: 2,
            Outcome.AFTER_TERMINAL: 2,
            Outcome.TENANT_CHANGED: 1,
            Outcome.UNKNOWN_DELETE: 1,
        }
        assert metric("gateway_records_applied_total") - applied == 4

        # Live records follow the same rule.
        live = await produce(kafka_bootstrap, topic, [rec("fw-2", "active", 7), rec("fw-2", "fetched", 8)])
        await running.wait_until(lambda: len(fw2.frames) == 2, 15, "live transition not delivered")
        assert fw2.frames[1] == frame("fw-2", "fetched", live[1][1])
        await running.wait_until(lambda: ignored(Outcome.DUPLICATE) - before[Outcome.DUPLICATE] == 3, 5)
        assert metric("gateway_records_applied_total") - applied == 5


async def test_tombstones_delete_sessions_and_notify_subscribers(kafka_bootstrap: str) -> None:
    topic = unique_topic("tombstone")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    deleted = metric("gateway_sessions_deleted_total")
    unknown = ignored(Outcome.UNKNOWN_DELETE)
    await produce(
        kafka_bootstrap,
        topic,
        [
            (b"del-1", event_bytes("del-1", "t", "active")),
            (b"del-1", event_bytes("del-1", "t", "fetched")),
            (b"del-1", None),
            (b"del-2", event_bytes("del-2", "t", "active")),
            (b"keep-1", event_bytes("keep-1", "t", "active")),
        ],
    )
    async with running_consumer(kafka_bootstrap, topic, subscribe=["del-1", "del-2", "keep-1"]) as running:
        await running.wait_caught_up(30)
        del1, del2, keep1 = (running.subscribers[s] for s in ("del-1", "del-2", "keep-1"))
        assert "del-1" not in running.store
        assert running.store.get("del-1") is None
        assert del1.statuses == ["active", "fetched"]
        assert del1.deleted == 1
        assert del2.deleted == 0
        assert keep1.deleted == 0
        assert len(running.store) == 2
        assert metric("gateway_sessions_deleted_total") - deleted == 1

        # Live: a tombstone reaches the subscribers of that session only.
        await produce(kafka_bootstrap, topic, [(b"del-2", None), (b"never-seen", None)])
        await running.wait_until(lambda: del2.deleted == 1, 15, "live tombstone not delivered")
        assert "del-2" not in running.store
        assert keep1.deleted == 0
        assert del1.deleted == 1
        await running.wait_until(lambda: ignored(Outcome.UNKNOWN_DELETE) - unknown == 1, 5)

        # A deleted session may start over.
        await produce(kafka_bootstrap, topic, [(b"del-1", event_bytes("del-1", "t2", "active"))])
        await running.wait_until(lambda: "del-1" in running.store, 15)
        assert statuses(running, "del-1") == ["active"]
        snapshot = running.store.get("del-1")
        assert snapshot is not None
        assert snapshot.tenant_id == "t2"
        assert del1.statuses == ["active", "fetched", "active"]
        assert metric("gateway_sessions_deleted_total") - deleted == 2


async def test_eviction_while_running(kafka_bootstrap: str) -> None:
    topic = unique_topic("evict")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    now = datetime.now(UTC)
    retention, ttl = ("terminal_retention",), ("ttl",)
    before = {reason: metric("gateway_sessions_evicted_total", reason=reason[0]) for reason in (retention, ttl)}
    stale_before = metric("gateway_records_ignored_total", reason="stale")
    # One partition, oldest first: the store files sessions by arrival (see test_store's arrival-order tests).
    await produce(
        kafka_bootstrap,
        topic,
        [
            (b"stale-1", event_bytes("stale-1", "t", "active", now - timedelta(hours=2))),
            (b"done-1", event_bytes("done-1", "t", "active", now - timedelta(seconds=1))),
            (b"done-1", event_bytes("done-1", "t", "completed", now)),
            (b"done-2", event_bytes("done-2", "t", "failed", now)),
            (b"live-1", event_bytes("live-1", "t", "active", now)),
            (b"live-2", event_bytes("live-2", "t", "fetched", now)),
        ],
        partition=0,
    )
    # ``done-2`` (terminal, dated ``now``) must still be within its retention when its batch is applied, and
    # ``live-1``'s completion below must still be in the store when the test looks: 3 s leaves room for both.
    retention_seconds = 3.0
    async with running_consumer(
        kafka_bootstrap,
        topic,
        terminal_retention=timedelta(seconds=retention_seconds),
        session_ttl=timedelta(minutes=30),
        store_eviction_interval=0.2,
    ) as running:
        await running.wait_caught_up(30)
        await running.wait_until(
            lambda: not any(s in running.store for s in ("done-1", "done-2", "stale-1")), 15, "not evicted"
        )
        assert "live-1" in running.store
        assert "live-2" in running.store
        assert len(running.store) == 2
        evicted = {
            reason: metric("gateway_sessions_evicted_total", reason=reason[0]) - before[reason] for reason in before
        }
        # A session already past its TTL when its record arrives never enters the store.
        assert evicted == {retention: 2, ttl: 0}
        assert running.store.evicted == {"terminal_retention": 2, "ttl": 0, "max_sessions": 0}
        assert metric("gateway_records_ignored_total", reason="stale") - stale_before == 1
        await running.wait_until(lambda: metric("gateway_store_sessions") == 2, 5)

        # A session completed later is evicted after its own retention, not before.
        completed_at = datetime.now(UTC)
        await produce(kafka_bootstrap, topic, [(b"live-1", event_bytes("live-1", "t", "completed", completed_at))])
        await running.wait_until(lambda: statuses(running, "live-1") == ["active", "completed"], 10)
        await running.wait_until(lambda: "live-1" not in running.store, 15, "completed session not evicted")
        assert time.time() - completed_at.timestamp() >= retention_seconds
        assert "live-2" in running.store


async def test_future_dated_records_do_not_hold_back_eviction(kafka_bootstrap: str) -> None:
    """Issue 19's scenario, scaled: 1,100 sessions dated 30 days ahead, then 20,000 normal ones, a short TTL.

    The normal sessions used to stay (the sweep stopped after 1,024 live entries, and the future-dated ones
    stayed live for 30 days); now every session is evicted within its arrival + skew + TTL.
    """
    topic = unique_topic("evict-ahead")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    ttl = timedelta(seconds=10)  # room for producing and consuming 21,100 records on a loaded machine
    async with running_consumer(kafka_bootstrap, topic, session_ttl=ttl, store_eviction_interval=0.2) as running:
        running.store.max_clock_skew_ms = 2_000  # the default skew is 30 s; 2 s keeps the test short
        await running.wait_caught_up(30)
        ahead = datetime.now(UTC) + timedelta(days=30)
        await produce(
            kafka_bootstrap,
            topic,
            [(f"ahead-{i}".encode(), event_bytes(f"ahead-{i}", "t", "active", ahead)) for i in range(1_100)],
            partition=0,
        )
        now = datetime.now(UTC)
        normal = [(f"normal-{i}".encode(), event_bytes(f"normal-{i}", "t", "active", now)) for i in range(20_000)]
        await produce(kafka_bootstrap, topic, normal, partition=0)
        started = time.monotonic()
        await running.wait_until(
            lambda: running.store.evicted["ttl"] == 21_100,
            60,
            "not every session was evicted by its TTL",
        )
        print(f"\n21,100 sessions evicted {time.monotonic() - started:.1f}s after they were produced (TTL 10 s)")
        assert len(running.store) == 0


async def test_bad_records_are_skipped_and_counted(kafka_bootstrap: str) -> None:
    topic = unique_topic("bad")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    limit = 1024
    records: list[Record] = [
        (b"good-1", event_bytes("good-1", "t", "active")),
        (b"bad-json", b"{this is not json"),
        (b"bad-schema", event_bytes("bad-schema", "t", "exploded")),
        (b"good-2", event_bytes("good-2", "t", "active")),
        (b"bad-key", event_bytes("someone-else", "t", "active")),
        (b"bad-big", event_bytes("bad-big", "t", "active", padding="x" * 2 * limit)),
        (b"good-1", event_bytes("good-1", "t", "fetched")),
        (b"bad-utf8", b'{"id": "bad-utf8", "tenantId": "\xff\xfe", "status": "active"}'),
        (b"\xff\xfebad", event_bytes("x", "t", "active")),
        (None, event_bytes("no-key", "t", "active")),
        (b"", event_bytes("", "t", "active")),
        (b"bad-naive", event_bytes("bad-naive", "t", "active", "2024-05-01T12:00:00")),
        (b"year-10000", event_bytes("year-10000", "t", "active", "9999-12-31T23:59:59-01:00")),
        (b"year-0", event_bytes("year-0", "t", "active", "0001-01-01T00:30:00+01:00")),
        (b"good-3", event_bytes("good-3", "t", "completed")),
    ]
    expected = Counter(
        {
            RejectReason.NOT_JSON: 1,
            RejectReason.SCHEMA: 2,
            RejectReason.KEY_MISMATCH: 1,
            RejectReason.TOO_LARGE: 1,
            RejectReason.INVALID_UTF8: 2,
            RejectReason.MISSING_KEY: 2,
            RejectReason.TIME_OUT_OF_RANGE: 2,
        }
    )
    before = {reason: rejected(reason) for reason in RejectReason}
    consumed = metric("gateway_records_consumed_total")
    await produce(kafka_bootstrap, topic, records, partition=0)
    async with running_consumer(
        kafka_bootstrap, topic, subscribe=["good-1", "good-2", "good-3"], max_record_bytes=limit
    ) as running:
        await running.wait_caught_up(30)
        assert {reason: rejected(reason) - before[reason] for reason in RejectReason} == {
            reason: expected[reason] for reason in RejectReason
        }
        assert metric("gateway_records_consumed_total") - consumed == len(records)
        assert sorted(s for s in ("good-1", "good-2", "good-3") if s in running.store) == ["good-1", "good-2", "good-3"]
        assert len(running.store) == 3
        assert running.subscribers["good-1"].statuses == ["active", "fetched"]
        assert running.subscribers["good-2"].statuses == ["active"]
        assert running.subscribers["good-3"].statuses == ["completed"]

        # The consumer keeps going after bad records.
        await produce(
            kafka_bootstrap, topic, [(b"bad-json", b"\x00"), (b"good-2", event_bytes("good-2", "t", "expired"))]
        )
        await running.wait_until(lambda: running.subscribers["good-2"].statuses == ["active", "expired"], 15)
        assert rejected(RejectReason.NOT_JSON) - before[RejectReason.NOT_JSON] == 2


# --------------------------------------------------------------------------------------------------
# Readiness


async def test_caught_up_only_once_the_replay_is_complete(kafka_bootstrap: str) -> None:
    topic = unique_topic("ready")
    await create_topic(kafka_bootstrap, topic, partitions=4)
    count = 8000
    sessions = [f"ready-{i:05d}" for i in range(count)]
    await produce(kafka_bootstrap, topic, [(s.encode(), event_bytes(s, "t", "active")) for s in sessions])

    async with running_consumer(kafka_bootstrap, topic) as running:
        # Attached before the consumer task first runs, so it sees every record.
        ready_at_delivery: list[bool] = []
        probe = RecordingSubscriber()
        probe.on_deliver = lambda _: ready_at_delivery.append(running.progress.caught_up.is_set())
        for session_id in sessions:
            running.hub.subscribe(session_id, probe)

        async def snapshot_when_ready() -> tuple[int, dict[int, int], dict[int, int]]:
            await running.progress.caught_up.wait()
            return len(running.store), dict(running.progress.positions), dict(running.progress.targets)

        watcher = asyncio.create_task(snapshot_when_ready())
        assert not running.progress.caught_up.is_set()
        size, positions, targets = await asyncio.wait_for(watcher, 60)
        running.check_alive()

        assert size == count, f"caught_up was set with {size} of {count} sessions in the store"
        assert positions == targets
        assert sum(targets.values()) == count
        assert len(ready_at_delivery) == count
        assert not any(ready_at_delivery), "a replayed record was applied after caught_up was set"

        # Records written after the start do not take readiness away.
        await produce(kafka_bootstrap, topic, [(b"late-1", event_bytes("late-1", "t", "active"))])
        await running.wait_until(lambda: "late-1" in running.store, 15)
        assert running.progress.caught_up.is_set()


async def test_empty_topic_is_caught_up_at_once(kafka_bootstrap: str) -> None:
    topic = unique_topic("empty")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    async with running_consumer(kafka_bootstrap, topic) as running:
        await running.wait_caught_up(20)
        assert running.progress.targets == {0: 0, 1: 0, 2: 0}
        assert len(running.store) == 0
        await produce(kafka_bootstrap, topic, [(b"first", event_bytes("first", "t", "active"))])
        await running.wait_until(lambda: "first" in running.store, 15)


async def test_transaction_markers_at_the_end_do_not_block_readiness(kafka_bootstrap: str) -> None:
    """The last offset of a partition is a commit/abort marker: positions, not last offsets, decide readiness."""
    topic = unique_topic("txn")
    await create_topic(kafka_bootstrap, topic, partitions=2, compacted=True)
    plain = await produce(
        kafka_bootstrap,
        topic,
        [
            (b"tx-1", event_bytes("tx-1", "t", "active")),
            (b"tx-1", event_bytes("tx-1", "t", "fetched")),
            (b"tx-2", event_bytes("tx-2", "t", "active")),
        ],
        partition=0,
    )
    assert [offset for _, offset in plain] == [0, 1, 2]
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=unique_topic("tx-producer"), enable_idempotence=True
    )
    await producer.start()
    try:
        async with producer.transaction():  # committed: applied
            await producer.send_and_wait(topic, event_bytes("tx-2", "t", "fetched"), key=b"tx-2", partition=0)
            await producer.send_and_wait(topic, event_bytes("tx-3", "t", "active"), key=b"tx-3", partition=0)
            await producer.send_and_wait(topic, event_bytes("tx-5", "t", "active"), key=b"tx-5", partition=1)
        await producer.begin_transaction()  # aborted: never applied
        await producer.send_and_wait(topic, event_bytes("tx-1", "t", "completed"), key=b"tx-1", partition=0)
        await producer.send_and_wait(topic, event_bytes("tx-4", "t", "active"), key=b"tx-4", partition=0)
        await producer.abort_transaction()
    finally:
        await producer.stop()

    visible = await read_all(kafka_bootstrap, topic)
    last_visible = {p: max(r.offset for r in visible if r.partition == p) for p in (0, 1)}
    assert last_visible == {0: 4, 1: 0}

    async with running_consumer(kafka_bootstrap, topic, subscribe=["tx-1", "tx-4"]) as running:
        await running.wait_caught_up(30)
        targets = running.progress.targets
        # partition 0: 0-2 plain, 3-4 committed, 5 commit marker, 6-7 aborted, 8 abort marker
        # partition 1: 0 committed, 1 commit marker
        assert targets == {0: 9, 1: 2}
        assert all(targets[p] > last_visible[p] + 1 for p in targets), "the test needs markers at the end"
        assert running.progress.positions == targets
        assert statuses(running, "tx-1") == ["active", "fetched"]
        assert statuses(running, "tx-2") == ["active", "fetched"]
        assert statuses(running, "tx-3") == ["active"]
        assert statuses(running, "tx-5") == ["active"]
        assert "tx-4" not in running.store
        assert running.subscribers["tx-1"].statuses == ["active", "fetched"]
        assert running.subscribers["tx-4"].frames == []
        assert len(running.store) == 4


async def test_lag_returns_to_zero_after_a_live_aborted_transaction(kafka_bootstrap: str) -> None:
    """After catch-up, a partition whose newest entries are an aborted transaction is read to its end too.

    Otherwise ``gateway_consumer_lag_records`` stays above zero for that partition until its next record.
    """
    topic = unique_topic("txn-live")
    await create_topic(kafka_bootstrap, topic, partitions=2)
    await produce(kafka_bootstrap, topic, [(b"lag-1", event_bytes("lag-1", "t", "active"))], partition=0)
    async with running_consumer(kafka_bootstrap, topic, kafka_health_interval=0.3) as running:
        await running.wait_caught_up(30)
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=unique_topic("tx-live"), enable_idempotence=True
        )
        await producer.start()
        try:
            await producer.begin_transaction()
            await producer.send_and_wait(topic, event_bytes("lag-2", "t", "active"), key=b"lag-2", partition=0)
            await producer.abort_transaction()
        finally:
            await producer.stop()
        # 0: lag-1, 1: aborted lag-2, 2: abort marker
        await running.wait_until(lambda: running.progress.end_offsets.get(0) == 3, 10, "end offset not probed")
        await running.wait_until(
            lambda: running.progress.lag() == {0: 0, 1: 0}, 10, "partition 0 never read to its end offset"
        )
        assert metric("gateway_consumer_lag_records", partition="0") == 0
        assert "lag-2" not in running.store


async def test_compacted_topic_with_gaps(kafka_bootstrap: str) -> None:
    """After compaction, offsets have holes; the replay applies the survivors and still catches up."""
    topic = unique_topic("compacted")
    await create_topic(
        kafka_bootstrap,
        topic,
        partitions=1,
        compacted=True,
        configs={"segment.ms": "100", "min.cleanable.dirty.ratio": "0.001", "min.compaction.lag.ms": "0"},
    )
    final: dict[str, str] = {}
    records: list[Record] = []
    for i in range(40):
        session_id = f"cmp-{i:02d}"
        path = ["active", "fetched", TERMINALS[i % 4]] if i % 2 == 0 else ["active", "fetched"]
        final[session_id] = path[-1]
        records.extend((session_id.encode(), event_bytes(session_id, "t", status)) for status in path)
    await produce(kafka_bootstrap, topic, records, partition=0)
    produced = len(records)

    # Roll the segment (segment.ms=100) so the cleaner may compact what came before.
    survivors = await read_all(kafka_bootstrap, topic)
    deadline = time.monotonic() + 60
    filler = 0
    while len([r for r in survivors if r.key and r.key.startswith(b"cmp-")]) == produced:
        if time.monotonic() > deadline:
            raise AssertionError("the broker did not compact the topic within 60s")
        await asyncio.sleep(0.3)
        await produce(
            kafka_bootstrap, topic, [(f"filler-{filler}".encode(), event_bytes(f"filler-{filler}", "t", "active"))]
        )
        filler += 1
        survivors = await read_all(kafka_bootstrap, topic)
    offsets = [r.offset for r in survivors]
    assert offsets != list(range(len(offsets))), "compaction should have left gaps in the offsets"
    by_session: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in survivors:
        assert r.key is not None and r.value is not None
        status = r.value.split(b'"status": "')[1].split(b'"')[0].decode()
        by_session[r.key.decode()].append((status, r.offset))

    async with running_consumer(kafka_bootstrap, topic) as running:
        await running.wait_caught_up(30)
        end = running.progress.targets[0]
        assert running.progress.positions == {0: end}
        assert end == offsets[-1] + 1
        assert len(running.store) == len(by_session)
        for session_id, expected in by_session.items():
            snapshot = running.store.get(session_id)
            assert snapshot is not None, session_id
            assert [(t.status.value, t.offset) for t in snapshot.transitions] == expected, session_id
        for session_id, status in final.items():
            assert statuses(running, session_id)[-1] == status


# --------------------------------------------------------------------------------------------------
# Topic changes, replay window, missing topic


async def test_partitions_added_later_are_consumed(kafka_bootstrap: str) -> None:
    topic = unique_topic("grow")
    await create_topic(kafka_bootstrap, topic, partitions=2)
    await produce(
        kafka_bootstrap, topic, [(f"old-{i}".encode(), event_bytes(f"old-{i}", "t", "active")) for i in range(20)]
    )
    consumed = metric("gateway_records_consumed_total")
    async with running_consumer(
        kafka_bootstrap, topic, subscribe=["old-0", "old-1"], kafka_health_interval=0.3
    ) as running:
        await running.wait_caught_up(30)
        assert set(running.progress.targets) == {0, 1}

        await add_partitions(kafka_bootstrap, topic, 4)
        new_records = {
            2: [(b"new-2a", event_bytes("new-2a", "t", "active")), (b"new-2a", event_bytes("new-2a", "t", "fetched"))],
            3: [(b"new-3a", event_bytes("new-3a", "t", "active")), (b"new-3b", event_bytes("new-3b", "t", "failed"))],
        }
        for partition, records in new_records.items():
            await produce(kafka_bootstrap, topic, records, partition=partition)
        await running.wait_until(
            lambda: all(s in running.store for s in ("new-2a", "new-3a", "new-3b")), 20, "new partitions not read"
        )
        await running.wait_until(lambda: statuses(running, "new-2a") == ["active", "fetched"], 5)
        for session_id, partition in (("new-2a", 2), ("new-3a", 3), ("new-3b", 3)):
            snapshot = running.store.get(session_id)
            assert snapshot is not None
            assert {t.partition for t in snapshot.transitions} == {partition}

        # The old partitions carry on where they were: nothing is read twice.
        await produce(
            kafka_bootstrap,
            topic,
            [(b"old-0", event_bytes("old-0", "t", "fetched")), (b"old-1", event_bytes("old-1", "t", "completed"))],
        )
        await running.wait_until(lambda: len(running.subscribers["old-1"].frames) == 2, 15)
        await running.wait_until(lambda: len(running.subscribers["old-0"].frames) == 2, 15)
        assert running.subscribers["old-0"].statuses == ["active", "fetched"]
        assert running.subscribers["old-1"].statuses == ["active", "completed"]
        assert metric("gateway_records_consumed_total") - consumed == 20 + 4 + 2
        assert set(running.progress.positions) == {0, 1, 2, 3}


async def test_replay_window_skips_older_records(kafka_bootstrap: str) -> None:
    topic = unique_topic("window")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    now = datetime.now(UTC)
    old_ts = ms(now - timedelta(hours=2))
    for partition in range(3):
        await produce(
            kafka_bootstrap,
            topic,
            [
                (f"old-{partition}-{i}".encode(), event_bytes(f"old-{partition}-{i}", "t", "active", now))
                for i in range(5)
            ],
            partition=partition,
            timestamp_ms=old_ts,
        )
    new_sessions = [f"new-{p}-{i}" for p in (0, 1) for i in range(5)]
    for partition in (0, 1):  # partition 2 holds old records only
        await produce(
            kafka_bootstrap,
            topic,
            [
                (s.encode(), event_bytes(s, "t", "active", now))
                for s in new_sessions
                if s.startswith(f"new-{partition}-")
            ],
            partition=partition,
        )
    consumed = metric("gateway_records_consumed_total")
    async with running_consumer(kafka_bootstrap, topic, replay_window=timedelta(hours=1)) as running:
        await running.wait_caught_up(30)
        assert sorted(s for s in new_sessions if s in running.store) == sorted(new_sessions)
        assert len(running.store) == len(new_sessions)
        assert metric("gateway_records_consumed_total") - consumed == len(new_sessions)
        assert running.progress.positions == running.progress.targets == {0: 10, 1: 10, 2: 5}

        # The partition that started at its end is followed from there.
        await produce(kafka_bootstrap, topic, [(b"late-2", event_bytes("late-2", "t", "active"))], partition=2)
        await running.wait_until(lambda: "late-2" in running.store, 15)
        assert not any(s.startswith("old-") for s in ("old-0-0", "old-2-4") if s in running.store)


async def test_consumer_waits_for_the_topic_to_be_created(kafka_bootstrap: str) -> None:
    topic = unique_topic("later")
    async with running_consumer(kafka_bootstrap, topic) as running:
        await running.wait_until(lambda: running.progress.last_error is not None, 10)
        assert "does not exist" in (running.progress.last_error or "")
        assert not running.progress.caught_up.is_set()
        await create_topic(kafka_bootstrap, topic, partitions=1)
        await produce(kafka_bootstrap, topic, [(b"first", event_bytes("first", "t", "active"))])
        await running.wait_until(lambda: "first" in running.store, 30)
        assert running.progress.caught_up.is_set()
        assert running.progress.broker_reachable


async def test_stop_while_waiting_for_a_missing_topic(kafka_bootstrap: str) -> None:
    """stop() must end run() cleanly (and promptly) even before the first connection succeeded."""
    topic = unique_topic("missing")
    async with running_consumer(kafka_bootstrap, topic) as running:
        await running.wait_until(lambda: running.progress.last_error is not None, 10)
    # running_consumer raised if the task failed or did not stop within 10s
    assert running.task.done()
    assert running.task.exception() is None


# --------------------------------------------------------------------------------------------------
# Broker outage: needs a broker the test may stop and start


async def test_broker_outage_loses_and_repeats_nothing(outage_broker: LocalBroker) -> None:
    broker = outage_broker
    bootstrap = broker.bootstrap
    topic = unique_topic("outage")
    await create_topic(bootstrap, topic, partitions=3)
    sessions = [f"out-{i:02d}" for i in range(30)]
    async with running_consumer(
        bootstrap, topic, subscribe=sessions, kafka_health_interval=0.3, kafka_request_timeout_ms=3000
    ) as running:
        await running.wait_caught_up(30)
        await produce(bootstrap, topic, [(s.encode(), event_bytes(s, "t", "active")) for s in sessions])
        await running.wait_until(lambda: all(len(running.subscribers[s].frames) == 1 for s in sessions), 15)
        assert running.progress.broker_reachable

        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=120_000
        )
        await producer.start()
        try:
            stopping = asyncio.create_task(asyncio.to_thread(broker.stop))
            pending = [
                await producer.send(topic, event_bytes(s, "t", "fetched"), key=s.encode()) for s in sessions[:15]
            ]
            await stopping
            assert not broker.is_running()
            # produced while the broker is down: buffered by the producer, delivered after the restart
            pending += [
                await producer.send(topic, event_bytes(s, "t", "fetched"), key=s.encode()) for s in sessions[15:]
            ]
            await running.wait_until(lambda: not running.progress.broker_reachable, 15, "outage not noticed")
            assert metric("gateway_broker_reachable") == 0
            assert running.progress.last_error is not None
            await asyncio.sleep(1.0)  # the consumer keeps failing for a while
            running.check_alive()

            await asyncio.to_thread(broker.start)
            await asyncio.wait_for(asyncio.gather(*pending), 60)
        finally:
            await producer.stop()
        ends = await produce(bootstrap, topic, [(s.encode(), event_bytes(s, "t", "completed")) for s in sessions])
        await running.wait_until(
            lambda: all(len(running.subscribers[s].frames) >= 3 for s in sessions), 45, "transitions lost"
        )
        await running.wait_until(lambda: running.progress.broker_reachable, 15, "recovery not noticed")
        assert metric("gateway_broker_reachable") == 1
        # Consumed to the end of every partition: a record delivered twice (a replay after the reconnect)
        # was delivered before the last one written, so it shows in the frames now.
        await running.wait_until(
            lambda: all(running.progress.reached(partition, offset) for partition, offset in ends),
            15,
            "the consumer never read to the end of the topic",
        )

        for session_id in sessions:
            subscriber = running.subscribers[session_id]
            assert subscriber.statuses == ["active", "fetched", "completed"], session_id
            assert subscriber.offsets == sorted(set(subscriber.offsets)), session_id
            snapshot = running.store.get(session_id)
            assert snapshot is not None
            assert subscriber.frames == [frame(session_id, t.status.value, t.offset) for t in snapshot.transitions]


async def test_replay_window_starts_partitions_without_recent_records_at_their_end(kafka_bootstrap: str) -> None:
    """Many partitions with nothing inside the window, several starts: none may replay from offset 0.

    With a lazy "latest" reset (``seek_to_end``) racing the "earliest" reset that ``assign()`` starts,
    a partition now and then began at 0 (about one start in three here); twelve starts catch it in
    practically every run.
    """
    topic = unique_topic("window-many")
    partitions = 24
    await create_topic(kafka_bootstrap, topic, partitions=partitions)
    now = datetime.now(UTC)
    old_ts = ms(now - timedelta(hours=3))
    for partition in range(partitions):
        await produce(
            kafka_bootstrap,
            topic,
            [
                (f"old-{partition}-{i}".encode(), event_bytes(f"old-{partition}-{i}", "t", "active", now))
                for i in range(3)
            ],
            partition=partition,
            timestamp_ms=old_ts,
        )
    for attempt in range(12):
        consumed = metric("gateway_records_consumed_total")
        async with running_consumer(kafka_bootstrap, topic, replay_window=timedelta(hours=1)) as running:
            await running.wait_caught_up(30)
            assert len(running.store) == 0, f"start {attempt}: old records were replayed"
            assert metric("gateway_records_consumed_total") - consumed == 0
            assert running.progress.positions == dict.fromkeys(range(partitions), 3), f"start {attempt}"


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_batches_are_read(kafka_bootstrap: str, codec: str) -> None:
    """Producers on an enterprise bus compress their batches; every codec Kafka has is read."""
    from aiokafka import AIOKafkaProducer

    topic = unique_topic(f"codec-{codec}")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    sessions = [f"{codec}-{i}" for i in range(50)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type=codec, linger_ms=50)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=s.encode(), value=event_bytes(s, "t", "active")) for s in sessions]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    async with running_consumer(kafka_bootstrap, topic) as running:
        await running.wait_caught_up(30)
        assert sorted(s for s in sessions if s in running.store) == sorted(sessions)
