"""Store eviction, every ``GATEWAY_STORE_EVICTION_INTERVAL``: finished and expired sessions leave memory.

Its own task and cadence, independent of the broker: memory must follow the live sessions down during a
Kafka outage too. A session past its TTL or retention is never served even before the sweep
(``consumers.store``); the sweep is what frees it and counts it in ``gateway_sessions_evicted_total``.
What bounds the store: docs/operations.md ("Stale sessions") and docs/security.md.
"""

from __future__ import annotations

import asyncio
import time

from consumers import metrics
from consumers.store import SessionStore


class StoreEviction:
    def __init__(self, store: SessionStore, interval: float) -> None:
        self.store = store
        self.interval = interval

    async def run(self) -> None:
        """Sweeps every ``interval``."""
        while True:
            await asyncio.sleep(self.interval)
            self.sweep()

    def sweep(self) -> None:
        """Evicts what is due now and brings ``gateway_sessions_evicted_total`` and ``gateway_store_sessions``
        up to date."""
        before = dict(self.store.evicted)
        self.store.evict_expired(int(time.time() * 1000))
        for reason, total in self.store.evicted.items():
            if total > before[reason]:
                metrics.SESSIONS_EVICTED.labels(reason).inc(total - before[reason])
        metrics.STORE_SESSIONS.set(len(self.store))
