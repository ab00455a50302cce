"""What a hostile or careless producer can make a replica hold or write, against real parts.

- The dead-letter queue's cap bounds the memory its copies hold (tracemalloc).
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from consumers.dead_letter import DeadLetter, DeadLetterWriter
from consumers.settings import ConsumerSettings

# --------------------------------------------------------------------------------------------------
# Dead-letter queue memory


def consumer_record(i: int, value: bytes, headers: int) -> Any:
    """A record as aiokafka hands it over: its own key, value and header objects."""
    key = f"k-{i:08d}".encode()
    value += b"%d" % i
    names = [f"h{j}-{i}"[: 2 + len(str(j))] for j in range(headers)]  # new str objects, two characters
    fields = [(name, b"v%d" % i) for name in names]
    return ConsumerRecord(
        "topic-abc", 3, 100_000 + i, 1_700_000_000_000, 0, key, value, None, len(key), len(value), fields
    )


def test_a_dead_letter_copy_counts_its_overhead_its_payload_and_its_headers() -> None:
    bare = DeadLetter(b"key", b"value", [("dlq.reason", b"x")] * 6)
    assert bare.size == 720 + 3 + 5 + 6 * (10 + 1)
    with_headers = DeadLetter(b"key", None, [("h1", b"abc"), ("h2", None)] + [("dlq.reason", b"x")] * 6)
    assert with_headers.size == 720 + 2 * 200 + 3 + (2 + 3) + 2 + 6 * (10 + 1)


@pytest.mark.parametrize(
    ("shape", "value", "headers"), [("tiny", b"x", 0), ("headers", b"x", 3), ("large", b"y" * 60_000, 0)]
)
async def test_the_dead_letter_cap_bounds_the_memory_its_copies_hold(shape: str, value: bytes, headers: int) -> None:
    """Copies are offered until the queue refuses one; what they hold (tracemalloc) stays within the cap.

    Counting payload bytes only, tiny copies held about 5 times the cap (115,922 copies, +80 MB under
    16 MiB). The accounting is measured to follow resident memory (allocator rounding included), so
    tracemalloc, which counts requested bytes, sees 0.85-1.0 of it: the factor stated is
    0.6 <= held / cap <= 1.0.
    """
    cap = 4 * 1024 * 1024
    writer = DeadLetterWriter(ConsumerSettings(dlq_topic="dead-letters"), max_queued_bytes=cap)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        offered = 0
        while writer.offer(consumer_record(offered, value, headers), "topic-abc", "not_json", "value is not JSON"):
            offered += 1
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert writer.queued == offered > 0
    print(f"{shape}: {offered} copies hold {held / cap:.2f} of the cap")
    assert 0.6 * cap <= held <= cap, f"{offered} copies hold {held} bytes under a cap of {cap}"
