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

Several topics (``GATEWAY_KAFKA_TOPIC=a,b``) are read by the same consumer; each (topic, partition)
becomes one number (``consumers.partitions``) for the store, the replay progress and event ids, and
readiness waits for every partition of every topic. Each record's format is detected from its headers
(``consumers.formats``); a rejected record is copied to the dead-letter topic when one is configured
(``consumers.dead_letter``).

Failure boundaries: a record that cannot be handled is skipped, counted and logged by position
(never by content), and the loop goes on; a batch the Kafka client cannot read (one that would
decompress beyond its cap, or a record it cannot parse) is skipped whole, in one step
(``consumers.aiokafka_seam``). Lines about skipped records are folded per reason
(``consumers.log_aggregation.ReasonFolding``), since their number is the producers' to choose.
Consumption, the broker probe and eviction are separate tasks (see ``tasks()``), each run under the
``Supervisor``, so one of them crashing neither stops nor silently freezes the others. A restarted
consumer resumes from the positions it had reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import traceback
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers import aiokafka_seam, metrics
from consumers.aiokafka_seam import DecompressionLimits, UnreadableBatch
from consumers.dead_letter import DeadLetterWriter
from consumers.formats import RecordDecoder
from consumers.hub import Hub
from consumers.kafka_errors import UNREADABLE_BATCHES, ConnectErrorLog
from consumers.log_aggregation import ReasonFolding
from consumers.partitions import MAX_PARTITION, format_partition, global_partition, split_partition
from consumers.progress import PartitionProgress
from consumers.records import Decoded, Rejected, RejectReason, Skipped, Tombstone, decode_record
from consumers.settings import ConsumerSettings
from consumers.store import Outcome, SessionStore

log = logging.getLogger("gateway.consumer")

_MAX_BACKOFF_S = 10.0
HANDLER_ERROR = "handler_error"
UNREADABLE = "unreadable"  # the Kafka client itself cannot parse the record
_SALVAGE_WAIT_MS = 1000  # re-reading the records before an unreadable one: the wait for their fetch


def _where(error: BaseException) -> str:
    """Where an exception was raised (file:line in function), without its message, which may quote data."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"


def freeze_heap() -> None:
    """Moves every object alive after the replay (the store, modules, caches) out of the collector's reach.

    A full collection walks every tracked object: with a replayed store that is millions of objects
    and tens to hundreds of milliseconds with the event loop stopped, which every stream's delivery
    waits for (benchmarks/README.md: GC pauses of 40-47 ms at 10,000 sessions). Frozen objects are
    still freed by reference counting when the store drops them; only reference cycles among them
    would stay, and the store holds none. Done once, when the replay has caught up, in the server
    process only (``gateway.runtime.app.Runtime``); nothing of a connection exists yet then, so no
    connection's garbage can be pinned by it.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "froze %d objects after the replay for the garbage collector (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )


class SessionStatusConsumer:
    def __init__(self, settings: ConsumerSettings, store: SessionStore, hub: Hub, progress: PartitionProgress) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.progress = progress
        self._consumer: AIOKafkaConsumer | None = None
        self._topics = settings.kafka_topics
        self._topic_index = {topic: index for index, topic in enumerate(self._topics)}
        self._decoders = [
            RecordDecoder(settings.max_record_bytes, settings.cloudevents_types, settings.mapping_for(topic))
            for topic in self._topics
        ]
        self.dead_letters = (
            DeadLetterWriter(settings) if settings.dlq_topic is not None and settings.dlq_writer else None
        )
        self._partitions: set[int] = set()  # global partition numbers (consumers.partitions)
        self._new_partitions: set[int] = set()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._reported_caught_up = False
        self._connected = asyncio.Event()
        self.last_contact: float | None = None  # monotonic time the broker last answered a fetch or probe
        self._connect_errors = ConnectErrorLog(settings)
        self.record_log = ReasonFolding(log, settings.record_log_lines)
        aiokafka_seam.install()  # logs once when it cannot be (an untested aiokafka)
        # The server process sets this (gateway.runtime.server); a library user's heap is left alone.
        progress.on_caught_up = lambda: metrics.STORE_CAUGHT_UP.set(1)
        metrics.KAFKA_LAST_FETCH_AGE.set_function(self.seconds_since_contact)

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The long-running tasks to supervise: consumption, the broker probe, store eviction, dead letters."""
        tasks: dict[str, Callable[[], Awaitable[None]]] = {
            "kafka-consumer": self.run,
            "kafka-probe": self.probe_loop,
            "store-eviction": self.eviction_loop,
        }
        if self.dead_letters is not None:
            tasks["dead-letter-writer"] = self.dead_letters.run
        return tasks

    def _tp(self, number: int) -> TopicPartition:
        index, partition = split_partition(number)
        return TopicPartition(self._topics[index], partition)

    def _number(self, tp: TopicPartition) -> int:
        return global_partition(self._topic_index[tp.topic], tp.partition)

    def seconds_since_contact(self) -> float:
        return -1.0 if self.last_contact is None else time.monotonic() - self.last_contact

    async def run(self) -> None:
        """Connects (retrying), replays, then follows the topic until cancelled."""
        aiokafka_seam.use_limits(DecompressionLimits.of(self.settings))  # for this task's reads
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
        try:
            await self._consume_loop()
        finally:
            self._connected.clear()
            self.record_log.flush(everything=True)
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
        tps = [self._tp(number) for number in sorted(partitions)]
        consumer.assign(tps)
        self._partitions = set(partitions)
        end_offsets = await consumer.end_offsets(tps)
        resumed = self.progress.positions
        if resumed:  # a restart after a crash: the store already holds everything before these positions
            for tp in tps:
                consumer.seek(tp, resumed.get(self._number(tp), 0))
            if any(self._number(tp) not in resumed for tp in tps):
                await consumer.seek_to_beginning(*(tp for tp in tps if self._number(tp) not in resumed))
        else:
            await self._seek_start(tps, end_offsets)
        self.progress.end_offsets = {self._number(tp): offset for tp, offset in end_offsets.items()}
        if not self.progress.targets:
            self.progress.set_targets(self.progress.end_offsets)
        for tp in tps:
            self.progress.advance(self._number(tp), await consumer.position(tp))
        self.last_contact = time.monotonic()
        self._connected.set()
        self.progress.broker_reachable = True
        self.progress.last_error = None
        metrics.BROKER_REACHABLE.set(1)
        log.info(
            "consuming %s: %d partitions, replaying %d records",
            settings.kafka_topic,
            len(tps),
            sum(max(0, end_offsets[tp] - self.progress.positions.get(self._number(tp), 0)) for tp in tps),
        )

    async def _seek_start(self, tps: list[TopicPartition], end_offsets: dict[TopicPartition, int]) -> None:
        """Positions every partition explicitly (no lazy offset reset; see below).

        ``seek_to_end`` only marks a partition for a reset to "latest", while the fetcher may already
        be resolving the "earliest" reset that ``assign()`` started; whichever answer comes last wins,
        so a partition sometimes started at 0. An explicit ``seek`` cancels any pending reset.
        """
        consumer = self._consumer
        assert consumer is not None
        window = self.settings.replay_window
        if window is None:
            await consumer.seek_to_beginning(*tps)
            return
        since_ms = int((time.time() - window.total_seconds()) * 1000)
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            hit = found.get(tp)
            # No record at or after the window's start: start at the end offset captured before.
            consumer.seek(tp, hit.offset if hit is not None else end_offsets[tp])

    async def _consume_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping:
            self.record_log.flush()
            if self._new_partitions:
                await self._assign_new_partitions()
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            except UnreadableBatch as error:  # the client cannot read a batch the broker sent
                await self._skip_batch(error)
                continue
            except KafkaError as error:
                self.progress.last_error = f"fetch failed: {error}"
                log.warning("kafka fetch failed, retrying: %s", error)
                await asyncio.sleep(1.0)
                continue
            except Exception as error:  # the same, where the seam is not installed (an untested aiokafka)
                await self._skip_unreadable(error)
                continue
            if batches:
                self.last_contact = time.monotonic()
            for tp, records in batches.items():
                self._handle_batch(tp.topic, records)
                self.progress.advance(self._number(tp), await consumer.position(tp))
            if not batches and not self.progress.caught_up.is_set():
                for number in self._partitions:
                    self.progress.advance(number, await consumer.position(self._tp(number)))
            if self.progress.caught_up.is_set() and not self._reported_caught_up:
                self._reported_caught_up = True
                log.info("store caught up: %d sessions", len(self.store))

    def _rewind(self) -> None:
        """Back to the positions handled: a failed fetch may have moved them past records it had parsed but
        never returned (aiokafka updates a partition's position when it next hands out its records)."""
        consumer = self._consumer
        assert consumer is not None
        for number in sorted(self._partitions):
            handled = self.progress.positions.get(number)
            if handled is not None:
                consumer.seek(self._tp(number), handled)

    async def _skip_batch(self, error: UnreadableBatch) -> None:
        """Skips a batch the Kafka client cannot read, in one step: where it ends is in its header.

        Every replica reads the same log, so such a batch would stop every consumer; found one record per
        re-fetch, a batch of 2,000 records behind a bad one kept a partition invisible for 36 minutes. The
        records before the failure (parsed, but lost with the failed fetch) are read again first, stopping
        short of it; then the partition goes on at the batch's next offset. What lies between is counted
        by offset range as rejected (``too_large`` for a batch over its decompression cap, else
        ``unreadable``) and logged in one line; the client cannot parse past the failure within the batch.
        """
        consumer = self._consumer
        assert consumer is not None
        self._rewind()
        tp = TopicPartition(error.topic, error.partition)
        number = self._number(tp)
        if not await self._read_before(tp, number, error):
            return  # not now: the next fetch meets the batch again, and this starts over
        start, end = await consumer.position(tp), error.next_offset
        if end <= start:
            return
        consumer.seek(tp, end)
        self.progress.advance(number, end)
        lost = end - start
        reason = RejectReason.TOO_LARGE.value if error.too_large else UNREADABLE
        metrics.RECORDS_CONSUMED.inc(lost)
        metrics.RECORDS_REJECTED.labels(reason).inc(lost)
        UNREADABLE_BATCHES.labels(reason).inc()
        cause = error.cause
        if error.too_large:
            detail = f"{cause}: GATEWAY_MAX_DECOMPRESSED_BATCH_BYTES, GATEWAY_MAX_RECORD_BYTES"
        else:
            detail = f"the Kafka client cannot parse it ({type(cause).__name__} at {_where(cause)})"
        self.record_log.log(
            logging.WARNING if error.too_large else logging.ERROR,
            reason,
            "skipped batch topic=%s partition=%d offsets=%d-%d (%d records) reason=%s: %s",
            tp.topic,
            tp.partition,
            start,
            end - 1,
            lost,
            reason,
            detail,
        )

    async def _read_before(self, tp: TopicPartition, number: int, error: UnreadableBatch) -> bool:
        """Reads ``tp`` up to the failure's ``resume_offset``; False when that cannot be done now.

        As many records as there are offsets before it, in one read; when compaction left gaps, that read
        runs into the failure, and the rest is read one record per call.
        """
        consumer = self._consumer
        assert consumer is not None
        one_by_one = False
        while (position := await consumer.position(tp)) < error.resume_offset:
            try:
                batch = await consumer.getmany(
                    tp,
                    timeout_ms=_SALVAGE_WAIT_MS,
                    max_records=1 if one_by_one else error.resume_offset - position,
                )
            except UnreadableBatch as again:
                if one_by_one or (again.topic, again.partition, again.base_offset) != (
                    error.topic,
                    error.partition,
                    error.base_offset,
                ):
                    return False
                consumer.seek(tp, position)  # drops what that read parsed and lost
                one_by_one = True
                continue
            if not batch:
                return False
            for records in batch.values():
                self._handle_batch(tp.topic, records)
            self.progress.advance(number, await consumer.position(tp))
        return True

    async def _skip_unreadable(self, error: Exception) -> None:
        """Finds the record the Kafka client cannot parse without the seam (an untested aiokafka) and skips it.

        Each partition is read again from the last position we handled, one record at a time, until the
        one that fails; records read on the way are applied as usual. The records after it in its batch
        fail the same way, each costing a re-fetch: ``_skip_batch`` is the fast path.
        """
        consumer = self._consumer
        assert consumer is not None
        self._rewind()
        for number in sorted(self._partitions):
            tp = self._tp(number)
            for _ in range(100_000):
                try:
                    batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
                except KafkaError:
                    raise
                except UnreadableBatch as located:
                    await self._skip_batch(located)
                    return
                except Exception as failure:
                    offset = await consumer.position(tp)
                    consumer.seek(tp, offset + 1)
                    metrics.RECORDS_CONSUMED.inc()
                    metrics.RECORDS_REJECTED.labels(UNREADABLE).inc()
                    self.record_log.log(
                        logging.ERROR,
                        UNREADABLE,
                        "skipped record topic=%s partition=%d offset=%d reason=%s: the Kafka client cannot "
                        "parse it (%s at %s)",
                        tp.topic,
                        tp.partition,
                        offset,
                        UNREADABLE,
                        type(failure).__name__,
                        _where(failure),
                    )
                    self.progress.advance(number, offset + 1)
                    return
                if not batch:
                    break
                for records in batch.values():
                    self._handle_batch(tp.topic, records)
                self.progress.advance(number, await consumer.position(tp))
        # Not reproducible partition by partition: back off, so that a persistent fault cannot spin.
        log.error("kafka fetch raised %s at %s; retrying", type(error).__name__, _where(error))
        await asyncio.sleep(1.0)

    def _handle_batch(self, topic: str, records: list[Any]) -> None:
        """Applies one fetched batch of one partition; every record's failure stays with that record."""
        store, hub = self.store, self.hub
        index = self._topic_index[topic]
        decoder = self._decoders[index]
        decode, plain, max_bytes = decoder.decode, decoder.mapper is None, decoder.max_value_bytes
        dead_letters = self.dead_letters
        record_log = self.record_log
        now_ms = int(time.time() * 1000)
        applied = 0
        ignored: Tally[str] = Tally()
        rejected: Tally[str] = Tally()
        for record in records:
            try:
                headers = record.headers
                if plain and not headers:  # the replay-speed path: a plain record, no headers to look at
                    decoded: Decoded | Skipped = decode_record(record.key, record.value, max_bytes)
                else:
                    decoded = decode(record.key, record.value, headers)
                if isinstance(decoded, Rejected):
                    rejected[decoded.reason] += 1
                    if dead_letters is not None:
                        self._dead_letter(dead_letters, topic, index, record, decoded.reason.value, decoded.detail)
                    record_log.log(
                        logging.WARNING,
                        decoded.reason,
                        "skipped malformed record topic=%s partition=%d offset=%d reason=%s: %s",
                        topic,
                        record.partition,
                        record.offset,
                        decoded.reason.value,
                        decoded.detail,
                    )
                    continue
                if isinstance(decoded, Skipped):
                    ignored[decoded.reason] += 1
                    continue
                if isinstance(decoded, Tombstone):
                    outcome = store.delete(decoded.session_id)
                    if outcome is Outcome.DELETED:
                        metrics.SESSIONS_DELETED.inc()
                        hub.session_deleted(decoded.session_id)
                    else:
                        ignored[outcome] += 1
                    continue
                outcome, transition = store.apply(
                    decoded, global_partition(index, record.partition), record.offset, now_ms
                )
                if transition is None:
                    ignored[outcome] += 1
                    continue
                applied += 1
                hub.publish(transition, record.timestamp)
            except Exception as error:  # one record must never stop the consumer of every replica
                rejected[HANDLER_ERROR] += 1
                record_log.log(
                    logging.ERROR,
                    HANDLER_ERROR,
                    "skipped record topic=%s partition=%d offset=%d reason=%s: %s raised at %s",
                    topic,
                    record.partition,
                    record.offset,
                    HANDLER_ERROR,
                    type(error).__name__,
                    _where(error),
                )
                if dead_letters is not None:
                    with contextlib.suppress(Exception):
                        detail = f"{type(error).__name__} raised at {_where(error)}"
                        self._dead_letter(dead_letters, topic, index, record, HANDLER_ERROR, detail)
        metrics.RECORDS_CONSUMED.inc(len(records))
        if applied:
            metrics.RECORDS_APPLIED.inc(applied)
        for reason, count in ignored.items():
            metrics.RECORDS_IGNORED.labels(reason).inc(count)
        for reason, count in rejected.items():
            metrics.RECORDS_REJECTED.labels(reason).inc(count)

    def _dead_letter(
        self, writer: DeadLetterWriter, topic: str, index: int, record: Any, reason: str, detail: str
    ) -> None:
        """Copies a rejected record, unless it was already in the log when this replica started (replay)."""
        if record.offset >= self.progress.targets.get(global_partition(index, record.partition), 0):
            writer.offer(record, topic, reason, detail)

    async def probe_loop(self) -> None:
        """Broker reachability, lag and new partitions, every health interval, once connected."""
        interval = self.settings.kafka_health_interval
        while True:
            await asyncio.sleep(interval)
            if not self._connected.is_set():
                continue
            try:
                await asyncio.wait_for(self._probe(), timeout=max(interval, 2.0))
            except (KafkaError, OSError, TimeoutError) as error:
                if self.progress.broker_reachable:
                    log.warning("kafka broker unreachable: %s", str(error) or type(error).__name__)
                self.progress.broker_reachable = False
                self.progress.last_error = f"broker unreachable: {str(error) or type(error).__name__}"
                metrics.BROKER_REACHABLE.set(0)

    async def eviction_loop(self) -> None:
        """Store eviction, every health interval; independent of the broker."""
        while True:
            await asyncio.sleep(self.settings.kafka_health_interval)
            self._evict()

    async def _probe(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        tps = [self._tp(number) for number in sorted(self._partitions)]
        end_offsets = await consumer.end_offsets(tps)
        self.progress.end_offsets = {self._number(tp): offset for tp, offset in end_offsets.items()}
        # A fetch of only aborted or control batches moves the position without returning records.
        for tp in tps:
            self.progress.advance(self._number(tp), await consumer.position(tp))
        for number, lag in self.progress.lag().items():
            label = format_partition(number)
            metrics.CONSUMER_LAG.labels(label).set(lag)
            metrics.CONSUMER_POSITION.labels(label).set(self.progress.positions.get(number, 0))
        if not self.progress.broker_reachable:
            log.info("kafka broker reachable again")
        self.last_contact = time.monotonic()
        self.progress.broker_reachable = True
        self.progress.last_error = None
        metrics.BROKER_REACHABLE.set(1)
        current = await self._partitions_on_broker(strict=False)
        added = current - self._partitions - self._new_partitions
        if added:
            log.info("gained partitions %s", ", ".join(str(self._tp(number)) for number in sorted(added)))
            self._new_partitions |= added

    async def _partitions_on_broker(self, strict: bool = True) -> set[int]:
        """Fresh partition numbers of every topic (see ``consumers.aiokafka_seam``).

        ``strict``: raises LookupError when a topic does not exist (at start, the gateway would otherwise
        turn ready without it); the probe passes False and keeps what it has.
        """
        consumer = self._consumer
        assert consumer is not None
        await aiokafka_seam.refresh_topics(consumer, self._topics)
        numbers: set[int] = set()
        for index, topic in enumerate(self._topics):
            partitions = consumer.partitions_for_topic(topic)
            if not partitions and strict:
                raise LookupError(f"topic {topic!r} does not exist")
            if partitions and max(partitions) > MAX_PARTITION:
                raise LookupError(f"topic {topic!r} has more partitions than event ids can carry ({MAX_PARTITION + 1})")
            numbers.update(global_partition(index, partition) for partition in partitions or ())
        return numbers

    async def _assign_new_partitions(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        added, self._new_partitions = self._new_partitions, set()
        keep = {number: await consumer.position(self._tp(number)) for number in self._partitions}
        self._partitions |= added
        consumer.assign([self._tp(number) for number in sorted(self._partitions)])
        for number, position in keep.items():
            consumer.seek(self._tp(number), position)
        await consumer.seek_to_beginning(*(self._tp(number) for number in added))

    def _evict(self) -> None:
        before = dict(self.store.evicted)
        self.store.evict_expired(int(time.time() * 1000))
        for reason, total in self.store.evicted.items():
            if total > before[reason]:
                metrics.SESSIONS_EVICTED.labels(reason).inc(total - before[reason])
        metrics.STORE_SESSIONS.set(len(self.store))

    async def _close_consumer(self) -> None:
        self._connected.clear()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
