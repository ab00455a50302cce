"""The tenant stream's pure parts: the cursor id, the opening, the hub's tenant index, the per-tenant limit,
the store's tenant listing and the roles claim. The processes are in tests/test_tenant_stream.py."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from consumers.hub import Hub
from consumers.records import StatusUpdate
from consumers.store import SessionSnapshot, SessionStore, Transition
from gateway.admission.clock import StreamClock
from gateway.admission.registry import ConnectionRegistry
from gateway.admission.tenant import TenantEndpoint, parse_statuses
from gateway.auth.claims import ClaimsValidator, Principal
from gateway.edge.errors import StreamRefused
from gateway.edge.tenant_route import match_tenant
from gateway.settings import GatewaySettings
from gateway.streams.cursor import MAX_ID_LENGTH, encode_cursor, parse_cursor
from gateway.streams.sse import encode_transition
from gateway.streams.tenant import TenantFeed, opening
from schemas import SessionStatus

ACTIVE, FETCHED, COMPLETED = SessionStatus.ACTIVE, SessionStatus.FETCHED, SessionStatus.COMPLETED


# --- the cursor ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "positions",
    [
        {},
        {0: 0},
        {0: 42, 3: 7},
        {5: 2**63 - 1, 6: 0, 1 << 20: 12},
        {p: random.Random(p).randrange(10**12) for p in range(0, 2000, 7)},
    ],
)
def test_cursor_round_trips(positions: dict[int, int]) -> None:
    text = encode_cursor(positions)
    assert text.startswith("c1.") and text.isascii() and "=" not in text
    assert parse_cursor(text) == positions


def test_cursor_stays_short_for_a_tenant_on_few_partitions_of_a_large_topic() -> None:
    assert len(encode_cursor({17: 1_234_567, 3_999: 1_234_900})) < 20
    assert len(encode_cursor({p: 1_000_000 + 37 * p for p in range(12)})) < 45


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "3-42",
        "c1.!",
        "c1.AA=",  # padding
        "c1.AB",  # trailing bits set: not the id of any cursor
        "c1.AA",  # one number: a partition without an offset
        "c1.gICAgICAgICAgIA",  # a varint longer than 64 bits
        "c1.gA",  # a varint cut off
        "c2.AAA",
        "c1.\u00e9",
        "c1." + "A" * MAX_ID_LENGTH,
        encode_cursor({0: 1}).replace("c1.", "C1."),
    ],
)
def test_cursor_refuses_what_it_never_writes(text: str | None) -> None:
    assert parse_cursor(text) is None


def test_cursor_refuses_offsets_beyond_kafkas() -> None:
    too_big = encode_cursor({0: 2**63 - 1}).removeprefix("c1.")
    # {0: 2**63 - 1, 1: 2**63 - 1 + 1}: the second offset as a difference of +1 from the first
    import base64

    raw = base64.urlsafe_b64decode(too_big + "=" * (-len(too_big) % 4)) + bytes([0, 2])
    forged = "c1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert parse_cursor(forged) is None


# --- the opening ---------------------------------------------------------------------------------


def snap(session_id: str, *steps: tuple[SessionStatus, int, int]) -> SessionSnapshot:
    """A session whose transitions are ``(status, partition, offset)``."""
    transitions = tuple(Transition(session_id, status, 1_000 + offset, p, offset) for status, p, offset in steps)
    return SessionSnapshot(session_id, "t", None, transitions)


SESSIONS = [
    snap("a", (ACTIVE, 0, 1), (FETCHED, 0, 5)),
    snap("b", (ACTIVE, 1, 2)),
    snap("c", (ACTIVE, 0, 3), (FETCHED, 0, 4), (COMPLETED, 0, 9)),
]


def ids(frames: list[bytes]) -> list[str | None]:
    result = []
    for frame in frames:
        lines = dict(line.split(": ", 1) for line in frame.decode().splitlines() if ": " in line)
        result.append(lines.get("id"))
    return result


def test_snapshot_sends_current_states_in_kafka_order_with_exact_ids() -> None:
    begin = opening(SESSIONS, None, None, 100)
    assert begin.sent == 3 and begin.left_out == 0
    assert begin.cursor == {0: 9, 1: 2}
    assert [b"FETCHED" in f or b'"fetched"' in f for f in begin.frames] == [True, False, False]
    # sorted by (partition, offset): a@0:5, c@0:9, b@1:2; each id covers exactly what came before it
    assert [parse_cursor(i) for i in ids(begin.frames)] == [{0: 5}, {0: 9}, {0: 9, 1: 2}]


def test_resume_sends_exactly_what_is_after_the_cursor() -> None:
    begin = opening(SESSIONS, {0: 4, 1: 2}, None, 100)
    sent = [(f.decode().split('"id":"')[1][0], f.decode().split('"status":"')[1].split('"')[0]) for f in begin.frames]
    assert sent == [("a", "fetched"), ("c", "completed")]
    assert begin.cursor == {0: 9, 1: 2}


def test_resume_with_nothing_missed_sends_nothing() -> None:
    assert opening(SESSIONS, {0: 9, 1: 2}, None, 100).frames == []


def test_filter_and_bound() -> None:
    begin = opening(SESSIONS, None, frozenset({ACTIVE}), 100)
    assert begin.sent == 1 and b'"id":"b"' in begin.frames[0]
    assert begin.cursor == {0: 9, 1: 2}  # the filtered-out sessions count as seen: they never come back
    bounded = opening(SESSIONS, None, None, 2)
    assert (bounded.sent, bounded.left_out) == (2, 1)
    assert bounded.frames[0].startswith(b"event: truncated\n") or b"event: truncated" in bounded.frames[0]
    assert ids(bounded.frames)[0] is None  # a snapshot's truncation has no id: a reconnect starts over
    assert b'"id":"a"' not in b"".join(bounded.frames)  # the least recently updated is the one left out


def test_a_cut_at_any_event_of_the_opening_resumes_without_loss_or_duplicates() -> None:
    rng = random.Random(7)
    sessions = []
    offsets = dict.fromkeys(range(4), 0)
    for index in range(40):
        partition = rng.randrange(4)
        steps = []
        for status in (ACTIVE, FETCHED, COMPLETED)[: rng.randrange(1, 4)]:
            offsets[partition] += rng.randrange(1, 5)
            steps.append((status, partition, offsets[partition]))
        sessions.append(snap(f"s{index}", *steps))
    every = {(t.session_id, t.status) for s in sessions for t in s.transitions}
    for seen in (None, {0: 3, 2: 10}):
        full = opening(sessions, seen, None, 1000)
        for cut in range(len(full.frames)):
            before = full.frames[: cut + 1]
            cursor = parse_cursor(ids(before)[-1])
            rest = opening(sessions, cursor, None, 1000).frames
            first = [_pair(f) for f in before]
            second = [_pair(f) for f in rest]
            assert not set(first) & set(second), cut
            assert set(first) | set(second) >= {_pair(f) for f in full.frames}
            assert set(first) | set(second) <= every


def _pair(frame: bytes) -> tuple[str, str]:
    text = frame.decode()
    return text.split('"id":"')[1].split('"')[0], text.split('"status":"')[1].split('"')[0]


# --- the live feed and the hub's tenant index ------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: str | None = None

    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        assert not terminal  # a tenant stream never ends on a session's end
        self.frames.append(frame)

    def close(self, reason: str, last: bytes = b"") -> None:
        self.closed = reason

    def session_deleted(self) -> None:
        return None


def test_feed_advances_its_cursor_and_filters() -> None:
    stream = Recorder()
    feed = TenantFeed(stream, "t", {0: 5}, frozenset({ACTIVE, COMPLETED}))  # type: ignore[arg-type]
    feed.transition(Transition("x", ACTIVE, 1, 0, 5), 0)  # already in the opening
    feed.transition(Transition("x", FETCHED, 1, 0, 6), 0)  # filtered out, still counted as seen
    feed.transition(Transition("x", COMPLETED, 1, 0, 8), 0)
    assert len(stream.frames) == 1
    assert parse_cursor(ids(stream.frames)[0]) == {0: 8}
    assert feed.cursor == {0: 8}


def test_feed_tells_a_deletion_whatever_its_filter_once() -> None:
    stream = Recorder()
    feed = TenantFeed(stream, "t", {0: 5}, frozenset({COMPLETED}))  # type: ignore[arg-type]
    feed.deleted("x", 0, 5, 0)  # a position the opening already covers: not again
    feed.deleted("x\u2028y", 0, 9, 0)
    assert len(stream.frames) == 1 and feed.cursor == {0: 9}
    frame = stream.frames[0].decode()
    assert "\nevent: deleted\n" in frame and frame.endswith("\n\n") and "\n\n" not in frame[:-2]
    assert json.loads(frame.split("data: ", 1)[1].split("\n", 1)[0]) == {"id": "x\u2028y"}
    assert parse_cursor(ids(stream.frames)[0]) == {0: 9}


def test_hub_tells_a_deletion_to_its_sessions_tenant_only() -> None:
    hub = Hub(encode_transition)
    mine, theirs = Recorder(), Recorder()
    hub.subscribe_tenant("t1", TenantFeed(mine, "t1", {}, None))  # type: ignore[arg-type]
    hub.subscribe_tenant("t2", TenantFeed(theirs, "t2", {}, None))  # type: ignore[arg-type]
    hub.session_deleted("s1", "t1", 3, 7)
    hub.session_deleted("s2", None, 3, 8)  # a session the store did not hold: no tenant to tell
    assert len(mine.frames) == 1 and theirs.frames == []


def test_hub_hands_a_tenants_transitions_to_its_subscribers_only() -> None:
    hub = Hub(encode_transition)
    mine, theirs, session = Recorder(), Recorder(), Recorder()
    mine_feed = TenantFeed(mine, "t1", {}, None)  # type: ignore[arg-type]
    hub.subscribe_tenant("t1", mine_feed)
    hub.subscribe_tenant("t2", TenantFeed(theirs, "t2", {}, None))  # type: ignore[arg-type]
    hub.subscribe("s1", session)
    assert hub.publish(Transition("s1", ACTIVE, 1, 0, 1), 0, "t1") == 1  # the session subscriber's count
    hub.publish(Transition("s2", ACTIVE, 1, 1, 1), 0, "t1")
    hub.publish(Transition("s3", COMPLETED, 1, 1, 2), 0, "t3")
    assert len(mine.frames) == 2 and theirs.frames == [] and len(session.frames) == 1
    hub.unsubscribe_tenant("t1", mine_feed)
    assert hub.tenant_count("t1") == 0
    hub.publish(Transition("s2", FETCHED, 1, 1, 3), 0, "t1")
    assert len(mine.frames) == 2


def test_hub_closes_a_failing_tenant_subscriber_and_serves_the_rest() -> None:
    hub = Hub(encode_transition)

    class Failing:
        closed = ""

        def transition(self, transition: Transition, record_timestamp_ms: int) -> None:
            raise RuntimeError("boom")

        def deleted(self, session_id: str, partition: int, offset: int, record_timestamp_ms: int) -> None:
            raise RuntimeError("boom")

        def close(self, reason: str) -> None:
            self.closed = reason

    failing, healthy = Failing(), Recorder()
    hub.subscribe_tenant("t", failing)
    hub.subscribe_tenant("t", TenantFeed(healthy, "t", {}, None))  # type: ignore[arg-type]
    hub.publish(Transition("s", ACTIVE, 1, 0, 1), 0, "t")
    assert failing.closed == "subscriber_error" and len(healthy.frames) == 1
    assert hub.tenant_count("t") == 1
    # The same for a deletion: the failing one is closed, the others are told.
    failing.closed = ""
    hub.subscribe_tenant("t", failing)
    hub.session_deleted("s", "t", 0, 2)
    assert failing.closed == "subscriber_error" and len(healthy.frames) == 2
    assert hub.tenant_count("t") == 1


# --- admission pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([], None),
        ([("status", "active")], frozenset({ACTIVE})),
        ([("status", "active,fetched"), ("status", "active")], frozenset({ACTIVE, FETCHED})),
        ([("status", " fetched ")], frozenset({FETCHED})),
    ],
)
def test_status_filter(query: list[tuple[str, str]], expected: Any) -> None:
    assert parse_statuses(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        [("status", "")],
        [("status", "ACTIVE")],
        [("status", "active,")],
        [("status", ",".join(["active"] * 7))],
        [("status", "active")] * 7,
        [("status", "x" * 100_000)],
    ],
)
def test_status_filter_refuses(query: list[tuple[str, str]]) -> None:
    with pytest.raises(StreamRefused) as refused:
        parse_statuses(query)
    assert refused.value.status == 400
    assert "x" * 50 not in refused.value.message  # the value is never echoed


def test_route_match() -> None:
    assert match_tenant(b"/tenant/events")
    assert match_tenant(b"/api/tenant/events", "/api/")
    assert not match_tenant(b"/tenant/events/")
    assert not match_tenant(b"/tenant/events2")
    assert not match_tenant(b"/api/tenant/events")
    assert not match_tenant(b"/tenant%2Fevents")


async def test_tenant_streams_have_their_own_limit_and_count_in_the_global_one() -> None:
    settings = GatewaySettings(max_tenant_streams_per_tenant=2, max_connections=5, max_connections_per_session=1)
    hub = Hub(encode_transition)
    registry = ConnectionRegistry(settings, StreamClock(settings, hub), tenant_shares=True)
    held = [registry.reserve("t", "u", "", waiting=False) for _ in range(2)]
    with pytest.raises(StreamRefused) as refused:
        registry.reserve("t", "u", "", waiting=False)
    assert (refused.value.status, refused.value.reason) == (429, "tenant_streams")
    held.append(registry.reserve("t2", "u", "", waiting=False))  # another tenant's share
    held.append(registry.reserve("t", "u", "s", waiting=False))  # a session stream: its own key and limit
    held.append(registry.reserve("t", "u", "s2", waiting=False))
    with pytest.raises(StreamRefused) as refused:
        registry.reserve("t3", "u", "", waiting=False)
    assert refused.value.reason == "max_connections"
    registry.release(held[0])
    registry.reserve("t", "u", "", waiting=False)
    await asyncio.sleep(0)


def test_store_lists_a_tenants_visible_sessions() -> None:
    now = 10_000_000
    store = SessionStore(terminal_retention_ms=1000, session_ttl_ms=100_000, max_sessions=100, clock=lambda: now)
    store.apply(StatusUpdate("a", "t1", ACTIVE, now, None), 0, 1, now)
    store.apply(StatusUpdate("b", "t2", ACTIVE, now, None), 0, 2, now)
    store.apply(StatusUpdate("c", "t1", ACTIVE, now, None), 1, 3, now)
    store.apply(StatusUpdate("d", "t1", COMPLETED, now - 5000, None), 1, 4, now)  # past its retention
    store.apply(StatusUpdate("a", "t1", FETCHED, now, None), 0, 5, now)
    assert [s.session_id for s in store.tenant_sessions("t1", now)] == ["c", "a"]  # least recently updated first
    assert [t.status for t in store.tenant_sessions("t1", now)[1].transitions] == [ACTIVE, FETCHED]
    assert store.tenant_sessions("nobody", now) == []


@pytest.mark.parametrize(
    ("claims", "roles"),
    [
        ({"realm_access": {"roles": ["a", "b", 3]}}, {"a", "b"}),
        ({"realm_access": {"roles": "a"}}, set()),
        ({"realm_access": ["a"]}, set()),
        ({}, set()),
    ],
)
def test_roles_claim(claims: dict[str, Any], roles: set[str]) -> None:
    settings = GatewaySettings(tenant_stream_roles_claim="realm_access.roles", jwt_audience=None)
    principal = ClaimsValidator(settings).principal({"exp": 4_000_000_000, "sub": "u", **claims}, now=1)
    assert principal.roles == roles


def test_a_stream_ticket_never_opens_a_tenant_stream() -> None:
    endpoint = TenantEndpoint.__new__(TenantEndpoint)
    endpoint.scope = "sessions:watch"
    ticket = Principal("u", "t", None, frozenset({"sessions:watch"}), 4e9, ticket_session="s-1")
    with pytest.raises(StreamRefused) as refused:
        endpoint._allowed(ticket)
    assert (refused.value.status, refused.value.message) == (403, "Insufficient scope")


def test_tenant_stream_openings_are_rate_limited_per_tenant_and_process() -> None:
    """Each opening reads the whole store: a scoped client may not repeat it at will, nor one tenant take
    every opening of the process."""
    from gateway.admission.opening_rate import OpeningRate

    now = [1000.0]
    rate = OpeningRate(1.0, 5, clock=lambda: now[0])
    PER_TENANT, PER_PROCESS = rate.per_tenant, rate.per_process
    burst = int(PER_TENANT[1])
    assert [rate.wait("a") for _ in range(burst)] == [0.0] * burst
    wait = rate.wait("a")
    assert 0 < wait <= 1 / PER_TENANT[0]
    assert rate.retry_after(wait) == "1"
    assert rate.wait("b") == 0.0  # another tenant is not held back by a's burst
    now[0] += 1 / PER_TENANT[0]
    assert rate.wait("a") == 0.0  # refilled
    # The process-wide bucket: many tenants at once are bounded too.
    opened = sum(1 for n in range(100) if rate.wait(f"t{n}") == 0.0)
    assert opened <= PER_PROCESS[1]
