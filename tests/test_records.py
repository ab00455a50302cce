"""decode_record: every raw record becomes an event, a tombstone or a classified rejection; it never raises."""

from __future__ import annotations

import json

import pytest

from consumers.records import Rejected, RejectReason, Tombstone, decode_record
from schemas import SessionStatus, SessionStatusEvent, SessionType
from tests.kafka_support import event_bytes

LIMIT = 1024
KEY = b"sess-1"
GOOD = event_bytes("sess-1", "tenant-a", "fetched", "2024-05-01T12:00:00.123Z", type="issuance")


def rejected(key: bytes | None, value: bytes | None, limit: int = LIMIT) -> Rejected:
    decoded = decode_record(key, value, limit)
    assert isinstance(decoded, Rejected), decoded
    return decoded


def test_valid_record_becomes_an_event() -> None:
    decoded = decode_record(KEY, GOOD, LIMIT)
    assert isinstance(decoded, SessionStatusEvent)
    assert decoded.id == "sess-1"
    assert decoded.tenantId == "tenant-a"
    assert decoded.status is SessionStatus.FETCHED
    assert decoded.type is SessionType.ISSUANCE
    assert decoded.updated_ms == 1_714_564_800_123


def test_unicode_key_equal_to_id_is_accepted() -> None:
    session_id = "sessión-ü-✓"
    decoded = decode_record(session_id.encode(), event_bytes(session_id, "t", "active"), LIMIT)
    assert isinstance(decoded, SessionStatusEvent)
    assert decoded.id == session_id


def test_null_value_is_a_tombstone() -> None:
    assert decode_record(KEY, None, LIMIT) == Tombstone("sess-1")


def test_tombstone_with_unicode_key() -> None:
    assert decode_record("ü-1".encode(), None, LIMIT) == Tombstone("ü-1")


@pytest.mark.parametrize("key", [None, b""])
def test_missing_key(key: bytes | None) -> None:
    assert rejected(key, GOOD).reason is RejectReason.MISSING_KEY


def test_missing_key_wins_over_tombstone() -> None:
    """A tombstone without a key cannot say which session it deletes."""
    assert rejected(None, None).reason is RejectReason.MISSING_KEY


def test_invalid_utf8_key() -> None:
    assert rejected(b"\xff\xfe-sess", GOOD).reason is RejectReason.INVALID_UTF8


def test_invalid_utf8_key_on_tombstone() -> None:
    assert rejected(b"\xc3\x28", None).reason is RejectReason.INVALID_UTF8


def test_invalid_utf8_value() -> None:
    value = GOOD.replace(b"tenant-a", b"tenant-\xff\xfe")
    result = rejected(KEY, value)
    assert result.reason is RejectReason.INVALID_UTF8
    assert "value" in result.detail


def test_invalid_utf8_value_that_is_not_json_either() -> None:
    assert rejected(KEY, b"\x80\x81\x82 garbage").reason is RejectReason.INVALID_UTF8


def test_too_large() -> None:
    value = event_bytes("sess-1", "tenant-a", "active", padding="x" * LIMIT)
    assert len(value) > LIMIT
    result = rejected(KEY, value)
    assert result.reason is RejectReason.TOO_LARGE
    assert str(len(value)) in result.detail


def test_exactly_at_the_limit_is_accepted() -> None:
    base = event_bytes("sess-1", "tenant-a", "active", padding="")
    value = event_bytes("sess-1", "tenant-a", "active", padding="x" * (LIMIT - len(base)))
    assert len(value) == LIMIT
    assert isinstance(decode_record(KEY, value, LIMIT), SessionStatusEvent)
    assert rejected(KEY, value, LIMIT - 1).reason is RejectReason.TOO_LARGE


def test_too_large_is_checked_before_parsing() -> None:
    assert rejected(KEY, b"{" * (LIMIT + 1)).reason is RejectReason.TOO_LARGE


@pytest.mark.parametrize("value", [b"not json", b"{", b'{"id": "sess-1",', b"", b"   ", b"{'id': 'x'}"])
def test_not_json(value: bytes) -> None:
    assert rejected(KEY, value).reason is RejectReason.NOT_JSON


@pytest.mark.parametrize(
    "value",
    [
        b"{}",
        b"[]",
        b"42",
        b"null",
        event_bytes("sess-1", "tenant-a", "unknown"),
        event_bytes("sess-1", "tenant-a", "active", "2024-05-01T12:00:00"),
        json.dumps({"id": "sess-1", "tenantId": "tenant-a", "status": "active", "updatedAt": 1714564800}).encode(),
        json.dumps({"id": "sess-1", "status": "active", "updatedAt": "2024-05-01T12:00:00Z"}).encode(),
    ],
)
def test_schema_violation(value: bytes) -> None:
    result = rejected(KEY, value)
    assert result.reason is RejectReason.SCHEMA
    assert "errors" in result.detail


def test_schema_detail_names_the_field_but_not_the_payload() -> None:
    value = event_bytes("sess-1", "secret-tenant-name", "bogus-status")
    result = rejected(KEY, value)
    assert result.reason is RejectReason.SCHEMA
    assert result.detail.startswith("status:")
    assert "bogus-status" not in result.detail
    assert "secret-tenant-name" not in result.detail


def test_key_mismatch() -> None:
    result = rejected(b"sess-2", GOOD)
    assert result.reason is RejectReason.KEY_MISMATCH


def test_key_mismatch_is_case_sensitive() -> None:
    assert rejected(b"SESS-1", GOOD).reason is RejectReason.KEY_MISMATCH


def test_reasons_are_stable_metric_labels() -> None:
    assert {reason.value for reason in RejectReason} == {
        "missing_key",
        "invalid_utf8",
        "too_large",
        "not_json",
        "schema",
        "key_mismatch",
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"k", b"\x00" * 10),
        (b"k", b'{"id": "k", "tenantId": "t", "status": "active", "updatedAt": "2024-05-01T12:00:00Z"' + b"}" * 5),
        (b"k", b'{"id": "k", "tenantId": {"nested": true}, "status": "active", "updatedAt": "x"}'),
        (b"\x00", b"{}"),
        (b"k", b"\xef\xbb\xbf{}"),
    ],
)
def test_never_raises(key: bytes, value: bytes) -> None:
    assert isinstance(decode_record(key, value, LIMIT), Rejected | SessionStatusEvent | Tombstone)
