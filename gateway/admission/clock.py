"""The open streams of this process and the one clock task that serves them all.

One task instead of a timer per stream: each tick heartbeats one slice of the streams (so a heartbeat
wave never wakes every connection at once) and cuts those that stopped reading or whose client went
away; once a second it closes the streams whose token expired, found by the second they expire in
(visiting only those: a pass over every stream blocked the loop for milliseconds at 10,000 streams,
the tail of the delivery delay); during a drain it closes the next share of streams, so clients move
to other replicas gradually. A failure on one stream closes that stream only. See docs/operations.md
(Rolling restarts, Slow clients, Failure boundaries).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from typing import Protocol

from consumers.hub import Hub
from gateway import metrics
from gateway.settings import StreamSettings

# The logger name its lines had before the clock left gateway.admission.registry.
log = logging.getLogger("gateway.admission.registry")

# A tick's slice of streams is heartbeat_interval / TICK_SECONDS of them: with 10,000 streams and the default 15 s,
# 33 per tick (a tick of 0.25 s took 167, a few ms of writes and checks in one go, in the delivery delay's tail).
TICK_SECONDS = 0.05
_TICKS_PER_SWEEP = round(1 / TICK_SECONDS)  # the expiry sweep: once a second


class OpenStream(Protocol):
    """What the clock and the limits need of an open stream (``gateway.streams.stream.NativeStream``)."""

    session_id: str
    slot: int
    last_write: float
    expires_at: float
    close_reason: str | None

    def stalled(self) -> bool: ...
    def heartbeat(self) -> None: ...
    def disconnected(self) -> bool: ...
    def close(self, reason: str) -> None: ...
    def cut_slow_client(self) -> None: ...


class StreamClock:
    """Every open stream, in heartbeat slots; the clock (``run_clock``), the sweep and the drain."""

    def __init__(self, settings: StreamSettings, hub: Hub) -> None:
        self._settings = settings
        self._hub = hub
        self._slot_count = max(1, math.ceil(settings.heartbeat_interval / TICK_SECONDS))
        self._slots: list[set[OpenStream]] = [set() for _ in range(self._slot_count)]
        self._next_slot = 0
        self._count = 0
        # The streams whose token expires, by the second it expires in, and those seconds as a heap (with seconds
        # whose streams all ended before: popped when due, or dropped when the heap outgrows the dict).
        self._expiring: dict[int, set[OpenStream]] = {}
        self._expiry_seconds: list[int] = []
        self._tick = 0
        self.draining = False
        self.drained = asyncio.Event()
        self._drain_started = 0.0
        self._drain_seconds = 0.0
        self._drain_total = 0

    def __len__(self) -> int:
        return self._count

    def add(self, stream: OpenStream) -> None:
        stream.slot = self._next_slot
        self._next_slot = (self._next_slot + 1) % self._slot_count
        self._slots[stream.slot].add(stream)
        self._count += 1
        metrics.OPEN_STREAMS.inc()
        second = self._expiry_second(stream)
        if second is not None:
            expiring = self._expiring.get(second)
            if expiring is None:
                expiring = self._expiring[second] = set()
                heapq.heappush(self._expiry_seconds, second)
            expiring.add(stream)

    def remove(self, stream: OpenStream) -> None:
        slot = self._slots[stream.slot]
        if stream not in slot:
            return
        slot.discard(stream)
        self._count -= 1
        second = self._expiry_second(stream)
        expiring = None if second is None else self._expiring.get(second)
        if expiring is not None and second is not None:
            expiring.discard(stream)
            if not expiring:
                del self._expiring[second]
                if len(self._expiry_seconds) > 2 * len(self._expiring) + 64:
                    self._expiry_seconds = list(self._expiring)
                    heapq.heapify(self._expiry_seconds)
        metrics.OPEN_STREAMS.dec()
        if self.draining and not self._count:
            self.drained.set()

    def _expiry_second(self, stream: OpenStream) -> int | None:
        """The second a stream's token expires in, when the clock closes it then (else None)."""
        if self._settings.close_on_token_expiry and math.isfinite(stream.expires_at):
            return int(stream.expires_at)
        return None

    def start_drain(self, seconds: float) -> None:
        """Refuses new streams from now on and closes open ones spread over ``seconds``."""
        if self.draining:
            return
        self.draining = True
        self._drain_started = time.monotonic()
        self._drain_seconds = seconds
        self._drain_total = self._count
        log.info("draining %d streams over %.1fs", self._count, seconds)
        if not self._count:
            self.drained.set()
        self._drain_step()

    def close_all(self, reason: str) -> None:
        for slot in self._slots:
            for stream in tuple(slot):
                stream.close(reason)

    async def run_clock(self) -> None:
        """The shared clock (run by the supervisor); a failure on one stream closes that stream only."""
        settings = self._settings
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self._tick += 1
            now = time.monotonic()
            stale_before = now - settings.heartbeat_interval + TICK_SECONDS
            for stream in tuple(self._slots[self._tick % self._slot_count]):
                try:
                    if stream.disconnected():
                        stream.close("client_disconnected")
                    elif stream.stalled():
                        stream.cut_slow_client()
                    elif stream.last_write <= stale_before:
                        stream.heartbeat()
                except Exception:
                    self._clock_failed(stream)
            if self._tick % _TICKS_PER_SWEEP == 0:
                self._sweep(time.time())
            if self.draining:
                self._drain_step()

    def _clock_failed(self, stream: OpenStream) -> None:
        metrics.CLOCK_ERRORS.inc()
        log.exception("the stream clock failed on a stream of session %r; closing it", stream.session_id)
        self.remove(stream)
        self._hub.unsubscribe(stream.session_id, stream)  # type: ignore[arg-type]
        with contextlib.suppress(Exception):
            stream.close("clock_error")

    def _sweep(self, wall: float) -> None:
        """Once a second: the streams whose token expired (``expires_at <= wall``), and only those visited."""
        while self._expiry_seconds and self._expiry_seconds[0] <= wall:
            second = self._expiry_seconds[0]
            expiring = self._expiring.get(second)
            for stream in tuple(expiring or ()):
                if stream.expires_at > wall:
                    continue  # later in this second: the next sweep
                try:
                    stream.close("token_expired")
                except Exception:
                    self._clock_failed(stream)
                self.remove(stream)  # its close removed it already (registry): then this does nothing
            if second in self._expiring:
                return  # streams of this second expire later in it
            seconds = self._expiry_seconds  # (remove() may have rebuilt it without this second)
            if seconds and seconds[0] == second:
                heapq.heappop(seconds)

    def _drain_step(self) -> None:
        """Closes streams on a uniform schedule: the k-th of n at (k - 1/2) / n of the drain time.

        Streams that ended by themselves meanwhile count as drained; new ones (closed at once after their
        state, see ``gateway.edge.connection``) do not change the schedule.
        """
        open_streams = [s for slot in self._slots for s in slot if s.close_reason is None]
        if not open_streams:
            return
        total, seconds = self._drain_total, self._drain_seconds
        fraction = 1.0 if seconds <= 0 else min(1.0, (time.monotonic() - self._drain_started) / seconds)
        may_stay_open = total - min(total, math.floor(total * fraction + 0.5))
        for stream in open_streams[: max(0, len(open_streams) - may_stay_open)]:
            stream.close("draining")
