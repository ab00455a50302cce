"""Readiness of a pod that runs several workers (``serve --workers N``): ready only when every worker is.

The workers share the ports (``SO_REUSEPORT``), so a readiness probe reaches whichever worker the kernel
picks. Without this, the pod would turn ready as soon as one worker had caught up, and the streams the
kernel hands to a worker still replaying would wait for it (and after ``GATEWAY_REPLAY_WAIT`` get a 503,
which ends a browser's EventSource for good). The supervising parent shares one slot per worker; a worker
that can serve renews its slot twice a second (``gateway.runtime.loops``) with a deadline on the
system-wide monotonic clock, and every worker's ``/readyz`` requires every slot to be current. A worker that is
frozen (SIGSTOP, a blocked event loop) or dead stops renewing, so its slot runs out within
``VALIDITY`` seconds instead of reporting the pod ready forever.

A worker's own answer and its slot change together: whenever it evaluates its own checks (each
renewal, each ``/readyz`` it answers, the start of a drain) it writes the result to its slot first,
and it answers ready only while every slot, its own included, is current. So the pod's answer is the
same whichever worker a probe reaches: a worker never answers ready before its siblings can see it is,
nor not ready while its siblings still see it as ready.
"""

from __future__ import annotations

import time
from collections.abc import MutableSequence

VALIDITY = 2.0  # seconds a renewal counts; renewed every 0.5 s


class WorkerReadiness:
    def __init__(self, ready_until: MutableSequence[float], index: int) -> None:
        self._ready_until = ready_until
        self.index = index

    def publish(self, ready: bool) -> None:
        """Records whether this worker, by itself, can serve (for the next ``VALIDITY`` seconds)."""
        self._ready_until[self.index] = time.monotonic() + VALIDITY if ready else 0.0

    def not_ready(self) -> list[int]:
        """The indexes of the workers, this one included, that cannot serve or have not said so recently."""
        now = time.monotonic()
        return [index for index, until in enumerate(self._ready_until) if until <= now]
