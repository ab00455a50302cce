"""Turns a raw Kafka record into a session-status event, a tombstone, or a rejection reason.

Never raises: a bad record is classified and skipped by the caller, never allowed to stop
the consumer. The payload itself is never put into an error, so it cannot reach a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from schemas import SessionStatusEvent


class RejectReason(StrEnum):
    MISSING_KEY = "missing_key"
    INVALID_UTF8 = "invalid_utf8"
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    SCHEMA = "schema"
    KEY_MISMATCH = "key_mismatch"


@dataclass(frozen=True, slots=True)
class Tombstone:
    session_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str


Decoded = SessionStatusEvent | Tombstone | Rejected


def decode_record(key: bytes | None, value: bytes | None, max_value_bytes: int) -> Decoded:
    if not key:
        return Rejected(RejectReason.MISSING_KEY, "record has no key")
    try:
        session_id = key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(RejectReason.INVALID_UTF8, "key is not valid UTF-8")
    if value is None:
        return Tombstone(session_id)
    if len(value) > max_value_bytes:
        return Rejected(RejectReason.TOO_LARGE, f"value is {len(value)} bytes, limit {max_value_bytes}")
    try:
        event = SessionStatusEvent.model_validate_json(value)
    except ValidationError as error:
        return _classify(value, error)
    if event.id != session_id:
        return Rejected(RejectReason.KEY_MISMATCH, "record key differs from the value's id")
    return event


def _classify(value: bytes, error: ValidationError) -> Rejected:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(RejectReason.INVALID_UTF8, "value is not valid UTF-8")
    first = error.errors(include_input=False, include_url=False)[0]
    if first["type"] == "json_invalid":
        return Rejected(RejectReason.NOT_JSON, "value is not JSON")
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return Rejected(RejectReason.SCHEMA, f"{where}: {first['msg']} ({error.error_count()} errors)")
