"""The wire contract: the committed JSON Schema and the pydantic model that validates record values."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import STATUS_RANK, TERMINAL_STATUSES, SessionStatus, SessionStatusEvent, SessionType, json_schema
from schemas.__main__ import SCHEMA_PATH, render

REPO = Path(__file__).resolve().parent.parent
BASE: dict[str, Any] = {"id": "sess-1", "tenantId": "tenant-a", "status": "active"}


def parse(**fields: Any) -> SessionStatusEvent:
    payload = {**BASE, "updatedAt": "2024-05-01T12:00:00Z", **fields}
    return SessionStatusEvent.model_validate_json(json.dumps(payload))


def error_types(error: ValidationError) -> set[str]:
    return {str(item["type"]) for item in error.errors()}


# --------------------------------------------------------------------------------------------------
# Committed schema


def test_committed_schema_is_what_python_m_schemas_renders() -> None:
    committed = SCHEMA_PATH.read_text(encoding="utf-8")
    rendered = render()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            fromfile="schemas/session-status.schema.json (committed)",
            tofile="python -m schemas",
        )
    )
    assert committed == rendered, f"the committed schema drifted from the model; run `python -m schemas`:\n{diff}"


def test_schema_describes_the_contract() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is True
    assert schema["required"] == ["id", "tenantId", "status", "updatedAt"]
    assert schema["$defs"]["SessionStatus"]["enum"] == [status.value for status in SessionStatus]
    assert schema["$defs"]["SessionType"]["enum"] == [kind.value for kind in SessionType]
    assert schema["properties"]["updatedAt"] == {
        "description": schema["properties"]["updatedAt"]["description"],
        "format": "date-time",
        "title": "Updatedat",
        "type": "string",
    }
    assert list(schema) == sorted(schema), "top-level keys are sorted so the rendered file is stable"


def test_render_is_the_same_in_every_process() -> None:
    """Two interpreters with different hash seeds render byte-identical files (no set or dict-order luck)."""
    program = "import sys; from schemas.__main__ import render; sys.stdout.write(render())"
    outputs = [
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
        for seed in ("1", "2", "3")
    ]
    assert outputs[0] == outputs[1] == outputs[2], "python -m schemas renders differently from run to run"
    assert outputs[0].endswith("}\n")
    assert json.loads(outputs[0]) == json_schema()


def test_status_ranks_move_forward_only() -> None:
    assert set(STATUS_RANK) == set(SessionStatus)
    assert STATUS_RANK[SessionStatus.ACTIVE] < STATUS_RANK[SessionStatus.FETCHED]
    for status in TERMINAL_STATUSES:
        assert STATUS_RANK[status] > STATUS_RANK[SessionStatus.FETCHED]
        assert status.is_terminal
    assert not SessionStatus.ACTIVE.is_terminal
    assert not SessionStatus.FETCHED.is_terminal
    assert {
        SessionStatus.COMPLETED,
        SessionStatus.EXPIRED,
        SessionStatus.FAILED,
        SessionStatus.CANCELLED,
    } == TERMINAL_STATUSES


# --------------------------------------------------------------------------------------------------
# Valid values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123Z", datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)),
        ("2024-05-01T12:00:00.1Z", datetime(2024, 5, 1, 12, 0, 0, 100000, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123456Z", datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)),
        ("2024-05-01T14:00:00.250+02:00", datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        ("2024-05-01T06:30:00-05:30", datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)),
        ("2024-05-01T12:00:00+00:00", datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)),
        ("2024-05-01t12:00:00z", datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)),  # RFC 3339 allows lower case
    ],
)
def test_rfc3339_timestamps_are_accepted(text: str, expected: datetime) -> None:
    event = parse(updatedAt=text)
    assert event.updatedAt == expected
    assert event.updatedAt.utcoffset() is not None
    assert event.updated_ms == int((expected - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))


def test_offset_is_kept_and_millis_are_exact() -> None:
    event = parse(updatedAt="2024-05-01T14:00:00.999+02:00")
    assert event.updatedAt.utcoffset() == timedelta(hours=2)
    assert event.updatedAt.tzinfo is not None
    assert event.updatedAt.astimezone(UTC) == datetime(2024, 5, 1, 12, 0, 0, 999000, tzinfo=UTC)
    assert event.updated_ms % 1000 == 999


def test_millisecond_conversion_is_exact_for_every_millisecond() -> None:
    """``updated_ms`` must not lose a millisecond to float rounding."""
    base = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    for millis in range(1000):
        moment = base + timedelta(milliseconds=millis)
        event = parse(updatedAt=moment.isoformat(timespec="milliseconds"))
        assert event.updated_ms == 1_714_564_800_000 + millis


@pytest.mark.parametrize("status", list(SessionStatus))
def test_every_status_is_accepted(status: SessionStatus) -> None:
    assert parse(status=status.value).status is status


@pytest.mark.parametrize(
    ("raw", "expected"), [("issuance", SessionType.ISSUANCE), ("presentation", SessionType.PRESENTATION), (None, None)]
)
def test_type_is_optional(raw: str | None, expected: SessionType | None) -> None:
    assert parse(type=raw).type is expected


def test_type_defaults_to_none() -> None:
    assert parse().type is None


def test_unknown_fields_are_tolerated() -> None:
    event = parse(walletName="x", attempt=3, nested={"a": [1, 2]}, status="fetched")
    assert event.status is SessionStatus.FETCHED
    assert event.id == "sess-1"
    assert event.tenantId == "tenant-a"
    assert "walletName" not in event.model_dump()


def test_event_is_immutable() -> None:
    event = parse()
    with pytest.raises(ValidationError):
        event.status = SessionStatus.FETCHED  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Invalid values


@pytest.mark.parametrize("missing", ["id", "tenantId", "status", "updatedAt"])
def test_missing_required_field_is_rejected(missing: str) -> None:
    payload = {**BASE, "updatedAt": "2024-05-01T12:00:00Z"}
    del payload[missing]
    with pytest.raises(ValidationError) as caught:
        SessionStatusEvent.model_validate_json(json.dumps(payload))
    assert error_types(caught.value) == {"missing"}
    assert caught.value.errors()[0]["loc"] == (missing,)


@pytest.mark.parametrize("status", ["unknown", "ACTIVE", "Completed", "", "deleted"])
def test_unknown_status_is_rejected(status: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(status=status)
    assert error_types(caught.value) == {"enum"}


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse(type="login")


@pytest.mark.parametrize("text", ["2024-05-01T12:00:00", "2024-05-01T12:00:00.123", "2024-05-01 12:00:00"])
def test_naive_datetime_is_rejected(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(updatedAt=text)
    assert [error["loc"] for error in caught.value.errors()] == [("updatedAt",)]


@pytest.mark.parametrize("value", [1714564800, 1714564800000, 1714564800.5, 0, True])
def test_numeric_updated_at_is_rejected(value: float) -> None:
    with pytest.raises(ValidationError):
        parse(updatedAt=value)


@pytest.mark.parametrize("text", ["1714564800", "1714564800000", "1714564800.5"])
def test_epoch_number_in_a_string_is_rejected(text: str) -> None:
    """Not RFC 3339, and the published schema (format: date-time) rejects it, so the model must too."""
    with pytest.raises(ValidationError):
        parse(updatedAt=text)


@pytest.mark.parametrize(
    "text", ["", "2024-05-01", "12:00:00Z", "yesterday", "2024-13-01T12:00:00Z", "2024-05-01T25:00:00Z"]
)
def test_malformed_updated_at_is_rejected(text: str) -> None:
    with pytest.raises(ValidationError):
        parse(updatedAt=text)


def test_null_updated_at_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse(updatedAt=None)


@pytest.mark.parametrize(("field", "value"), [("id", ""), ("tenantId", ""), ("id", "x" * 257), ("tenantId", "t" * 257)])
def test_string_lengths_are_bounded(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        parse(**{field: value})
    assert parse(**{field: value[:256] or "a"})


@pytest.mark.parametrize(("field", "value"), [("id", 42), ("tenantId", 7), ("status", 1), ("id", None)])
def test_wrong_types_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        parse(**{field: value})


@pytest.mark.parametrize("payload", [b"[]", b'"text"', b"null", b"42"])
def test_value_that_is_not_an_object_is_rejected(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        SessionStatusEvent.model_validate_json(payload)
