"""Applying one fetched batch of one partition: decode, then the store, then the hub; rejects to dead letters.

Kept apart from the client so that it runs without a broker (``tests/test_batch_apply.py``). A record's
failure stays with that record: it is skipped, counted by reason and logged by position, never by content,
and the batch goes on (docs/operations.md, "Failure boundaries"; reasons and dead letters:
docs/event-bus.md). This is the replay's hot path: per-record work stays in one loop over locals.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections import Counter as Tally
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from consumers import metrics
from consumers.formats import RecordDecoder
from consumers.hub import Hub
from consumers.log_aggregation import ReasonFolding
from consumers.log_fields import fields
from consumers.partitions import global_partition
from consumers.progress import PartitionProgress
from consumers.records import Rejected, Skipped, StatusUpdate, fast_decode
from consumers.settings import RecordSettings
from consumers.store import Outcome, SessionStore

if TYPE_CHECKING:
    from consumers.tracing.otel import Tracing


HANDLER_ERROR = "handler_error"  # the reject reason of a record whose handling raised
REJECTED, IGNORED = "rejected", "ignored"  # a traced record's outcome besides the store's (with a reason)

# What became of the last record of a batch, for its span: outcome, reason, session (update or id), deliveries.
LastRecord = tuple[str, str, StatusUpdate | str | None, int]


class DeadLetterSink(Protocol):
    """Where rejected records are copied (``consumers.dead_letter.DeadLetterWriter``)."""

    def offer(self, record: Any, topic: str, reason: str, detail: str) -> bool: ...


def where_raised(error: BaseException) -> str:
    """Where an exception was raised (file:line in function), without its message, which may quote data."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"


class BatchApplier:
    """Applies batches of aiokafka ``ConsumerRecord``s (anything with their attributes) of the topics read."""

    def __init__(
        self,
        settings: RecordSettings,
        topics: tuple[str, ...],
        store: SessionStore,
        hub: Hub,
        progress: PartitionProgress,
        dead_letters: DeadLetterSink | None,
        record_log: ReasonFolding,
        tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        self.tracing = tracing
        self.hub = hub
        self.progress = progress
        self.dead_letters = dead_letters
        self.record_log = record_log
        self._topic_index = {topic: index for index, topic in enumerate(topics)}
        self._decoders = [
            RecordDecoder(settings.max_record_bytes, settings.cloudevents_types, settings.mapping_for(topic))
            for topic in topics
        ]

    def apply(self, topic: str, records: Sequence[Any]) -> None:
        """Applies one fetched batch of one partition; every record's failure stays with that record."""
        if self.tracing is None:
            self._apply(topic, records)
        else:
            self._apply_traced(self.tracing, topic, records)

    def _apply(self, topic: str, records: Sequence[Any]) -> LastRecord:
        store_apply, publish = self.store.apply, self.hub.publish
        index = self._topic_index[topic]
        decoder = self._decoders[index]
        plain, max_bytes, read_as_plain = decoder.mapper is None, decoder.max_value_bytes, decoder.read_as_plain
        now_ms = int(time.time() * 1000)
        applied = 0
        ignored: Tally[str] = Tally()
        rejected: Tally[str] = Tally()
        last: LastRecord = (IGNORED, "", None, 0)
        partition, number = -1, 0  # a record's partition, and its number for the store (consumers.partitions)
        for record in records:
            try:
                if record.partition != partition:
                    partition = record.partition
                    number = global_partition(index, partition)
                value = record.value
                # The replay-speed path: a plain record (its headers, if any, without CloudEvents), its value
                # well-formed and its key the value's id; then ``decode_record`` would return this very update
                # (tests/test_batch_fast_path.py).
                if not (
                    plain
                    and value is not None
                    and len(value) <= max_bytes
                    and (not record.headers or read_as_plain(record.headers))
                    and (update := fast_decode(value)) is not None
                    and record.key == update.session_id.encode()
                ):
                    found = self._decode_one(topic, index, decoder, record, ignored, rejected)
                    if not isinstance(found, StatusUpdate):
                        last = found
                        continue
                    update = found
                outcome, transition = store_apply(update, number, record.offset, now_ms)
                if transition is None:
                    ignored[outcome] += 1
                    last = (outcome, "", update, 0)
                    continue
                applied += 1
                last = (outcome, "", update, publish(transition, record.timestamp, update.tenant_id))
            except Exception as error:  # one record must never stop the consumer of every replica
                rejected[HANDLER_ERROR] += 1
                last = (REJECTED, HANDLER_ERROR, None, 0)
                self.record_log.log(
                    logging.ERROR,
                    HANDLER_ERROR,
                    "skipped record: %s raised at %s",
                    type(error).__name__,
                    where_raised(error),
                    extra=fields(topic=topic, partition=record.partition, offset=record.offset, reason=HANDLER_ERROR),
                )
                if self.dead_letters is not None:
                    with contextlib.suppress(Exception):
                        detail = f"{type(error).__name__} raised at {where_raised(error)}"
                        self._dead_letter(self.dead_letters, topic, index, record, HANDLER_ERROR, detail)
        metrics.RECORDS_CONSUMED.inc(len(records))
        if applied:
            metrics.RECORDS_APPLIED.inc(applied)
        for reason, count in ignored.items():
            metrics.RECORDS_IGNORED.labels(reason).inc(count)
        for reason, count in rejected.items():
            metrics.RECORDS_REJECTED.labels(reason).inc(count)
        return last

    def _decode_one(
        self,
        topic: str,
        index: int,
        decoder: RecordDecoder,
        record: Any,
        ignored: Tally[str],
        rejected: Tally[str],
    ) -> StatusUpdate | LastRecord:
        """One record by the general path (any format, headers, rejects, tombstones): its update for the store,
        or what became of it (counted into the tallies, rejects dead-lettered and logged)."""
        decoded = decoder.decode(record.key, record.value, record.headers, record.timestamp)
        if isinstance(decoded, StatusUpdate):
            return decoded
        if isinstance(decoded, Rejected):
            reason = decoded.reason
            rejected[reason] += 1
            if self.dead_letters is not None:
                self._dead_letter(self.dead_letters, topic, index, record, reason.value, decoded.detail)
            self.record_log.log(
                logging.WARNING,
                reason,
                "skipped malformed record: %s",
                decoded.detail,
                extra=fields(topic=topic, partition=record.partition, offset=record.offset, reason=reason.value),
            )
            return (REJECTED, reason, None, 0)
        if isinstance(decoded, Skipped):
            ignored[decoded.reason] += 1
            return (IGNORED, decoded.reason, None, 0)
        tenant_id = self.store.tenant_of(decoded.session_id)
        outcome = self.store.delete(decoded.session_id)  # a tombstone
        if outcome is Outcome.DELETED:
            metrics.SESSIONS_DELETED.inc()
            number = global_partition(index, record.partition)
            self.hub.session_deleted(decoded.session_id, tenant_id, number, record.offset, record.timestamp)
        else:
            ignored[outcome] += 1
        return (outcome, "", decoded.session_id, 0)

    def _apply_traced(self, tracing: Tracing, topic: str, records: Sequence[Any]) -> None:
        """``_apply``, with each record the sampler keeps applied alone inside its span (consumers/tracing/).

        Apart, so that the untraced path stays as it was. The records the sampler drops (decided before
        any span exists) are applied in runs, as without tracing; a kept record's span starts once the
        records before it are applied, so it times that record only.
        """
        max_bytes = self._decoders[self._topic_index[topic]].max_value_bytes
        pending = 0  # records[pending:index] are dropped by the sampler and not applied yet
        for index, sampling in tracing.kept_records(records, max_bytes):
            record = records[index]
            if pending < index:
                self._apply(topic, records[pending:index])
            pending = index + 1
            span = tracing.record_span(sampling, topic, record.partition, record.offset)
            if span is None:
                self._apply(topic, records[index:pending])
                continue
            try:
                with tracing.current(span):  # what the record logs carries the span's ids
                    outcome, reason, subject, delivered = self._apply(topic, records[index:pending])
            except BaseException:
                span.end()  # a metric or the store raised outside a record's own boundary: the batch fails
                raise
            tracing.record_done(span, outcome, reason, subject, delivered, record.timestamp)
        if pending < len(records):
            self._apply(topic, records[pending:])

    def _dead_letter(self, sink: DeadLetterSink, topic: str, index: int, record: Any, reason: str, detail: str) -> None:
        """Copies a rejected record, unless it was already in the log when this replica started (replay)."""
        if record.offset >= self.progress.targets.get(global_partition(index, record.partition), 0):
            sink.offer(record, topic, reason, detail)
