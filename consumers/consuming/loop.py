"""The consume loop: fetch, apply, advance the replay progress; and the way past batches the client cannot read.

Every replica reads the same log, so a batch the Kafka client cannot read (one that would decompress beyond
its cap, or holds a record it cannot parse) would stop every consumer at once: it is skipped in one step,
the records before the failure applied first (``consumers.aiokafka_seam``, concern 3; without the seam,
an untested aiokafka, the failing record is found one record per re-fetch). What that costs and what is
counted: docs/operations.md, "Failure boundaries", and docs/security.md.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from consumers import metrics
from consumers.aiokafka_seam import UnreadableBatch
from consumers.consuming.batch import BatchApplier, where_raised
from consumers.consuming.connection import Connection
from consumers.kafka_errors import UNREADABLE_BATCHES
from consumers.log_aggregation import ReasonFolding
from consumers.log_fields import fields
from consumers.progress import PartitionProgress
from consumers.records import RejectReason
from consumers.store import SessionStore

log = logging.getLogger("gateway.consumer")

UNREADABLE = "unreadable"  # the Kafka client itself cannot parse the record
_SALVAGE_WAIT_MS = 1000  # re-reading the records before an unreadable one: the wait for their fetch
# Records handed out per fetch call. Each is an object the garbage collector tracks, all alive until the batch
# is applied: below the collector's first threshold (700 by default), a batch triggers no collection, where
# 5,000 triggered about 1,400 young and 15 full ones (each walking the whole store) in a 1,000,000-record
# replay, 11% of its time (docs/operations.md, "Start-up").
_MAX_BATCH_RECORDS = 500


class ConsumeLoop:
    """Follows the assigned partitions until ``stop_requested``; the connection must be open."""

    def __init__(
        self,
        connection: Connection,
        batches: BatchApplier,
        progress: PartitionProgress,
        store: SessionStore,
        record_log: ReasonFolding,
        stop_requested: asyncio.Event,
    ) -> None:
        self.connection = connection
        self.batches = batches
        self.progress = progress
        self.store = store
        self.record_log = record_log
        self._stop_requested = stop_requested
        self._reported_caught_up = False

    async def run(self) -> None:
        connection = self.connection
        consumer = connection.client
        number, tp_of = connection.topics.number, connection.topics.tp
        progress = self.progress
        while not self._stop_requested.is_set():
            self.record_log.flush()
            if connection.gained:
                await connection.assign_gained()
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=_MAX_BATCH_RECORDS)
            except UnreadableBatch as error:  # the client cannot read a batch the broker sent
                await self._skip_batch(error)
                continue
            except KafkaError as error:
                progress.last_error = f"fetch failed: {error}"
                log.warning("kafka fetch failed, retrying: %s", error)
                await asyncio.sleep(1.0)
                continue
            except Exception as error:  # the same, where the seam is not installed (an untested aiokafka)
                await self._skip_unreadable(error)
                continue
            if batches:
                connection.last_contact = time.monotonic()
            for tp, records in batches.items():
                self.batches.apply(tp.topic, records)
                progress.advance(number(tp), await consumer.position(tp))
            if not batches and not progress.caught_up.is_set():
                for partition in connection.partitions:
                    progress.advance(partition, await consumer.position(tp_of(partition)))
            if progress.caught_up.is_set() and not self._reported_caught_up:
                self._reported_caught_up = True
                log.info("store caught up: %d sessions", len(self.store))

    def _rewind(self) -> None:
        """Back to the positions handled: a failed fetch may have moved them past records it had parsed but
        never returned (aiokafka updates a partition's position when it next hands out its records)."""
        consumer = self.connection.client
        tp = self.connection.topics.tp
        for number in sorted(self.connection.partitions):
            handled = self.progress.positions.get(number)
            if handled is not None:
                consumer.seek(tp(number), handled)

    async def _skip_batch(self, error: UnreadableBatch) -> None:
        """Skips a batch the Kafka client cannot read, in one step: where it ends is in its header.

        Found one record per re-fetch, a batch of 2,000 records behind a bad one kept a partition invisible
        for 36 minutes. The records before the failure (parsed, but lost with the failed fetch) are read
        again first, stopping short of it; then the partition goes on at the batch's next offset. What lies
        between is counted by offset range as rejected (``too_large`` for a batch over its decompression
        cap, else ``unreadable``) and logged in one line; the client cannot parse past the failure within
        the batch.
        """
        consumer = self.connection.client
        self._rewind()
        tp = TopicPartition(error.topic, error.partition)
        number = self.connection.topics.number(tp)
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
            detail = f"the Kafka client cannot parse it ({type(cause).__name__} at {where_raised(cause)})"
        self.record_log.log(
            logging.WARNING if error.too_large else logging.ERROR,
            reason,
            "skipped batch of %d records: %s",
            lost,
            detail,
            extra=fields(topic=tp.topic, partition=tp.partition, offset=start, last_offset=end - 1, reason=reason),
        )

    async def _read_before(self, tp: TopicPartition, number: int, error: UnreadableBatch) -> bool:
        """Reads ``tp`` up to the failure's ``resume_offset``; False when that cannot be done now.

        As many records as there are offsets before it, in one read; when compaction left gaps, that read
        runs into the failure, and the rest is read one record per call.
        """
        consumer = self.connection.client
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
                self.batches.apply(tp.topic, records)
            self.progress.advance(number, await consumer.position(tp))
        return True

    async def _skip_unreadable(self, error: Exception) -> None:
        """Finds the record the Kafka client cannot parse without the seam (an untested aiokafka) and skips it.

        Each partition is read again from the last position we handled, one record at a time, until the
        one that fails; records read on the way are applied as usual. The records after it in its batch
        fail the same way, each costing a re-fetch: ``_skip_batch`` is the fast path.
        """
        consumer = self.connection.client
        self._rewind()
        for number in sorted(self.connection.partitions):
            tp = self.connection.topics.tp(number)
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
                        "skipped record: the Kafka client cannot parse it (%s at %s)",
                        type(failure).__name__,
                        where_raised(failure),
                        extra=fields(topic=tp.topic, partition=tp.partition, offset=offset, reason=UNREADABLE),
                    )
                    self.progress.advance(number, offset + 1)
                    return
                if not batch:
                    break
                for records in batch.values():
                    self.batches.apply(tp.topic, records)
                self.progress.advance(number, await consumer.position(tp))
        # Not reproducible partition by partition: back off, so that a persistent fault cannot spin.
        log.error("kafka fetch raised %s at %s; retrying", type(error).__name__, where_raised(error))
        await asyncio.sleep(1.0)
