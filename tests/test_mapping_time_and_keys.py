"""Issue 25.1 without a broker: epoch ``updatedAt`` in a declared unit, the fallback to the Kafka record's
timestamp, and record keys that are JSON objects (Debezium's ``{"id": ...}``), each with the hostile inputs
a careless producer or a mistaken mapping brings. The same through a real gateway: tests/test_first_day.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consumers.formats import RecordDecoder
from consumers.formats.mapping import RecordMapping, load_mapping
from consumers.formats.timestamps import unit_hint
from consumers.records import Rejected, RejectReason, StatusUpdate, Tombstone
from schemas import SessionStatus

LIMIT = 4096
WHEN_MS = 1_765_096_000_123  # 2025-12-07T08:26:40.123Z
DEBEZIUM: dict[str, Any] = {
    "keyId": "/id",
    "id": "/after/id",
    "tenantId": "/after/tenant",
    "status": "/after/status",
    "updatedAt": "/after/updated_at",
    "updatedAtFormat": "epochMicros",
    "statusValues": {"OPEN": "active", "FETCHED": "fetched", "DONE": "completed"},
}


def decode(
    mapping: dict[str, Any],
    after: Any,
    key: bytes | None = b'{"id": "wallet-42"}',
    timestamp: int | None = None,
    headers: list[tuple[str, bytes | None]] | None = None,
) -> object:
    value = json.dumps({"before": None, "after": after, "op": "u"}).encode()
    return RecordDecoder(LIMIT, (), RecordMapping.model_validate(mapping)).decode(key, value, headers or [], timestamp)


def row(**changes: Any) -> dict[str, Any]:
    return {"id": "wallet-42", "tenant": "acme", "status": "DONE", "updated_at": WHEN_MS * 1000 + 456, **changes}


def stored(result: object) -> StatusUpdate:
    assert isinstance(result, StatusUpdate), result
    return result


def rejection(result: object) -> Rejected:
    assert isinstance(result, Rejected), result
    return result


@pytest.mark.parametrize(
    ("unit", "value"),
    [
        ("epochMicros", WHEN_MS * 1000 + 456),
        ("epochMicros", str(WHEN_MS * 1000 + 999)),  # protobuf's JSON writes int64 as text
        ("epochMillis", WHEN_MS),
        ("epochMillis", float(WHEN_MS) + 0.9),
        ("epochSeconds", WHEN_MS / 1000),
    ],
)
def test_epoch_numbers_in_the_declared_unit_give_the_time_to_the_millisecond(unit: str, value: object) -> None:
    update = stored(decode({**DEBEZIUM, "updatedAtFormat": unit}, row(updated_at=value)))
    assert update == StatusUpdate("wallet-42", "acme", SessionStatus.COMPLETED, WHEN_MS, None)


def test_whole_epoch_seconds_and_times_before_1970() -> None:
    update = stored(decode({**DEBEZIUM, "updatedAtFormat": "epochSeconds"}, row(updated_at=1_765_096_000)))
    assert update.updated_ms == 1_765_096_000_000
    before = stored(decode({**DEBEZIUM, "updatedAtFormat": "epochMicros"}, row(updated_at=-1_500)))
    assert before.updated_ms == -2  # floor, as for RFC 3339 times


def test_a_number_without_a_declared_unit_is_refused_with_the_likely_unit() -> None:
    mapping = {key: value for key, value in DEBEZIUM.items() if key != "updatedAtFormat"}
    refused = rejection(decode(mapping, row()))
    assert refused.reason is RejectReason.MAPPING
    assert refused.detail == (
        "updatedAt at /after/updated_at is a number, not an RFC 3339 string: declare its unit with "
        '"updatedAtFormat": epochSeconds, epochMillis or epochMicros (a 16-digit number looks like epochMicros)'
    )
    # RFC 3339 text still works with the default format, and an epoch format refuses text that is not a number.
    assert stored(decode(mapping, row(updated_at="2025-12-07T08:26:40.123Z"))).updated_ms == WHEN_MS
    refused = rejection(decode(DEBEZIUM, row(updated_at="2025-12-07T08:26:40.123Z")))
    assert (refused.reason, refused.detail) == (
        RejectReason.MAPPING,
        "updatedAt at /after/updated_at is not a number (epochMicros is declared)",
    )


@pytest.mark.parametrize(
    ("unit", "value", "reason"),
    [
        ("epochMillis", WHEN_MS * 1000, RejectReason.TIME_OUT_OF_RANGE),  # microseconds declared as milliseconds
        ("epochSeconds", WHEN_MS, RejectReason.TIME_OUT_OF_RANGE),
        ("epochMicros", 10**30, RejectReason.TIME_OUT_OF_RANGE),
        ("epochMicros", -(10**30), RejectReason.TIME_OUT_OF_RANGE),
        ("epochSeconds", 1e300, RejectReason.TIME_OUT_OF_RANGE),
        ("epochMicros", "9" * 21, RejectReason.MAPPING),  # longer than any int64 in text: not read
        ("epochMicros", "1.7e15", RejectReason.MAPPING),
        ("epochMicros", " 1765096000123456", RejectReason.MAPPING),
        ("epochMicros", True, RejectReason.MAPPING),
        ("epochMicros", None, RejectReason.MAPPING),
        ("epochMicros", [1765096000123456], RejectReason.MAPPING),
        ("epochMicros", {"$date": 1765096000123456}, RejectReason.MAPPING),
    ],
)
def test_hostile_epoch_values_are_rejected_with_a_reason(unit: str, value: object, reason: RejectReason) -> None:
    refused = rejection(decode({**DEBEZIUM, "updatedAtFormat": unit}, row(updated_at=value)))
    assert refused.reason is reason, refused


def test_out_of_range_says_which_unit_the_digits_suggest() -> None:
    refused = rejection(decode({**DEBEZIUM, "updatedAtFormat": "epochMillis"}, row()))
    assert refused.detail == (
        "updatedAt at /after/updated_at read as epochMillis is outside the years 0001-9999 "
        "(a 16-digit number looks like epochMicros)"
    )
    assert unit_hint(1_765_096_000) == " (a 10-digit number looks like epochSeconds)"
    assert unit_hint("1765096000123") == " (a 13-digit number looks like epochMillis)"
    assert unit_hint(12345) == "" and unit_hint("soon") == "" and unit_hint(None) == ""


def test_the_record_timestamp_is_used_only_when_declared_and_only_when_the_field_is_missing() -> None:
    fallback = {**DEBEZIUM, "updatedAtFallback": "recordTimestamp"}
    without = row()
    del without["updated_at"]
    assert stored(decode(fallback, without, timestamp=WHEN_MS)).updated_ms == WHEN_MS
    # The field wins over the record timestamp when it is there.
    assert stored(decode(fallback, row(), timestamp=5)).updated_ms == WHEN_MS
    # Not declared: the field's absence is a rejection that names the setting to add.
    refused = rejection(decode(DEBEZIUM, without, timestamp=WHEN_MS))
    assert refused.detail == (
        'no updatedAt at /after/updated_at and no CloudEvent time (set "updatedAtFallback": "recordTimestamp" '
        "to use the Kafka record's timestamp)"
    )
    # Declared, but the record has no timestamp (-1 from an old producer) or one past the year 9999.
    refused = rejection(decode(fallback, without, timestamp=-1))
    assert refused.detail == "no updatedAt at /after/updated_at, no CloudEvent time and no record timestamp"
    assert rejection(decode(fallback, without, timestamp=None)).reason is RejectReason.MAPPING
    assert rejection(decode(fallback, without, timestamp=2**62)).reason is RejectReason.TIME_OUT_OF_RANGE
    # A null is a value, not an absence: rejected, as before.
    assert rejection(decode(fallback, row(updated_at=None), timestamp=WHEN_MS)).reason is RejectReason.MAPPING


def test_the_record_timestamp_without_an_updated_at_pointer() -> None:
    mapping = {k: v for k, v in DEBEZIUM.items() if k not in ("updatedAt", "updatedAtFormat")}
    mapping["updatedAtFallback"] = "recordTimestamp"
    assert stored(decode(mapping, row(), timestamp=WHEN_MS)).updated_ms == WHEN_MS
    refused = rejection(decode({**mapping, "updatedAtFallback": None}, row(), timestamp=WHEN_MS))
    assert refused.detail.startswith("no updatedAt pointer and no CloudEvent time (set ")


def test_a_cloudevent_time_comes_before_the_record_timestamp() -> None:
    mapping = {k: v for k, v in DEBEZIUM.items() if k not in ("updatedAt", "updatedAtFormat", "keyId")}
    mapping["updatedAtFallback"] = "recordTimestamp"
    headers: list[tuple[str, bytes | None]] = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"e-1"),
        ("ce_source", b"/cdc"),
        ("ce_type", b"row"),
        ("ce_time", b"2025-12-07T08:26:40.123Z"),
        ("content-type", b"application/json"),
    ]
    update = stored(decode(mapping, row(), key=b"wallet-42", timestamp=5, headers=headers))
    assert update.updated_ms == WHEN_MS


def test_a_json_key_names_the_session_and_its_tombstone_deletes_it() -> None:
    assert stored(decode(DEBEZIUM, row())).session_id == "wallet-42"
    decoder = RecordDecoder(LIMIT, (), RecordMapping.model_validate(DEBEZIUM))
    assert decoder.decode(b'{"id": "wallet-42"}', None, [], WHEN_MS) == Tombstone("wallet-42")
    # Debezium with schemas: the key is wrapped in {"schema": ..., "payload": {...}}.
    wrapped = {**DEBEZIUM, "keyId": "/payload/id"}
    assert stored(decode(wrapped, row(), key=b'{"schema": {}, "payload": {"id": "wallet-42"}}')).tenant_id == "acme"


@pytest.mark.parametrize(
    ("key", "reason", "detail"),
    [
        (b"wallet-42", RejectReason.NOT_JSON, "record key is not JSON (keyId reads the key as JSON)"),
        (b'{"id": "other"}', RejectReason.KEY_MISMATCH, "record key differs from the mapped id"),
        (b'{"ID": "wallet-42"}', RejectReason.MISSING_KEY, "no id at /id in the record key"),
        (b'{"id": 42}', RejectReason.MAPPING, "the record key's id at /id is not a string"),
        (b'{"id": null}', RejectReason.MAPPING, "the record key's id at /id is not a string"),
        (b'["wallet-42"]', RejectReason.MISSING_KEY, "no id at /id in the record key"),
        (b"\xff\xfe", RejectReason.INVALID_UTF8, "key is not valid UTF-8"),
        (b'{"id": "wallet-42"', RejectReason.NOT_JSON, "record key is not JSON (keyId reads the key as JSON)"),
    ],
)
def test_hostile_json_keys_are_rejected_with_a_reason(key: bytes, reason: RejectReason, detail: str) -> None:
    refused = rejection(decode(DEBEZIUM, row(), key=key))
    assert (refused.reason, refused.detail) == (reason, detail)
    tombstone = RecordDecoder(LIMIT, (), RecordMapping.model_validate(DEBEZIUM)).decode(key, None, [], None)
    if reason is RejectReason.KEY_MISMATCH:
        assert tombstone == Tombstone("other")
    else:  # a tombstone whose key names no session deletes nothing
        assert rejection(tombstone).reason is reason


def test_without_a_key_the_mapped_id_is_used() -> None:
    assert stored(decode(DEBEZIUM, row(), key=None)).session_id == "wallet-42"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"updatedAtFormat": "epochNanos"}, "updatedAtFormat"),
        ({"updatedAtFormat": "epochMillis", "updatedAt": None}, "updatedAtFormat describes the value at updatedAt"),
        ({"updatedAtFallback": "now"}, "updatedAtFallback"),
        ({"keyId": "id"}, "starts with '/'"),
        ({"keyIsSessionId": False}, "keyId reads the session id from the record key"),
    ],
)
def test_mapping_mistakes_stop_the_start_with_one_line(changes: dict[str, Any], message: str) -> None:
    mapping = {key: value for key, value in {**DEBEZIUM, **changes}.items() if value is not None}
    with pytest.raises(ValueError, match="record mapping") as raised:
        load_mapping(json.dumps(mapping))
    assert message in str(raised.value) and "\n" not in str(raised.value)
