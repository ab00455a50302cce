"""The published contract: ``schemas/asyncapi.yaml`` is a valid AsyncAPI 3.0.0 document (checked against the
official JSON Schema from npm ``@asyncapi/specs``, vendored under tests/data/asyncapi), every Kafka example
in it is accepted by the gateway's own decoder, and what it says matches the code."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from consumers import dead_letter
from consumers.consuming.batch import HANDLER_ERROR
from consumers.formats import RecordDecoder
from consumers.formats.mapping import RecordMapping
from consumers.records import RejectReason, StatusUpdate, Tombstone
from gateway.streams.cursor import parse_cursor
from gateway.streams.sse import parse_event_id
from schemas import SessionStatusEvent

REPO = Path(__file__).resolve().parents[1]
DOCUMENT = REPO / "schemas" / "asyncapi.yaml"
ASYNCAPI_SCHEMA = REPO / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.json"
TYPE = "eu.example.wallet.session.status.v1"


def load() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return document


def validator() -> Any:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


def errors(document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator().iter_errors(document)]


def test_the_document_is_valid_asyncapi_3() -> None:
    document = load()
    assert document["asyncapi"] == "3.0.0"
    assert errors(document) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["components"]["messages"]["plainStatus"]["examples"][0].update({"key": "not allowed here"}),
        lambda d: d["channels"]["sessionStatus"]["bindings"]["kafka"].update({"bindingVersion": "9.9.9"}),
        lambda d: d["operations"]["consumeSessionStatus"].update({"action": "consume"}),
        lambda d: d.update({"asyncapi": "2.6.0"}),
    ],
)
def test_the_validation_reaches_deep_enough_to_fail(breakage: Any) -> None:
    """Mistakes inside messages, bindings and operations are caught: the vendored schema's references resolve."""
    document = copy.deepcopy(load())
    breakage(document)
    assert errors(document)


def kafka_messages(document: dict[str, Any], channel: str) -> list[dict[str, Any]]:
    components = document["components"]["messages"]
    refs = document["channels"][channel]["messages"].values()
    return [components[ref["$ref"].rsplit("/", 1)[1]] for ref in refs]


def examples_with_keys(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    keys = message["bindings"]["kafka"]["key"]["examples"]
    examples = message["examples"]
    assert len(keys) == len(examples), f"{message['name']}: one key example per message example"
    return list(zip(keys, examples, strict=True))


def record(example: dict[str, Any]) -> tuple[bytes | None, list[tuple[str, bytes | None]]]:
    payload = example.get("payload")
    value = None if payload is None else json.dumps(payload).encode()
    headers: list[tuple[str, bytes | None]] = [
        (name, str(raw).encode()) for name, raw in (example.get("headers") or {}).items()
    ]
    return value, headers


def decoded_examples(channel: str, decoder: RecordDecoder) -> list[tuple[str, object]]:
    results: list[tuple[str, object]] = []
    for message in kafka_messages(load(), channel):
        for key, example in examples_with_keys(message):
            value, headers = record(example)
            results.append((f"{message['name']}/{example['name']}", decoder.decode(key.encode(), value, headers)))
    return results


def test_every_session_status_example_is_accepted_by_the_decoder() -> None:
    results = decoded_examples("sessionStatus", RecordDecoder(64 * 1024, [TYPE]))
    assert len(results) >= 5
    for name, result in results:
        assert isinstance(result, StatusUpdate | Tombstone), (name, result)
    assert {name.split("/")[0] for name, _ in results} == {
        "plainStatus",
        "cloudEventStructured",
        "cloudEventBinary",
        "tombstone",
    }


def test_the_foreign_example_is_accepted_through_the_documented_mapping() -> None:
    mapping = RecordMapping.model_validate(load()["channels"]["foreignStatus"]["x-record-mapping"])
    results = decoded_examples("foreignStatus", RecordDecoder(64 * 1024, [TYPE], mapping))
    assert [type(result) for _, result in results] == [StatusUpdate]


def test_the_event_bus_doc_mapping_is_the_documented_one() -> None:
    doc = (REPO / "docs" / "event-bus.md").read_text(encoding="utf-8")
    section = doc.split("## Records in another shape", 1)[1]
    blocks = re.findall(r"```json\n(.*?)```", section, re.DOTALL)
    mappings = [json.loads(block) for block in blocks if '"statusValues"' in block]
    assert mappings and mappings[0] == load()["channels"]["foreignStatus"]["x-record-mapping"]
    [foreign] = [json.loads(block) for block in blocks if '"lifecycle"' in block][:1]
    update = RecordDecoder(64 * 1024, (), RecordMapping.model_validate(mappings[0])).decode(
        b"wallet-46", json.dumps(foreign).encode()
    )
    assert isinstance(update, StatusUpdate), update


def test_the_dead_letter_headers_and_reasons_match_the_code() -> None:
    message = load()["components"]["messages"]["rejectedRecord"]
    headers = message["headers"]
    expected = {
        dead_letter.HEADER_REASON,
        dead_letter.HEADER_DETAIL,
        dead_letter.HEADER_TOPIC,
        dead_letter.HEADER_PARTITION,
        dead_letter.HEADER_OFFSET,
        dead_letter.HEADER_TIMESTAMP,
    }
    assert set(headers["required"]) == set(headers["properties"]) == expected
    assert set(headers["properties"][dead_letter.HEADER_REASON]["enum"]) == {r.value for r in RejectReason} | {
        HANDLER_ERROR
    }
    [example] = message["examples"]
    assert set(example["headers"]) == expected


def test_sse_examples_match_the_wire_format() -> None:
    message = load()["components"]["messages"]["statusEvent"]
    pattern = re.compile(message["x-event-id"]["pattern"])
    for event_id in message["x-event-id"]["examples"]:
        assert pattern.fullmatch(event_id) and parse_event_id(event_id) is not None, event_id
    for example in message["examples"]:
        jsonschema.validate(example["payload"], message["payload"])
        SessionStatusEvent.model_validate({**example["payload"], "tenantId": "t"})


def test_the_event_schema_reference_points_at_the_published_schema() -> None:
    ref = load()["components"]["schemas"]["SessionStatusEvent"]["$ref"]
    assert (DOCUMENT.parent / ref).resolve() == (REPO / "schemas" / "session-status.schema.json").resolve()


def test_tenant_sse_examples_match_the_wire_format() -> None:
    messages = load()["components"]["messages"]
    message = messages["tenantStatusEvent"]
    pattern = re.compile(message["x-event-id"]["pattern"])
    for event_id in message["x-event-id"]["examples"]:
        assert pattern.fullmatch(event_id) and parse_cursor(event_id), event_id
    for example in message["examples"]:
        jsonschema.validate(example["payload"], messages["statusEvent"]["payload"])
    for example in messages["snapshotTruncated"]["examples"]:
        jsonschema.validate(example["payload"], messages["snapshotTruncated"]["payload"])
