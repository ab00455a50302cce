"""The composition root: one gateway process (``Runtime``) and the ASGI app the edge calls (``create_app``).

Every component is built here once and handed only to the parts that use it, so a test or a library
user gets the same process the server runs (``uvicorn gateway.runtime.app:create_app --factory``).
What the ports serve is in ``ports``, the readiness policy in ``health``, the background loops in
``loops``; where everything lives is in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI

from consumers import metrics as consumer_metrics
from consumers.consumer import SessionStatusConsumer
from consumers.hub import Hub
from consumers.progress import PartitionProgress
from consumers.settings import ConsumerSettings
from consumers.store import SessionStore
from consumers.supervision import Supervisor
from consumers.tracing import from_environment as tracing_from_environment
from gateway.admission.clock import StreamClock
from gateway.admission.endpoint import EventsEndpoint
from gateway.admission.registry import ConnectionRegistry
from gateway.admission.tenant import TenantEndpoint
from gateway.admission.ticket_endpoint import TicketEndpoint
from gateway.auth.issuers import TrustedIssuers
from gateway.auth.ticket_keys import parse_ticket_keys
from gateway.auth.tickets import TicketCodec
from gateway.auth.verifier import TokenVerifier
from gateway.runtime import loops
from gateway.runtime.api_docs import install_openapi
from gateway.runtime.health import HealthPolicy
from gateway.runtime.pod_metrics import PodMetrics
from gateway.runtime.ports import GatewayApp, internal_app, public_app
from gateway.runtime.workers import WorkerReadiness
from gateway.settings import GatewaySettings
from gateway.streams.sse import encode_transition

if TYPE_CHECKING:
    from consumers.tracing import Tracing

__all__ = ["Runtime", "create_app"]


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
    jwks: TrustedIssuers
    verifier: TokenVerifier
    connections: ConnectionRegistry
    supervisor: Supervisor
    health: HealthPolicy
    workers: WorkerReadiness | None = None  # with ``serve --workers N``: the pod is ready when all are
    pod: PodMetrics | None = None  # with ``serve --workers N``: /metrics answers for the whole pod
    tickets: TicketCodec | None = None  # stream tickets, when ``GATEWAY_TICKET_KEYS`` is set
    tracing: Tracing | None = None  # OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/observability.md)

    @classmethod
    def build(
        cls,
        settings: GatewaySettings,
        consumer_settings: ConsumerSettings,
        workers: WorkerReadiness | None = None,
        pod: PodMetrics | None = None,
    ) -> Runtime:
        store = SessionStore(
            terminal_retention_ms=int(consumer_settings.terminal_retention.total_seconds() * 1000),
            session_ttl_ms=int(consumer_settings.session_ttl.total_seconds() * 1000),
            max_sessions=consumer_settings.max_sessions,
        )
        hub = Hub(encode_transition)
        progress = PartitionProgress()
        tracing = tracing_from_environment()
        consumer = SessionStatusConsumer(consumer_settings, store, hub, progress, tracing)
        http = httpx.AsyncClient(follow_redirects=False, headers={"user-agent": "session-events-gateway"})
        jwks = TrustedIssuers.from_settings(settings, http)
        connections = ConnectionRegistry(settings, StreamClock(settings, hub), tenant_shares=settings.tenants_enforced)
        supervisor = Supervisor(settings.task_crash_limit, settings.task_crash_window)
        health = HealthPolicy(
            strict=settings.readiness_strict,
            consumer=consumer,
            progress=progress,
            jwks=jwks,
            connections=connections,
            supervisor=supervisor,
            workers=workers,
        )
        return cls(
            settings=settings,
            consumer_settings=consumer_settings,
            store=store,
            hub=hub,
            progress=progress,
            consumer=consumer,
            http=http,
            jwks=jwks,
            verifier=TokenVerifier(settings, jwks),
            connections=connections,
            supervisor=supervisor,
            health=health,
            workers=workers,
            pod=pod,
            tickets=ticket_codec(settings),
            tracing=tracing,
        )

    async def start(self) -> None:
        """Starts every long-running task under the supervisor (the task names are metric labels)."""
        self.jwks.bind_metrics()
        consumer_metrics.STORE_SESSIONS.set_function(lambda: len(self.store))  # current in every exposition
        supervisor = self.supervisor
        for name, task in self.consumer.tasks().items():
            supervisor.start(name, task)
        supervisor.start("gc-freeze", functools.partial(loops.freeze_after_replay, self.progress), restart=False)
        supervisor.start("jwks-refresh", functools.partial(loops.keep_keys_fresh, self.jwks))
        supervisor.start("stream-clock", self.connections.run_clock)
        supervisor.start("kafka-log-summary", loops.flush_kafka_logs)
        if self.pod is not None:
            await self.pod.start()
        if self.workers is not None:
            supervisor.start("worker-readiness", functools.partial(loops.publish_worker_readiness, self.health))

    async def stop(self) -> None:
        if self.pod is not None:
            await self.pod.stop()
        self.connections.close_all("shutdown")
        await self.consumer.stop()
        await self.supervisor.stop()
        await self.http.aclose()
        if self.tracing is not None:  # exports the spans still queued; the SDK's own timeouts bound it
            await asyncio.to_thread(self.tracing.shutdown)


def ticket_codec(settings: GatewaySettings) -> TicketCodec | None:
    """The stream-ticket codec of ``GATEWAY_TICKET_KEYS``, or None when tickets are off."""
    keys = parse_ticket_keys([key.get_secret_value() for key in settings.ticket_keys])
    return TicketCodec(keys, settings.jwt_leeway) if keys else None


def create_app(
    settings: GatewaySettings | None = None,
    consumer_settings: ConsumerSettings | None = None,
    workers: WorkerReadiness | None = None,
    pod: PodMetrics | None = None,
) -> GatewayApp:
    """The process's app; its lifespan (run by the internal app) starts and stops the ``Runtime``."""
    settings = settings or GatewaySettings()
    consumer_settings = consumer_settings or ConsumerSettings()
    runtime = Runtime.build(settings, consumer_settings, workers, pod)
    events = EventsEndpoint(
        settings,
        runtime.store,
        runtime.hub,
        runtime.progress,
        runtime.verifier,
        runtime.connections,
        runtime.tickets,
        runtime.tracing,
    )
    tickets = (
        TicketEndpoint(
            settings, events.authenticator, runtime.tickets, events.cors, settings.root_path, events.refusal_log
        )
        if runtime.tickets
        else None
    )

    if settings.tenant_stream_scope:
        events.tenants = TenantEndpoint(events, runtime.progress)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    internal = internal_app(runtime, lifespan)
    public = public_app(runtime)
    install_openapi(internal, public, runtime.settings)
    return GatewayApp(runtime, public, internal, events, tickets)
