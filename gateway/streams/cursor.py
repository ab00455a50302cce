"""The event id of a tenant stream: how far the client has seen its tenant, partition by partition.

A tenant stream interleaves every partition, and replicas apply partitions in different orders, so
no single Kafka position says what a client has seen; per partition it is exact. The cursor maps
each partition on which the tenant had a session (at the snapshot) or a transition (since) to the
offset of the tenant's latest transition there that the stream reflects. Partitions the tenant
never touched are left out, so the id grows with the partitions of the tenant's own sessions, not
with the topic's: a cursor is a few bytes per such partition (sorted partitions as gaps, offsets as
zigzag differences from the previous one, all varints, then base64url), behind the prefix ``c1.``.
See docs/http-api.md (Tenant stream ids).
"""

from __future__ import annotations

import base64
import binascii

PREFIX = "c1."
MAX_OFFSET = 2**63 - 1
MAX_PARTITION = 2**32 - 1  # the store's partition numbers are uint32 (``consumers.partitions``)
MAX_ID_LENGTH = 16 * 1024  # longer ids are refused unread (a header is bounded by the edge anyway)


def _varint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode_cursor(positions: dict[int, int]) -> str:
    """The id of ``positions`` (partition -> offset); the same positions always give the same id."""
    out = bytearray()
    previous_partition = -1
    previous_offset = 0
    for partition in sorted(positions):
        offset = positions[partition]
        _varint(partition - previous_partition - 1, out)
        delta = offset - previous_offset
        _varint(delta * 2 if delta >= 0 else -delta * 2 - 1, out)
        previous_partition, previous_offset = partition, offset
    return PREFIX + base64.urlsafe_b64encode(bytes(out)).rstrip(b"=").decode("ascii")


def parse_cursor(value: str | None) -> dict[int, int] | None:
    """The positions of an id made by ``encode_cursor``; None for anything else (treated as no id)."""
    if not value or len(value) > MAX_ID_LENGTH:
        return None
    value = value.strip()
    if not value.startswith(PREFIX):
        return None
    text = value[len(PREFIX) :]
    if not text.isascii() or "=" in text:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != text:
        return None  # one id per cursor: no padding variants, no trailing bits
    positions: dict[int, int] = {}
    numbers: list[int] = []
    value_so_far = shift = 0
    for byte in data:
        value_so_far |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 70:
                return None
            continue
        numbers.append(value_so_far)
        value_so_far = shift = 0
    if shift or len(numbers) % 2:
        return None
    partition = -1
    offset = 0
    for index in range(0, len(numbers), 2):
        partition += numbers[index] + 1
        zigzag = numbers[index + 1]
        offset += zigzag >> 1 if not zigzag & 1 else -((zigzag + 1) >> 1)
        if partition > MAX_PARTITION or not 0 <= offset <= MAX_OFFSET:
            return None
        positions[partition] = offset
    return positions
