"""Readiness of a pod that runs several workers (``serve --workers N``): ready only when every worker is.

The workers share the ports (``SO_REUSEPORT``), so a readiness probe reaches whichever worker the kernel
picks. Without this, the pod would turn ready as soon as one worker had caught up, and the streams the
kernel hands to a worker still replaying would wait for it (and after ``GATEWAY_REPLAY_WAIT`` get a 503,
which ends a browser's EventSource for good). The supervising parent shares one byte per worker; each
worker keeps its own byte current (``Runtime`` publishes it twice a second) and every worker's
``/readyz`` requires all of them.
"""

from __future__ import annotations

from collections.abc import MutableSequence


class WorkerReadiness:
    def __init__(self, flags: MutableSequence[int], index: int) -> None:
        self._flags = flags
        self.index = index

    def publish(self, ready: bool) -> None:
        """Records whether this worker, by itself, can serve."""
        self._flags[self.index] = 1 if ready else 0

    def others_not_ready(self) -> list[int]:
        """The indexes of the other workers that cannot serve yet (or no longer)."""
        return [index for index, flag in enumerate(self._flags) if not flag and index != self.index]
