"""3. Which batch could not be read: a subclass of aiokafka's ``PartitionRecords``.

aiokafka's fetcher raises whatever a record's parser raised (e.g. ``UnicodeDecodeError`` for a header
name that is not UTF-8), without the partition or the batch, and it cannot parse past that record. The
subclass turns such a failure into ``UnreadableBatch``, which carries the batch header's offsets (base
offset, next offset: base plus last offset delta plus one), so the consumer skips the batch in one step
instead of one record per re-fetch. ``consumers.aiokafka_seam.patching`` installs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiokafka.errors import KafkaError

from consumers.aiokafka_seam.decompression import DecompressedTooLarge, _limits, _thread


class UnreadableBatch(Exception):
    """aiokafka could not read a batch; where it is, so that the consumer can skip exactly that batch.

    ``resume_offset`` is the first offset of the partition not read yet: records before it (of this
    batch, or of earlier batches of the same fetch) were parsed, records from it to ``next_offset``
    cannot be. The cause (``__cause__``) is what the parser raised, e.g. ``DecompressedTooLarge``.
    """

    def __init__(
        self, topic: str, partition: int, base_offset: int, next_offset: int, resume_offset: int, cause: BaseException
    ) -> None:
        super().__init__(
            f"unreadable batch at {topic}-{partition} offsets {base_offset}-{next_offset - 1}: {type(cause).__name__}"
        )
        self.topic = topic
        self.partition = partition
        self.base_offset = base_offset
        self.next_offset = next_offset
        self.resume_offset = resume_offset
        self.cause = cause

    @property
    def too_large(self) -> bool:
        return isinstance(self.cause, DecompressedTooLarge)


class _TrackedRecords:
    """aiokafka's ``MemoryRecords`` of one fetched partition, remembering the batch handed out last and
    setting the decompression cap of that batch from its header (records = last offset delta + 1)."""

    __slots__ = ("_records", "batch")

    def __init__(self, records: Any) -> None:
        self._records = records
        self.batch: Any = None

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        self.batch = batch
        if batch is not None:
            delta = getattr(batch, "last_offset_delta", None)  # absent in the legacy message format
            _thread.next_limit = _limits.get().for_batch(None if delta is None else delta + 1)
        return batch


def _tracking_partition_records(base: Any) -> Any:
    class TrackingPartitionRecords(base):  # type: ignore[misc]
        """aiokafka's ``PartitionRecords``, whose parse failures say which batch failed (``UnreadableBatch``)."""

        _seam_tracking = True

        def __init__(self, tp: Any, records: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(tp, _TrackedRecords(records), *args, **kwargs)

        def _unpack_records(self) -> Iterator[Any]:
            try:
                yield from super()._unpack_records()
            except KafkaError:  # aiokafka's own (a bad CRC, a corrupt message): it re-fetches
                raise
            except Exception as error:
                batch = self._records.batch
                if batch is None:
                    raise
                tp: Any = self._tp
                resume: int = self.next_fetch_offset
                base: int = getattr(batch, "base_offset", resume)  # the legacy message format has none
                raise UnreadableBatch(tp.topic, tp.partition, base, batch.next_offset, resume, error) from error

    return TrackingPartitionRecords
