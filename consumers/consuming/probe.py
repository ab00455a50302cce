"""The broker probe, every ``GATEWAY_KAFKA_HEALTH_INTERVAL`` once connected: reachability, lag, new partitions.

A task of its own, apart from the consume loop: an idle topic returns no fetches, so only an explicit request
tells whether the broker still answers (``gateway_broker_reachable``, ``/readyz`` warnings) and how far each
partition lags (``gateway_consumer_lag_records``). Partitions added to a topic are found here and assigned by
the consume loop between two fetches. Readiness and alerts: docs/operations.md.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError

from consumers import metrics
from consumers.consuming.connection import Connection
from consumers.partitions import format_partition
from consumers.progress import PartitionProgress

log = logging.getLogger("gateway.consumer")


class BrokerProbe:
    def __init__(self, interval: float, connection: Connection, progress: PartitionProgress) -> None:
        self.interval = interval
        self.connection = connection
        self.progress = progress

    async def run(self) -> None:
        """Probes every ``interval`` while connected; a failed probe marks the broker unreachable."""
        interval = self.interval
        while True:
            await asyncio.sleep(interval)
            if not self.connection.connected.is_set():
                continue
            try:
                await asyncio.wait_for(self.once(), timeout=max(interval, 2.0))
            except (KafkaError, OSError, TimeoutError) as error:
                if self.progress.broker_reachable:
                    log.warning("kafka broker unreachable: %s", str(error) or type(error).__name__)
                self.progress.broker_reachable = False
                self.progress.last_error = f"broker unreachable: {str(error) or type(error).__name__}"
                metrics.BROKER_REACHABLE.set(0)

    async def once(self) -> None:
        connection, progress = self.connection, self.progress
        consumer = connection.client
        topics = connection.topics
        tps = [topics.tp(number) for number in sorted(connection.partitions)]
        end_offsets = await consumer.end_offsets(tps)
        progress.end_offsets = {topics.number(tp): offset for tp, offset in end_offsets.items()}
        # A fetch of only aborted or control batches moves the position without returning records.
        for tp in tps:
            progress.advance(topics.number(tp), await consumer.position(tp))
        for number, lag in progress.lag().items():
            label = format_partition(number)
            metrics.CONSUMER_LAG.labels(label).set(lag)
            metrics.CONSUMER_POSITION.labels(label).set(progress.positions.get(number, 0))
        if not progress.broker_reachable:
            log.info("kafka broker reachable again")
        connection.last_contact = time.monotonic()
        progress.broker_reachable = True
        progress.last_error = None
        metrics.BROKER_REACHABLE.set(1)
        current = await connection.partitions_on_broker(strict=False)
        added = current - connection.partitions - connection.gained
        if added:
            log.info("gained partitions %s", ", ".join(str(topics.tp(number)) for number in sorted(added)))
            connection.gained |= added
