"""Keeps the long-running tasks of a replica alive: a crash is logged, counted and restarted.

A task that dies silently freezes whatever it drove (consumption, eviction, heartbeats, key refresh)
while the process still looks healthy. Every such task runs under one ``Supervisor``: an exception
is logged once with its traceback, counted in ``gateway_task_restarts_total{task}`` and the task is
started again after a backoff that doubles up to a cap and resets once the task has run for a while.
A task that keeps crashing (more than ``crash_limit`` times within ``crash_window`` seconds) makes
``healthy()`` false, which ``/livez`` reports, so Kubernetes restarts a replica that cannot heal
itself, and only that one.

Lives in ``consumers`` because the consumer's own tasks need it and ``consumers`` never imports
``gateway``; the gateway supervises its tasks with the same class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from consumers import metrics

log = logging.getLogger("gateway.supervisor")

TaskFactory = Callable[[], Awaitable[None]]


@dataclass
class _Supervised:
    name: str
    factory: TaskFactory
    restart: bool
    crashes: deque[float] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    finished: bool = False


class Supervisor:
    def __init__(
        self,
        crash_limit: int = 5,
        crash_window: float = 300.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.crash_limit = crash_limit
        self.crash_window = crash_window
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._tasks: dict[str, _Supervised] = {}

    def start(self, name: str, factory: TaskFactory, *, restart: bool = True) -> None:
        """Runs ``factory()`` as task ``name``; ``restart=False`` for one-shot tasks (still logged and counted)."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already supervised")
        entry = _Supervised(name, factory, restart)
        entry.task = asyncio.create_task(self._run(entry), name=name)
        self._tasks[name] = entry

    async def _run(self, entry: _Supervised) -> None:
        backoff = self.initial_backoff
        while True:
            started = self._clock()
            try:
                await entry.factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                now = self._clock()
                entry.crashes.append(now)
                metrics.TASK_RESTARTS.labels(entry.name).inc()
                log.exception(
                    "task %s crashed (%d in the last %.0fs)%s",
                    entry.name,
                    self._recent(entry, now),
                    self.crash_window,
                    f"; restarting in {backoff:.1f}s" if entry.restart else "",
                )
                if not entry.restart:
                    entry.finished = True
                    return
                if now - started > self.max_backoff * 4:
                    backoff = self.initial_backoff  # it ran fine for a while: a fresh failure
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            entry.finished = True
            return

    def _recent(self, entry: _Supervised, now: float) -> int:
        while entry.crashes and entry.crashes[0] < now - self.crash_window:
            entry.crashes.popleft()
        return len(entry.crashes)

    def failing(self) -> list[str]:
        """Tasks that crashed more than ``crash_limit`` times within the window."""
        now = self._clock()
        return [name for name, entry in self._tasks.items() if self._recent(entry, now) > self.crash_limit]

    def healthy(self) -> bool:
        return not self.failing()

    def running(self, name: str) -> bool:
        entry = self._tasks.get(name)
        return entry is not None and entry.task is not None and not entry.task.done()

    def report(self) -> dict[str, dict[str, object]]:
        now = self._clock()
        return {
            name: {
                "running": entry.task is not None and not entry.task.done(),
                "finished": entry.finished,
                "recent_crashes": self._recent(entry, now),
            }
            for name, entry in self._tasks.items()
        }

    async def stop(self) -> None:
        tasks = [entry.task for entry in self._tasks.values() if entry.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
