"""Session-status event: the record value producers write, keyed by the session id (UTF-8).

A null value (tombstone) means the session was deleted. The pydantic model is the source of
truth; ``session-status.schema.json`` beside this file is generated from it
(``python -m schemas``) and a test fails when the two drift apart.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError


class SessionStatus(StrEnum):
    ACTIVE = "active"
    FETCHED = "fetched"
    COMPLETED = "completed"
    EXPIRED = "expired"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


class SessionType(StrEnum):
    ISSUANCE = "issuance"
    PRESENTATION = "presentation"


TERMINAL_STATUSES = frozenset(
    {SessionStatus.COMPLETED, SessionStatus.EXPIRED, SessionStatus.FAILED, SessionStatus.CANCELLED}
)

# Status only moves forward: active < fetched < any terminal status.
STATUS_RANK: dict[SessionStatus, int] = {
    SessionStatus.ACTIVE: 0,
    SessionStatus.FETCHED: 1,
    SessionStatus.COMPLETED: 2,
    SessionStatus.EXPIRED: 2,
    SessionStatus.FAILED: 2,
    SessionStatus.CANCELLED: 2,
}


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)


def _rfc3339(value: object) -> object:
    """Only RFC 3339 text (or a datetime) is a time here; pydantic alone would take epoch numbers too."""
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339.fullmatch(value)):
        return value
    raise ValueError("updatedAt must be an RFC 3339 date-time with a time zone, e.g. 2026-11-28T10:00:00.000Z")


# What a browser's ``Date.prototype.toISOString`` prints with four year digits, and Python can represent.
EARLIEST_UPDATE = datetime(1, 1, 1, tzinfo=UTC)
LATEST_UPDATE = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
TIME_OUT_OF_RANGE = "time_out_of_range"


def _in_range(value: datetime) -> datetime:
    """A time whose UTC form leaves years 0001-9999 cannot be sent to a browser: refused at the door."""
    offset = value.utcoffset()
    naive = value.replace(tzinfo=None)
    # UTC = local - offset, compared without converting (astimezone() itself overflows at the ends).
    if offset is None or (
        naive > LATEST_UPDATE.replace(tzinfo=None) + offset
        if offset < timedelta(0)
        else naive < EARLIEST_UPDATE.replace(tzinfo=None) + offset
    ):
        raise PydanticCustomError(
            TIME_OUT_OF_RANGE,
            "updatedAt must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z in UTC",
        )
    return value


class SessionStatusEvent(BaseModel):
    """One status change of a wallet session (credential issuance or presentation)."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        title="SessionStatusEvent",
        json_schema_extra={
            "$id": "urn:session-events-gateway:session-status:1",
            "additionalProperties": True,
        },
    )

    id: str = Field(min_length=1, max_length=256, description="Session id; equals the record key.")
    tenantId: str = Field(min_length=1, max_length=256, description="Tenant that owns the session.")
    status: SessionStatus = Field(description="Current status of the session.")
    updatedAt: Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_in_range)] = Field(
        description="RFC 3339 time of the change, with or without milliseconds, 'Z' or an offset.",
    )
    type: SessionType | None = Field(default=None, description="Kind of session, when the producer knows it.")

    @property
    def updated_ms(self) -> int:
        return int(self.updatedAt.timestamp() * 1000)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema (draft 2020-12) of a record value."""
    schema = SessionStatusEvent.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "Value of a record on the session-status topic. Key: the session id (UTF-8). "
        "A null value (tombstone) deletes the session. Unknown fields are tolerated."
    )
    return dict(sorted(schema.items()))
