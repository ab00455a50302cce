"""Tails the session-status topic into the store and the hub.

Every replica reads every partition, because a browser may land on any replica. We use manual
partition assignment and no consumer group at all, rather than a per-replica group:
- a group would add nothing to correctness: each replica must read every partition from the start
  of the retained log anyway, since the store lives in memory, so committed offsets are never used;
- no group means no JoinGroup/rebalance delay on start and no dependence on the group coordinator;
- the gateway needs only Topic READ/DESCRIBE ACLs on an enterprise cluster, no Group ACL, and leaves
  no orphaned group per pod name behind;
- lag is exported per partition on /metrics (``gateway_consumer_lag_records``), which is where the
  SREs running the gateway look, instead of in ``kafka-consumer-groups``.
New partitions are found by the periodic broker probe and read from their beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers import metrics
from consumers.hub import Hub
from consumers.kafka_errors import ConnectErrorLog
from consumers.progress import PartitionProgress
from consumers.records import Rejected, Tombstone, decode_record
from consumers.settings import ConsumerSettings
from consumers.store import Outcome, SessionStore

log = logging.getLogger("gateway.consumer")

_MAX_BACKOFF_S = 10.0


class SessionStatusConsumer:
    def __init__(self, settings: ConsumerSettings, store: SessionStore, hub: Hub, progress: PartitionProgress) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.progress = progress
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: set[int] = set()
        self._new_partitions: set[int] = set()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._reported_caught_up = False
        self._connect_errors = ConnectErrorLog(settings)
        progress.on_caught_up = lambda: metrics.STORE_CAUGHT_UP.set(1)

    async def run(self) -> None:
        """Connects (retrying), replays, then follows the topic until cancelled."""
        backoff = 0.5
        while not self._stopping:
            try:
                await self._connect()
                break
            except Exception as error:  # any start-up failure is retried, never fatal
                self.progress.last_error = self._connect_errors.report(error, backoff)  # one line per kind, counted
                metrics.BROKER_REACHABLE.set(0)
                await self._close_consumer()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        if self._stopping:
            await self._close_consumer()
            return
        probe = asyncio.create_task(self._probe_loop(), name="kafka-probe")
        try:
            await self._consume_loop()
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            await self._close_consumer()

    async def stop(self) -> None:
        self._stopping = True
        self._stop_requested.set()

    async def _connect(self) -> None:
        settings = self.settings
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            metadata_max_age_ms=int(settings.kafka_health_interval * 1000) * 6,
            fetch_max_bytes=settings.kafka_max_fetch_bytes,
            max_partition_fetch_bytes=min(settings.kafka_max_fetch_bytes, 8 * 1024 * 1024),
            **settings.kafka_client_options(),
        )
        self._consumer = consumer
        await consumer.start()
        partitions = await self._partitions_on_broker()
        if not partitions:
            raise LookupError(f"topic {settings.kafka_topic!r} does not exist")
        tps = [TopicPartition(settings.kafka_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        self._partitions = set(partitions)
        end_offsets = await consumer.end_offsets(tps)
        await self._seek_start(tps)
        self.progress.end_offsets = {tp.partition: offset for tp, offset in end_offsets.items()}
        self.progress.set_targets(self.progress.end_offsets)
        for tp in tps:
            self.progress.advance(tp.partition, await consumer.position(tp))
        self.progress.broker_reachable = True
        self.progress.last_error = None
        metrics.BROKER_REACHABLE.set(1)
        log.info(
            "consuming %s: %d partitions, replaying %d records",
            settings.kafka_topic,
            len(tps),
            sum(max(0, end_offsets[tp] - self.progress.positions.get(tp.partition, 0)) for tp in tps),
        )

    async def _seek_start(self, tps: list[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        window = self.settings.replay_window
        if window is None:
            await consumer.seek_to_beginning(*tps)
            return
        since_ms = int((time.time() - window.total_seconds()) * 1000)
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        missing = [tp for tp, hit in found.items() if hit is None]
        for tp, hit in found.items():
            if hit is not None:
                consumer.seek(tp, hit.offset)
        if missing:
            await consumer.seek_to_end(*missing)

    async def _consume_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        topic = self.settings.kafka_topic
        while not self._stopping:
            if self._new_partitions:
                await self._assign_new_partitions()
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            except KafkaError as error:
                self.progress.last_error = f"fetch failed: {error}"
                log.warning("kafka fetch failed, retrying: %s", error)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batches.items():
                self._handle_batch(topic, records)
                self.progress.advance(tp.partition, await consumer.position(tp))
            if not batches and not self.progress.caught_up.is_set():
                for partition in self._partitions:
                    tp = TopicPartition(topic, partition)
                    self.progress.advance(partition, await consumer.position(tp))
            if self.progress.caught_up.is_set() and not self._reported_caught_up:
                self._reported_caught_up = True
                log.info("store caught up: %d sessions", len(self.store))

    def _handle_batch(self, topic: str, records: list[Any]) -> None:
        store, hub, max_bytes = self.store, self.hub, self.settings.max_record_bytes
        applied = 0
        ignored: Tally[str] = Tally()
        rejected: Tally[str] = Tally()
        for record in records:
            decoded = decode_record(record.key, record.value, max_bytes)
            if isinstance(decoded, Rejected):
                rejected[decoded.reason] += 1
                log.warning(
                    "skipped malformed record topic=%s partition=%d offset=%d reason=%s: %s",
                    topic,
                    record.partition,
                    record.offset,
                    decoded.reason.value,
                    decoded.detail,
                )
                continue
            if isinstance(decoded, Tombstone):
                outcome = store.delete(decoded.session_id)
                if outcome is Outcome.DELETED:
                    metrics.SESSIONS_DELETED.inc()
                    hub.session_deleted(decoded.session_id)
                else:
                    ignored[outcome] += 1
                continue
            outcome, transition = store.apply(decoded, record.partition, record.offset)
            if transition is None:
                ignored[outcome] += 1
                continue
            applied += 1
            hub.publish(transition, record.timestamp)
        metrics.RECORDS_CONSUMED.inc(len(records))
        if applied:
            metrics.RECORDS_APPLIED.inc(applied)
        for reason, count in ignored.items():
            metrics.RECORDS_IGNORED.labels(reason).inc(count)
        for reason, count in rejected.items():
            metrics.RECORDS_REJECTED.labels(reason).inc(count)

    async def _probe_loop(self) -> None:
        """Broker reachability, lag, new partitions and store eviction, every health interval."""
        interval = self.settings.kafka_health_interval
        while True:
            await asyncio.sleep(interval)
            self._evict()
            try:
                await asyncio.wait_for(self._probe(), timeout=max(interval, 2.0))
            except (KafkaError, OSError, TimeoutError) as error:
                if self.progress.broker_reachable:
                    log.warning("kafka broker unreachable: %s", str(error) or type(error).__name__)
                self.progress.broker_reachable = False
                self.progress.last_error = f"broker unreachable: {str(error) or type(error).__name__}"
                metrics.BROKER_REACHABLE.set(0)

    async def _probe(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        topic = self.settings.kafka_topic
        tps = [TopicPartition(topic, p) for p in sorted(self._partitions)]
        end_offsets = await consumer.end_offsets(tps)
        self.progress.end_offsets = {tp.partition: offset for tp, offset in end_offsets.items()}
        # A fetch of only aborted or control batches moves the position without returning records.
        for tp in tps:
            self.progress.advance(tp.partition, await consumer.position(tp))
        for partition, lag in self.progress.lag().items():
            metrics.CONSUMER_LAG.labels(str(partition)).set(lag)
            metrics.CONSUMER_POSITION.labels(str(partition)).set(self.progress.positions.get(partition, 0))
        if not self.progress.broker_reachable:
            log.info("kafka broker reachable again")
        self.progress.broker_reachable = True
        self.progress.last_error = None
        metrics.BROKER_REACHABLE.set(1)
        current = await self._partitions_on_broker()
        added = current - self._partitions - self._new_partitions
        if added:
            log.info("topic %s gained partitions %s", topic, sorted(added))
            self._new_partitions |= added

    async def _partitions_on_broker(self) -> set[int]:
        """Fresh partition list of the topic (aiokafka has no public call that refreshes it on demand)."""
        consumer = self._consumer
        assert consumer is not None
        client = consumer._client
        client.add_topic(self.settings.kafka_topic)
        await client.force_metadata_update()
        return set(consumer.partitions_for_topic(self.settings.kafka_topic) or ())

    async def _assign_new_partitions(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        topic = self.settings.kafka_topic
        added, self._new_partitions = self._new_partitions, set()
        keep = {p: await consumer.position(TopicPartition(topic, p)) for p in self._partitions}
        self._partitions |= added
        consumer.assign([TopicPartition(topic, p) for p in sorted(self._partitions)])
        for partition, position in keep.items():
            consumer.seek(TopicPartition(topic, partition), position)
        await consumer.seek_to_beginning(*(TopicPartition(topic, p) for p in added))

    def _evict(self) -> None:
        before = dict(self.store.evicted)
        self.store.evict_expired(int(time.time() * 1000))
        for reason, total in self.store.evicted.items():
            if total > before[reason]:
                metrics.SESSIONS_EVICTED.labels(reason).inc(total - before[reason])
        metrics.STORE_SESSIONS.set(len(self.store))

    async def _close_consumer(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
