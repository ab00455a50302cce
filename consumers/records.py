"""Turns a raw Kafka record into a status update, a tombstone, or a rejection reason.

Never raises: a bad record is classified and skipped by the caller, never allowed to stop
the consumer. The payload itself is never put into an error, so it cannot reach a log line.

The pydantic model in ``schemas`` is the contract. Replay speed is a budget (target 200,000 records/s,
issue 24; benchmarks/replay.py, benchmarks/replay_parts.py), and the model costs about 10 us a record, so
well-formed records take a fast path (msgspec's compiled decoder and plain checks, about 1 us) that accepts
only values the model accepts, read the same way; anything else, including every malformed record, goes
through the model, which decides and explains. Tests check the two agree on edge cases and on generated hostile values
(tests/test_records.py, tests/test_records_fast_path.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, NamedTuple

import msgspec
import orjson
from pydantic import ValidationError

from schemas import SessionStatus, SessionStatusEvent, SessionType
from schemas.session_status import EARLIEST_UPDATE, LATEST_UPDATE, TIME_OUT_OF_RANGE

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_STATUS_BY_NAME = {status.value: status for status in SessionStatus}
_TYPE_BY_NAME = {kind.value: kind for kind in SessionType}
_MAX_ID = 256
# The common RFC 3339 shapes; rarer ones (lower-case separators, 7+ fraction digits) go to the model.
_FAST_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})", re.ASCII)
# Bounds of the fast path for values with fields the model ignores (``_with_extras``): the model's JSON parser
# (jiter) refuses a number past Python's 4,300 digits and nesting deeper than 200.
_FAST_MAX_BYTES = 4096
_MAX_NESTING = 200


def epoch_ms(moment: datetime) -> int:
    """Exact milliseconds since the epoch (floor), without float rounding."""
    return (moment - _EPOCH) // _MILLISECOND


# Every time the store accepts can be printed as a browser prints it (four-digit UTC years).
MIN_UPDATED_MS = epoch_ms(EARLIEST_UPDATE)
MAX_UPDATED_MS = epoch_ms(LATEST_UPDATE)


class StatusUpdate(NamedTuple):
    """A validated record value, reduced to what the store keeps."""

    session_id: str
    tenant_id: str
    status: SessionStatus
    updated_ms: int
    type: SessionType | None

    @classmethod
    def from_event(cls, event: SessionStatusEvent) -> StatusUpdate:
        return cls(event.id, event.tenantId, event.status, epoch_ms(event.updatedAt), event.type)


class RejectReason(StrEnum):
    MISSING_KEY = "missing_key"
    INVALID_UTF8 = "invalid_utf8"
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    SCHEMA = "schema"
    KEY_MISMATCH = "key_mismatch"
    TIME_OUT_OF_RANGE = TIME_OUT_OF_RANGE
    # CloudEvents and mapped records (``consumers.formats``)
    CLOUDEVENTS = "cloudevents"  # not a valid CloudEvent: attributes missing, of a wrong type, batch mode, ...
    MAPPING = "mapping"  # a mapped field is missing or of the wrong type
    UNMAPPED_STATUS = "unmapped_status"  # the status value is not in the mapping's table


@dataclass(frozen=True, slots=True)
class Tombstone:
    session_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A well-formed record the gateway is configured not to use (counted as ignored, not rejected)."""

    reason: str


Decoded = StatusUpdate | Tombstone | Rejected


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
    update = fast_decode(value)
    if update is None:
        try:
            update = StatusUpdate.from_event(SessionStatusEvent.model_validate_json(value))
        except ValidationError as error:
            return _classify(value, error)
    if update.session_id != session_id:
        return Rejected(RejectReason.KEY_MISMATCH, "record key differs from the value's id")
    return update


class _PlainValue(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """The model's fields as msgspec checks them in C; ``updatedAt`` is checked below, as in ``fast_from_object``.

    A repeated field counts with its last value, as in the model. No other field may be present: then every
    byte of the value is in a string msgspec decodes (and checks: UTF-8, surrogates) or in JSON's syntax.
    """

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_ID)]
    tenantId: Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_ID)]
    status: SessionStatus
    updatedAt: str
    type: SessionType | None = None


class _PlainValueWithExtras(_PlainValue, frozen=True, gc=False, forbid_unknown_fields=False):
    """``_PlainValue`` with unknown fields ignored, as by the model; see the checks before it is used."""


_decode_plain = msgspec.json.Decoder(_PlainValue).decode
_decode_with_extras = msgspec.json.Decoder(_PlainValueWithExtras).decode
# msgspec's errors, and what it lets through from Python's UTF-8 decoder (UnicodeDecodeError is a ValueError)
_NOT_PLAIN = (msgspec.MsgspecError, ValueError, RecursionError)
_new_tuple = tuple.__new__  # a NamedTuple built from a tuple, without its Python-level __new__


def fast_decode(value: bytes) -> StatusUpdate | None:
    """The common well-formed value, or None to let the pydantic model decide."""
    try:
        plain: _PlainValue = _decode_plain(value)
    except _NOT_PLAIN:
        plain_or_none = _with_extras(value)
        if plain_or_none is None:
            return None
        plain = plain_or_none
    updated_ms = _fast_time_ms(plain.updatedAt)
    if updated_ms is None:
        return None
    return _new_tuple(StatusUpdate, (plain.id, plain.tenantId, plain.status, updated_ms, plain.type))


def _fast_time_ms(updated_at: str) -> int | None:
    """``updatedAt`` in ms when it has a common RFC 3339 shape and is in range, else None (the model decides)."""
    if not _FAST_TIME.fullmatch(updated_at):
        return None
    try:
        updated_ms = epoch_ms(datetime.fromisoformat(updated_at))
    except (ValueError, OverflowError):
        return None
    if not MIN_UPDATED_MS <= updated_ms <= MAX_UPDATED_MS:
        return None  # the model explains why
    return updated_ms


def _with_extras(value: bytes) -> _PlainValue | None:
    """A value with fields the model ignores: msgspec skips them without the checks the model's parser (jiter)
    makes, so the values that would differ there go to the model: longer ones (a number past Python's 4,300
    digits), invalid UTF-8, maybe a lone surrogate escape, deeper nesting than jiter's limit."""
    if len(value) > _FAST_MAX_BYTES:
        return None
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if b"\\" in value and (b"\\ud" in value or b"\\uD" in value):
        return None
    if len(value) > 2 * _MAX_NESTING and value.count(b"[") + value.count(b"{") > _MAX_NESTING:
        return None
    try:
        plain: _PlainValue = _decode_with_extras(value)
    except _NOT_PLAIN:
        return None
    return plain


def fast_from_object(data: dict[str, object]) -> StatusUpdate | None:
    """``fast_decode`` of a value already parsed into a dict."""
    session_id = data.get("id")
    tenant_id = data.get("tenantId")
    status = data.get("status")
    updated_at = data.get("updatedAt")
    kind = data.get("type")
    if not (
        type(session_id) is str
        and 0 < len(session_id) <= _MAX_ID
        and type(tenant_id) is str
        and 0 < len(tenant_id) <= _MAX_ID
        and type(status) is str
        and status in _STATUS_BY_NAME
        and type(updated_at) is str
        and (kind is None or (type(kind) is str and kind in _TYPE_BY_NAME))
    ):
        return None
    updated_ms = _fast_time_ms(updated_at)
    if updated_ms is None:
        return None
    return StatusUpdate(
        session_id,
        tenant_id,
        _STATUS_BY_NAME[status],
        updated_ms,
        None if kind is None else _TYPE_BY_NAME[kind],
    )


def decode_object(data: object) -> StatusUpdate | Rejected:
    """A value already parsed from JSON (CloudEvents data, a mapped record) checked like a plain record value."""
    update = fast_from_object(data) if type(data) is dict else None
    if update is not None:
        return update
    try:
        return StatusUpdate.from_event(SessionStatusEvent.model_validate(data))
    except ValidationError as error:
        return _classify_error(error)


def parse_json(value: bytes) -> object | Rejected:
    """orjson's parse of a value, or why it is not JSON (invalid UTF-8 first, as for plain records)."""
    try:
        parsed: object = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected(RejectReason.INVALID_UTF8, "value is not valid UTF-8")
        return Rejected(RejectReason.NOT_JSON, "value is not JSON")
    return parsed


def _classify(value: bytes, error: ValidationError) -> Rejected:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(RejectReason.INVALID_UTF8, "value is not valid UTF-8")
    return _classify_error(error)


def _classify_error(error: ValidationError) -> Rejected:
    first = error.errors(include_input=False, include_url=False)[0]
    if first["type"] == "json_invalid":
        return Rejected(RejectReason.NOT_JSON, "value is not JSON")
    if first["type"] == TIME_OUT_OF_RANGE:
        return Rejected(RejectReason.TIME_OUT_OF_RANGE, first["msg"])
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return Rejected(RejectReason.SCHEMA, f"{where}: {first['msg']} ({error.error_count()} errors)")
