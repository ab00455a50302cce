"""Record formats without a broker: CloudEvents produced by the CloudEvents SDK, the declarative mapping,
event ids across topics, the new settings, and hostile input that must end in a defined reason."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from consumers.formats import CLOUDEVENTS_TYPE_IGNORED, RecordDecoder
from consumers.formats.mapping import IGNORED_STATUS, RecordMapping, load_mapping, pointer_tokens, resolve
from consumers.partitions import MAX_PARTITION, format_partition, global_partition, parse_partition
from consumers.records import Rejected, RejectReason, Skipped, StatusUpdate, Tombstone
from consumers.settings import ConsumerSettings
from consumers.store import Transition
from gateway.streams.sse import event_id, parse_event_id
from schemas import SessionStatus, SessionType

LIMIT = 4096
TYPE = "eu.example.wallet.session.status.v1"
WHEN = datetime(2026, 3, 1, 9, 30, 15, 250000, tzinfo=UTC)
WHEN_MS = 1_772_357_415_250

Headers = list[tuple[str, bytes | None]]


def cloudevent(data: Any, **attributes: Any) -> CloudEvent:
    base: dict[str, Any] = {"type": TYPE, "source": "/issuer/eudiplo", "time": WHEN}
    base.update(attributes)
    return CloudEvent(base, data=data)


def structured(event: CloudEvent) -> tuple[Headers, bytes]:
    message = ce_kafka.to_structured_event(event)
    return list(message.headers.items()), message.value


def binary(event: CloudEvent) -> tuple[Headers, bytes]:
    message = ce_kafka.to_binary_event(event)
    return list(message.headers.items()), message.value


MODES = [pytest.param(structured, id="structured"), pytest.param(binary, id="binary")]


def decoder(types: tuple[str, ...] = (), mapping: dict[str, Any] | None = None) -> RecordDecoder:
    parsed = None if mapping is None else RecordMapping.model_validate(mapping)
    return RecordDecoder(LIMIT, types, parsed)


def rejected(result: object) -> RejectReason:
    assert isinstance(result, Rejected), result
    return result.reason


# --------------------------------------------------------------------------------------------------
# CloudEvents made by the SDK


@pytest.mark.parametrize("mode", MODES)
def test_sdk_cloudevent_with_full_data_decodes(mode: Any) -> None:
    data = {"id": "s-1", "tenantId": "t", "status": "fetched", "updatedAt": "2026-03-01T10:00:00Z", "type": "issuance"}
    headers, value = mode(cloudevent(data, subject="s-1", datacontenttype="application/json"))
    update = decoder().decode(b"s-1", value, headers)
    assert update == StatusUpdate("s-1", "t", SessionStatus.FETCHED, 1_772_359_200_000, SessionType.ISSUANCE)


@pytest.mark.parametrize("mode", MODES)
def test_subject_gives_the_id_and_time_gives_updated_at(mode: Any) -> None:
    headers, value = mode(cloudevent({"tenantId": "t", "status": "active"}, subject="s-2"))
    for key in (b"s-2", None):
        update = decoder().decode(key, value, headers)
        assert isinstance(update, StatusUpdate), update
        assert (update.session_id, update.updated_ms) == ("s-2", WHEN_MS)


@pytest.mark.parametrize("mode", MODES)
def test_the_key_gives_the_id_without_subject(mode: Any) -> None:
    headers, value = mode(cloudevent({"tenantId": "t", "status": "active"}))
    update = decoder().decode(b"from-key", value, headers)
    assert isinstance(update, StatusUpdate) and update.session_id == "from-key"
    assert rejected(decoder().decode(None, value, headers)) is RejectReason.MISSING_KEY


@pytest.mark.parametrize("mode", MODES)
def test_data_updated_at_wins_over_time(mode: Any) -> None:
    data = {"tenantId": "t", "status": "active", "updatedAt": "2026-03-01T10:00:00Z"}
    headers, value = mode(cloudevent(data, subject="s"))
    update = decoder().decode(b"s", value, headers)
    assert isinstance(update, StatusUpdate) and update.updated_ms == 1_772_359_200_000


@pytest.mark.parametrize("mode", MODES)
def test_subject_key_and_data_id_must_agree(mode: Any) -> None:
    headers, value = mode(cloudevent({"tenantId": "t", "status": "active"}, subject="s-1"))
    assert rejected(decoder().decode(b"s-other", value, headers)) is RejectReason.KEY_MISMATCH
    headers, value = mode(cloudevent({"id": "s-2", "tenantId": "t", "status": "active"}, subject="s-1"))
    assert rejected(decoder().decode(None, value, headers)) is RejectReason.KEY_MISMATCH


@pytest.mark.parametrize("mode", MODES)
def test_type_filter_ignores_other_types(mode: Any) -> None:
    headers, value = mode(cloudevent({"tenantId": "t", "status": "active"}, subject="s", type="other.type"))
    assert decoder((TYPE,)).decode(b"s", value, headers) == Skipped(CLOUDEVENTS_TYPE_IGNORED)
    assert isinstance(decoder(()).decode(b"s", value, headers), StatusUpdate)  # no filter: every type


@pytest.mark.parametrize("mode", MODES)
def test_no_time_and_no_updated_at_is_a_schema_error(mode: Any) -> None:
    event = cloudevent({"tenantId": "t", "status": "active"}, subject="s")
    headers, value = mode(event)
    headers = [(name, raw) for name, raw in headers if name != "ce_time"]
    if mode is structured:
        envelope = json.loads(value)
        del envelope["time"]
        value = json.dumps(envelope).encode()
    assert rejected(decoder().decode(b"s", value, headers)) is RejectReason.SCHEMA


def test_structured_data_base64_is_read() -> None:
    data = json.dumps({"tenantId": "t", "status": "completed"}).encode()
    envelope = {"specversion": "1.0", "id": "1", "source": "/x", "type": TYPE, "subject": "s",
                "time": "2026-03-01T09:30:15.25Z", "data_base64": base64.b64encode(data).decode()}  # fmt: skip
    headers: Headers = [("content-type", b"application/cloudevents+json; charset=utf-8")]
    update = decoder().decode(b"s", json.dumps(envelope).encode(), headers)
    assert isinstance(update, StatusUpdate) and update.status is SessionStatus.COMPLETED
    assert update.updated_ms == WHEN_MS


def test_a_null_value_with_ce_headers_is_a_tombstone() -> None:
    headers, _ = binary(cloudevent({"tenantId": "t", "status": "active"}, subject="s"))
    assert decoder().decode(b"s", None, headers) == Tombstone("s")
    assert rejected(decoder().decode(None, None, headers)) is RejectReason.MISSING_KEY


def test_plain_records_with_unrelated_headers_stay_plain() -> None:
    value = json.dumps({"id": "s", "tenantId": "t", "status": "active", "updatedAt": "2026-03-01T10:00:00Z"}).encode()
    headers: Headers = [("traceparent", b"00-abc-def-01"), ("content-type", b"application/json"), ("x", None)]
    assert isinstance(decoder().decode(b"s", value, headers), StatusUpdate)


# --------------------------------------------------------------------------------------------------
# Hostile CloudEvents: each gets its reason, nothing raises


def envelope(**changes: Any) -> bytes:
    base: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/x", "type": TYPE, "subject": "s",
                            "time": "2026-03-01T09:30:15Z", "data": {"tenantId": "t", "status": "active"}}  # fmt: skip
    for name, value in changes.items():
        if value is _DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return orjson.dumps(base)


_DROP = object()
STRUCTURED: Headers = [("content-type", b"application/cloudevents+json")]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (envelope(specversion=1.0), RejectReason.CLOUDEVENTS),
        (envelope(specversion="0.3"), RejectReason.CLOUDEVENTS),
        (envelope(id=7), RejectReason.CLOUDEVENTS),
        (envelope(id=""), RejectReason.CLOUDEVENTS),
        (envelope(source=None), RejectReason.CLOUDEVENTS),
        (envelope(type=["a"]), RejectReason.CLOUDEVENTS),
        (envelope(type=_DROP), RejectReason.CLOUDEVENTS),
        (envelope(subject=5), RejectReason.CLOUDEVENTS),
        (envelope(subject=""), RejectReason.CLOUDEVENTS),
        (envelope(time=1_700_000_000), RejectReason.CLOUDEVENTS),
        (envelope(time="yesterday"), RejectReason.CLOUDEVENTS),
        (envelope(time="99999-01-01T00:00:00Z"), RejectReason.CLOUDEVENTS),
        (envelope(time="0001-01-01T00:30:00+01:00"), RejectReason.TIME_OUT_OF_RANGE),
        (envelope(datacontenttype="application/xml"), RejectReason.CLOUDEVENTS),
        (envelope(datacontenttype=3), RejectReason.CLOUDEVENTS),
        (envelope(data=_DROP), RejectReason.CLOUDEVENTS),
        (envelope(data="not an object"), RejectReason.SCHEMA),
        (envelope(data=[1, 2]), RejectReason.SCHEMA),
        (envelope(data={"tenantId": 5, "status": "active"}), RejectReason.SCHEMA),
        (envelope(data={"tenantId": "t", "status": "exploded"}), RejectReason.SCHEMA),
        (envelope(data_base64="!!!"), RejectReason.CLOUDEVENTS),
        (envelope(data=_DROP, data_base64=5), RejectReason.CLOUDEVENTS),
        (envelope(data=_DROP, data_base64=base64.b64encode(b"{nope").decode()), RejectReason.NOT_JSON),
        (envelope(data=_DROP, data_base64=base64.b64encode(b"\xff\xfe").decode()), RejectReason.INVALID_UTF8),
        (envelope(type="x" * 5000), RejectReason.CLOUDEVENTS),
        (b"[1, 2, 3]", RejectReason.CLOUDEVENTS),
        (b"{not json", RejectReason.NOT_JSON),
        (b"\xff\xfe{}", RejectReason.INVALID_UTF8),
        (b"null", RejectReason.CLOUDEVENTS),
    ],
)
def test_hostile_structured_events_are_rejected_with_a_reason(value: bytes, reason: RejectReason) -> None:
    assert rejected(RecordDecoder(64 * 1024).decode(b"s", value, STRUCTURED)) is reason


def ce_headers(**changes: bytes | None) -> Headers:
    headers: dict[str, bytes | None] = {
        "ce_specversion": b"1.0",
        "ce_id": b"1",
        "ce_source": b"/x",
        "ce_type": TYPE.encode(),
        "ce_subject": b"s",
        "ce_time": b"2026-03-01T09:30:15Z",
        "content-type": b"application/json",
    }
    headers.update(changes)
    return list(headers.items())


BINARY_DATA = b'{"tenantId": "t", "status": "active"}'


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        (ce_headers(ce_specversion=b"1.1"), BINARY_DATA, RejectReason.CLOUDEVENTS),
        (ce_headers(ce_id=b""), BINARY_DATA, RejectReason.CLOUDEVENTS),
        (ce_headers(ce_type=None), BINARY_DATA, RejectReason.CLOUDEVENTS),
        (ce_headers(ce_subject=b"\xff\xfe"), BINARY_DATA, RejectReason.INVALID_UTF8),
        (ce_headers(**{"content-type": b"\xc3\x28"}), BINARY_DATA, RejectReason.INVALID_UTF8),
        (ce_headers(**{"content-type": b"text/plain"}), BINARY_DATA, RejectReason.CLOUDEVENTS),
        (ce_headers(ce_time=b"01/03/2026"), BINARY_DATA, RejectReason.CLOUDEVENTS),
        ([*ce_headers(), ("CE_ID", b"2")], BINARY_DATA, RejectReason.CLOUDEVENTS),
        ([*ce_headers(), ("x-padding", b"x" * LIMIT)], BINARY_DATA, RejectReason.TOO_LARGE),
        ([(f"h{i}", b"y" * 100) for i in range(100)] + ce_headers(), BINARY_DATA, RejectReason.TOO_LARGE),
        (ce_headers(), b"\xff{}", RejectReason.INVALID_UTF8),
        (ce_headers(), b"{", RejectReason.NOT_JSON),
        (ce_headers(), b"x" * (LIMIT + 1), RejectReason.TOO_LARGE),
        (ce_headers(ce_subject=b"other"), BINARY_DATA, RejectReason.KEY_MISMATCH),
        ([("content-type", b"application/cloudevents-batch+json")], b"[]", RejectReason.CLOUDEVENTS),
    ],
)
def test_hostile_binary_events_are_rejected_with_a_reason(headers: Headers, value: bytes, reason: RejectReason) -> None:
    assert rejected(decoder().decode(b"s", value, headers)) is reason


def test_binary_headers_are_matched_case_insensitively() -> None:
    headers = [(name.upper(), raw) for name, raw in ce_headers()]
    assert isinstance(decoder().decode(b"s", BINARY_DATA, headers), StatusUpdate)


header_values = st.one_of(st.none(), st.binary(max_size=64), st.sampled_from([b"1.0", b"application/json"]))
header_names = st.sampled_from(
    ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time", "content-type", "x"]
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=10),
    key=st.one_of(st.none(), st.binary(max_size=8)),
    value=st.one_of(st.none(), st.binary(max_size=64), st.just(BINARY_DATA), st.just(envelope())),
)
def test_no_header_value_or_key_makes_the_decoder_raise(headers: Headers, key: bytes | None, value: bytes) -> None:
    for chosen in (decoder(), decoder((TYPE,)), decoder(mapping=FOREIGN_MAPPING)):
        assert isinstance(chosen.decode(key, value, headers), StatusUpdate | Tombstone | Rejected | Skipped)


# --------------------------------------------------------------------------------------------------
# Declarative mapping


FOREIGN_MAPPING: dict[str, Any] = {
    "id": "/session/ref",
    "tenantId": "/organisation/id",
    "status": "/lifecycle/state",
    "updatedAt": "/occurredAt",
    "type": "/session/flow",
    "statusValues": {
        "OFFER_CREATED": "active",
        "CREDENTIAL_FETCHED": "fetched",
        "DONE": "completed",
        "ERROR": "failed",
        "3": "expired",
        "OFFER_DISPLAYED": None,
    },
    "typeValues": {"OID4VCI": "issuance", "OID4VP": "presentation"},
    "defaultTenant": "acme",
}


def foreign(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventId": "9f1c",
        "occurredAt": "2026-03-01T09:30:15.250Z",
        "session": {"ref": "wallet-42", "flow": "OID4VCI"},
        "organisation": {"id": "tenant-7"},
        "lifecycle": {"state": "CREDENTIAL_FETCHED", "previous": "OFFER_CREATED"},
    }
    event.update(changes)
    return event


def mapped(event: Any, key: bytes | None = b"wallet-42", mapping: dict[str, Any] | None = None) -> object:
    return decoder(mapping=mapping or FOREIGN_MAPPING).decode(key, json.dumps(event).encode(), ())


def test_a_foreign_record_is_mapped() -> None:
    assert mapped(foreign()) == StatusUpdate(
        "wallet-42", "tenant-7", SessionStatus.FETCHED, WHEN_MS, SessionType.ISSUANCE
    )


def test_default_tenant_integer_status_and_unknown_type() -> None:
    event = foreign(organisation={}, lifecycle={"state": 3}, session={"ref": "wallet-42", "flow": "SIOP"})
    assert mapped(event) == StatusUpdate("wallet-42", "acme", SessionStatus.EXPIRED, WHEN_MS, None)


def test_a_status_mapped_to_null_is_ignored() -> None:
    assert mapped(foreign(lifecycle={"state": "OFFER_DISPLAYED"})) == Skipped(IGNORED_STATUS)


def test_pointers_into_arrays() -> None:
    mapping = {**FOREIGN_MAPPING, "status": "/steps/1/state", "id": "/refs/0"}
    event = foreign(steps=[{"state": "OFFER_CREATED"}, {"state": "DONE"}], refs=["wallet-42"])
    update = mapped(event, mapping=mapping)
    assert isinstance(update, StatusUpdate) and update.status is SessionStatus.COMPLETED
    for steps in ([{"state": "DONE"}], {"1": {"state": "DONE"}}, "DONE", [{"state": "DONE"}, None]):
        result = mapped(foreign(steps=steps, refs=["wallet-42"]), mapping=mapping)
        if isinstance(steps, dict):  # an object with key "1" is addressed by the same pointer
            assert isinstance(result, StatusUpdate)
        else:
            assert rejected(result) is RejectReason.MAPPING, steps
    for index in ("01", "-", "1.0", "9999999999999"):
        result = mapped(
            foreign(steps=[{}, {"state": "DONE"}], refs=["wallet-42"]),
            mapping={**mapping, "status": f"/steps/{index}/state"},
        )
        assert rejected(result) is RejectReason.MAPPING, index


@pytest.mark.parametrize(
    ("event", "key", "reason"),
    [
        (foreign(lifecycle={"state": "PAUSED"}), b"wallet-42", RejectReason.UNMAPPED_STATUS),
        (foreign(lifecycle={"state": 4}), b"wallet-42", RejectReason.UNMAPPED_STATUS),
        (foreign(lifecycle={"state": True}), b"wallet-42", RejectReason.MAPPING),
        (foreign(lifecycle={"state": {"code": "DONE"}}), b"wallet-42", RejectReason.MAPPING),
        (foreign(lifecycle={}), b"wallet-42", RejectReason.MAPPING),
        (foreign(session={"ref": 42}), b"wallet-42", RejectReason.MAPPING),
        (foreign(session=["wallet-42"]), b"wallet-42", RejectReason.MAPPING),
        (foreign(organisation={"id": ["t"]}), b"wallet-42", RejectReason.MAPPING),
        (foreign(occurredAt=1_772_357_415_250), b"wallet-42", RejectReason.MAPPING),
        (foreign(occurredAt="last tuesday"), b"wallet-42", RejectReason.SCHEMA),
        (foreign(occurredAt="10000-01-01T00:00:00Z"), b"wallet-42", RejectReason.SCHEMA),
        (foreign(occurredAt="0001-01-01T00:00:00+01:00"), b"wallet-42", RejectReason.TIME_OUT_OF_RANGE),
        (foreign(occurredAt=None), b"wallet-42", RejectReason.MAPPING),
        (foreign(session={"ref": "x" * 300}), b"x" * 300, RejectReason.SCHEMA),
        (foreign(), b"someone-else", RejectReason.KEY_MISMATCH),
        ([1, 2, 3], b"wallet-42", RejectReason.MAPPING),
        ("DONE", b"wallet-42", RejectReason.MAPPING),
    ],
)
def test_hostile_foreign_records_are_rejected_with_a_reason(event: Any, key: bytes, reason: RejectReason) -> None:
    assert rejected(mapped(event, key)) is reason


def test_mapped_topics_reject_bytes_that_are_not_json() -> None:
    mapping = decoder(mapping=FOREIGN_MAPPING)
    assert rejected(mapping.decode(b"k", b"\xff\xfe", ())) is RejectReason.INVALID_UTF8
    assert rejected(mapping.decode(b"k", b"<xml/>", ())) is RejectReason.NOT_JSON
    assert mapping.decode(b"k", None, ()) == Tombstone("k")


def test_key_is_session_id_false_ignores_the_key() -> None:
    mapping = {**FOREIGN_MAPPING, "keyIsSessionId": False}
    update = mapped(foreign(), key=b"partitioned-by-tenant-7", mapping=mapping)
    assert isinstance(update, StatusUpdate) and update.session_id == "wallet-42"
    assert decoder(mapping=mapping).decode(b"tenant-7", None, ()) == Skipped("unkeyed_tombstone")


def test_mapping_applies_to_cloudevent_data_with_subject_and_time() -> None:
    mapping = {key: value for key, value in FOREIGN_MAPPING.items() if key not in ("id", "updatedAt")}
    data = foreign(occurredAt=_DROP)
    data.pop("occurredAt")
    for mode in (structured, binary):
        headers, value = mode(cloudevent(data, subject="wallet-42"))
        update = decoder(mapping=mapping).decode(None, value, headers)
        assert update == StatusUpdate("wallet-42", "tenant-7", SessionStatus.FETCHED, WHEN_MS, SessionType.ISSUANCE)


def test_json_pointer_escapes() -> None:
    assert pointer_tokens("/a~1b/c~0d/") == ("a/b", "c~d", "")
    assert resolve({"a/b": {"c~d": {"": 1}}}, pointer_tokens("/a~1b/c~0d/")) == 1


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"status": "state", "tenantId": "/t", "statusValues": {"A": "active"}}, "starts with '/'"),
        ({"status": "/s~2", "tenantId": "/t", "statusValues": {"A": "active"}}, "~0"),
        ({"status": "/s", "tenantId": "/t", "statusValues": {"A": "finished"}}, "statusValues.A"),
        ({"status": "/s", "tenantId": "/t", "statusValues": {}}, "statusValues"),
        ({"status": "/s", "tenantId": "/t", "statusValues": {"A": None}}, "maps no value"),
        ({"status": "/s", "statusValues": {"A": "active"}}, "defaultTenant"),
        ({"status": "/s", "tenantId": "/t", "statusValues": {"A": "active"}, "typo": 1}, "typo"),
        ({"tenantId": "/t", "statusValues": {"A": "active"}}, "status"),
        (
            {"status": "/s", "tenantId": "/t", "statusValues": {"A": "active"}, "keyIsSessionId": False},
            "keyIsSessionId",
        ),
    ],
)
def test_invalid_mappings_stop_the_start_with_one_line(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="record mapping") as raised:
        load_mapping(json.dumps(mapping))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_mapping_from_a_file_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(FOREIGN_MAPPING))
    assert load_mapping(str(path)).statusValues["DONE"] is SessionStatus.COMPLETED
    with pytest.raises(ValueError, match="cannot read the record mapping file"):
        load_mapping(str(tmp_path / "missing.json"))
    path.write_text("{ nope")
    with pytest.raises(ValueError, match="is not JSON"):
        load_mapping(str(path))


# --------------------------------------------------------------------------------------------------
# Settings


def test_topic_list_and_mapping_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_KAFKA_TOPIC", " issuance , presentation,foreign.v2")
    monkeypatch.setenv("GATEWAY_CLOUDEVENTS_TYPES", f"{TYPE}, other")
    monkeypatch.setenv("GATEWAY_RECORD_MAPPING", json.dumps({**FOREIGN_MAPPING, "topics": ["foreign.v2"]}))
    monkeypatch.setenv("GATEWAY_DLQ_TOPIC", "session-status.dlq")
    configured = ConsumerSettings()
    assert configured.kafka_topics == ("issuance", "presentation", "foreign.v2")
    assert configured.kafka_topic == "issuance,presentation,foreign.v2"
    assert configured.primary_topic == "issuance"
    assert configured.cloudevents_types == [TYPE, "other"]
    assert configured.mapping_for("issuance") is None
    mapping = configured.mapping_for("foreign.v2")
    assert mapping is not None and mapping.defaultTenant == "acme"
    assert (configured.dlq_topic, configured.dlq_writer) == ("session-status.dlq", True)


@pytest.mark.parametrize(
    "overrides",
    [
        {"kafka_topic": "a,a"},
        {"kafka_topic": " , "},
        {"kafka_topic": "a b"},
        {"kafka_topic": "a", "dlq_topic": "a"},
        {"kafka_topic": "a", "dlq_topic": "not a topic"},
        {"kafka_topic": "a", "record_mapping": json.dumps({**FOREIGN_MAPPING, "topics": ["b"]})},
        {"kafka_topic": "a", "record_mapping": '{"status": 1}'},
    ],
)
def test_invalid_bus_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ConsumerSettings.model_validate(overrides)


# --------------------------------------------------------------------------------------------------
# Event ids across topics


def transition(partition: int, offset: int, status: SessionStatus = SessionStatus.ACTIVE) -> Transition:
    return Transition("s", status, 0, partition, offset)


def test_first_topic_ids_are_unchanged_and_other_topics_carry_their_index() -> None:
    assert event_id(transition(global_partition(0, 3), 42)) == "3-42"
    assert event_id(transition(global_partition(1, 3), 42)) == "t1.3-42"
    assert event_id(transition(global_partition(4095, MAX_PARTITION), 7, SessionStatus.COMPLETED)) == (
        f"t4095.{MAX_PARTITION}-7-end"
    )


@given(
    index=st.integers(0, 4095),
    partition=st.integers(0, MAX_PARTITION),
    offset=st.integers(0, 2**63 - 1),
    terminal=st.booleans(),
)
def test_event_ids_round_trip(index: int, partition: int, offset: int, terminal: bool) -> None:
    number = global_partition(index, partition)
    status = SessionStatus.COMPLETED if terminal else SessionStatus.FETCHED
    position = parse_event_id(event_id(transition(number, offset, status)))
    assert position is not None
    assert (position.partition, position.offset, position.terminal) == (number, offset, terminal)
    assert parse_partition(format_partition(number)) == number


@pytest.mark.parametrize("value", ["t0.3-42", "t.3-42", "t1-42", "t4096.1-2", "t1.3.4-5", "2000000-1", "T1.3-4"])
def test_ids_that_no_gateway_sends_are_treated_as_absent(value: str) -> None:
    assert parse_event_id(value) is None
