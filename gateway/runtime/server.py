"""Runs the gateway: one uvicorn server (uvloop) on two ports, its connections read by the HTTP edge.

uvicorn on its own stops listening and then waits for open responses, which for SSE never end by
themselves (the known uvicorn/sse-starlette shutdown hang). So the first SIGTERM fails readiness at
once and closes open streams spread over ``GATEWAY_DRAIN_SECONDS`` (``drain``), and clients move to
other replicas gradually; only then does uvicorn shut down. ``--workers N`` runs N such servers as
processes on the same ports (``SO_REUSEPORT``) under a parent that only supervises, so the pod
restarts as a whole rather than staying half ready. See docs/operations.md ("Rolling restarts",
"Scaling").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import MutableSequence
from multiprocessing.process import BaseProcess
from pathlib import Path

import uvicorn

from consumers.settings import ConsumerSettings
from gateway.cli.diagnostics import UserError
from gateway.edge.connection import EdgeProtocol
from gateway.edge.state import EdgeLimits, EdgeState
from gateway.edge.uvicorn_seam import GatewayServer, check_engine, supported_versions
from gateway.runtime.app import create_app
from gateway.runtime.logging_setup import configure_logging
from gateway.runtime.pod_metrics import PodMetrics
from gateway.runtime.ports import GatewayApp
from gateway.runtime.workers import WorkerReadiness
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.runtime.server")


async def drain(app: GatewayApp, sig: signal.Signals) -> None:
    connections = app.runtime.connections
    seconds = app.runtime.settings.drain_seconds if sig == signal.SIGTERM else 0.0
    log.info("received %s: draining %d streams over %.1fs", sig.name, len(connections), seconds)
    connections.start_drain(seconds)
    app.runtime.health.share_readiness()  # with --workers: the siblings answer not ready from now on too
    try:
        await asyncio.wait_for(connections.drained.wait(), timeout=seconds + 2.0)
    except TimeoutError:
        connections.close_all("draining")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connections.drained.wait(), timeout=1.0)
    log.info("drain finished, %d streams left; shutting down", len(connections))


def check_http_engine(settings: GatewaySettings) -> None:
    """Raises ``UserError`` unless the gateway's HTTP edge can run here (see ``gateway.edge.connection``)."""
    if settings.http_engine == "asgi":
        raise UserError(
            "GATEWAY_HTTP_ENGINE=asgi: the portable ASGI engine was removed; the gateway serves on its own HTTP "
            f"edge on {supported_versions()} (remove the setting, or set it to native)"
        )
    problem = check_engine()
    if problem:
        raise UserError(f"cannot serve: {problem}; the gateway's HTTP edge runs on {supported_versions()}")


def build_server(
    settings: GatewaySettings,
    consumer_settings: ConsumerSettings,
    workers: WorkerReadiness | None = None,
    pod: PodMetrics | None = None,
) -> GatewayServer:
    log_config = configure_logging(settings.log_level, settings.log_format, settings.instance_id)
    check_http_engine(settings)
    app = create_app(settings, consumer_settings, workers, pod)
    limits = EdgeLimits(
        idle_timeout=settings.idle_timeout,
        head_timeout=settings.request_head_timeout,
        max_header_bytes=settings.max_header_bytes,
        max_sockets=settings.max_sockets,
        internal_port=settings.internal_port if settings.internal_port != settings.port else 0,
        root_path=settings.root_path,
        access_log=settings.access_log,
    )
    http = functools.partial(EdgeProtocol, EdgeState(limits, app.events, app))
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
    return GatewayServer(config, functools.partial(drain, app))


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # workers: one listening socket each on the same port, connections spread by the kernel
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def listening_sockets(settings: GatewaySettings) -> list[socket.socket]:
    reuse_port = settings.workers > 1
    sockets = [bind(settings.host, settings.port, reuse_port)]
    if settings.internal_port and settings.internal_port != settings.port:
        try:
            sockets.append(bind(settings.internal_host, settings.internal_port, reuse_port))
        except OSError:
            sockets[0].close()
            raise
    return sockets


def serve(settings: GatewaySettings, consumer_settings: ConsumerSettings) -> None:
    check_http_engine(settings)
    if settings.workers > 1:
        raise SystemExit(supervise_workers(settings, consumer_settings))
    serve_one(settings, consumer_settings)


def serve_one(
    settings: GatewaySettings,
    consumer_settings: ConsumerSettings,
    workers: WorkerReadiness | None = None,
    pod: PodMetrics | None = None,
) -> None:
    server = build_server(settings, consumer_settings, workers, pod)
    sockets = listening_sockets(settings)
    log.info(
        "serving streams on %s:%d and health/metrics/docs on %s",
        settings.host,
        settings.port,
        f"{settings.internal_host}:{settings.internal_port}" if len(sockets) > 1 else "the same port",
    )
    server.run(sockets=sockets)


# --- Several workers ------------------------------------------------------------------------------------


def _worker_main(
    settings: GatewaySettings,
    consumer_settings: ConsumerSettings,
    index: int,
    ready: MutableSequence[float],
    metrics_dir: str,
) -> None:
    """One worker process (spawned): its own process group, so a terminal's Ctrl-C reaches the parent only."""
    os.setpgid(0, 0)
    _die_with_parent()
    pod = PodMetrics(Path(metrics_dir), index, len(ready))
    serve_one(settings, consumer_settings, WorkerReadiness(ready, index), pod)


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGTERM (a drain) to this worker if the supervising parent dies."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() == 1:  # the parent was already gone
            os.kill(os.getpid(), signal.SIGTERM)


def worker_settings(
    settings: GatewaySettings, consumer_settings: ConsumerSettings, index: int
) -> tuple[GatewaySettings, ConsumerSettings]:
    """Worker ``index``'s settings: a distinct instance id for logs; only worker 0 writes dead letters."""
    gateway = settings.model_copy(update={"instance_id": f"{settings.instance_id}-w{index}"})
    consumer = consumer_settings if index == 0 else consumer_settings.model_copy(update={"dlq_writer": False})
    return gateway, consumer


def supervise_workers(settings: GatewaySettings, consumer_settings: ConsumerSettings) -> int:
    """Starts ``settings.workers`` workers and waits for them; returns the exit code (see module doc)."""
    configure_logging(settings.log_level, settings.log_format, settings.instance_id)
    # The ports are checked free beforehand (cli); a probe bind here fails early and clearly if they are not.
    for sock in listening_sockets(settings):
        sock.close()
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")  # owner-only: the workers' metrics sockets
    try:
        return _supervise(settings, consumer_settings, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: GatewaySettings, consumer_settings: ConsumerSettings, metrics_dir: str) -> int:
    context = multiprocessing.get_context("spawn")
    ready = context.RawArray("d", settings.workers)  # per worker: can serve until (WorkerReadiness)
    workers: list[BaseProcess] = []
    signalled: list[int] = []  # every signal for the workers, in order (received, or sent on our own)
    delivered: dict[int, int] = {}  # worker pid -> how many of ``signalled`` it has been sent
    received: list[int] = []  # signals from outside (SIGTERM from the orchestrator, Ctrl-C)

    def catch_up(worker: BaseProcess) -> None:
        pid = worker.pid
        if pid is None or worker.exitcode is not None:
            return
        for sig in signalled[delivered.get(pid, 0) :]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        delivered[pid] = len(signalled)

    def forward(sig: int) -> None:
        signalled.append(sig)
        for worker in workers:
            catch_up(worker)

    def on_signal(sig: int, frame: object) -> None:
        received.append(sig)
        forward(sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    blocked = {signal.SIGTERM, signal.SIGINT}
    for index in range(settings.workers):
        if received:  # asked to stop while starting: start no more
            break
        gateway, consumer = worker_settings(settings, consumer_settings, index)
        process = context.Process(
            target=_worker_main,
            args=(gateway, consumer, index, ready, metrics_dir),
            name=f"gateway-worker-{index}",
            daemon=False,
        )
        process.start()
        # A signal that arrived while it was starting reaches it now (once: no handler runs in between).
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            workers.append(process)
            catch_up(process)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    log.info(
        "started %d workers (pids %s) on %s:%d, each a replica reading every partition",
        len(workers),
        ", ".join(str(worker.pid) for worker in workers),
        settings.host,
        settings.port,
    )
    failed: int | None = None
    while any(worker.exitcode is None for worker in workers):
        time.sleep(0.2)
        for worker in workers:
            code = worker.exitcode
            if code is not None and failed is None and not received:  # exited on its own
                failed = code if code > 0 else 1
                log.error("worker %s exited with %s: stopping the others", worker.name, code)
                forward(signal.SIGTERM)
    codes = [worker.exitcode for worker in workers]
    if failed is not None:
        return failed
    # A worker that was signalled before it had set up its own handling ends by that signal: not a failure.
    bad = [code for code in codes if code != 0 and not (code is not None and -code in signalled)]
    if bad:
        log.error("workers exited with %s", codes)
        return bad[0] if bad[0] and bad[0] > 0 else 1
    log.info("all %d workers exited", len(workers))
    return 0
