"""``session-gateway mapping check``: what the gateway would do with one sample record, before any deployment.

It runs the very decoder the consumer runs (``consumers.formats.RecordDecoder``, with the settings'
size limit and CloudEvents types), so its answer is the gateway's: the event it would store, or the
reject reason and detail it would count and log. Nothing is read from or written to Kafka.
See docs/cli.md and docs/event-bus.md ("Records in another shape").
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from consumers.formats import RecordDecoder
from consumers.formats.mapping import RecordMapping, load_mapping
from consumers.records import Rejected, Skipped, StatusUpdate, Tombstone
from consumers.settings import RecordSettings
from gateway.cli.diagnostics import UserError
from gateway.streams.sse import iso_millis

MAPPING_VARIABLE = "GATEWAY_RECORD_MAPPING"


@dataclass(frozen=True)
class Sample:
    """One record as Kafka would deliver it."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


def read_mapping(option: str | None) -> RecordMapping:
    text = option if option is not None else os.environ.get(MAPPING_VARIABLE, "").strip() or None
    if text is None:
        raise UserError(f"no mapping: pass --mapping FILE (or inline JSON), or set {MAPPING_VARIABLE}")
    try:
        return load_mapping(text)
    except ValueError as error:
        raise UserError(str(error)) from None


def read_bytes(path: str, what: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"cannot read the {what} {path}: {error.strerror or error.__class__.__name__}") from None


def parse_headers(pairs: list[str]) -> tuple[tuple[str, bytes], ...]:
    headers: list[tuple[str, bytes]] = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--header {pair!r}: write NAME=VALUE, e.g. content-type=application/cloudevents+json")
        headers.append((name, value.encode()))
    return tuple(headers)


def build_sample(
    record: str, key: str | None, key_file: str | None, headers: list[str], timestamp: int | None, tombstone: bool
) -> Sample:
    if key is not None and key_file is not None:
        raise UserError("give the key once: --key TEXT or --key-file FILE")
    key_bytes = key.encode() if key is not None else read_bytes(key_file, "key file") if key_file else None
    value = None if tombstone else read_bytes(record, "record file")
    when = int(time.time() * 1000) if timestamp is None else timestamp
    return Sample(key_bytes, value, parse_headers(headers), when)


def check(mapping: RecordMapping | None, sample: Sample, settings: RecordSettings) -> tuple[int, list[str]]:
    """The exit code and the lines to print: 0 stored, deleted or ignored, 1 rejected."""
    decoder = RecordDecoder(settings.max_record_bytes, settings.cloudevents_types, mapping)
    result = decoder.decode(sample.key, sample.value, sample.headers, sample.timestamp_ms)
    if isinstance(result, StatusUpdate):
        event: dict[str, str] = {
            "id": result.session_id,
            "tenantId": result.tenant_id,
            "status": result.status.value,
            "updatedAt": iso_millis(result.updated_ms),
        }
        if result.type is not None:
            event["type"] = result.type.value
        return 0, ["stored: " + json.dumps(event, ensure_ascii=False)]
    if isinstance(result, Tombstone):
        return 0, [f"deleted: a tombstone for session {json.dumps(result.session_id, ensure_ascii=False)}"]
    if isinstance(result, Skipped):
        return 0, [f"ignored (gateway_records_ignored_total reason {result.reason}): the gateway skips it quietly"]
    assert isinstance(result, Rejected)
    return 1, [f"rejected (gateway_records_rejected_total reason {result.reason.value}): {result.detail}"]


def run_check(
    mapping_option: str | None,
    record: str,
    *,
    topic: str | None,
    key: str | None,
    key_file: str | None,
    headers: list[str],
    timestamp: int | None,
    tombstone: bool,
) -> int:
    mapping: RecordMapping | None = read_mapping(mapping_option)
    settings = RecordSettings(record_mapping=None)
    sample = build_sample(record, key, key_file, headers, timestamp, tombstone)
    lines: list[str] = []
    if mapping is not None and topic is not None and not mapping.applies_to(topic):
        lines.append(
            f"note: the mapping does not apply to topic {topic} (its topics: {', '.join(mapping.topics or ())}); "
            "the record is read as a plain session event"
        )
        mapping = None
    code, result = check(mapping, sample, settings)
    for line in lines + result:
        print(line, flush=True)
    return code
