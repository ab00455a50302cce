"""The one module that imports OpenTelemetry: the SDK set up from ``OTEL_*``, and the gateway's two spans.

Only the SDK's public API is used; the versions tested are checked when tracing starts (another one is
used too, with a warning). The sampler (``OTEL_TRACES_SAMPLER``/``_ARG``), the resource
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), the exporter's endpoint, headers and timeout and
the batch processor (``OTEL_BSP_*``) are read by the SDK itself; only the protocol is chosen here, as
the SDK leaves that to the program. Spans are exported from the SDK's own thread, never from the event
loop. See docs/observability.md.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from consumers.records import StatusUpdate
from consumers.tracing import PROTOCOLS, TENANT_ATTRIBUTE, configuration_problem
from consumers.tracing.carrier import Headers, record_carrier

log = logging.getLogger("gateway.tracing")

DEFAULT_SERVICE_NAME = "session-events-gateway"
TESTED_SDK = ((1, 30), (2, 0))  # [from, to) of opentelemetry-sdk (pyproject.toml's tracing extra)

APPLY_SPAN = "session.apply"
ADMIT_SPAN = "stream.admit"

# Attribute names: OpenTelemetry's messaging conventions where one fits, else the gateway's own.
A_SYSTEM = "messaging.system"
A_TOPIC = "messaging.destination.name"
A_PARTITION = "messaging.destination.partition.id"
A_OFFSET = "messaging.kafka.offset"
A_OPERATION = "messaging.operation.type"
A_SESSION = "gateway.session.id_hash"
A_TENANT = TENANT_ATTRIBUTE
A_OUTCOME = "gateway.outcome"
A_REASON = "gateway.reason"
A_DELIVERED = "gateway.delivered_streams"
A_LAST_DELIVERY = "gateway.last_delivery_unix_ms"
A_DELIVERY_DELAY = "gateway.last_delivery_delay_ms"
A_STATUS = "http.response.status_code"
A_REQUEST_ID = "gateway.request_id"


def session_hash(session_id: str) -> str:
    """What a span says of a session id: the first 16 hex digits of its SHA-256 (hash a known id to find it)."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def current_ids() -> tuple[str, str] | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _check_version() -> str:
    """The installed SDK's version; warns when it is outside the range tested."""
    try:
        installed = version("opentelemetry-sdk")
    except PackageNotFoundError:  # pragma: no cover - imported above, so it is installed
        return "?"
    parts = tuple(int(part) for part in installed.split(".")[:2] if part.isdigit())
    low, high = TESTED_SDK
    if not low <= parts < high:
        log.warning(
            "opentelemetry-sdk %s is not a tested version (%s to %s): tracing may misbehave", installed, *TESTED_SDK
        )
    return installed


def _exporter(environ: Mapping[str, str]) -> tuple[SpanExporter, str]:
    problem = configuration_problem(environ)
    if problem:
        raise ValueError(problem)
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or PROTOCOLS[0]
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(), protocol
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(), protocol


class Tracing:
    """The process's tracer provider and the gateway's spans; built by ``consumers.tracing.from_environment``."""

    def __init__(self, provider: TracerProvider, endpoint: str = "", protocol: str = "") -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.protocol = protocol
        self._tracer = provider.get_tracer("session-events-gateway")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Tracing:
        sdk = _check_version()
        exporter, protocol = _exporter(environ)
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        log.info(
            "tracing on: OTLP %s to %s, sampler %s, service %s (opentelemetry-sdk %s)",
            protocol,
            endpoint,
            provider.sampler.get_description(),
            resource.attributes.get(SERVICE_NAME),
            sdk,
        )
        return cls(provider, endpoint, protocol)

    def shutdown(self) -> None:
        """Exports what is queued and stops the exporter (blocking: call it from a thread)."""
        self.provider.shutdown()

    def _parent(self, carrier: Mapping[str, str] | None) -> Context | None:
        return None if carrier is None else self._propagator.extract(carrier)

    # A record ----------------------------------------------------------------------------------
    def record_span(
        self, topic: str, partition: int, offset: int, headers: Headers, value: bytes | None, max_bytes: int
    ) -> Span | None:
        """A started span for applying one record, or None when the sampler dropped it (nothing to do)."""
        parent = self._parent(record_carrier(headers, value, max_bytes)) if headers else None
        span = self._tracer.start_span(APPLY_SPAN, parent, SpanKind.CONSUMER)
        if not span.is_recording():
            return None
        span.set_attributes(
            {A_SYSTEM: "kafka", A_OPERATION: "process", A_TOPIC: topic, A_PARTITION: str(partition), A_OFFSET: offset}
        )
        return span

    @staticmethod
    def record_done(
        span: Span,
        outcome: str,
        reason: str,
        update: StatusUpdate | str | None,
        delivered: int,
        record_timestamp_ms: int,
    ) -> None:
        """Ends a record's span: its outcome (and reason), session (hashed), tenant, and its deliveries."""
        span.set_attribute(A_OUTCOME, outcome)
        if reason:
            span.set_attribute(A_REASON, reason)
        if isinstance(update, StatusUpdate):
            span.set_attribute(A_SESSION, session_hash(update.session_id))
            span.set_attribute(A_TENANT, update.tenant_id)
        elif update is not None:  # a tombstone's session id
            span.set_attribute(A_SESSION, session_hash(update))
        span.set_attribute(A_DELIVERED, delivered)
        if delivered:
            now_ms = time.time() * 1000
            span.set_attribute(A_LAST_DELIVERY, int(now_ms))
            span.set_attribute(A_DELIVERY_DELAY, max(0.0, now_ms - record_timestamp_ms))
        span.end()

    # A stream admission ------------------------------------------------------------------------
    @contextmanager
    def admission(self, headers: Mapping[str, str], session_id: str, request_id: str) -> Iterator[Span]:
        """The admission's span, current while it runs (logs carry its ids); the caller sets the outcome.

        Continues the request's own ``traceparent`` when it has one. Nothing of the query or of the
        token-bearing headers is recorded.
        """
        carrier = {name: headers[name] for name in ("traceparent", "tracestate") if name in headers}
        span = self._tracer.start_span(ADMIT_SPAN, self._parent(carrier or None), SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes({A_SESSION: session_hash(session_id), A_REQUEST_ID: request_id})
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            yield span

    @staticmethod
    def admission_done(span: Span, outcome: str, status: int, reason: str = "", tenant: str | None = None) -> None:
        if not span.is_recording():
            return
        span.set_attribute(A_OUTCOME, outcome)
        span.set_attribute(A_STATUS, status)
        if reason:
            span.set_attribute(A_REASON, reason)
        if tenant is not None:
            span.set_attribute(A_TENANT, tenant)


__all__ = ["NonRecordingSpan", "Span", "Tracing", "current_ids", "session_hash"]
