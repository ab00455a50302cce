"""Installs 2 (bounded decompression) and 3 (which batch could not be read), checked by a self-test.

``install()`` checks the aiokafka version, that aiokafka's record modules still look the decode functions
up in the places the seam replaces and that its fetcher's ``PartitionRecords`` is the class the seam
extends, then reads a small batch per codec through that class (within its cap, and over it). Any
failure puts aiokafka's own functions back and says so in one log line: decompression is then unbounded
and unreadable records are found one re-fetch at a time (``consumers.consuming.loop``).
"""

from __future__ import annotations

import importlib
from typing import Any

from consumers.aiokafka_seam._common import check, import_or_none, log
from consumers.aiokafka_seam.batches import UnreadableBatch, _tracking_partition_records
from consumers.aiokafka_seam.decompression import (
    _BOUNDED_DECODERS,
    _DECODER_MODULES,
    _ORIGINAL_DECODERS,
    DecompressionLimits,
    _limits,
    _thread,
)


class _State:
    installed: str | None = "not installed yet"  # why 2 and 3 are not in place; None once they are


_state = _State()


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
        module = import_or_none(module_name)
        if module is not None:
            for name in names:
                if module.__dict__.get(name) is _BOUNDED_DECODERS[name]:
                    setattr(module, name, _ORIGINAL_DECODERS[name])
    fetcher: Any = importlib.import_module("aiokafka.consumer.fetcher")
    current: Any = getattr(fetcher, "PartitionRecords", None)
    if getattr(current, "_seam_tracking", False):
        fetcher.PartitionRecords = current.__mro__[1]
    _state.installed = "uninstalled"


def _patch() -> str | None:
    for module_name, names in _DECODER_MODULES.items():
        module = import_or_none(module_name)
        if module is None:
            if "._crecords." in module_name:
                continue  # aiokafka without its C extension
            return f"{module_name} is missing"
        for name in names:
            current = module.__dict__.get(name)
            if current is not _ORIGINAL_DECODERS[name] and current is not _BOUNDED_DECODERS[name]:
                return f"{module_name}.{name} is not aiokafka.codec.{name}"
    for module_name, names in _DECODER_MODULES.items():
        module = import_or_none(module_name)
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


def why_not_installed() -> str | None:
    """None when 2 and 3 are in place, else why not (e.g. "not installed yet")."""
    return _state.installed
