"""The gateway's own background loops, each run by the task supervisor (``Runtime.start``).

They keep the process ready to answer without waiting on a request: keys loaded and refreshed
ahead of use, the replayed heap frozen once, a worker's readiness slot renewed, Kafka log lines
folded. A crash is logged, counted and restarted with backoff (docs/operations.md, "Failure
boundaries"); the consumer's own loops are in ``consumers``.
"""

from __future__ import annotations

import asyncio

from consumers import log_aggregation
from consumers.progress import PartitionProgress
from gateway.auth.issuers import TrustedIssuers
from gateway.runtime.health import HealthPolicy
from gateway.runtime.heap import freeze_heap

WORKER_READINESS_PERIOD = 0.5  # seconds; a slot counts for gateway.runtime.workers.VALIDITY


async def freeze_after_replay(progress: PartitionProgress) -> None:
    """Once the initial replay has caught up, moves what it built out of the collector's reach (``freeze_heap``)."""
    await progress.caught_up.wait()
    freeze_heap()


async def keep_keys_fresh(jwks: TrustedIssuers) -> None:
    """Loads every issuer's signing keys until it works, then refreshes them when due, ahead of any request."""
    while True:
        if not jwks.loaded or jwks.due:
            await jwks.load()
        await asyncio.sleep(1.0 if not jwks.loaded else 5.0)


async def publish_worker_readiness(health: HealthPolicy) -> None:
    """Keeps this worker's slot current, whichever worker the probes reach."""
    while True:
        health.share_readiness()
        await asyncio.sleep(WORKER_READINESS_PERIOD)


async def flush_kafka_logs() -> None:
    """Writes the folded Kafka client lines, and those of refused requests and skipped records, as they come due."""
    aggregator = log_aggregation.install()
    while True:
        await asyncio.sleep(aggregator.interval / 4)
        aggregator.flush()
        log_aggregation.flush_all()
