"""How far the consumer has read each partition, and whether the store has caught up.

Caught up means: the position of every partition reached the end offset captured when
consumption started. Positions, not last offsets, are compared, because compaction and
transaction markers leave gaps (the last record of a partition is often not at end - 1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class PartitionProgress:
    def __init__(self) -> None:
        self.positions: dict[int, int] = {}
        self.targets: dict[int, int] = {}
        self.end_offsets: dict[int, int] = {}
        self.caught_up = asyncio.Event()
        self.broker_reachable = False
        self.last_error: str | None = None
        self._waiters: dict[int, list[tuple[int, asyncio.Future[None]]]] = {}
        self.on_caught_up: Callable[[], None] | None = None

    def set_targets(self, targets: dict[int, int]) -> None:
        """End offsets captured at start; readiness waits for them."""
        self.targets = dict(targets)
        self._check_caught_up()

    def advance(self, partition: int, position: int) -> None:
        if self.positions.get(partition, -1) >= position:
            return
        self.positions[partition] = position
        waiters = self._waiters.get(partition)
        if waiters:
            still = []
            for offset, future in waiters:
                if position > offset:
                    if not future.done():
                        future.set_result(None)
                elif not future.done():
                    still.append((offset, future))
            self._waiters[partition] = still
        if not self.caught_up.is_set():
            self._check_caught_up()

    def reached(self, partition: int, offset: int) -> bool:
        """True once the record at ``offset`` of ``partition`` has been consumed."""
        return self.positions.get(partition, 0) > offset

    async def wait_for(self, partition: int, offset: int, timeout: float) -> bool:
        if self.reached(partition, offset):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (offset, future)
        waiters = self._waiters.setdefault(partition, [])
        waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        finally:
            current = self._waiters.get(partition)
            if current is not None and entry in current:
                current.remove(entry)
        return True

    def lag(self) -> dict[int, int]:
        return {p: max(0, end - self.positions.get(p, 0)) for p, end in self.end_offsets.items()}

    def _check_caught_up(self) -> None:
        if self.targets and all(self.positions.get(p, 0) >= end for p, end in self.targets.items()):
            self.caught_up.set()
            if self.on_caught_up is not None:
                self.on_caught_up()
