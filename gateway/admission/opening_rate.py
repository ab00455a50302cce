"""How often tenant streams may open: each opening reads the whole store once (no per-tenant index is
kept, so a session costs no extra memory), which a client holding the scope must not be able to repeat
at will. A token bucket per tenant (``GATEWAY_TENANT_STREAM_OPENING_RATE``/``_BURST``) and one for the
process; beyond, 429 with ``Retry-After``. See
docs/http-api.md (Tenant stream).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

MAX_TRACKED = 10_000  # tenants with a bucket; full buckets are dropped first (they hold nothing)


class Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens, self.stamp = tokens, stamp


class OpeningRate:
    """``wait(tenant)``: 0 when an opening may proceed now (and is counted), else the seconds to wait."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_tenant = (rate, float(burst))  # a dashboard reconnecting, a few tabs
        self.per_process = (rate * 10, float(burst * 4))
        self._clock = clock
        self._tenants: dict[str, Bucket] = {}
        self._process = Bucket(self.per_process[1], clock())

    def wait(self, tenant: str) -> float:
        now = self._clock()
        bucket = self._tenants.get(tenant)
        if bucket is None:
            if len(self._tenants) >= MAX_TRACKED:
                self._forget_full(now)
            bucket = self._tenants[tenant] = Bucket(self.per_tenant[1], now)
        mine = _refill(bucket, now, *self.per_tenant)
        everyone = _refill(self._process, now, *self.per_process)
        if mine < 1 or everyone < 1:
            return max((1 - mine) / self.per_tenant[0], (1 - everyone) / self.per_process[0], 0.001)
        bucket.tokens -= 1
        self._process.tokens -= 1
        return 0.0

    def retry_after(self, seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))

    def _forget_full(self, now: float) -> None:
        full = [
            key for key, bucket in self._tenants.items() if _refill(bucket, now, *self.per_tenant) >= self.per_tenant[1]
        ]
        for key in full or list(self._tenants)[: len(self._tenants) // 2]:
            del self._tenants[key]


def _refill(bucket: Bucket, now: float, rate: float, burst: float) -> float:
    bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
    bucket.stamp = now
    return bucket.tokens
