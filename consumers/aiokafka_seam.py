"""The one place that reaches below aiokafka's public API, checked against the tested versions at start-up.

The aiokafka versions tested are pinned in pyproject.toml (``aiokafka>=0.14,<0.15``) and checked again
by ``check()``/``install()``; any other version gets the fallbacks named below, with one log line.

1. **Metadata on demand.** aiokafka has no public call that refreshes a topic's partition list now; its
   client does (``_client.add_topic``, ``force_metadata_update``). The gateway uses it to notice new
   partitions and missing topics promptly. Fallback: aiokafka's periodic refresh
   (``metadata_max_age_ms``), public and only slower.
2. **Decompression bounded before allocation.** aiokafka decompresses a whole batch in one call before it
   reads a record, so one record of 734 MB of zeros (about 20 KB as zstd, well under the broker's
   limits) cost every replica 1.4 GB at once, before any size check could run. ``install()`` replaces
   the decode functions aiokafka's record modules look up (gzip, snappy, lz4, zstd; the C extension and
   the pure-Python modules alike) with ones that stop at a cap and raise ``DecompressedTooLarge``: lz4 and
   zstd decompress into a fixed window of an anonymous mapping (pages are committed only as written, and
   returned afterwards), gzip through ``zlib`` with a ``max_length``, snappy after reading the length
   its blocks declare. The cap is ``DecompressionLimits.for_batch``: the batch's record count times what
   an accepted record can hold, never more than ``GATEWAY_MAX_DECOMPRESSED_BATCH_BYTES``.
3. **Which batch could not be read.** aiokafka's fetcher raises whatever a record's parser raised (e.g.
   ``UnicodeDecodeError`` for a header name that is not UTF-8), without the partition or the batch, and
   it cannot parse past that record. A subclass of its ``PartitionRecords`` turns such a failure into
   ``UnreadableBatch``, which carries the batch header's offsets (base offset, next offset: base plus
   last offset delta plus one), so the consumer skips the batch in one step instead of one record per
   re-fetch.

Without 2 and 3 (an untested aiokafka), decompression is unbounded and unreadable records are found one
re-fetch at a time (``consumers.consumer``); ``install()`` says so in its answer.
"""

from __future__ import annotations

import importlib
import logging
import mmap
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiokafka
import aiokafka.codec
import cramjam
from aiokafka.errors import KafkaError

from consumers.settings import DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES, ConsumerSettings

log = logging.getLogger("gateway.consumer")

TESTED_AIOKAFKA = ("0.14.",)
_warned: set[str] = set()  # one warning per process


# --------------------------------------------------------------------------------------------------
# 1. Metadata on demand


def _private_client(consumer: Any) -> Any | None:
    client = getattr(consumer, "_client", None)
    if client is None or not callable(getattr(client, "add_topic", None)):
        return None
    if not callable(getattr(client, "force_metadata_update", None)):
        return None
    return client


def check() -> str | None:
    """None when the installed aiokafka is a tested version, else why not."""
    version = getattr(aiokafka, "__version__", "?")
    if not version.startswith(TESTED_AIOKAFKA):
        return f"aiokafka {version} is not a tested version ({', '.join(TESTED_AIOKAFKA)}x)"
    return None


async def refresh_topics(consumer: Any, topics: Iterable[str]) -> bool:
    """Fetches fresh metadata of ``topics`` now; False when only the periodic refresh is available."""
    client = _private_client(consumer) if check() is None else None
    if client is None:
        if "refresh" not in _warned:
            _warned.add("refresh")
            log.warning(
                "cannot refresh Kafka metadata on demand (%s): new partitions are noticed at the periodic refresh",
                check() or "aiokafka's client changed",
            )
        return False
    for topic in topics:
        client.add_topic(topic)
    await client.force_metadata_update()
    return True


# --------------------------------------------------------------------------------------------------
# 2. Bounded decompression

# Besides its value and its headers (each at most GATEWAY_MAX_RECORD_BYTES when accepted), a record holds
# its key (a session id: at most 256 characters) and a few varints.
RECORD_FRAMING_BYTES = 2048
# Output larger than this is handed back to the OS right after the batch (the window stays mapped).
_KEEP_RESIDENT_BYTES = 1024 * 1024
_WINDOW_FULL = "failed to write whole buffer"  # cramjam's error when the output window is too small


# Every batch may decompress to this much (or GATEWAY_MAX_DECOMPRESSED_BATCH_BYTES, if smaller): a bomb
# costs at most this, transiently, and a few-record batch with an oversized record loses nothing else.
BATCH_FLOOR_BYTES = 4 * 1024 * 1024


class DecompressedTooLarge(Exception):
    """A compressed batch would decompress to more than its cap; raised before more memory was used."""

    def __init__(self, codec: str, limit: int) -> None:
        super().__init__(f"{codec} batch decompresses to more than {limit} bytes")
        self.codec = codec
        self.limit = limit


@dataclass(frozen=True, slots=True)
class DecompressionLimits:
    batch_bytes: int  # GATEWAY_MAX_DECOMPRESSED_BATCH_BYTES
    record_bytes: int  # what one accepted record can hold, decompressed

    @classmethod
    def of(cls, settings: ConsumerSettings) -> DecompressionLimits:
        return cls.from_sizes(settings.max_decompressed_batch_bytes, settings.max_record_bytes)

    @classmethod
    def from_sizes(cls, max_batch_bytes: int, max_record_bytes: int) -> DecompressionLimits:
        return cls(max_batch_bytes, 2 * max_record_bytes + RECORD_FRAMING_BYTES)

    def for_batch(self, records: int | None) -> int:
        """The cap of one batch of ``records`` records (None: unknown, as in the legacy message format).

        At least ``BATCH_FLOOR_BYTES``: a batch of a few records, one of them oversized, is still read, so its
        valid records are applied and only the oversized one is rejected (as without compression).
        """
        if records is None:
            return self.batch_bytes
        return min(self.batch_bytes, max(BATCH_FLOOR_BYTES, max(1, records) * self.record_bytes))


_DEFAULT_LIMITS = DecompressionLimits.from_sizes(
    DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES, ConsumerSettings.model_fields["max_record_bytes"].default
)
_limits: ContextVar[DecompressionLimits] = ContextVar("decompression_limits", default=_DEFAULT_LIMITS)


class _State:
    installed: str | None = "not installed yet"  # why 2 and 3 are not in place; None once they are


_state = _State()


def use_limits(limits: DecompressionLimits) -> None:
    """The caps for batches read in the current context (the consumer's task sets its own settings)."""
    _limits.set(limits)


class _PerThread(threading.local):
    """What one thread's batch reading keeps: the cap of the batch about to be decompressed (set by
    ``_TrackedRecords`` just before aiokafka decompresses it), and an anonymous mapping lz4 and zstd
    decompress into (nothing of it is committed but what is written)."""

    next_limit: int | None = None
    mapping: mmap.mmap | None = None

    def view(self, size: int) -> tuple[mmap.mmap, memoryview]:
        if self.mapping is None or len(self.mapping) < size:
            if self.mapping is not None:
                self.mapping.close()
            self.mapping = mmap.mmap(-1, size)
        return self.mapping, memoryview(self.mapping)[:size]


_thread = _PerThread()


def _take_limit() -> int:
    limit, _thread.next_limit = _thread.next_limit, None
    return limit if limit is not None else _limits.get().batch_bytes


def _release(mapping: mmap.mmap) -> None:
    if hasattr(mmap, "MADV_DONTNEED"):  # Linux: the pages go back to the OS, and read as zeros again
        mapping.madvise(mmap.MADV_DONTNEED)


def _into_window(codec: str, decompress_into: Callable[[Any, Any], int], data: Any) -> bytes:
    limit = _take_limit()
    mapping, view = _thread.view(limit + 1)
    try:
        written = decompress_into(data, view)
    except cramjam.DecompressionError as error:
        _release(mapping)
        if _WINDOW_FULL in str(error):
            raise DecompressedTooLarge(codec, limit) from None
        raise
    finally:
        view.release()
    if written > limit:
        _release(mapping)
        raise DecompressedTooLarge(codec, limit)
    result = mapping[:written]
    if written > _KEEP_RESIDENT_BYTES:
        _release(mapping)
    return result


def _zstd_decode(data: Any) -> bytes:
    return _into_window("zstd", cramjam.zstd.decompress_into, data)


def _lz4_decode(data: Any) -> bytes:
    return _into_window("lz4", cramjam.lz4.decompress_into, data)


def _gzip_decode(data: Any) -> bytes:
    """Every gzip member, as aiokafka's (``gzip.GzipFile``) reads them, through zlib with a bounded output."""
    limit = _take_limit()
    parts: list[bytes] = []
    total = 0
    rest: Any = data
    while True:
        stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
        part = stream.decompress(rest, limit + 1 - total)
        total += len(part)
        if total > limit:
            raise DecompressedTooLarge("gzip", limit)
        parts.append(part)
        if not stream.eof:
            raise EOFError("compressed batch ended before the end-of-stream marker was reached")
        rest = stream.unused_data.lstrip(b"\x00")  # members may be padded with zeros
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)


_XERIAL_HEADER = struct.Struct("!bccccccBii")
_XERIAL_V1 = (-126, b"S", b"N", b"A", b"P", b"P", b"Y", 0, 1, 1)  # as aiokafka.codec detects it


def _snappy_decode(data: Any) -> bytes:
    """aiokafka's own decode, once the lengths the blocks declare (what it would allocate) fit the cap."""
    limit = _take_limit()
    view = memoryview(data)
    total = 0
    if len(view) > _XERIAL_HEADER.size and _XERIAL_HEADER.unpack_from(view) == _XERIAL_V1:
        cursor = _XERIAL_HEADER.size
        while cursor + 4 <= len(view):
            (size,) = struct.unpack_from("!i", view, cursor)
            cursor += 4
            total += cramjam.snappy.decompress_raw_len(view[cursor : cursor + max(0, size)])
            if total > limit:
                raise DecompressedTooLarge("snappy", limit)
            cursor += max(0, size)
    else:
        total = cramjam.snappy.decompress_raw_len(view)
    if total > limit:
        raise DecompressedTooLarge("snappy", limit)
    decoded: bytes = _ORIGINAL_DECODERS["snappy_decode"](data)
    return decoded


_BOUNDED_DECODERS: dict[str, Callable[[Any], bytes]] = {
    "gzip_decode": _gzip_decode,
    "snappy_decode": _snappy_decode,
    "lz4_decode": _lz4_decode,
    "zstd_decode": _zstd_decode,
}
_ORIGINAL_DECODERS: dict[str, Callable[[Any], bytes]] = {
    name: getattr(aiokafka.codec, name) for name in _BOUNDED_DECODERS
}
# Where aiokafka's batch readers look the decode functions up (module globals, at every call).
_DECODER_MODULES = {
    "aiokafka.record.default_records": ("gzip_decode", "snappy_decode", "lz4_decode", "zstd_decode"),
    "aiokafka.record.legacy_records": ("gzip_decode", "snappy_decode", "lz4_decode"),
    "aiokafka.record._crecords.default_records": ("gzip_decode", "snappy_decode", "lz4_decode", "zstd_decode"),
    "aiokafka.record._crecords.legacy_records": ("gzip_decode", "snappy_decode", "lz4_decode"),
}


# --------------------------------------------------------------------------------------------------
# 3. Which batch could not be read


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


# --------------------------------------------------------------------------------------------------
# Installation, checked


def install() -> str | None:
    """Installs 2 and 3 (idempotent); None when they work with this aiokafka, else why not (then neither is)."""
    previous = _state.installed
    problem = check() or _patch()
    if problem is None:
        problem = _self_test()
    if problem is not None:
        uninstall()
        if previous != problem:
            log.error(
                "decompressed batch sizes are NOT bounded and unreadable records are skipped one re-fetch at a "
                "time: %s",
                problem,
            )
    _state.installed = problem
    return problem


def installed() -> bool:
    return _state.installed is None


def uninstall() -> None:
    """Puts aiokafka's own functions back (a test of the fallback; an untested aiokafka)."""
    for module_name, names in _DECODER_MODULES.items():
        module = _import(module_name)
        if module is not None:
            for name in names:
                if module.__dict__.get(name) is _BOUNDED_DECODERS[name]:
                    setattr(module, name, _ORIGINAL_DECODERS[name])
    fetcher: Any = importlib.import_module("aiokafka.consumer.fetcher")
    current: Any = getattr(fetcher, "PartitionRecords", None)
    if getattr(current, "_seam_tracking", False):
        fetcher.PartitionRecords = current.__mro__[1]
    _state.installed = "uninstalled"


def _import(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _patch() -> str | None:
    for module_name, names in _DECODER_MODULES.items():
        module = _import(module_name)
        if module is None:
            if "._crecords." in module_name:
                continue  # aiokafka without its C extension
            return f"{module_name} is missing"
        for name in names:
            current = module.__dict__.get(name)
            if current is not _ORIGINAL_DECODERS[name] and current is not _BOUNDED_DECODERS[name]:
                return f"{module_name}.{name} is not aiokafka.codec.{name}"
    for module_name, names in _DECODER_MODULES.items():
        module = _import(module_name)
        if module is not None:
            for name in names:
                setattr(module, name, _BOUNDED_DECODERS[name])
    fetcher: Any = importlib.import_module("aiokafka.consumer.fetcher")
    base: Any = getattr(fetcher, "PartitionRecords", None)
    if getattr(base, "_seam_tracking", False):
        return None
    if not isinstance(base, type) or not callable(getattr(base, "_unpack_records", None)):
        return "aiokafka.consumer.fetcher.PartitionRecords is not the class the seam extends"
    fetcher.PartitionRecords = _tracking_partition_records(base)
    return None


_CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _self_test() -> str | None:
    """Reads a small batch per codec through aiokafka's fetcher class: within its cap, and over it."""
    from aiokafka.consumer import fetcher
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.structs import TopicPartition

    value = bytes(8192)
    token = _limits.set(DecompressionLimits(batch_bytes=64 * 1024, record_bytes=4096))
    try:
        for codec, code in _CODECS.items():
            builder = DefaultRecordBatchBuilder(2, code, 0, -1, -1, -1, 1 << 20)
            for offset in range(2):
                builder.append(offset, timestamp=None, key=b"k", value=value, headers=[])
            built = bytes(builder.build())
            for cap, fits in ((64 * 1024, True), (8192, False)):
                _limits.set(DecompressionLimits(batch_bytes=cap, record_bytes=cap))
                records = fetcher.PartitionRecords(
                    TopicPartition("seam-check", 0), fetcher.MemoryRecords(built), None, 0, None, None, True, 0
                )
                try:
                    values = [record.value for record in records]
                except UnreadableBatch as error:
                    if fits or not error.too_large or (error.base_offset, error.next_offset) != (0, 2):
                        return f"the {codec} check read {error!r}"
                    continue
                if not fits or values != [value, value]:
                    return f"the {codec} check was not capped (read {len(values)} records)"
    except Exception as error:
        return f"the seam check failed: {type(error).__name__}: {error}"
    finally:
        _limits.reset(token)
        _thread.next_limit = None
    return None
