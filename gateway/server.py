"""Runs the gateway under uvicorn (uvloop) with its HTTP edge, two ports and a graceful drain on SIGTERM.

uvicorn on its own stops listening at once and then waits for open responses, which for SSE
never end by themselves (the known uvicorn/sse-starlette shutdown hang). Instead, the first
SIGTERM fails readiness at once, ends new streams right after their first events, and closes
open streams spread over ``GATEWAY_DRAIN_SECONDS`` so clients reconnect to other replicas
gradually; only then does uvicorn shut down, bounded by ``GATEWAY_SHUTDOWN_GRACE_SECONDS``.
SIGINT (Ctrl-C) drains at once; a second signal exits immediately.

The public port (streams) and the internal port (health, metrics, docs) are two listening sockets
of one uvicorn server. Which HTTP engine serves them is decided by ``gateway.uvicorn_edge``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket

import uvicorn

from consumers.settings import ConsumerSettings
from gateway.app import GatewayApp, create_app
from gateway.logging_setup import configure_logging
from gateway.settings import GatewaySettings
from gateway.uvicorn_edge import EdgeLimits, EdgeProtocol, EdgeState, GatewayServer, check_engine

log = logging.getLogger("gateway.server")


async def drain(app: GatewayApp, sig: signal.Signals) -> None:
    connections = app.runtime.connections
    seconds = app.runtime.settings.drain_seconds if sig == signal.SIGTERM else 0.0
    log.info("received %s: draining %d streams over %.1fs", sig.name, len(connections), seconds)
    connections.start_drain(seconds)
    try:
        await asyncio.wait_for(connections.drained.wait(), timeout=seconds + 2.0)
    except TimeoutError:
        connections.close_all("draining")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connections.drained.wait(), timeout=1.0)
    log.info("drain finished, %d streams left; shutting down", len(connections))


def choose_engine(settings: GatewaySettings) -> str:
    if settings.http_engine == "asgi":
        return "asgi"
    problem = check_engine()
    if problem:
        log.warning("native HTTP engine unavailable (%s): serving on the portable ASGI path", problem)
        return "asgi"
    return "native"


def build_server(settings: GatewaySettings, consumer_settings: ConsumerSettings) -> tuple[GatewayServer, str]:
    log_config = configure_logging(settings.log_level, settings.log_format, settings.instance_id)
    app = create_app(settings, consumer_settings)
    engine = choose_engine(settings)
    http: object = "httptools"
    if engine == "native":
        limits = EdgeLimits(
            idle_timeout=settings.idle_timeout,
            head_timeout=settings.request_head_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_sockets=settings.max_sockets,
            internal_port=settings.internal_port if settings.internal_port != settings.port else 0,
            root_path=settings.root_path,
            access_log=settings.access_log,
        )
        http = functools.partial(EdgeProtocol, EdgeState(limits, app.events))
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=http,  # type: ignore[arg-type]
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
        # GATEWAY_ROOT_PATH is applied by the stream route itself (with or without the prefix);
        # given to uvicorn too, it would be prepended a second time to paths that carry it.
    )
    return GatewayServer(config, functools.partial(drain, app)), engine


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def listening_sockets(settings: GatewaySettings) -> list[socket.socket]:
    sockets = [bind(settings.host, settings.port)]
    if settings.internal_port and settings.internal_port != settings.port:
        try:
            sockets.append(bind(settings.internal_host, settings.internal_port))
        except OSError:
            sockets[0].close()
            raise
    return sockets


def serve(settings: GatewaySettings, consumer_settings: ConsumerSettings) -> None:
    server, engine = build_server(settings, consumer_settings)
    sockets = listening_sockets(settings)
    log.info(
        "serving streams on %s:%d and health/metrics/docs on %s (%s HTTP engine)",
        settings.host,
        settings.port,
        f"{settings.internal_host}:{settings.internal_port}" if len(sockets) > 1 else "the same port",
        engine,
    )
    server.run(sockets=sockets)
