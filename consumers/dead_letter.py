"""Copies rejected records to the dead-letter topic (``GATEWAY_DLQ_TOPIC``), never slowing consumption.

Each copy is the record unchanged (key, value, original headers, in order) plus headers saying why and
where it came from:

- ``dlq.reason``: the reject reason, the label of ``gateway_records_rejected_total``;
- ``dlq.detail``: the one-line explanation (never quotes the payload);
- ``dlq.origin.topic``, ``dlq.origin.partition``, ``dlq.origin.offset``, ``dlq.origin.timestamp`` (ms).

The consumer hands records over with ``offer``, which only appends to a queue bounded in bytes: when
the queue is full (the dead-letter topic is missing, its broker is down or slow) the record is dropped
and counted, consumption goes on. The bound counts what a queued copy costs in memory (``DeadLetter.size``),
not only its payload: counting payload bytes alone, 115,922 copies of tiny records held +80 MB under
a 16 MiB cap. The writer task sends them with its own producer; a missing topic or
an unreachable broker keeps the queue waiting (retried with backoff), any other send error drops that
record (counted).

Who writes: every replica whose ``GATEWAY_DLQ_WRITER`` is true (the default), and each copies only
records that reached the log after it started (not those of its initial replay), so restarts and
rollouts do not copy the retained log again. With several writers each rejected record arrives once
per writer; ``dlq.origin.*`` identifies the original record to deduplicate on. Set it false on all
replicas but one (or a dedicated one) for a single copy, accepting that nothing is copied while that
replica is down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    UnknownTopicOrPartitionError,
)

from consumers import metrics
from consumers.settings import KafkaSettings

log = logging.getLogger("gateway.dead_letter")

DEFAULT_MAX_QUEUED_BYTES = 16 * 1024 * 1024
# What a queued copy costs besides the bytes of its key, value and header names and values, measured as
# resident memory per copy on CPython 3.11 (64-bit; tests/test_hostile_producer.py checks it with
# tracemalloc): the DeadLetter, its header list, the dlq.* header tuples and their values' bytes objects,
# the key's and value's bytes objects and the queue's slot (ENTRY); and per header of the original record,
# its tuple, name str and value bytes objects (HEADER).
ENTRY_OVERHEAD_BYTES = 720
HEADER_OVERHEAD_BYTES = 200
_MAX_DETAIL = 1024
_MAX_BACKOFF_S = 10.0
_LOG_INTERVAL_S = 60.0
# A missing topic or an unreachable broker: the record waits in the queue and is tried again.
_OUTAGE_ERRORS = (KafkaTimeoutError, KafkaConnectionError, NodeNotReadyError, UnknownTopicOrPartitionError)

HEADER_REASON = "dlq.reason"
HEADER_DETAIL = "dlq.detail"
HEADER_TOPIC = "dlq.origin.topic"
HEADER_PARTITION = "dlq.origin.partition"
HEADER_OFFSET = "dlq.origin.offset"
HEADER_TIMESTAMP = "dlq.origin.timestamp"


_ADDED_HEADERS = 6  # dlq.reason ... dlq.origin.timestamp, counted in ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    @property
    def size(self) -> int:
        """The memory this copy holds while queued (payload plus measured overhead; see above)."""
        return (
            ENTRY_OVERHEAD_BYTES
            + HEADER_OVERHEAD_BYTES * max(0, len(self.headers) - _ADDED_HEADERS)
            + len(self.key or b"")
            + len(self.value or b"")
            + sum(len(name) + len(value or b"") for name, value in self.headers)
        )


class DeadLetterWriter:
    def __init__(self, settings: KafkaSettings, topic: str, max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES) -> None:
        self.settings = settings
        self.topic = topic
        self.max_queued_bytes = max_queued_bytes
        self._queue: collections.deque[DeadLetter] = collections.deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._failures = 0
        self._last_failure_log = -_LOG_INTERVAL_S
        metrics.DLQ_QUEUED.set_function(lambda: len(self._queue))

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, record: Any, topic: str, reason: str, detail: str) -> bool:
        """Queues a copy of ``record`` (an aiokafka ConsumerRecord); False when it was dropped."""
        headers: list[tuple[str, bytes | None]] = list(record.headers or ())
        headers += [
            (HEADER_REASON, reason.encode()),
            (HEADER_DETAIL, detail[:_MAX_DETAIL].encode("utf-8", "replace")),
            (HEADER_TOPIC, topic.encode()),
            (HEADER_PARTITION, str(record.partition).encode()),
            (HEADER_OFFSET, str(record.offset).encode()),
            (HEADER_TIMESTAMP, str(record.timestamp).encode()),
        ]
        letter = DeadLetter(record.key, record.value, headers)
        size = letter.size
        if self._queued_bytes + size > self.max_queued_bytes:
            metrics.DLQ_DROPPED.labels("queue_full").inc()
            return False
        self._queue.append(letter)
        self._queued_bytes += size
        self._wakeup.set()
        return True

    async def run(self) -> None:
        """Sends queued copies until cancelled (a supervised task)."""
        producer = AIOKafkaProducer(
            acks="all",
            linger_ms=20,
            max_request_size=2 * 1024 * 1024,
            **self.settings.kafka_client_options(),
        )
        backoff = 0.5
        started = False
        try:
            while not started:
                try:
                    await producer.start()
                    started = True
                except KafkaError as error:
                    self._failed("cannot connect to the dead-letter broker", error)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
            backoff = 0.5
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                letter = self._queue[0]
                try:
                    delivery = await producer.send(
                        self.topic, key=letter.key, value=letter.value, headers=letter.headers
                    )
                except _OUTAGE_ERRORS as error:
                    self._failed(f"dead-letter topic {self.topic!r} not writable, retrying", error)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
                    continue
                except KafkaError as error:
                    self._pop(letter)
                    metrics.DLQ_DROPPED.labels("send_failed").inc()
                    self._failed("a dead-letter copy was refused and dropped", error)
                    continue
                backoff = 0.5
                self._pop(letter)
                delivery.add_done_callback(self._delivered)
        finally:  # also after a failed start, which may leave connections open
            with contextlib.suppress(Exception):
                await producer.stop()

    def _pop(self, letter: DeadLetter) -> None:
        self._queue.popleft()
        self._queued_bytes -= letter.size

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            metrics.DLQ_DROPPED.labels("send_failed").inc()
            error = None if future.cancelled() else future.exception()
            self._failed("a dead-letter copy was not delivered", error)
        else:
            metrics.DLQ_WRITTEN.inc()

    def _failed(self, what: str, error: BaseException | None) -> None:
        """Counted always, logged at most once a minute (an outage would otherwise log every record)."""
        metrics.DLQ_ERRORS.inc()
        self._failures += 1
        now = time.monotonic()
        if now - self._last_failure_log >= _LOG_INTERVAL_S:
            self._last_failure_log = now
            name = type(error).__name__ if error is not None else "cancelled"
            log.warning("%s: %s (%d failures so far, %d queued)", what, name, self._failures, len(self._queue))
