"""Replay, part by part, in one process: what the Kafka client costs and what applying costs, per record.

``python -m benchmarks.replay_parts BOOTSTRAP TOPIC [ROUNDS]``

benchmarks/replay.py (benchmark 5) times the whole replay; this splits it for A/B work on the consumer:

- ``fetch``: the consumer's aiokafka client (same fetch sizes as ``consumers.consuming.connection``, the
  seam installed) reads the whole topic into memory; wall and CPU time per record;
- ``apply``: ``BatchApplier.apply`` of those very batches into a fresh store, ``ROUNDS`` times (CPU per
  record, median), and the same records through ``decode_record`` alone, then ``SessionStore.apply`` alone.

Prints one JSON line. Needs a broker holding the topic (``python -m benchmarks --only 5`` makes it).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from typing import Any


async def fetch_all(bootstrap: str, topic: str) -> tuple[list[tuple[str, list[Any]]], float, float]:
    """Every record of ``topic`` as the consume loop gets them (batches per partition); wall s, CPU s."""
    from aiokafka import AIOKafkaConsumer

    from consumers import aiokafka_seam
    from consumers.settings import ConsumerSettings

    aiokafka_seam.install()
    settings = ConsumerSettings(kafka_bootstrap_servers=bootstrap, kafka_topic=topic)
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        bootstrap_servers=bootstrap,
        fetch_max_bytes=settings.kafka_max_fetch_bytes,
        max_partition_fetch_bytes=min(settings.kafka_max_fetch_bytes, 8 * 1024 * 1024),
    )
    await consumer.start()
    try:
        await aiokafka_seam.refresh_topics(consumer, (topic,))
        tps = [tp for tp in _tps(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        batches: list[tuple[str, list[Any]]] = []
        wall, cpu = time.perf_counter(), time.process_time()
        while remaining:
            most = int(os.environ.get("BENCH_MAX_RECORDS", "5000"))
            fetched = await consumer.getmany(timeout_ms=200, max_records=most)
            for tp, records in fetched.items():
                batches.append((tp.topic, records))
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return batches, time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await consumer.stop()


def _tps(consumer: Any, topic: str) -> list[Any]:
    from aiokafka import TopicPartition

    return [TopicPartition(topic, partition) for partition in sorted(consumer.partitions_for_topic(topic) or ())]


def apply_round(batches: list[tuple[str, list[Any]]], topic: str) -> tuple[float, int]:
    """CPU seconds to apply every batch into a fresh store; sessions held."""
    from consumers.consuming.batch import BatchApplier
    from consumers.hub import Hub
    from consumers.log_aggregation import ReasonFolding
    from consumers.progress import PartitionProgress
    from consumers.settings import ConsumerSettings
    from consumers.store import SessionStore
    from gateway.streams.sse import encode_transition

    settings = ConsumerSettings(kafka_bootstrap_servers="localhost:1", kafka_topic=topic)
    store = SessionStore(
        terminal_retention_ms=int(timedelta(days=3650).total_seconds() * 1000),
        session_ttl_ms=int(timedelta(days=3650).total_seconds() * 1000),
        max_sessions=10_000_000,
    )
    import logging

    applier = BatchApplier(
        settings,
        (topic,),
        store,
        Hub(encode_transition),
        PartitionProgress(),
        None,
        ReasonFolding(logging.getLogger("bench"), 10),
    )
    gc.collect()
    started = time.process_time()
    for name, records in batches:
        applier.apply(name, records)
    return time.process_time() - started, len(store)


def decode_round(batches: list[tuple[str, list[Any]]]) -> float:
    from consumers.records import decode_record

    started = time.process_time()
    for _, records in batches:
        for record in records:
            decode_record(record.key, record.value, 65536)
    return time.process_time() - started


def main(argv: list[str]) -> int:
    bootstrap, topic = argv[0], argv[1]
    rounds = int(argv[2]) if len(argv) > 2 else 3
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        batches, fetch_wall, fetch_cpu = runner.run(fetch_all(bootstrap, topic))
    count = sum(len(records) for _, records in batches)
    gc.freeze()  # the fetched records are not what is measured
    applies = [apply_round(batches, topic) for _ in range(rounds)]
    decodes = [decode_round(batches) for _ in range(rounds)]
    result = {
        "records": count,
        "batches": len(batches),
        "fetch_wall_us": round(fetch_wall / count * 1e6, 3),
        "fetch_cpu_us": round(fetch_cpu / count * 1e6, 3),
        "apply_cpu_us": round(statistics.median(seconds for seconds, _ in applies) / count * 1e6, 3),
        "apply_rounds_us": [round(seconds / count * 1e6, 3) for seconds, _ in applies],
        "decode_cpu_us": round(statistics.median(decodes) / count * 1e6, 3),
        "sessions": applies[-1][1],
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
