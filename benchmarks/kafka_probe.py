"""The Kafka floor of benchmark 3: a bare aiokafka consumer, with the gateway's consumer options,
reading the same topic while the transitions are produced, timing ``now - updatedAt`` per record.

``python -m benchmarks.kafka_probe BOOTSTRAP TOPIC EXPECTED TIMEOUT_S OUT.json``: prints ``ready`` once
it is positioned at the end of every partition, and writes the delays (ms, a JSON list) to OUT.json when
it has read EXPECTED records or TIMEOUT_S passed. Whatever the gateway adds on top of this is its own doing (or
the load processes').
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import orjson


async def probe(bootstrap: str, topic: str, expected: int, timeout: float) -> list[float]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        isolation_level="read_committed",
        fetch_max_bytes=50 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    delays: list[float] = []
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.01)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        print("ready", flush=True)
        deadline = time.monotonic() + timeout
        while len(delays) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            now_ms = time.time() * 1000
            for records in batches.values():
                for record in records:
                    stamp = orjson.loads(record.value)["updatedAt"]
                    delays.append(now_ms - datetime.fromisoformat(stamp).timestamp() * 1000)
    finally:
        await consumer.stop()
    return delays


def main(argv: list[str]) -> int:
    import uvloop

    bootstrap, topic, expected, timeout, out = argv[0], argv[1], int(argv[2]), float(argv[3]), Path(argv[4])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        delays = runner.run(probe(bootstrap, topic, expected, timeout))
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(delays))
    partial.rename(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
