"""decode_record: every raw record becomes an event, a tombstone or a classified rejection; it never raises."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from consumers.records import Rejected, RejectReason, StatusUpdate, Tombstone, decode_record, fast_decode
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
    assert isinstance(decoded, StatusUpdate)
    assert decoded.session_id == "sess-1"
    assert decoded.tenant_id == "tenant-a"
    assert decoded.status is SessionStatus.FETCHED
    assert decoded.type is SessionType.ISSUANCE
    assert decoded.updated_ms == 1_714_564_800_123


def test_unicode_key_equal_to_id_is_accepted() -> None:
    session_id = "sessión-ü-✓"
    decoded = decode_record(session_id.encode(), event_bytes(session_id, "t", "active"), LIMIT)
    assert isinstance(decoded, StatusUpdate)
    assert decoded.session_id == session_id


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
    assert isinstance(decode_record(KEY, value, LIMIT), StatusUpdate)
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
        "time_out_of_range",
        "cloudevents",
        "mapping",
        "unmapped_status",
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
    assert isinstance(decode_record(key, value, LIMIT), Rejected | StatusUpdate | Tombstone)


# --------------------------------------------------------------------------------------------------
# The fast path accepts only what the pydantic model accepts, with the same result


EDGE_VALUES: list[object] = [
    {"updatedAt": "2026-11-28T10:00:00Z"},
    {"updatedAt": "2026-11-28T10:00:00.123Z"},
    {"updatedAt": "2026-11-28T10:00:00.123456Z"},
    {"updatedAt": "2026-11-28T10:00:00.1234567Z"},
    {"updatedAt": "2026-11-28T10:00:00.999999+14:00"},
    {"updatedAt": "2026-11-28T10:00:00-23:59"},
    {"updatedAt": "2026-11-28T10:00:00+24:00"},
    {"updatedAt": "2026-11-28t10:00:00z"},
    {"updatedAt": "2026-11-28 10:00:00Z"},
    {"updatedAt": "2026-02-30T10:00:00Z"},
    {"updatedAt": "2026-11-28T24:00:00Z"},
    {"updatedAt": "2026-11-28T10:00:60Z"},
    {"updatedAt": "2026-11-28T10:00:00"},
    {"updatedAt": "2026-11-28"},
    {"updatedAt": "1764324000"},
    {"updatedAt": 1764324000},
    {"updatedAt": None},
    {"updatedAt": "0001-01-01T00:00:00Z"},
    {"updatedAt": "9999-12-31T23:59:59.999Z"},
    {"updatedAt": "2026-11-28T10:00:00.Z"},
    {"updatedAt": "\uff12\uff10\uff12\uff16-11-28T10:00:00Z"},
    {"status": "ACTIVE"},
    {"status": "completed "},
    {"status": ["active"]},
    {"status": None},
    {"type": "issuance"},
    {"type": "presentation"},
    {"type": None},
    {"type": "other"},
    {"type": ["issuance"]},
    {"id": ""},
    {"id": "x" * 256},
    {"id": "x" * 257},
    {"id": 7},
    {"tenantId": ""},
    {"tenantId": "t" * 257},
    {"tenantId": {"a": 1}},
    {"extra": [1, 2, {"deep": True}]},
]


@pytest.mark.parametrize("change", EDGE_VALUES, ids=repr)
def test_fast_path_agrees_with_the_model(change: dict[str, object]) -> None:
    data: dict[str, object] = {
        "id": "sess-1",
        "tenantId": "tenant-a",
        "status": "active",
        "updatedAt": "2026-11-28T10:00:00.000Z",
    }
    data.update(change)
    value = json.dumps(data, ensure_ascii=False).encode()
    fast = fast_decode(value)
    try:
        model: StatusUpdate | None = StatusUpdate.from_event(SessionStatusEvent.model_validate_json(value))
    except ValidationError:
        model = None
    if fast is not None:
        assert model == fast, "the fast path accepted a value the model rejects, or read it differently"
    decoded = decode_record(str(data["id"]).encode() if isinstance(data["id"], str) else b"k", value, 1 << 20)
    if model is None:
        assert isinstance(decoded, Rejected), f"decode_record accepted a value the model rejects: {decoded}"
        # An empty id makes an empty key here: that record has no key.
        assert decoded.reason in (RejectReason.SCHEMA, RejectReason.KEY_MISMATCH, RejectReason.MISSING_KEY), decoded
    else:
        assert decoded == model, "decode_record and the model disagree on a value the model accepts"


def test_fast_path_takes_the_common_shape() -> None:
    value = (
        b'{"id":"s","tenantId":"t","status":"fetched","updatedAt":"2026-11-28T10:00:00.123+01:00","type":"issuance"}'
    )
    update = fast_decode(value)
    assert update == StatusUpdate("s", "t", SessionStatus.FETCHED, 1_795_856_400_123, SessionType.ISSUANCE)
