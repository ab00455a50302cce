"""The batch applier's fast path for plain records against its general path, record for record.

``BatchApplier._apply`` takes a plain record without headers straight to the store when ``fast_decode`` reads
it and its key is the value's id; every other record goes the general way (``decode_record`` or the topic's
format, rejects, tombstones). With the fast path switched off, every record goes the general way: the two
runs must leave the same store, deliver the same frames, count the same metrics, dead-letter and log the same
records, and report the same last record (for its trace span). A fast path that skips a check is caught.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.consuming import batch as batch_module
from consumers.records import StatusUpdate, fast_decode
from schemas import SessionStatus
from tests.kafka_support import RecordingSubscriber, event_bytes, metric
from tests.test_batch_apply import FIRST, SECOND, Applying, applying, record

NOW = datetime.now(UTC)
METRICS = [
    ("gateway_records_consumed_total", None),
    ("gateway_records_applied_total", None),
    ("gateway_sessions_deleted_total", None),
    *(("gateway_records_ignored_total", r) for r in ("duplicate", "backward", "after_terminal", "tenant_changed")),
    *(("gateway_records_ignored_total", r) for r in ("unknown_delete", "stale")),
    *(("gateway_records_rejected_total", r) for r in ("schema", "not_json", "key_mismatch", "missing_key")),
    *(("gateway_records_rejected_total", r) for r in ("invalid_utf8", "too_large", "time_out_of_range")),
]


def mixed_batch(seed: int, count: int = 400, topic: str = FIRST) -> list[Any]:
    """Plain records of 40 sessions in any order, with duplicates, moves back, tenant changes, tombstones,
    headers, bad keys, bad values, stale and future times, unicode ids: every branch of ``_apply``."""
    rng = random.Random(seed)
    sessions = [f"s-{n}" for n in range(38)] + ["séance-ü", "\U0001f600"]
    batch: list[Any] = []
    for offset in range(count):
        session = rng.choice(sessions)
        when = NOW + timedelta(milliseconds=rng.choice((0, -5, 5, 10**6, -(10**11))))
        plain = event_bytes(
            session,
            rng.choice(("tenant-a", "tenant-a", "tenant-a", "tenant-b")),
            rng.choice(("active", "active", "fetched", "completed", "failed")),
            when.isoformat(timespec=rng.choice(("milliseconds", "seconds", "microseconds"))),
            **rng.choice(({}, {}, {"type": "issuance"}, {"extra": [1, 2]})),
        )
        value: bytes | None = plain
        key: bytes | None = session.encode()
        headers: list[tuple[str, bytes]] = []
        kind = rng.randrange(20)
        if kind == 0:
            value = None  # a tombstone
        elif kind == 1:
            key = rng.choice((None, b"", b"\xff", b"other"))
        elif kind == 2:
            value = b'{"id": "' + session.encode() + b'", not json'
        elif kind == 3:
            value = plain[:-1] + b',"status":"nope"}'
        elif kind == 4:  # headers: read by the topic's format (a CloudEvents header is refused here)
            headers = rng.choice(HEADER_SETS)
        elif kind == 5:
            value = plain[:-1] + b',"pad":"' + b"x" * 70_000 + b'"}'  # over GATEWAY_MAX_RECORD_BYTES
        elif kind == 6:
            value = plain.replace(b"Z", b"z").replace(b"+00:00", b"z")  # only the model reads it
        batch.append(record(key, value, offset, topic=topic, partition=rng.randrange(3), headers=headers))
    return batch


# Headers a plain topic reads past (a producer's trace context), refuses (a CloudEvents header twice, headers
# over the record size limit, a content-type that is not UTF-8) or reads as a CloudEvent (binary or structured).
HEADER_SETS: list[list[tuple[str, bytes]]] = [
    [("trace", b"x")],
    [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
    [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"), ("tracestate", b"a=b")],
    [("empty", b""), ("Content-Type", b"application/json")],
    [("ce_specversion", b"1.0"), ("ce_specversion", b"1.0")],
    [("CE_SpecVersion", b"1.0")],
    [("pad", b"x" * 70_000)],
    [("content-type", b"\xff")],
    [("content-type", b"application/cloudevents+json; charset=utf-8")],
    [("content-type", b"application/cloudevents-batch+json")],
]


@contextmanager
def general_path_only() -> Iterator[None]:
    original = fast_decode
    setattr(batch_module, "fast_decode", lambda value: None)  # noqa: B010 (not re-exported by the module)
    try:
        yield
    finally:
        setattr(batch_module, "fast_decode", original)  # noqa: B010


def run(batches: list[tuple[str, list[Any]]], caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """Applies the batches to a fresh world; everything seen from outside the applier."""
    world: Applying = applying()
    subscribers: dict[str, RecordingSubscriber] = {}
    for n in range(38):
        subscribers[f"s-{n}"] = world.subscribe(f"s-{n}")
    before = [metric(name) if reason is None else metric(name, reason=reason) for name, reason in METRICS]
    caplog.clear()
    lasts = []
    with caplog.at_level(logging.DEBUG, logger="gateway.consumer"):
        for topic, records in batches:
            lasts.append(world.applier._apply(topic, records))
    after = [metric(name) if reason is None else metric(name, reason=reason) for name, reason in METRICS]
    sessions = sorted(world.store._sessions)
    return {
        "store": {s: world.store.get(s) for s in sessions},
        "order": list(world.store._sessions),
        "terminal": list(world.store._terminal),
        "deliveries": {s: (r.frames, r.timestamps, r.terminal, r.deleted) for s, r in subscribers.items()},
        "metrics": [b - a for a, b in zip(before, after, strict=True)],
        "dead_letters": [(rec.offset, topic, reason, detail) for rec, topic, reason, detail in world.sink.offered],
        "logs": [(r.levelname, r.getMessage()) for r in caplog.records],
        "last": lasts,
    }


def batches(seed: int) -> list[tuple[str, list[Any]]]:
    return [(FIRST, mixed_batch(seed)), (SECOND, mixed_batch(seed + 1, topic=SECOND)), (FIRST, mixed_batch(seed + 2))]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_path_does_what_the_general_path_does(seed: int, caplog: pytest.LogCaptureFixture) -> None:
    fast = run(batches(seed), caplog)
    with general_path_only():
        general = run(batches(seed), caplog)
    for part in fast:
        assert fast[part] == general[part], f"{part} differs"
    assert sum(fast["metrics"][:2]) > 300 and fast["dead_letters"] and fast["logs"]  # every branch was taken


def test_plain_records_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    world = applying()
    general: list[Any] = []
    decode_one = world.applier._decode_one

    def spy(*args: Any) -> Any:
        general.append(args[3].offset)
        return decode_one(*args)

    monkeypatch.setattr(world.applier, "_decode_one", spy)
    good = [record(b"s", event_bytes("s", "t", "active"), 0), record(b"s", event_bytes("s", "t", "completed"), 1)]
    world.applier.apply(FIRST, [*good, record(b"s", None, 2), record(b"x", event_bytes("s", "t", "failed"), 3)])
    assert general == [2, 3]  # a tombstone and a key mismatch take the general path; the plain records do not


def _late(update: StatusUpdate) -> StatusUpdate:
    return update._replace(updated_ms=update.updated_ms + 1)


BROKEN_FAST: dict[str, Callable[[StatusUpdate], StatusUpdate]] = {
    "reads the time 1 ms late": _late,
    "drops the type": lambda update: update._replace(type=None),
    "reads every status as fetched": lambda update: update._replace(status=SessionStatus.FETCHED),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_FAST))
def test_a_fast_path_that_reads_differently_is_caught(
    breakage: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison above notices a fast path whose updates differ from the general path's."""
    real, change = fast_decode, BROKEN_FAST[breakage]

    def broken(value: bytes) -> StatusUpdate | None:
        update = real(value)
        return None if update is None else change(update)

    monkeypatch.setattr(batch_module, "fast_decode", broken)
    fast = run(batches(7), caplog)
    monkeypatch.setattr(batch_module, "fast_decode", lambda value: None)
    general = run(batches(7), caplog)
    assert any(fast[part] != general[part] for part in fast)


def test_a_record_whose_key_is_not_its_id_is_rejected_on_the_fast_path_too() -> None:
    world = applying()
    mismatch = metric("gateway_records_rejected_total", reason="key_mismatch")
    world.applier.apply(FIRST, [record(b"other", event_bytes("s", "t", "active"), 0)])
    assert "s" not in world.store and "other" not in world.store
    assert metric("gateway_records_rejected_total", reason="key_mismatch") - mismatch == 1
    assert [reason for _, _, reason, _ in world.sink.offered] == ["key_mismatch"]
