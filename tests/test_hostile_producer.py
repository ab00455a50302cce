"""What a hostile or careless producer can make a replica hold or write, against real parts.

- Thousands of bad records write a bounded number of log lines, and the counts are exact.
- The dead-letter queue's cap bounds the memory its copies hold (tracemalloc).
"""

from __future__ import annotations

import logging
import tracemalloc
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from consumers.dead_letter import DeadLetter, DeadLetterWriter
from consumers.log_aggregation import ReasonFolding
from consumers.settings import ConsumerSettings
from tests.kafka_support import (
    Record,
    create_topic,
    event_bytes,
    metric,
    produce,
    running_consumer,
    unique_topic,
)

# --------------------------------------------------------------------------------------------------
# Log volume


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_thousands_of_bad_records_write_a_bounded_number_of_lines_with_exact_counts(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """3,000 bad records of two reasons: 5 lines each in full, then one summary per reason with the count.

    The interval is driven by a clock the test moves, so that the replay falls into one interval however
    slowly the machine runs.
    """
    topic = unique_topic("log-flood")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    records: list[Record] = [(f"nj-{i}".encode(), b"{not json") for i in range(2000)]
    records += [(None, event_bytes(f"nk-{i}", "t", "active")) for i in range(1000)]
    records.append((b"canary", event_bytes("canary", "t", "active")))
    await produce(kafka_bootstrap, topic, records, partition=0)
    suppressed = {
        reason: metric("gateway_record_log_lines_suppressed_total", reason=reason)
        for reason in ("not_json", "missing_key")
    }
    caplog.set_level(logging.INFO, logger="gateway.consumer")
    clock = Clock()

    def lines(kind: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "gateway.consumer" and kind in r.getMessage()]

    async with running_consumer(kafka_bootstrap, topic, record_log_lines=5) as running:
        running.consumer.record_log.clock = clock  # before the consumer's task first runs
        await running.wait_caught_up(30)
        assert "canary" in running.store
        full = lines("skipped malformed record")
        assert len([line for line in full if "reason=not_json" in line]) == 5, full
        assert len([line for line in full if "reason=missing_key" in line]) == 5, full
        assert lines("suppressed") == []
        assert metric("gateway_record_log_lines_suppressed_total", reason="not_json") - suppressed["not_json"] == 1995
        assert (
            metric("gateway_record_log_lines_suppressed_total", reason="missing_key") - suppressed["missing_key"] == 995
        )

        clock.now += 61  # the interval is over: the consumer's next poll writes one summary per reason
        await running.wait_until(lambda: len(lines("suppressed")) == 2, 15, "no summary lines")
        summaries = lines("suppressed")
        assert any("suppressed 1995 more log lines of skipped records reason=not_json" in line for line in summaries)
        assert any("suppressed 995 more log lines of skipped records reason=missing_key" in line for line in summaries)

        # A new interval: its own lines, and its summary when the consumer stops.
        await produce(kafka_bootstrap, topic, [(f"nj2-{i}".encode(), b"[") for i in range(100)], partition=0)
        await running.wait_until(
            lambda: running.progress.positions.get(0) == len(records) + 100, 30, "live records not read"
        )
    assert len([line for line in lines("skipped malformed record") if "reason=not_json" in line]) == 10
    summaries = lines("suppressed")
    assert len(summaries) == 3 and "suppressed 95 more log lines of skipped records reason=not_json" in summaries[2]
    assert metric("gateway_record_log_lines_suppressed_total", reason="not_json") - suppressed["not_json"] == 2090
    # 3,100 bad records: 5 lines per reason and interval, and a summary per reason and interval
    assert len(lines("skipped malformed record")) + len(summaries) == 18


def test_folding_is_per_reason_and_interval_and_keeps_the_highest_level() -> None:
    clock = Clock()
    logger = logging.getLogger("tests.folding")
    emitted: list[tuple[int, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            emitted.append((record.levelno, record.getMessage()))

    handler = Collect()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        folding = ReasonFolding(logger, lines=2, interval=60, clock=clock)
        logged = [folding.log(logging.WARNING, "a", "line %d", i) for i in range(5)]
        folding.log(logging.ERROR, "a", "worse")
        folding.log(logging.WARNING, "b", "other reason")
        assert logged == [True, True, False, False, False]
        assert [message for _, message in emitted] == ["line 0", "line 1", "other reason"]
        folding.flush()
        assert len(emitted) == 3, "nothing is summarised before the interval is over"
        clock.now += 60
        assert folding.log(logging.WARNING, "a", "next interval") is True  # closes the old interval first
        assert emitted[3] == (logging.ERROR, "suppressed 4 more log lines of skipped records reason=a in the "
                              "last 60s (2 logged in full; every record is counted in the metrics)")  # fmt: skip
        assert emitted[4] == (logging.WARNING, "next interval")
        folding.flush()  # b had nothing suppressed: no summary
        assert len(emitted) == 5
        folding.log(logging.WARNING, "a", "x")
        folding.log(logging.WARNING, "a", "y")
        folding.flush(everything=True)
        assert emitted[-1][1].startswith("suppressed 1 more log lines of skipped records reason=a")
        silent = ReasonFolding(logger, lines=0, interval=60, clock=clock)
        assert silent.log(logging.WARNING, "c", "never") is False
    finally:
        logger.removeHandler(handler)


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
