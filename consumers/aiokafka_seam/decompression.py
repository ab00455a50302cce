"""2. Decompression bounded before allocation: the decode functions aiokafka's record modules look up.

aiokafka decompresses a whole batch in one call before it reads a record, so one record of 734 MB of zeros
(about 20 KB as zstd, well under the broker's limits) cost every replica 1.4 GB at once, before any size
check could run. ``consumers.aiokafka_seam.patching`` puts the functions below where aiokafka's record
modules (``_DECODER_MODULES``: the C extension and the pure-Python modules alike) look up gzip, snappy, lz4
and zstd; they stop at a cap and raise ``DecompressedTooLarge``: lz4 and zstd decompress into a fixed
window of an anonymous mapping (pages are committed only as written, and handed back to the OS after a
refused batch or an output over 1 MiB, ``_KEEP_RESIDENT_BYTES``), gzip
through ``zlib`` with a ``max_length``, snappy after reading the length its blocks declare. The cap is
``DecompressionLimits.for_batch``: the batch's record count times what an accepted record can hold, at
least ``BATCH_FLOOR_BYTES`` (4 MiB), never more than ``GATEWAY_MAX_DECOMPRESSED_BATCH_BYTES``.
"""

from __future__ import annotations

import mmap
import struct
import threading
import zlib
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiokafka.codec
import cramjam

from consumers.settings import DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES, RecordSettings

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
    def of(cls, settings: RecordSettings) -> DecompressionLimits:
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
    DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES, RecordSettings.model_fields["max_record_bytes"].default
)
_limits: ContextVar[DecompressionLimits] = ContextVar("decompression_limits", default=_DEFAULT_LIMITS)


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
