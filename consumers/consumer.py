"""Tails the session-status topics into the store and the hub: ``SessionStatusConsumer`` and its tasks.

Every replica reads every partition, because a browser may land on any replica. We use manual
partition assignment and no consumer group at all, rather than a per-replica group:
- a group would add nothing to correctness: each replica must read every partition from the start
  of the retained log anyway, since the store lives in memory, so committed offsets are never used;
- no group means no JoinGroup/rebalance delay on start and no dependence on the group coordinator;
- the gateway needs only Topic READ/DESCRIBE ACLs on an enterprise cluster, no Group ACL, and leaves
  no orphaned group per pod name behind;
- lag is exported per partition on /metrics (``gateway_consumer_lag_records``), which is where the
  SREs running the gateway look, instead of in ``kafka-consumer-groups``.

Consumption, the broker probe, eviction and the dead-letter writer are separate tasks (``tasks()``), each
run under the ``Supervisor``, so one of them crashing neither stops nor silently freezes the others; a
restarted consumer resumes from the positions it had reached. The parts live in ``consumers.consuming``;
how a replica behaves at start, in outages and with bad records: docs/operations.md, docs/event-bus.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from consumers import aiokafka_seam, metrics
from consumers.aiokafka_seam import DecompressionLimits
from consumers.consuming.batch import BatchApplier
from consumers.consuming.connection import Connection, Topics
from consumers.consuming.eviction import StoreEviction
from consumers.consuming.loop import ConsumeLoop
from consumers.consuming.probe import BrokerProbe
from consumers.dead_letter import DeadLetterWriter
from consumers.hub import Hub
from consumers.log_aggregation import ReasonFolding
from consumers.progress import PartitionProgress
from consumers.settings import ConsumerSettings
from consumers.store import SessionStore

if TYPE_CHECKING:
    from consumers.tracing import Tracing

log = logging.getLogger("gateway.consumer")


class SessionStatusConsumer:
    def __init__(
        self,
        settings: ConsumerSettings,
        store: SessionStore,
        hub: Hub,
        progress: PartitionProgress,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.progress = progress
        self.dead_letters = (
            DeadLetterWriter(settings, settings.dlq_topic)
            if settings.dlq_topic is not None and settings.dlq_writer
            else None
        )
        self.record_log = ReasonFolding(log, settings.record_log_lines)
        self._stop_requested = asyncio.Event()
        self.connection = Connection(settings, progress, Topics(settings.kafka_topics))
        self.batches = BatchApplier(
            settings, settings.kafka_topics, store, hub, progress, self.dead_letters, self.record_log, tracing
        )
        self.loop = ConsumeLoop(self.connection, self.batches, progress, store, self.record_log, self._stop_requested)
        self.probe = BrokerProbe(settings.kafka_health_interval, self.connection, progress)
        self.eviction = StoreEviction(store, settings.store_eviction_interval)
        aiokafka_seam.install()  # logs once when it cannot be (an untested aiokafka)
        progress.on_caught_up = lambda: metrics.STORE_CAUGHT_UP.set(1)
        metrics.KAFKA_LAST_FETCH_AGE.set_function(self.seconds_since_contact)

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The long-running tasks to supervise: consumption, the broker probe, store eviction, dead letters."""
        tasks: dict[str, Callable[[], Awaitable[None]]] = {
            "kafka-consumer": self.run,
            "kafka-probe": self.probe.run,
            "store-eviction": self.eviction.run,
        }
        if self.dead_letters is not None:
            tasks["dead-letter-writer"] = self.dead_letters.run
        return tasks

    def seconds_since_contact(self) -> float:
        """Seconds since the broker last answered a fetch or a probe; -1 before it ever did."""
        return self.connection.seconds_since_contact()

    async def run(self) -> None:
        """Connects (retrying), replays, then follows the topics until stopped."""
        aiokafka_seam.use_limits(DecompressionLimits.of(self.settings))  # for this task's reads
        if not await self.connection.open_retrying(self._stop_requested):
            return
        try:
            await self.loop.run()
        finally:
            self.connection.connected.clear()
            self.record_log.flush(everything=True)
            await self.connection.close()

    async def stop(self) -> None:
        self._stop_requested.set()
