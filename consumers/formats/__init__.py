"""Record formats, detected per record from its headers.

1. ``content-type: application/cloudevents+json`` (any case, parameters allowed): a structured
   CloudEvent; ``application/cloudevents-batch+json`` is refused (a batch would hide several sessions
   behind one offset).
2. Any ``ce_specversion`` header: a binary-mode CloudEvent.
3. Otherwise the value itself: a plain session-status event (``schemas/``), or, on topics the record
   mapping applies to, a record in the bus's own shape (``formats.mapping``).

The session event inside a CloudEvent is read the same way as 3: native, or through the mapping on
mapped topics. A record without headers on an unmapped topic goes straight to ``decode_record``, the
plain path tuned for replay speed; headers cost one pass over them. Nothing here raises on any input.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from consumers.formats.cloudevents import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    CloudEvent,
    decode_binary,
    decode_structured,
)
from consumers.formats.mapping import Mapper, RecordMapping
from consumers.records import (
    Decoded,
    Rejected,
    RejectReason,
    Skipped,
    StatusUpdate,
    Tombstone,
    decode_object,
    decode_record,
    parse_json,
)

__all__ = ["CLOUDEVENTS_TYPE_IGNORED", "RecordDecoder"]

# gateway_records_ignored_total{reason}
CLOUDEVENTS_TYPE_IGNORED = "cloudevents_type"
UNKEYED_TOMBSTONE_IGNORED = "unkeyed_tombstone"  # a null value on a topic whose keys are not session ids
_CE_PREFIX = "ce_"
_CONTENT_TYPE = "content-type"

Headers = Sequence[tuple[str, bytes | None]]


class RecordDecoder:
    """Decodes the records of one topic; built once per topic from the settings."""

    def __init__(
        self,
        max_value_bytes: int,
        cloudevents_types: Collection[str] = (),
        mapping: RecordMapping | None = None,
    ) -> None:
        self.max_value_bytes = max_value_bytes
        self.cloudevents_types = frozenset(cloudevents_types)
        self.mapper = None if mapping is None else Mapper(mapping)

    def read_as_plain(self, headers: Headers) -> bool:
        """Whether a record with these headers is read as a plain record (``decode`` then reads it as it reads
        one without headers): a topic without a mapping, no CloudEvents headers, nothing to refuse in them.
        Producers that trace put a ``traceparent`` on every record; the batch's fast path takes those too."""
        return self.mapper is None and _scan(headers, self.max_value_bytes) is None

    def decode(
        self, key: bytes | None, value: bytes | None, headers: Headers = (), timestamp: int | None = None
    ) -> Decoded | Skipped:
        """``timestamp``: the record's (ms), for a mapping whose ``updatedAtFallback`` is ``recordTimestamp``."""
        if not headers and self.mapper is None:
            return decode_record(key, value, self.max_value_bytes)
        mode = _scan(headers, self.max_value_bytes)
        if isinstance(mode, Rejected):
            return mode
        if mode is None and self.mapper is None:
            return decode_record(key, value, self.max_value_bytes)
        return self._read(key, value, mode, timestamp)

    def _read(
        self, key: bytes | None, value: bytes | None, mode: dict[str, str] | str | None, timestamp: int | None
    ) -> Decoded | Skipped:
        """A CloudEvent (``mode`` from ``_scan``) or, with ``mode`` None, a mapped plain record."""
        mapper = self.mapper
        key_is_id = mapper is None or mapper.key_is_session_id
        key_id: str | None = None
        if key and key_is_id:
            try:
                key_id = key.decode("utf-8")
            except UnicodeDecodeError:
                return Rejected(RejectReason.INVALID_UTF8, "key is not valid UTF-8")
            if mapper is not None and mapper.key_pointer is not None:
                from_key = mapper.session_id_from_key(key)
                if isinstance(from_key, Rejected):
                    return from_key
                key_id = from_key
        if value is None:
            if key_id is not None:
                return Tombstone(key_id)
            if key_is_id:
                return Rejected(RejectReason.MISSING_KEY, "a tombstone without a key names no session")
            return Skipped(UNKEYED_TOMBSTONE_IGNORED)
        if len(value) > self.max_value_bytes:
            return Rejected(RejectReason.TOO_LARGE, f"value is {len(value)} bytes, limit {self.max_value_bytes}")
        if mode is None:
            assert mapper is not None
            document = parse_json(value)
            if isinstance(document, Rejected):
                return document
            return mapper.apply(document, key_id, record_ms=timestamp)
        event = decode_structured(value) if isinstance(mode, str) else decode_binary(mode, value)
        if isinstance(event, Rejected):
            return event
        if self.cloudevents_types and event.type not in self.cloudevents_types:
            return Skipped(CLOUDEVENTS_TYPE_IGNORED)
        if mapper is not None:
            return mapper.apply(event.data, key_id, event.subject, event.time, timestamp)
        return _native(event, key_id)


def _native(event: CloudEvent, key_id: str | None) -> StatusUpdate | Rejected:
    data = event.data
    if type(data) is not dict:
        return Rejected(RejectReason.SCHEMA, "data: the session event must be a JSON object")
    if "id" not in data or ("updatedAt" not in data and event.time is not None):
        data = dict(data)
        if "id" not in data:
            session_id = event.subject or key_id
            if session_id is None:
                return Rejected(RejectReason.MISSING_KEY, "no id in data, no subject and no record key")
            data["id"] = session_id
        if "updatedAt" not in data and event.time is not None:
            data["updatedAt"] = event.time
    update = decode_object(data)
    if isinstance(update, Rejected):
        return update
    if event.subject is not None and update.session_id != event.subject:
        return Rejected(RejectReason.KEY_MISMATCH, "the CloudEvent subject differs from the data's id")
    if key_id is not None and update.session_id != key_id:
        return Rejected(RejectReason.KEY_MISMATCH, "record key differs from the session id")
    return update


def _scan(headers: Headers, limit: int) -> dict[str, str] | str | Rejected | None:
    """``"structured"``, the ``ce_`` attributes of a binary event, None for a plain record, or a rejection."""
    size = 0
    content_type: bytes | None = None
    attributes: dict[str, bytes | None] = {}
    for name, raw in headers:
        size += len(name) + (len(raw) if raw else 0)
        lowered = name.lower()
        if lowered == _CONTENT_TYPE:
            content_type = raw
        elif lowered.startswith(_CE_PREFIX):
            attribute = lowered[len(_CE_PREFIX) :]
            if attribute in attributes:
                return Rejected(RejectReason.CLOUDEVENTS, f"header {_CE_PREFIX}{attribute} appears twice")
            attributes[attribute] = raw
    if size > limit:
        return Rejected(RejectReason.TOO_LARGE, f"headers are {size} bytes, limit {limit}")
    media_type: str | None = None
    if content_type is not None:
        try:
            media_type = content_type.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected(RejectReason.INVALID_UTF8, "header content-type is not valid UTF-8")
        essence = media_type.split(";", 1)[0].strip().lower()
        if essence == STRUCTURED_CONTENT_TYPE:
            return "structured"
        if essence == BATCH_CONTENT_TYPE:
            return Rejected(RejectReason.CLOUDEVENTS, "batched CloudEvents are not supported")
    if "specversion" not in attributes:
        return None
    decoded: dict[str, str] = {}
    for attribute, raw in attributes.items():
        if raw is None:
            return Rejected(RejectReason.CLOUDEVENTS, f"header {_CE_PREFIX}{attribute} has no value")
        try:
            decoded[attribute] = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected(RejectReason.INVALID_UTF8, f"header {_CE_PREFIX}{attribute} is not valid UTF-8")
    if media_type is not None:
        decoded["datacontenttype"] = media_type
    return decoded
