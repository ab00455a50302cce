"""What each port serves besides the stream, and the ASGI router that tells the ports apart.

The public port faces the internet, so it carries only what browsers need (a bare ``/livez``, and
the demo in dev mode); probes, metrics and docs are on the internal port. The stream route and its
preflight never reach these apps: the HTTP edge serves them (``gateway.edge``). The routes are
listed in docs/http-api.md, the ports in docs/operations.md ("Health and metrics").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Lifespan, Receive, Scope, Send

from consumers import metrics as consumer_metrics
from consumers.store import SessionStore
from gateway.admission.endpoint import EventsEndpoint
from gateway.runtime.api_docs import mount_docs

if TYPE_CHECKING:
    from gateway.runtime.app import Runtime

log = logging.getLogger("gateway.runtime.app")  # the logger name operators know; unchanged by the split


class GatewayApp:
    """The ASGI app the edge calls for every request that is not a stream: the internal port's app for a
    request that came in on ``GATEWAY_INTERNAL_PORT`` (and for lifespan events), the public one otherwise.

    The port is the request's local port (``scope["server"]``); with ``GATEWAY_INTERNAL_PORT=0`` (or
    equal to ``GATEWAY_PORT``) everything is on one port and served by the internal app.
    """

    def __init__(self, runtime: Runtime, public: FastAPI, internal: FastAPI, events: EventsEndpoint) -> None:
        self.runtime = runtime
        self.public = public
        self.internal = internal
        self.events = events
        settings = runtime.settings
        self._internal_port = settings.internal_port if settings.internal_port != settings.port else 0

    def is_internal(self, scope: Scope) -> bool:
        if not self._internal_port:
            return True
        server = scope.get("server")
        return server is not None and server[1] == self._internal_port

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.internal(scope, receive, send)  # lifespan
        return (self.internal if self.is_internal(scope) else self.public)(scope, receive, send)


def metrics_response(store: SessionStore) -> Response:
    """Every registered metric in Prometheus' text format, the store's size counted now."""
    consumer_metrics.STORE_SESSIONS.set(len(store))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def internal_app(runtime: Runtime, lifespan: Lifespan[FastAPI]) -> FastAPI:
    """The internal port's app: health, metrics and the API docs; it runs the process's lifespan."""
    health = runtime.health
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

    @internal.get("/livez", tags=["Health"], summary="Liveness: no supervised task keeps crashing")
    async def livez() -> JSONResponse:
        report = health.liveness()
        return JSONResponse(report, status_code=200 if report["status"] == "alive" else 503)

    @internal.get("/readyz", tags=["Health"], summary="Readiness: initial replay done, keys loaded once, not draining")
    async def readyz() -> JSONResponse:
        report = health.readiness()
        return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)

    @internal.get("/metrics", tags=["Health"], summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        if runtime.pod is not None:  # several workers: the whole pod's, whichever worker is asked
            return Response(await runtime.pod.exposition(), media_type=CONTENT_TYPE_LATEST)
        return metrics_response(runtime.store)

    internal.state.runtime = runtime
    return internal


def public_app(runtime: Runtime) -> FastAPI:
    """The public port's app: a bare ``/livez``, and in dev mode the demo and its routes (loopback peers only)."""
    public = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @public.get("/livez", include_in_schema=False)
    async def public_livez() -> JSONResponse:
        return JSONResponse({"status": "alive"})

    if runtime.settings.dev_mode:
        _add_dev_routes(public, runtime)
    public.state.runtime = runtime
    return public


def _add_dev_routes(public: FastAPI, runtime: Runtime) -> None:
    from gateway.dev.loopback import LOOPBACK_ONLY, LoopbackOnly
    from gateway.dev.routes import dev_router

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
        return metrics_response(runtime.store)
