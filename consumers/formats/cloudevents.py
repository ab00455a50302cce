"""CloudEvents 1.0 over Kafka (the Kafka protocol binding), structured and binary content mode.

Parsed by hand rather than with the CloudEvents SDK: the SDK builds an event object and validates
every attribute on construction, which costs more than the whole plain-JSON decode, and raises on
bad input; here every defect becomes a ``Rejected`` with a reason. The tests produce their events
with the SDK, so both sides agree on the binding.

- Structured mode: header ``content-type: application/cloudevents+json``; the value is the event as
  JSON, the session event in ``data`` (or ``data_base64``).
- Binary mode: ``ce_*`` headers carry the attributes (``content-type`` is ``datacontenttype``); the
  value is the data.

Only JSON data is accepted. Details never quote attribute values or data, as for plain records.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import NamedTuple

from consumers.records import Rejected, RejectReason, parse_json

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
SPECVERSION = "1.0"
_REQUIRED = ("id", "source", "type")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
# application/json, text/json and any +json suffix, with or without parameters.
_JSON_MEDIA_TYPE = re.compile(r"\s*(application/json|text/json|[\w.+-]+/[\w.+-]*\+json)\s*(;.*)?", re.ASCII | re.I)
_MAX_ATTRIBUTE = 4096


class CloudEvent(NamedTuple):
    """What the gateway uses of a valid CloudEvent."""

    type: str
    subject: str | None
    time: str | None
    data: object


def is_json_media_type(value: str) -> bool:
    return _JSON_MEDIA_TYPE.fullmatch(value) is not None


def _invalid(detail: str) -> Rejected:
    return Rejected(RejectReason.CLOUDEVENTS, detail)


def _check_attributes(attributes: dict[str, object]) -> Rejected | None:
    specversion = attributes.get("specversion")
    if specversion != SPECVERSION:
        return _invalid("specversion must be the string 1.0")
    for name in _REQUIRED:
        value = attributes.get(name)
        if type(value) is not str or not value:
            return _invalid(f"{name} must be a non-empty string")
        if len(value) > _MAX_ATTRIBUTE:
            return _invalid(f"{name} is longer than {_MAX_ATTRIBUTE} characters")
    for name in ("subject", "datacontenttype"):
        value = attributes.get(name)
        if value is not None and (type(value) is not str or not value or len(value) > _MAX_ATTRIBUTE):
            return _invalid(f"{name} must be a non-empty string when present")
    time = attributes.get("time")
    if time is not None and (type(time) is not str or not _RFC3339.fullmatch(time)):
        return _invalid("time must be an RFC 3339 date-time when present")
    content_type = attributes.get("datacontenttype")
    if isinstance(content_type, str) and not is_json_media_type(content_type):
        return _invalid("datacontenttype is not JSON; only JSON data is supported")
    return None


def _event(attributes: dict[str, object], data: object) -> CloudEvent:
    subject = attributes.get("subject")
    time = attributes.get("time")
    return CloudEvent(
        str(attributes["type"]),
        subject if isinstance(subject, str) else None,
        time if isinstance(time, str) else None,
        data,
    )


def decode_structured(value: bytes) -> CloudEvent | Rejected:
    """A structured-mode value (the event as JSON)."""
    envelope = parse_json(value)
    if isinstance(envelope, Rejected):
        return envelope
    if type(envelope) is not dict:
        return _invalid("a structured CloudEvent must be a JSON object")
    problem = _check_attributes(envelope)
    if problem is not None:
        return problem
    if "data_base64" in envelope:
        if "data" in envelope:
            return _invalid("data and data_base64 are mutually exclusive")
        encoded = envelope["data_base64"]
        if type(encoded) is not str:
            return _invalid("data_base64 must be a string")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return _invalid("data_base64 is not valid base64")
        data = parse_json(raw)
        if isinstance(data, Rejected):
            return data
    elif "data" in envelope:
        data = envelope["data"]
    else:
        return _invalid("the CloudEvent has no data")
    return _event(envelope, data)


def decode_binary(attributes: dict[str, str], value: bytes) -> CloudEvent | Rejected:
    """A binary-mode record: attributes from the ``ce_`` headers (already UTF-8 decoded), data in the value."""
    problem = _check_attributes(dict(attributes))
    if problem is not None:
        return problem
    data = parse_json(value)
    if isinstance(data, Rejected):
        return data
    return _event(dict(attributes), data)
