"""What the gateway relies on of uvicorn and httptools, checked at start-up against the versions tested.

The ``Config(http=callable)`` hook (``gateway.edge.connection.EdgeProtocol`` is that callable), and
``Server.handle_exit`` and ``Server.on_tick``, which ``GatewayServer`` overrides for the graceful drain.
pyproject.toml pins the same ranges; on any other version the gateway refuses to start and names these.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from types import FrameType
from typing import Any

import httptools
import uvicorn

# The versions this module was written and tested against (pyproject pins the same ranges).
TESTED_UVICORN = ("0.54.",)
TESTED_HTTPTOOLS = ("0.6.", "0.7.", "0.8.", "0.9.")


def check_engine() -> str | None:
    """None when the edge can run on the installed uvicorn and httptools, else why not."""
    version = getattr(uvicorn, "__version__", "?")
    if not version.startswith(TESTED_UVICORN):
        return f"uvicorn {version} is not a tested version"
    parser_version = getattr(httptools, "__version__", "?")
    if not parser_version.startswith(TESTED_HTTPTOOLS):
        return f"httptools {parser_version} is not a tested version"
    for hook in ("handle_exit", "on_tick"):
        if not callable(getattr(uvicorn.Server, hook, None)):
            return f"uvicorn.Server.{hook} is gone"
    if "http" not in inspect.signature(uvicorn.Config.__init__).parameters:
        return "uvicorn.Config no longer takes http="
    return None


def supported_versions() -> str:
    uvicorn_versions = ", ".join(v + "x" for v in TESTED_UVICORN)
    return f"uvicorn {uvicorn_versions} with httptools {', '.join(v + 'x' for v in TESTED_HTTPTOOLS)}"


class GatewayServer(uvicorn.Server):
    """uvicorn's server with a graceful drain on the first SIGTERM (see ``gateway.runtime.server``).

    ``handle_exit`` is uvicorn's signal hook: the first signal is only recorded (the drain runs in
    the event loop), a second one exits at once. uvicorn's own bookkeeping of captured signals (it
    re-raises them after shutdown) is skipped on purpose: after a completed drain the process exits 0.
    """

    def __init__(self, config: uvicorn.Config, drain: Any) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_signal: int | None = None
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_signal is None:
            self._drain_signal = sig  # picked up by on_tick, inside the event loop
            return
        self.should_exit = True
        self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_signal is not None and self._drain_task is None:
            self._drain_task = asyncio.create_task(self._run_drain(self._drain_signal))
        return await super().on_tick(counter)

    async def _run_drain(self, sig: int) -> None:
        await self._drain(signal.Signals(sig))
        self.should_exit = True
