"""One number per (topic, partition) pair, so that the store, the replay progress and event ids work
unchanged when the gateway reads several topics.

The store keeps a transition's partition as a uint32. With several topics, the index of the topic in
``GATEWAY_KAFKA_TOPIC`` (0 for the first) goes into the high bits: ``index << 20 | partition``. The
first topic's numbers are therefore its plain partition numbers, and its event ids (``3-42``) are the
ones single-topic gateways always sent; another topic's partition prints as ``t1.3`` (event id
``t1.3-42``). The index comes from the order of the setting: appending a topic keeps every id valid,
reordering or removing one changes what an older id points to (see the README).
"""

from __future__ import annotations

import re

PARTITION_BITS = 20
MAX_PARTITION = (1 << PARTITION_BITS) - 1  # 1,048,575 partitions per topic
MAX_TOPICS = 1 << (32 - PARTITION_BITS)  # 4,096 topics: the result fits the store's uint32
_MASK = MAX_PARTITION
_TEXT = re.compile(r"(?:t([1-9]\d{0,3})\.)?(\d{1,7})", re.ASCII)


def global_partition(topic_index: int, partition: int) -> int:
    return (topic_index << PARTITION_BITS) | partition


def split_partition(number: int) -> tuple[int, int]:
    """``(topic index, partition)`` of a number made by ``global_partition``."""
    return number >> PARTITION_BITS, number & _MASK


def format_partition(number: int) -> str:
    """``3`` for the first topic's partition 3, ``t1.3`` for the second topic's."""
    if number <= _MASK:
        return str(number)
    return f"t{number >> PARTITION_BITS}.{number & _MASK}"


def parse_partition(text: str) -> int | None:
    """The inverse of ``format_partition``; None for anything it never prints (also ``t0.3``)."""
    match = _TEXT.fullmatch(text)
    if match is None:
        return None
    partition = int(match.group(2))
    index = int(match.group(1) or 0)
    if partition > _MASK or index >= MAX_TOPICS:
        return None
    return global_partition(index, partition)
