"""Benchmark 5 worker: replays a topic into a store, in a fresh process, and prints one JSON line.

``python -m benchmarks.replay gateway|naive BOOTSTRAP TOPIC EXPECTED``

- ``gateway``: the project's ``SessionStatusConsumer`` + ``SessionStore`` + ``Hub``, timed from the
  start of ``run()`` until ``progress.caught_up`` is set.
- ``naive``: the same aiokafka fetch settings, each value parsed into a ``SessionStatusEvent`` and
  kept in ``dict[session id, model]``, timed until every partition reached its end offset.

Memory per session = RSS growth of this process (before the consumer starts -> after it stopped and
``gc.collect()``), divided by the sessions held. A deep ``sys.getsizeof`` walk of the store is
reported too, as a cross-check that does not depend on the allocator.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import os
import sys
import time
from datetime import timedelta
from typing import Any

import psutil


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _full_gc_ms() -> float:
    """How long a full collection stops this process with the store in memory (the event loop would wait)."""
    started = time.perf_counter()
    gc.collect()
    return round((time.perf_counter() - started) * 1000, 1)


def deep_size(root: Any) -> int:
    """Bytes of every object reachable from ``root`` through containers and slots/dicts, each counted once."""
    seen: set[int] = set()
    total = 0
    stack = [root]
    shared = (type(None), bool, type, type(Ellipsis))
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, shared):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset) or type(obj).__name__ == "deque":
            stack.extend(obj)
        elif isinstance(obj, str | bytes | int | float):
            continue
        else:
            if hasattr(obj, "__dict__"):
                stack.append(obj.__dict__)
            for cls in type(obj).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if hasattr(obj, name):
                        stack.append(getattr(obj, name))
    return total


async def replay_gateway(bootstrap: str, topic: str, expected: int) -> dict[str, Any]:
    from consumers.consumer import SessionStatusConsumer
    from consumers.hub import Hub
    from consumers.progress import PartitionProgress
    from consumers.settings import ConsumerSettings
    from consumers.store import SessionStore
    from gateway.runtime.heap import freeze_heap
    from gateway.streams.sse import encode_transition

    settings = ConsumerSettings(
        kafka_bootstrap_servers=bootstrap,
        kafka_topic=topic,
        # The cached topic may be older than the defaults allow; nothing may be evicted mid-measure.
        session_ttl=timedelta(days=3650),
        terminal_retention=timedelta(days=3650),
        max_sessions=max(1_000_000, expected),
    )
    store = SessionStore(
        terminal_retention_ms=int(settings.terminal_retention.total_seconds() * 1000),
        session_ttl_ms=int(settings.session_ttl.total_seconds() * 1000),
        max_sessions=settings.max_sessions,
    )
    hub = Hub(encode_transition)
    progress = PartitionProgress()
    consumer = SessionStatusConsumer(settings, store, hub, progress)
    rss_before = _rss()
    started = time.monotonic()
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(progress.caught_up.wait(), 600)
    seconds = time.monotonic() - started
    freeze_heap()  # as the server process does once caught up
    rss_caught_up = int(psutil.Process().memory_info().rss)
    await consumer.stop()
    await asyncio.wait_for(task, 30)
    rss_after = _rss()
    sessions = len(store)
    return {
        "full_gc_ms": _full_gc_ms(),
        "impl": "gateway",
        "records": sum(progress.positions.values()),
        "sessions": sessions,
        "seconds": seconds,
        "rss_before": rss_before,
        "rss_caught_up": rss_caught_up,
        "rss_after": rss_after,
        "deep_bytes": deep_size(store),
    }


async def replay_naive(bootstrap: str, topic: str, expected: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    from schemas import SessionStatusEvent

    store: dict[str, SessionStatusEvent] = {}
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=50 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    rss_before = _rss()
    started = time.monotonic()
    await consumer.start()
    records = 0
    try:
        while not consumer.assignment():  # all partitions, once the metadata arrived
            await asyncio.sleep(0.01)
        tps = sorted(consumer.assignment())
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, batch in batches.items():
                for record in batch:
                    event = SessionStatusEvent.model_validate_json(record.value)
                    store[event.id] = event
                records += len(batch)
                if batch and batch[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
        seconds = time.monotonic() - started
        rss_caught_up = int(psutil.Process().memory_info().rss)
    finally:
        await consumer.stop()
    rss_after = _rss()
    return {
        "full_gc_ms": _full_gc_ms(),
        "impl": "naive",
        "records": records,
        "sessions": len(store),
        "seconds": seconds,
        "rss_before": rss_before,
        "rss_caught_up": rss_caught_up,
        "rss_after": rss_after,
        "deep_bytes": deep_size(store),
    }


def main(argv: list[str]) -> int:
    impl, bootstrap, topic, expected = argv[0], argv[1], argv[2], int(argv[3])
    import uvloop

    replay = replay_gateway if impl == "gateway" else replay_naive
    profile_out = os.environ.get("BENCH_REPLAY_PROFILE")  # set by ``python -m benchmarks --profile cpu``
    profiler = cProfile.Profile() if profile_out else None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if profiler is not None:
            profiler.enable()
        result = runner.run(replay(bootstrap, topic, expected))
        if profiler is not None and profile_out:
            profiler.disable()
            profiler.dump_stats(profile_out)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
