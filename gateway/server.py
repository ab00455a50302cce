"""Runs the gateway under uvicorn (uvloop, httptools) with a graceful drain on SIGTERM.

uvicorn on its own stops listening at once and then waits for open responses, which for SSE
never end by themselves (the known uvicorn/sse-starlette shutdown hang). Instead, the first
SIGTERM fails readiness at once, ends new streams right after their first events, and closes
open streams spread over ``GATEWAY_DRAIN_SECONDS`` so clients reconnect to other replicas
gradually; only then does
uvicorn shut down, bounded by ``GATEWAY_SHUTDOWN_GRACE_SECONDS``. SIGINT (Ctrl-C) drains at once;
a second signal exits immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from types import FrameType

import uvicorn

from consumers.settings import ConsumerSettings
from gateway.app import GatewayApp, create_app
from gateway.logging_setup import configure_logging
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.server")


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: GatewayApp) -> None:
        super().__init__(config)
        self._app = app
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
            self._drain_task = asyncio.create_task(self._drain(self._drain_signal))
        return await super().on_tick(counter)

    async def _drain(self, sig: int) -> None:
        connections = self._app.runtime.connections
        seconds = self._app.runtime.settings.drain_seconds if sig == signal.SIGTERM else 0.0
        log.info("received %s: draining %d streams over %.1fs", signal.Signals(sig).name, len(connections), seconds)
        connections.start_drain(seconds)
        try:
            await asyncio.wait_for(connections.drained.wait(), timeout=seconds + 2.0)
        except TimeoutError:
            connections.close_all("draining")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connections.drained.wait(), timeout=1.0)
        log.info("drain finished, %d streams left; shutting down", len(connections))
        self.should_exit = True


def build_server(settings: GatewaySettings, consumer_settings: ConsumerSettings) -> GatewayServer:
    log_config = configure_logging(settings.log_level, settings.log_format, settings.instance_id)
    app = create_app(settings, consumer_settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        interface="asgi3",
        log_config=log_config,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(max(1, settings.shutdown_grace_seconds)),
        timeout_keep_alive=75,  # above common proxies' idle timeouts (nginx: 60 s)
        backlog=4096,
        server_header=False,
        proxy_headers=True,
    )
    return GatewayServer(config, app)


def raise_open_files_limit() -> int:
    """Each stream is a socket: lift the soft open-files limit to the hard one (often 1024 vs 1M)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def serve(settings: GatewaySettings, consumer_settings: ConsumerSettings) -> None:
    server = build_server(settings, consumer_settings)
    limit = raise_open_files_limit()
    if 0 <= limit < settings.max_connections + 100:
        log.warning(
            "open-files limit %d is below GATEWAY_MAX_CONNECTIONS=%d: streams will fail with EMFILE first",
            limit,
            settings.max_connections,
        )
    server.run()
