"""OpenTelemetry traces, opt-in through the standard ``OTEL_*`` variables (docs/observability.md).

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set: then
``from_environment`` returns None, nothing of OpenTelemetry is imported and the record and admission
paths pay one ``is None`` test. Everything that imports OpenTelemetry is in ``consumers.tracing.otel``,
the one seam, checked when tracing starts; this module is what the rest of the code sees. It lives in
``consumers`` (which never imports ``gateway``) because both the record path and the gateway trace.

Two kinds of span: one per record applied (``session.apply``, continuing the producer's trace from a
``traceparent`` header, a binary CloudEvent's ``ce_traceparent`` or a structured CloudEvent's
``traceparent`` attribute), carrying how many streams it was delivered to and when the last write was
done, and one per stream admission (``stream.admit``). Records without a parent follow the sampler.
Tokens never reach a span: admission spans carry the outcome, reason and tenant only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from consumers.tracing.otel import Tracing

__all__ = [
    "PROTOCOLS",
    "TENANT_ATTRIBUTE",
    "Tracing",
    "configuration_problem",
    "current_ids",
    "enabled_by",
    "from_environment",
]

log = logging.getLogger("gateway.tracing")

# The variables that name where spans go; tracing is off without one of them.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

TENANT_ATTRIBUTE = "gateway.tenant"  # on both spans

IdsReader = Callable[[], "tuple[str, str] | None"]


class _Hooks:
    """What the process's tracing installs for the rest of the code (the logs' formatters)."""

    ids: IdsReader | None = None  # the active span's (trace id, span id) in hex


_hooks = _Hooks()


def current_ids() -> tuple[str, str] | None:
    """The active span's trace id and span id (lower-case hex), or None (no span, or tracing is off)."""
    reader = _hooks.ids
    return None if reader is None else reader()


def install_ids(reader: IdsReader | None) -> None:
    """Makes ``current_ids`` ask ``reader`` (None: tracing is off; logs carry no ids)."""
    _hooks.ids = reader


def enabled_by(environ: Mapping[str, str]) -> bool:
    """True when the environment asks for traces: an OTLP endpoint, and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


PROTOCOLS = ("http/protobuf", "grpc")


def configuration_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with the ``OTEL_*`` tracing settings, for ``serve`` to refuse to start; None if nothing."""
    environ = os.environ if environ is None else environ
    if not enabled_by(environ):
        return None
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or PROTOCOLS[0]
    ).strip()
    if protocol not in PROTOCOLS:
        return f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported for traces: use {' or '.join(PROTOCOLS)}"
    return None


def from_environment(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The process's tracing, configured from ``OTEL_*``; None when off or when the SDK is not installed.

    Called once per process (each ``--workers`` worker has its own exporter). A bad ``OTEL_*`` value
    raises ``ValueError`` with the variable's name, so a misconfiguration stops the start.
    """
    environ = os.environ if environ is None else environ
    if not enabled_by(environ):
        return None
    try:
        from consumers.tracing import otel
    except ImportError as error:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed (%s): tracing is off; "
            "install session-events-gateway[tracing]",
            error.name,
        )
        return None
    tracing = otel.Tracing.from_environment(environ)
    install_ids(otel.current_ids)
    return tracing
