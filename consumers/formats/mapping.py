"""Declarative mapping of records in another shape to the session-status event.

Set with ``GATEWAY_RECORD_MAPPING`` (inline JSON, or the path of a JSON file)::

    {
      "topics": ["wallet.session-lifecycle.v2"],
      "id": "/session/ref",
      "tenantId": "/organisation/id",
      "status": "/lifecycle/state",
      "updatedAt": "/occurredAt",
      "type": "/session/flow",
      "statusValues": {"OFFER_CREATED": "active", "CREDENTIAL_FETCHED": "fetched", "DONE": "completed",
                       "OFFER_DISPLAYED": null},
      "typeValues": {"OID4VCI": "issuance", "OID4VP": "presentation"},
      "defaultTenant": "acme"
    }

``updatedAtFormat`` declares what ``updatedAt`` points at: ``rfc3339`` (the default), ``epochSeconds``,
``epochMillis`` or ``epochMicros`` (``formats.timestamps`` says why a unit is declared, not guessed).
``"updatedAtFallback": "recordTimestamp"`` lets a record without that field take the Kafka record's own
timestamp. ``keyId`` is a JSON Pointer into a record key that is a JSON object (Debezium's ``{"id": ...}``).

Each field is a JSON Pointer (RFC 6901) into the record value (or the CloudEvent's data); array
elements are addressed by index (``/steps/0/state``). ``statusValues`` maps the bus's status values
(strings, or integers by their decimal text) to ours; ``null`` marks a value the gateway does not use
(such records are ignored and counted). ``topics`` limits the mapping to those topics (default: all).
Without an ``id`` pointer the session id is the CloudEvent subject or the record key; without
``updatedAt`` (or where it points at nothing) it is the CloudEvent ``time``, then the record timestamp
when ``updatedAtFallback`` says so; without ``tenantId`` it is ``defaultTenant``. A record key,
when present, must equal the session id unless ``keyIsSessionId`` is false. Reference:
docs/event-bus.md, "Records in another shape"; ``session-gateway mapping check`` tries a mapping on a sample.

Validated when the settings load: a mistake stops the start with one line naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from consumers.formats.timestamps import EPOCH_FORMATS, TimeFormat, epoch_to_ms, ms_to_text, unit_hint
from consumers.records import (
    MAX_UPDATED_MS,
    MIN_UPDATED_MS,
    Rejected,
    RejectReason,
    Skipped,
    StatusUpdate,
    decode_object,
    parse_json,
)
from schemas import SessionStatus, SessionType

IGNORED_STATUS = "mapping_status_ignored"  # gateway_records_ignored_total{reason}
_TOKEN_ESCAPE = re.compile(r"~(?![01])")
_INDEX = re.compile(r"0|[1-9]\d{0,9}", re.ASCII)
_MISSING = object()


def _pointer(value: str) -> str:
    if value and not value.startswith("/"):
        raise ValueError("a JSON Pointer starts with '/' (RFC 6901), e.g. /session/id")
    if _TOKEN_ESCAPE.search(value):
        raise ValueError("'~' in a JSON Pointer must be written ~0 ('~') or ~1 ('/')")
    return value


JsonPointer = Annotated[str, AfterValidator(_pointer)]


def pointer_tokens(pointer: str) -> tuple[str, ...]:
    if not pointer:
        return ()
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/"))


def resolve(document: object, tokens: Sequence[str]) -> object:
    """The value at ``tokens``, or ``_MISSING``; arrays are indexed by decimal index without leading zeros."""
    current = document
    for token in tokens:
        if type(current) is dict:
            if token not in current:
                return _MISSING
            current = current[token]
        elif type(current) is list:
            if not _INDEX.fullmatch(token) or int(token) >= len(current):
                return _MISSING
            current = current[int(token)]
        else:
            return _MISSING
    return current


class RecordMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: list[str] | None = Field(None, min_length=1)
    id: JsonPointer | None = None
    tenantId: JsonPointer | None = None
    status: JsonPointer
    updatedAt: JsonPointer | None = None
    updatedAtFormat: TimeFormat = "rfc3339"
    updatedAtFallback: Literal["recordTimestamp"] | None = None
    keyId: JsonPointer | None = None
    type: JsonPointer | None = None
    statusValues: dict[str, SessionStatus | None] = Field(min_length=1)
    typeValues: dict[str, SessionType | None] = {}
    defaultTenant: str | None = Field(None, min_length=1, max_length=256)
    keyIsSessionId: bool = True

    @model_validator(mode="after")
    def _complete(self) -> RecordMapping:
        if self.tenantId is None and self.defaultTenant is None:
            raise ValueError("set tenantId (a JSON Pointer) or defaultTenant")
        if all(status is None for status in self.statusValues.values()):
            raise ValueError("statusValues maps no value to a status")
        if self.id is None and not self.keyIsSessionId:
            raise ValueError("without an id pointer the session id is the record key: keyIsSessionId must be true")
        if self.keyId is not None and not self.keyIsSessionId:
            raise ValueError("keyId reads the session id from the record key: keyIsSessionId must be true")
        if self.updatedAtFormat != "rfc3339" and self.updatedAt is None:
            raise ValueError("updatedAtFormat describes the value at updatedAt: set updatedAt (a JSON Pointer)")
        return self

    def applies_to(self, topic: str) -> bool:
        return self.topics is None or topic in self.topics


def load_mapping(text: str) -> RecordMapping:
    """Inline JSON (starting with ``{``) or a file path; raises ValueError with a one-line message."""
    source = "GATEWAY_RECORD_MAPPING"
    stripped = text.strip()
    if not stripped.startswith("{"):
        path = Path(stripped)
        source = str(path)
        try:
            stripped = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read the record mapping file {path}: {error.__class__.__name__}") from None
    try:
        raw = json.loads(stripped)
    except json.JSONDecodeError as error:
        raise ValueError(f"record mapping {source} is not JSON: {error}") from None
    try:
        return RecordMapping.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'mapping'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        raise ValueError(f"record mapping {source}: {problems}") from None


class Mapper:
    """Applies a ``RecordMapping`` to parsed record values."""

    def __init__(self, mapping: RecordMapping) -> None:
        self.mapping = mapping
        self.key_is_session_id = mapping.keyIsSessionId
        self._id = None if mapping.id is None else pointer_tokens(mapping.id)
        self._tenant = None if mapping.tenantId is None else pointer_tokens(mapping.tenantId)
        self._status = pointer_tokens(mapping.status)
        self._updated = None if mapping.updatedAt is None else pointer_tokens(mapping.updatedAt)
        self._epoch = mapping.updatedAtFormat if mapping.updatedAtFormat in EPOCH_FORMATS else None
        self._record_time = mapping.updatedAtFallback == "recordTimestamp"
        self.key_pointer = None if mapping.keyId is None else pointer_tokens(mapping.keyId)
        self._type = None if mapping.type is None else pointer_tokens(mapping.type)
        self._statuses = mapping.statusValues
        self._types = mapping.typeValues
        self._default_tenant = mapping.defaultTenant

    def session_id_from_key(self, key: bytes) -> str | Rejected:
        """The session id at ``keyId`` in a JSON key (call only when ``key_pointer`` is set)."""
        assert self.key_pointer is not None
        document = parse_json(key)
        if isinstance(document, Rejected):
            detail = document.detail.replace("value", "record key")
            return Rejected(document.reason, f"{detail} (keyId reads the key as JSON)")
        session_id = resolve(document, self.key_pointer)
        if session_id is _MISSING:
            return Rejected(RejectReason.MISSING_KEY, f"no id at {self.mapping.keyId} in the record key")
        if type(session_id) is not str:
            return _mapping_error(f"the record key's id at {self.mapping.keyId} is not a string")
        return session_id

    def apply(
        self,
        document: object,
        key_id: str | None,
        subject: str | None = None,
        time: str | None = None,
        record_ms: int | None = None,
    ) -> StatusUpdate | Rejected | Skipped:
        m = self.mapping
        raw_status = resolve(document, self._status)
        if raw_status is _MISSING:
            return _mapping_error(f"no status at {m.status}")
        if type(raw_status) is int:
            raw_status = str(raw_status)
        if type(raw_status) is not str:
            return _mapping_error(f"status at {m.status} is not a string or an integer")
        if raw_status not in self._statuses:
            return Rejected(RejectReason.UNMAPPED_STATUS, f"the status value at {m.status} is not in statusValues")
        status = self._statuses[raw_status]
        if status is None:
            return Skipped(IGNORED_STATUS)

        if self._id is not None:
            session_id = resolve(document, self._id)
            if session_id is _MISSING:
                return _mapping_error(f"no id at {m.id}")
            if type(session_id) is not str:
                return _mapping_error(f"id at {m.id} is not a string")
        else:
            session_id = subject or key_id
            if session_id is None:
                return Rejected(RejectReason.MISSING_KEY, "no id pointer, subject or record key")

        if self._tenant is not None:
            tenant = resolve(document, self._tenant)
            if tenant is _MISSING:
                tenant = self._default_tenant
                if tenant is None:
                    return _mapping_error(f"no tenantId at {m.tenantId} and no defaultTenant")
            elif type(tenant) is not str:
                return _mapping_error(f"tenantId at {m.tenantId} is not a string")
        else:
            tenant = self._default_tenant

        updated = self._updated_at(document, time, record_ms)
        if isinstance(updated, Rejected):
            return updated

        kind: SessionType | None = None
        if self._type is not None:
            raw_type = resolve(document, self._type)
            if type(raw_type) is str:
                kind = self._types.get(raw_type) if self._types else _TYPE_BY_NAME.get(raw_type)

        event = {"id": session_id, "tenantId": tenant, "status": status.value, "updatedAt": updated}
        if kind is not None:
            event["type"] = kind.value
        update = decode_object(event)
        if isinstance(update, Rejected):
            return update
        if subject is not None and update.session_id != subject:
            return Rejected(RejectReason.KEY_MISMATCH, "the CloudEvent subject differs from the mapped id")
        if self.key_is_session_id and key_id is not None and update.session_id != key_id:
            return Rejected(RejectReason.KEY_MISMATCH, "record key differs from the mapped id")
        return update

    def _updated_at(self, document: object, time: str | None, record_ms: int | None) -> str | Rejected:
        """The pointer's value (RFC 3339 or a declared epoch unit), else the CloudEvent time, else the record's."""
        m = self.mapping
        if self._updated is not None:
            value = resolve(document, self._updated)
            if value is not _MISSING:
                if self._epoch is not None:
                    ms = epoch_to_ms(value, self._epoch, str(m.updatedAt))
                    return ms if isinstance(ms, Rejected) else ms_to_text(ms)
                if type(value) is str:
                    return value
                if type(value) in (int, float):
                    return _mapping_error(
                        f"updatedAt at {m.updatedAt} is a number, not an RFC 3339 string: declare its unit with "
                        f'"updatedAtFormat": epochSeconds, epochMillis or epochMicros{unit_hint(value)}'
                    )
                return _mapping_error(f"updatedAt at {m.updatedAt} is not an RFC 3339 string")
        if time is not None:
            return time
        if self._record_time and record_ms is not None and record_ms >= 0:
            if not MIN_UPDATED_MS <= record_ms <= MAX_UPDATED_MS:
                return Rejected(RejectReason.TIME_OUT_OF_RANGE, "the record timestamp is after the year 9999")
            return ms_to_text(record_ms)
        missing = f"no updatedAt at {m.updatedAt}" if m.updatedAt is not None else "no updatedAt pointer"
        if self._record_time:
            return _mapping_error(f"{missing}, no CloudEvent time and no record timestamp")
        return _mapping_error(
            f'{missing} and no CloudEvent time (set "updatedAtFallback": "recordTimestamp" to use the Kafka '
            "record's timestamp)"
        )


_TYPE_BY_NAME = {kind.value: kind for kind in SessionType}


def _mapping_error(detail: str) -> Rejected:
    return Rejected(RejectReason.MAPPING, detail)
