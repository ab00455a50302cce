"""Assembles the gateway: store, hub and consumer from ``consumers``, and the HTTP surface.

``GatewayApp`` is the ASGI entry point. It routes ``GET /session/{id}/events`` straight to the
streaming endpoint (no middleware frames held per open stream) and everything else to one of two
FastAPI apps: the public port's (a bare liveness answer and, in dev mode only, the demo) and the
internal port's (health, metrics, OpenAPI docs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from consumers import log_aggregation
from consumers.consumer import SessionStatusConsumer
from consumers.hub import Hub
from consumers.progress import PartitionProgress
from consumers.settings import ConsumerSettings
from consumers.store import SessionStore
from consumers.supervision import Supervisor
from gateway import metrics
from gateway.admission.endpoint import EventsEndpoint
from gateway.admission.registry import ConnectionRegistry
from gateway.auth.jwks import JwksCache
from gateway.auth.verifier import TokenVerifier
from gateway.edge.route import PATH_TEMPLATE, openapi_operation
from gateway.runtime.api_docs import mount_docs
from gateway.runtime.heap import freeze_heap
from gateway.runtime.workers import WorkerReadiness
from gateway.settings import GatewaySettings
from gateway.streams.sse import encode_transition

log = logging.getLogger("gateway.runtime.app")


@dataclass
class Runtime:
    """Everything one gateway process runs; built once, shared by the endpoints."""

    settings: GatewaySettings
    consumer_settings: ConsumerSettings
    store: SessionStore
    hub: Hub
    progress: PartitionProgress
    consumer: SessionStatusConsumer
    http: httpx.AsyncClient
    jwks: JwksCache
    verifier: TokenVerifier
    connections: ConnectionRegistry
    supervisor: Supervisor
    workers: WorkerReadiness | None = None  # with ``serve --workers N``: the pod is ready when all are

    @classmethod
    def build(
        cls,
        settings: GatewaySettings,
        consumer_settings: ConsumerSettings,
        workers: WorkerReadiness | None = None,
    ) -> Runtime:
        store = SessionStore(
            terminal_retention_ms=int(consumer_settings.terminal_retention.total_seconds() * 1000),
            session_ttl_ms=int(consumer_settings.session_ttl.total_seconds() * 1000),
            max_sessions=consumer_settings.max_sessions,
        )
        hub = Hub(encode_transition)
        progress = PartitionProgress()
        http = httpx.AsyncClient(follow_redirects=False, headers={"user-agent": "session-events-gateway"})
        jwks = JwksCache(settings, http)
        return cls(
            settings=settings,
            consumer_settings=consumer_settings,
            store=store,
            hub=hub,
            progress=progress,
            consumer=SessionStatusConsumer(consumer_settings, store, hub, progress),
            http=http,
            jwks=jwks,
            verifier=TokenVerifier(settings, jwks),
            connections=ConnectionRegistry(settings, hub),
            supervisor=Supervisor(settings.task_crash_limit, settings.task_crash_window),
            workers=workers,
        )

    def readiness(self) -> dict[str, Any]:
        """Ready = can serve: the initial replay is done, keys were loaded once, not draining.

        Losing the broker or the identity provider afterwards does not make a replica unready: the
        store is current up to the outage and the cached keys still verify tokens, while an unready
        fleet would answer 503 everywhere, and a browser's EventSource never retries after an error
        status. Both show in the body and in metrics; ``GATEWAY_READINESS_STRICT`` makes them count.
        """
        checks, reasons, warnings = self._own_readiness()
        if self.workers is not None:
            # This worker's slot is written before it answers (see gateway.runtime.workers): its answer
            # and what its siblings answer for it never disagree, whichever worker a probe reaches.
            self.workers.publish(not reasons)
            waiting = self.workers.not_ready()
            checks["all_workers_ready"] = not waiting
            others = [index for index in waiting if index != self.workers.index]
            if others:
                reasons.append(f"worker {', '.join(map(str, others))} of this server not ready yet")
        report: dict[str, Any] = {"status": "ready" if not reasons else "not ready", "checks": checks}
        report["reasons"] = reasons
        if warnings:
            report["warnings"] = warnings
        report["seconds_since_broker_contact"] = round(self.consumer.seconds_since_contact(), 1)
        report["seconds_since_keys_refreshed"] = round(self.jwks.seconds_since_refresh(), 1)
        report["tasks"] = self.supervisor.report()
        return report

    def _own_readiness(self) -> tuple[dict[str, bool], list[str], list[str]]:
        """This process's checks, the reasons it cannot serve, and warnings (see ``readiness``)."""
        strict = self.settings.readiness_strict
        broker_reachable = self.progress.broker_reachable
        keys_fresh = self.jwks.loaded and self.jwks.last_error is None
        checks = {
            "store_caught_up": self.progress.caught_up.is_set(),
            "signing_keys_loaded": self.jwks.loaded,
            "accepting_streams": not self.connections.draining,
            "broker_reachable": broker_reachable,
            "signing_keys_fresh": keys_fresh,
        }
        reasons = []
        if not checks["store_caught_up"]:
            reasons.append("session store is still replaying the topic")
            if self.progress.last_error:
                reasons.append(f"Kafka: {self.progress.last_error}")
        if not checks["signing_keys_loaded"]:
            reasons.append(self.jwks.last_error or "signing keys not loaded yet")
        if not checks["accepting_streams"]:
            reasons.append("shutting down")
        warnings = []
        if not broker_reachable and self.progress.caught_up.is_set():
            warnings.append("Kafka broker not reachable: serving from memory")
        if self.jwks.loaded and not keys_fresh:
            warnings.append("signing keys could not be refreshed: using the cached keys")
        if strict:
            reasons.extend(warnings)
            warnings = []
        return checks, reasons, warnings

    def liveness(self) -> dict[str, Any]:
        failing = self.supervisor.failing()
        if failing:
            return {"status": "failed", "reason": f"tasks keep crashing: {', '.join(failing)}"}
        return {"status": "alive"}

    async def _freeze_after_replay(self) -> None:
        await self.progress.caught_up.wait()
        freeze_heap()

    async def _keep_keys_fresh(self) -> None:
        """Loads the signing keys until it works, then refreshes them when due, ahead of any request."""
        jwks = self.jwks
        while True:
            if not jwks.loaded or jwks.due:
                await jwks.load()
            await asyncio.sleep(1.0 if not jwks.loaded else 5.0)

    def share_readiness(self) -> None:
        """With ``--workers``: writes this worker's own readiness to its shared slot (see ``readiness``)."""
        if self.workers is not None:
            self.workers.publish(not self._own_readiness()[1])

    async def _publish_worker_readiness(self) -> None:
        """Keeps this worker's slot current, whichever worker the probes reach."""
        while True:
            self.share_readiness()
            await asyncio.sleep(0.5)

    async def _flush_kafka_logs(self) -> None:
        aggregator = log_aggregation.install()
        while True:
            await asyncio.sleep(aggregator.interval / 4)
            aggregator.flush()
            log_aggregation.flush_all()  # folded lines of refused requests and skipped records

    async def start(self) -> None:
        metrics.JWKS_LAST_REFRESH_AGE.set_function(self.jwks.seconds_since_refresh)
        metrics.JWKS_WAITING.set_function(lambda: self.jwks.waiting)
        supervisor = self.supervisor
        for name, task in self.consumer.tasks().items():
            supervisor.start(name, task)
        supervisor.start("gc-freeze", self._freeze_after_replay, restart=False)
        supervisor.start("jwks-refresh", self._keep_keys_fresh)
        supervisor.start("stream-clock", self.connections.run_clock)
        supervisor.start("kafka-log-summary", self._flush_kafka_logs)
        if self.workers is not None:
            supervisor.start("worker-readiness", self._publish_worker_readiness)

    async def stop(self) -> None:
        self.connections.close_all("shutdown")
        await self.consumer.stop()
        await self.supervisor.stop()
        await self.http.aclose()


class GatewayApp:
    """ASGI entry point; see the module docstring.

    The stream route and its preflight never reach it: the HTTP edge serves them (``gateway.edge.connection``).
    The public port serves a bare ``/livez`` (plus the demo in dev mode); health details, metrics and docs
    are on the internal port, told apart by the request's local port (``scope["server"]``). With
    ``GATEWAY_INTERNAL_PORT=0`` everything is on one port.
    """

    def __init__(self, runtime: Runtime, public: FastAPI, internal: FastAPI, events: EventsEndpoint) -> None:
        self.runtime = runtime
        self.public = public
        self.internal = internal
        self.events = events
        settings = runtime.settings
        self._internal_port = settings.internal_port if settings.internal_port != settings.port else 0
        self._root_path = settings.root_path

    def is_internal(self, scope: Scope) -> bool:
        if not self._internal_port:
            return True
        server = scope.get("server")
        return server is not None and server[1] == self._internal_port

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.internal(scope, receive, send)  # lifespan
        return (self.internal if self.is_internal(scope) else self.public)(scope, receive, send)


def _openapi(internal: FastAPI, public: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's document of both ports plus the stream route, from its one definition (``gateway.edge.route``)."""

    def build() -> dict[str, Any]:
        if internal.openapi_schema is None:
            document = get_openapi(
                title=internal.title,
                version=internal.version,
                description=internal.description,
                routes=[*internal.routes, *public.routes],
            )
            document.setdefault("paths", {})[PATH_TEMPLATE] = {"get": openapi_operation()}
            internal.openapi_schema = document
        return internal.openapi_schema

    return build


def create_app(
    settings: GatewaySettings | None = None,
    consumer_settings: ConsumerSettings | None = None,
    workers: WorkerReadiness | None = None,
) -> GatewayApp:
    settings = settings or GatewaySettings()
    consumer_settings = consumer_settings or ConsumerSettings()
    runtime = Runtime.build(settings, consumer_settings, workers)
    events = EventsEndpoint(
        settings, runtime.store, runtime.hub, runtime.progress, runtime.verifier, runtime.connections
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    internal = FastAPI(
        title="session-events-gateway",
        version="0.1.0",
        description="Streams wallet-session status changes from Kafka to browsers over Server-Sent Events. "
        "The stream route is served on the public port; health, metrics and these docs on the internal port.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    mount_docs(internal)  # Swagger UI from a package: works offline and under a strict CSP
    public = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @public.get("/livez", include_in_schema=False)
    async def public_livez() -> JSONResponse:
        return JSONResponse({"status": "alive"})

    @internal.get("/livez", tags=["Health"], summary="Liveness: no supervised task keeps crashing")
    async def livez() -> JSONResponse:
        report = runtime.liveness()
        return JSONResponse(report, status_code=200 if report["status"] == "alive" else 503)

    @internal.get("/readyz", tags=["Health"], summary="Readiness: initial replay done, keys loaded once, not draining")
    async def readyz() -> JSONResponse:
        report = runtime.readiness()
        return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)

    @internal.get("/metrics", tags=["Health"], summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        from consumers import metrics as consumer_metrics

        consumer_metrics.STORE_SESSIONS.set(len(runtime.store))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    internal.openapi = _openapi(internal, public)  # type: ignore[method-assign]

    if settings.dev_mode:
        from gateway.dev.routes import LOOPBACK_ONLY, LoopbackOnly, dev_router

        log.warning("DEV MODE: demo page and unauthenticated publishing endpoints are enabled; never in production")
        public.include_router(dev_router(runtime))
        public.add_middleware(LoopbackOnly)  # dev routes answer loopback peers only, however the server was started

        @public.get(
            "/dev/metrics",
            tags=["Development"],
            summary="Prometheus metrics for the demo page",
            responses=LOOPBACK_ONLY,
        )
        async def dev_metrics() -> Response:
            return await prometheus_metrics()

    app = GatewayApp(runtime, public, internal, events)
    public.state.runtime = runtime
    internal.state.runtime = runtime
    return app
