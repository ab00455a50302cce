"""Assembles the gateway: store, hub and consumer from ``consumers``, and the HTTP surface.

``GatewayApp`` is the ASGI entry point. It routes ``GET /session/{id}/events`` straight to the
streaming endpoint (no middleware frames held per open stream) and everything else to FastAPI:
health, metrics, OpenAPI docs and, in dev mode only, the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Path, Query
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from consumers.consumer import SessionStatusConsumer
from consumers.hub import Hub
from consumers.progress import PartitionProgress
from consumers.settings import ConsumerSettings
from consumers.store import SessionStore
from gateway.authentication import TokenVerifier
from gateway.connections import ConnectionRegistry
from gateway.docs import mount_docs
from gateway.errors import INVALID_TOKEN, MISSING_TOKEN
from gateway.jwks import JwksCache
from gateway.settings import GatewaySettings
from gateway.sse import encode_transition
from gateway.subscribe import MAX_SESSION_ID_LENGTH, EventsEndpoint

log = logging.getLogger("gateway.app")

_EVENTS_PREFIX = "/session/"
_EVENTS_SUFFIX = "/events"


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
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: GatewaySettings, consumer_settings: ConsumerSettings) -> Runtime:
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
        )

    def readiness(self) -> dict[str, Any]:
        checks = {
            "store_caught_up": self.progress.caught_up.is_set(),
            "broker_reachable": self.progress.broker_reachable,
            "signing_keys_loaded": self.jwks.loaded,
            "accepting_streams": not self.connections.draining,
        }
        reasons = []
        if not checks["store_caught_up"]:
            reasons.append("session store is still replaying the topic")
        if not checks["broker_reachable"]:
            detail = self.progress.last_error
            reasons.append(f"Kafka broker not reachable: {detail}" if detail else "Kafka broker not reachable")
        if not checks["signing_keys_loaded"]:
            reasons.append(self.jwks.last_error or "signing keys not loaded yet")
        if not checks["accepting_streams"]:
            reasons.append("shutting down")
        return {"status": "ready" if not reasons else "not ready", "checks": checks, "reasons": reasons}

    async def _freeze_after_replay(self) -> None:
        """Moves what start-up and the replay left alive out of the collector's reach.

        Full collections scan every tracked object; with the imported libraries alone that is a
        pause of tens of ms in the middle of event delivery. Nothing of a connection exists yet
        (the replica turns ready only now), so no connection's garbage can be pinned by the freeze.
        """
        await self.progress.caught_up.wait()
        gc.collect()
        gc.freeze()

    def consumer_failed(self) -> bool:
        return any(task.done() and not task.cancelled() and task.exception() for task in self.tasks)

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self.consumer.run(), name="kafka-consumer"))
        self.tasks.append(asyncio.create_task(self._freeze_after_replay(), name="gc-freeze"))
        self.tasks.append(asyncio.create_task(self.jwks.load(), name="jwks-load"))
        self.connections.start()

    async def stop(self) -> None:
        self.connections.close_all("shutdown")
        await self.connections.stop()
        await self.consumer.stop()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.http.aclose()


class GatewayApp:
    """ASGI entry point; see the module docstring."""

    def __init__(self, runtime: Runtime, api: FastAPI, events: EventsEndpoint) -> None:
        self.runtime = runtime
        self.api = api
        self.events = events

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function returning the endpoint's coroutine: no frame of its own per open stream.
        if scope["type"] == "http" and scope["method"] == "GET":
            session_id = _events_session_id(scope["path"])
            if session_id is not None:
                return self.events(scope, receive, send, session_id)
        return self.api(scope, receive, send)


def _events_session_id(path: str) -> str | None:
    if path.startswith(_EVENTS_PREFIX) and path.endswith(_EVENTS_SUFFIX):
        session_id = path[len(_EVENTS_PREFIX) : -len(_EVENTS_SUFFIX)]
        if session_id and "/" not in session_id:
            return session_id
    return None


def _error_example(status: int, message: str, error: str) -> dict[str, Any]:
    return {
        "description": message,
        "content": {"application/json": {"example": {"statusCode": status, "message": message, "error": error}}},
    }


def create_app(
    settings: GatewaySettings | None = None, consumer_settings: ConsumerSettings | None = None
) -> GatewayApp:
    settings = settings or GatewaySettings()
    consumer_settings = consumer_settings or ConsumerSettings()
    runtime = Runtime.build(settings, consumer_settings)
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

    api = FastAPI(
        title="session-events-gateway",
        version="0.1.0",
        description="Streams wallet-session status changes from Kafka to browsers over Server-Sent Events.",
        lifespan=lifespan,
    )
    mount_docs(api)  # Swagger UI from a package: works offline and under a strict CSP
    if settings.cors_origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID"],
        )

    @api.get("/livez", tags=["Health"], summary="Liveness: the process is healthy")
    async def livez() -> JSONResponse:
        if runtime.consumer_failed():
            return JSONResponse({"status": "failed", "reason": "Kafka consumer task crashed"}, status_code=503)
        return JSONResponse({"status": "alive"})

    @api.get("/readyz", tags=["Health"], summary="Readiness: store caught up, broker reachable, keys loaded")
    async def readyz() -> JSONResponse:
        report = runtime.readiness()
        return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)

    @api.get("/metrics", tags=["Health"], summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        from consumers import metrics as consumer_metrics

        consumer_metrics.STORE_SESSIONS.set(len(runtime.store))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @api.get(
        "/session/{id}/events",
        tags=["Session Events"],
        summary="Subscribe to session status updates",
        description=(
            "Server-Sent Events stream of a session's status. First a `retry:` field, then the current "
            "status, then every later transition; the stream ends after a terminal status (completed, "
            "expired, failed, cancelled). Each event is `event: message` with an `id` encoding the Kafka "
            "position (send it back as `Last-Event-ID` to resume without loss) and `data` "
            '`{"id", "status", "updatedAt"}`. The token may also come from `access_token`, '
            "`Authorization: Bearer` or the configured cookie."
        ),
        response_class=Response,
        responses={
            200: {
                "description": "The event stream.",
                "content": {
                    "text/event-stream": {
                        "example": 'retry: 3000\n\nid: 0-42\nevent: message\ndata: {"id":"abc","status":"active",'
                        '"updatedAt":"2026-11-28T10:00:00.000Z"}\n\n'
                    }
                },
            },
            204: {"description": "The client's last event (Last-Event-ID) was terminal: nothing more will come."},
            401: _error_example(401, MISSING_TOKEN, "Unauthorized")
            | {"description": f"No token: '{MISSING_TOKEN}'; failed verification: '{INVALID_TOKEN}'."},
            403: _error_example(403, "Insufficient scope", "Forbidden"),
            404: _error_example(404, "Session abc not found", "Not Found")
            | {"description": "Unknown session, or one the token's tenant or session claim does not cover."},
            429: _error_example(429, "Too many open streams for this token subject", "Too Many Requests"),
            503: _error_example(503, "Session state is still loading", "Service Unavailable")
            | {"description": "Replaying, at the connection limit, or behind a resumed position; see Retry-After."},
        },
    )
    async def session_events(
        id: str = Path(description="Session ID to subscribe to", max_length=MAX_SESSION_ID_LENGTH),
        token: str | None = Query(None, description="JWT access token for authentication"),
        access_token: str | None = Query(None, description="Alternative name for the token parameter"),
        lastEventId: str | None = Query(
            None, description="Resume after this event id (the Last-Event-ID header takes precedence)"
        ),
    ) -> Response:
        """Documents the route; requests normally reach ``EventsEndpoint`` directly (see ``GatewayApp``)."""

        class _Delegate(Response):
            async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
                await events(scope, receive, send, id)

        return _Delegate()

    if settings.dev_mode:
        from gateway.dev import dev_router

        log.warning("DEV MODE: demo page and unauthenticated publishing endpoints are enabled; never in production")
        api.include_router(dev_router(runtime))

    app = GatewayApp(runtime, api, events)
    api.state.runtime = runtime
    return app
