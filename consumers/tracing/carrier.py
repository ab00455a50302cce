"""Where a Kafka record carries its producer's trace context (W3C Trace Context), read without OpenTelemetry.

In order of precedence: the ``traceparent``/``tracestate`` headers (W3C Trace Context over Kafka, as the
OpenTelemetry Kafka instrumentations write them); a binary-mode CloudEvent's ``ce_traceparent``/
``ce_tracestate`` headers; a structured-mode CloudEvent's ``traceparent``/``tracestate`` attributes
(the CloudEvents distributed-tracing extension). Values are only collected here, bounded in size; the
propagator validates them (a malformed one starts a new trace, it never rejects the record).
See docs/observability.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# W3C: a traceparent is 55 characters (version 00); tracestate is at most 32 members of 256: anything
# longer is not a trace context and is ignored.
MAX_TRACEPARENT = 128
MAX_TRACESTATE = 8192
_CE = "ce_"
_STRUCTURED = "application/cloudevents+json"

Headers = Sequence[tuple[str, bytes | None]]


def _text(raw: bytes | None, limit: int) -> str | None:
    if not raw or len(raw) > limit:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def record_carrier(headers: Headers, value: bytes | None, max_value_bytes: int) -> dict[str, str] | None:
    """The record's ``traceparent`` (and ``tracestate``) as a propagation carrier, or None."""
    found: dict[str, dict[str, str]] = {}
    structured = False
    for name, raw in headers:
        lowered = name.lower()
        if lowered == "content-type":
            structured = raw is not None and raw.split(b";", 1)[0].strip().lower() == _STRUCTURED.encode()
            continue
        source = "header"
        if lowered.startswith(_CE):
            lowered = lowered[len(_CE) :]
            source = "ce"
        if lowered == TRACEPARENT:
            text = _text(raw, MAX_TRACEPARENT)
        elif lowered == TRACESTATE:
            text = _text(raw, MAX_TRACESTATE)
        else:
            continue
        if text is not None:
            found.setdefault(source, {}).setdefault(lowered, text)
    for source in ("header", "ce"):
        carrier = found.get(source)
        if carrier and TRACEPARENT in carrier:
            return carrier
    if structured and value is not None and len(value) <= max_value_bytes:
        return _structured_carrier(value)
    return None


def _structured_carrier(value: bytes) -> dict[str, str] | None:
    """The tracing extension attributes of a structured CloudEvent (the event as a JSON object)."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(event) is not dict:
        return None
    parent = event.get(TRACEPARENT)
    if type(parent) is not str or len(parent) > MAX_TRACEPARENT:
        return None
    carrier = {TRACEPARENT: parent}
    state = event.get(TRACESTATE)
    if type(state) is str and len(state) <= MAX_TRACESTATE:
        carrier[TRACESTATE] = state
    return carrier
