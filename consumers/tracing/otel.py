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
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from consumers.records import StatusUpdate
from consumers.tracing import PROTOCOLS, TENANT_ATTRIBUTE, configuration_problem
from consumers.tracing.carrier import Headers, record_carrier
from consumers.tracing.sampling import DROP, ROOT, SamplingPlan, decide, plan_from, unsampled_shape

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


# A record's sampling decision (``consumers.tracing.sampling``) and its trace context, if any.
RecordSampling = tuple[str, "Mapping[str, str] | None"]
ROOT_SAMPLING: RecordSampling = (ROOT, None)  # a record the sampler keeps as a new trace


def _KEEP_ROOT() -> float:
    return 0.0


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


def _sdk_sampler(plan: SamplingPlan) -> Sampler | None:
    """The SDK's sampler for a plan this module knows (None: the SDK reads OTEL_TRACES_SAMPLER itself)."""
    if plan.root_ratio is None:
        return None
    if plan.name in ("always_on", "always_off"):
        return ALWAYS_ON if plan.root_ratio else ALWAYS_OFF
    root: Sampler = TraceIdRatioBased(plan.ratio_argument) if plan.name.endswith("traceidratio") else ALWAYS_ON
    if plan.name == "parentbased_always_off":
        root = ALWAYS_OFF
    return ParentBased(root) if plan.parent_based else root


class Tracing:
    """The process's tracers and the gateway's spans; built by ``consumers.tracing.from_environment``.

    Two providers share one span processor: ``provider`` applies the sampler (spans with a parent, and
    every span under a sampler ``consumers.tracing.sampling`` does not know), ``roots`` keeps every span
    it starts, for the new traces that ``sampling.decide`` already kept.
    """

    def __init__(self, processor: SpanProcessor, plan: SamplingPlan, resource: Resource | None = None) -> None:
        resource = resource or Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAME})
        processors = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
        processors.add_span_processor(processor)
        self.plan = plan
        # A standard parent-based sampler: a producer's unsampled context may be dropped before any reading.
        self._follows_parents = plan.parent_based and plan.root_ratio is not None
        self.endpoint = self.protocol = ""  # where spans go (from_environment), for the start-up line
        self.provider = TracerProvider(
            sampler=_sdk_sampler(plan), resource=resource, active_span_processor=processors, shutdown_on_exit=False
        )
        roots = TracerProvider(
            sampler=ALWAYS_ON, resource=resource, active_span_processor=processors, shutdown_on_exit=False
        )
        self._tracer = self.provider.get_tracer("session-events-gateway")
        self._roots = roots.get_tracer("session-events-gateway")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Tracing:
        sdk = _check_version()
        exporter, protocol = _exporter(environ)
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        made = cls(BatchSpanProcessor(exporter), plan_from(environ), resource)
        made.protocol = protocol
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        made.endpoint = endpoint
        log.info(
            "tracing on: OTLP %s to %s, sampler %s, service %s (opentelemetry-sdk %s)",
            protocol,
            endpoint,
            made.provider.sampler.get_description(),
            resource.attributes.get(SERVICE_NAME),
            sdk,
        )
        return made

    def shutdown(self) -> None:
        """Exports what is queued and stops the exporter (blocking: call it from a thread)."""
        self.provider.shutdown()

    def _start(
        self,
        name: str,
        kind: SpanKind,
        carrier: Mapping[str, str] | None,
        decision: str = "",
        attributes: dict[str, str | int] | None = None,
    ) -> Span | None:
        """A started, recording span, or None when it is not sampled (``sampling.decide`` first)."""
        decision = decision or decide(self.plan, carrier)
        if decision == DROP:
            return None
        if decision == ROOT:
            return self._roots.start_span(name, Context(), kind, attributes)
        parent = None if carrier is None else self._propagator.extract(carrier)
        span = self._tracer.start_span(name, parent, kind, attributes)
        return span if span.is_recording() else None

    # A record ----------------------------------------------------------------------------------
    def kept_records(
        self, records: Sequence[Any], max_bytes: int, draw: Callable[[], float] | None = None
    ) -> list[tuple[int, RecordSampling]]:
        """The records of a fetched batch the sampler keeps, with their decision: one call per batch.

        A record without headers can only start a new trace: one draw. Under a parent-based sampler a
        record shaped like a producer's unsampled context is dropped on a draw that would not keep a new
        trace (``sampling.unsampled_shape``); the rest are read in full (``record_sampling``). No span
        exists yet for any of them.
        """
        kept: list[tuple[int, RecordSampling]] = []
        draw = draw or random.random
        ratio, follows, full = self.plan.root_ratio, self._follows_parents, self.record_sampling
        for index, record in enumerate(records):
            headers = record.headers
            if not headers and ratio is not None:
                if draw() < ratio:
                    kept.append((index, ROOT_SAMPLING))
                continue
            if follows and ratio is not None and unsampled_shape(headers):
                if draw() >= ratio:
                    continue  # dropped: a valid unsampled parent, or a new trace this draw does not keep
                found = full(headers, record.value, max_bytes, _KEEP_ROOT)  # the draw is taken: keep if new
            else:
                found = full(headers, record.value, max_bytes, draw)
            if found is not None:
                kept.append((index, found))
        return kept

    def record_sampling(
        self, headers: Headers, value: bytes | None, max_bytes: int, draw: Callable[[], float] | None = None
    ) -> RecordSampling | None:
        """Whether a record may be traced (None: dropped, nothing more to do); no span exists yet."""
        carrier = record_carrier(headers, value, max_bytes) if headers else None
        decision = decide(self.plan, carrier, draw)
        return None if decision == DROP else (decision, carrier)

    def record_span(self, sampling: RecordSampling, topic: str, partition: int, offset: int) -> Span | None:
        """The started span for applying one record, or None when the SDK's sampler dropped it after all."""
        decision, carrier = sampling
        attributes: dict[str, str | int] = {
            A_SYSTEM: "kafka",
            A_OPERATION: "process",
            A_TOPIC: topic,
            A_PARTITION: str(partition),
            A_OFFSET: offset,
        }
        return self._start(APPLY_SPAN, SpanKind.CONSUMER, carrier, decision, attributes)

    @staticmethod
    def current(span: Span) -> AbstractContextManager[Span]:
        """Makes ``span`` the active one for a block (log lines carry its ids); does not end it."""
        return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)

    @staticmethod
    def record_done(
        span: Span,
        outcome: str,
        reason: str,
        update: StatusUpdate | str | None,
        delivered: int,
        record_timestamp_ms: int,
    ) -> None:
        """Ends a record's span: its outcome (and reason), session (hashed), tenant, and its deliveries.

        One ``set_attributes`` call: each attribute set alone takes the span's lock and checks it again.
        """
        attributes: dict[str, str | int | float] = {A_OUTCOME: outcome, A_DELIVERED: delivered}
        if reason:
            attributes[A_REASON] = reason
        if isinstance(update, StatusUpdate):
            attributes[A_SESSION] = session_hash(update.session_id)
            attributes[A_TENANT] = update.tenant_id
        elif update is not None:  # a tombstone's session id
            attributes[A_SESSION] = session_hash(update)
        if delivered:
            now_ms = time.time() * 1000
            attributes[A_LAST_DELIVERY] = int(now_ms)
            attributes[A_DELIVERY_DELAY] = max(0.0, now_ms - record_timestamp_ms)
        span.set_attributes(attributes)
        span.end()

    # A stream admission ------------------------------------------------------------------------
    @contextmanager
    def admission(self, headers: Mapping[str, str], session_id: str, request_id: str) -> Iterator[Span | None]:
        """The admission's span (None when not sampled), current while it runs: logs carry its ids.

        Continues the request's own ``traceparent`` when it has one. Nothing of the query or of the
        token-bearing headers is recorded; the caller sets the outcome.
        """
        carrier = {name: headers[name] for name in ("traceparent", "tracestate") if name in headers}
        span = self._start(ADMIT_SPAN, SpanKind.SERVER, carrier or None)
        if span is None:
            yield None
            return
        span.set_attributes({A_SESSION: session_hash(session_id), A_REQUEST_ID: request_id})
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            yield span

    @staticmethod
    def admission_done(
        span: Span | None, outcome: str, status: int, reason: str = "", tenant: str | None = None
    ) -> None:
        if span is None:
            return
        span.set_attribute(A_OUTCOME, outcome)
        span.set_attribute(A_STATUS, status)
        if reason:
            span.set_attribute(A_REASON, reason)
        if tenant is not None:
            span.set_attribute(A_TENANT, tenant)


__all__ = ["RecordSampling", "Span", "Tracing", "current_ids", "session_hash"]
