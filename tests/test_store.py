"""SessionStore: forward-only status, transition history, deletion and the three kinds of eviction."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumers.records import StatusUpdate
from consumers.store import MAX_CLOCK_SKEW_MS, Outcome, SessionStore, Transition
from schemas import SessionStatus, SessionStatusEvent, SessionType

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z in ms
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def ev(
    session_id: str, status: str, at_ms: int = T0, tenant: str = "tenant-a", kind: str | None = None
) -> StatusUpdate:
    event = SessionStatusEvent(
        id=session_id,
        tenantId=tenant,
        status=SessionStatus(status),
        updatedAt=datetime.fromtimestamp(at_ms / 1000, UTC),
        type=SessionType(kind) if kind else None,
    )
    return StatusUpdate.from_event(event)


class Clock:
    """The store's injected wall clock, in ms; tests move it by hand."""

    def __init__(self, now_ms: int = T0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def make_store(
    retention_ms: int = 10 * MINUTE, ttl_ms: int = DAY, max_sessions: int = 1_000_000, clock: Clock | None = None
) -> SessionStore:
    return SessionStore(
        terminal_retention_ms=retention_ms,
        session_ttl_ms=ttl_ms,
        max_sessions=max_sessions,
        clock=clock or Clock(),
    )


class Feeder:
    """Applies events with increasing offsets, like a partition would deliver them.

    With ``clock``, each event arrives when it happened: the clock is moved forward to its ``updatedAt``
    first (never back), so no event is dated ahead of its arrival.
    """

    def __init__(self, store: SessionStore, partition: int = 0, clock: Clock | None = None) -> None:
        self.store = store
        self.partition = partition
        self.offset = 0
        self.clock = clock

    def __call__(self, event: StatusUpdate) -> tuple[Outcome, Transition | None]:
        if self.clock is not None:
            self.clock.now_ms = max(self.clock.now_ms, event.updated_ms)
        result = self.store.apply(event, self.partition, self.offset)
        self.offset += 1
        return result


def statuses(store: SessionStore, session_id: str) -> list[str]:
    snapshot = store.get(session_id)
    assert snapshot is not None, f"{session_id} is not in the store"
    return [transition.status.value for transition in snapshot.transitions]


# --------------------------------------------------------------------------------------------------
# Forward-only


def test_first_event_creates_the_session() -> None:
    store = make_store()
    outcome, transition = store.apply(ev("s1", "active", T0 + 123, kind="presentation"), 4, 77)
    assert outcome is Outcome.APPLIED
    assert transition == Transition("s1", SessionStatus.ACTIVE, T0 + 123, 4, 77)
    assert not transition.is_terminal
    assert len(store) == 1
    assert "s1" in store
    assert "s2" not in store
    snapshot = store.get("s1")
    assert snapshot is not None
    assert snapshot.session_id == "s1"
    assert snapshot.tenant_id == "tenant-a"
    assert snapshot.type is SessionType.PRESENTATION
    assert snapshot.transitions == (transition,)
    assert snapshot.current == transition


def test_unknown_session_is_none() -> None:
    assert make_store().get("nope") is None


def test_transitions_history_in_order() -> None:
    store = make_store()
    feed = Feeder(store, partition=2)
    results = [
        feed(ev("s1", "active", T0)),
        feed(ev("s1", "fetched", T0 + 1500)),
        feed(ev("s1", "completed", T0 + 4000)),
    ]
    assert [outcome for outcome, _ in results] == [Outcome.APPLIED] * 3
    snapshot = store.get("s1")
    assert snapshot is not None
    assert snapshot.transitions == (
        Transition("s1", SessionStatus.ACTIVE, T0, 2, 0),
        Transition("s1", SessionStatus.FETCHED, T0 + 1500, 2, 1),
        Transition("s1", SessionStatus.COMPLETED, T0 + 4000, 2, 2),
    )
    assert snapshot.current.is_terminal
    assert [t for _, t in results] == list(snapshot.transitions)


@pytest.mark.parametrize("terminal", ["completed", "expired", "failed", "cancelled"])
def test_may_skip_statuses(terminal: str) -> None:
    store = make_store()
    feed = Feeder(store)
    assert feed(ev("s1", "active"))[0] is Outcome.APPLIED
    assert feed(ev("s1", terminal))[0] is Outcome.APPLIED
    assert statuses(store, "s1") == ["active", terminal]


def test_first_seen_status_need_not_be_active() -> None:
    store = make_store()
    feed = Feeder(store)
    assert feed(ev("s1", "fetched"))[0] is Outcome.APPLIED
    assert feed(ev("s2", "expired"))[0] is Outcome.APPLIED
    assert statuses(store, "s1") == ["fetched"]
    assert statuses(store, "s2") == ["expired"]


@pytest.mark.parametrize("status", ["active", "fetched"])
def test_duplicate_is_ignored(status: str) -> None:
    store = make_store()
    feed = Feeder(store)
    feed(ev("s1", status, T0))
    outcome, transition = feed(ev("s1", status, T0 + 10))
    assert outcome is Outcome.DUPLICATE
    assert transition is None
    snapshot = store.get("s1")
    assert snapshot is not None
    assert snapshot.transitions == (Transition("s1", SessionStatus(status), T0, 0, 0),)


def test_backward_is_ignored() -> None:
    store = make_store()
    feed = Feeder(store)
    feed(ev("s1", "active"))
    feed(ev("s1", "fetched"))
    assert feed(ev("s1", "active")) == (Outcome.BACKWARD, None)
    assert statuses(store, "s1") == ["active", "fetched"]
    assert feed(ev("s1", "completed"))[0] is Outcome.APPLIED


@pytest.mark.parametrize("terminal", ["completed", "expired", "failed", "cancelled"])
@pytest.mark.parametrize("later", ["active", "fetched", "completed", "expired", "failed", "cancelled"])
def test_nothing_moves_after_a_terminal_status(terminal: str, later: str) -> None:
    store = make_store()
    feed = Feeder(store)
    feed(ev("s1", "active", T0))
    feed(ev("s1", terminal, T0 + 1))
    assert feed(ev("s1", later, T0 + 2)) == (Outcome.AFTER_TERMINAL, None)
    assert statuses(store, "s1") == ["active", terminal]


def test_tenant_change_is_ignored() -> None:
    store = make_store()
    feed = Feeder(store)
    feed(ev("s1", "active", tenant="tenant-a"))
    assert feed(ev("s1", "fetched", tenant="tenant-b")) == (Outcome.TENANT_CHANGED, None)
    snapshot = store.get("s1")
    assert snapshot is not None
    assert snapshot.tenant_id == "tenant-a"
    assert statuses(store, "s1") == ["active"]
    # the rightful tenant can still move it on
    assert feed(ev("s1", "fetched", tenant="tenant-a"))[0] is Outcome.APPLIED


def test_tenants_are_kept_apart() -> None:
    store = make_store()
    feed = Feeder(store)
    for i in range(30):
        feed(ev(f"s{i}", "active", tenant=f"tenant-{i % 4}", kind=("issuance", "presentation", None)[i % 3]))
    for i in range(30):
        snapshot = store.get(f"s{i}")
        assert snapshot is not None
        assert snapshot.tenant_id == f"tenant-{i % 4}"
        assert snapshot.type == (SessionType.ISSUANCE, SessionType.PRESENTATION, None)[i % 3]


def test_large_positions_round_trip() -> None:
    store = make_store()
    store.apply(ev("s1", "active", T0), 1023, 2**40 + 5)
    snapshot = store.get("s1")
    assert snapshot is not None
    assert (snapshot.current.partition, snapshot.current.offset, snapshot.current.updated_ms) == (1023, 2**40 + 5, T0)


# --------------------------------------------------------------------------------------------------
# Delete


def test_delete() -> None:
    store = make_store()
    feed = Feeder(store)
    feed(ev("s1", "fetched"))
    feed(ev("s2", "active"))
    assert store.delete("s1") is Outcome.DELETED
    assert "s1" not in store
    assert store.get("s1") is None
    assert len(store) == 1
    assert store.delete("s1") is Outcome.UNKNOWN_DELETE
    assert store.delete("never") is Outcome.UNKNOWN_DELETE
    assert statuses(store, "s2") == ["active"]


def test_session_starts_over_after_delete() -> None:
    store = make_store()
    feed = Feeder(store)
    feed(ev("s1", "completed", T0, tenant="tenant-a"))
    store.delete("s1")
    assert feed(ev("s1", "active", T0 + 5, tenant="tenant-b"))[0] is Outcome.APPLIED
    snapshot = store.get("s1")
    assert snapshot is not None
    assert snapshot.tenant_id == "tenant-b"
    assert statuses(store, "s1") == ["active"]


# --------------------------------------------------------------------------------------------------
# Eviction: terminal retention and TTL


def test_terminal_sessions_are_evicted_after_retention() -> None:
    store = make_store(retention_ms=MINUTE, ttl_ms=DAY)
    feed = Feeder(store)
    feed(ev("old-done", "active", T0 - 3 * MINUTE))
    feed(ev("old-done", "completed", T0 - 2 * MINUTE))
    feed(ev("recent-done", "failed", T0 - 10 * SECOND))
    feed(ev("old-active", "active", T0 - 2 * MINUTE))
    feed(ev("old-fetched", "fetched", T0 - 2 * MINUTE))

    assert store.evict_expired(T0) == ["old-done"]
    assert store.evicted == {"terminal_retention": 1, "ttl": 0, "max_sessions": 0}
    assert "old-done" not in store
    assert all(s in store for s in ("recent-done", "old-active", "old-fetched"))
    assert len(store) == 3

    # once its retention passed (plus one bucket of slack), the recent one goes too
    assert store.evict_expired(T0 + 2 * MINUTE) == ["recent-done"]
    assert store.evicted["terminal_retention"] == 2
    assert len(store) == 2


def test_terminal_session_inside_retention_is_kept() -> None:
    store = make_store(retention_ms=MINUTE)
    feed = Feeder(store)
    feed(ev("s1", "completed", T0))
    for now in (T0, T0 + 30 * SECOND, T0 + MINUTE - 1):
        assert store.evict_expired(now) == []
        assert "s1" in store


def test_recreated_session_is_not_evicted_by_an_old_terminal_entry() -> None:
    store = make_store(retention_ms=MINUTE)
    feed = Feeder(store)
    feed(ev("s1", "completed", T0 - 5 * MINUTE))
    store.delete("s1")
    feed(ev("s1", "active", T0))
    assert store.evict_expired(T0) == []
    assert statuses(store, "s1") == ["active"]


def test_idle_sessions_are_evicted_after_ttl() -> None:
    clock = Clock(T0 - 20 * MINUTE)
    store = make_store(retention_ms=HOUR, ttl_ms=10 * MINUTE, clock=clock)
    feed = Feeder(store, clock=clock)
    feed(ev("idle", "active", T0 - 20 * MINUTE))
    feed(ev("idle-fetched", "fetched", T0 - 15 * MINUTE))
    feed(ev("busy", "active", T0 - 20 * MINUTE))
    feed(ev("fresh", "active", T0 - MINUTE))
    feed(ev("busy", "fetched", T0 - 30 * SECOND))  # its old bucket entry is now stale

    evicted = store.evict_expired(T0)
    assert sorted(evicted) == ["idle", "idle-fetched"]
    assert store.evicted == {"terminal_retention": 0, "ttl": 2, "max_sessions": 0}
    assert statuses(store, "busy") == ["active", "fetched"]
    assert "fresh" in store

    assert sorted(store.evict_expired(T0 + 11 * MINUTE)) == ["busy", "fresh"]
    assert len(store) == 0
    assert store.evicted["ttl"] == 4


def test_eviction_is_idempotent_and_cheap_when_nothing_expired() -> None:
    store = make_store(retention_ms=MINUTE, ttl_ms=HOUR)
    feed = Feeder(store)
    for i in range(100):
        feed(ev(f"s{i}", "active", T0 + i))
    assert store.evict_expired(T0 + 1000) == []
    assert store.evict_expired(T0 + 1000) == []
    assert len(store) == 100
    assert sorted(store.evict_expired(T0 + 2 * HOUR)) == sorted(f"s{i}" for i in range(100))
    assert store.evict_expired(T0 + 3 * HOUR) == []
    # the store keeps working after it was emptied
    assert feed(ev("s0", "active", T0 + 3 * HOUR))[0] is Outcome.APPLIED
    assert len(store) == 1


def test_ttl_eviction_does_not_depend_on_arrival_order() -> None:
    """A replay interleaves partitions, so an old update often arrives after a newer one."""
    store = make_store(retention_ms=HOUR, ttl_ms=30 * MINUTE, clock=Clock(T0))
    feed = Feeder(store)
    feed(ev("fresh", "active", T0))
    feed(ev("stale", "active", T0 - 20 * MINUTE))  # arrives later, happened earlier
    assert store.evict_expired(T0 + 15 * MINUTE) == ["stale"]
    assert store.evicted["ttl"] == 1
    assert "fresh" in store


def test_terminal_retention_does_not_depend_on_arrival_order() -> None:
    store = make_store(retention_ms=10 * MINUTE, ttl_ms=DAY, clock=Clock(T0))
    feed = Feeder(store)
    feed(ev("done-now", "completed", T0))
    feed(ev("done-earlier", "completed", T0 - 8 * MINUTE))  # arrives later, happened earlier
    assert store.evict_expired(T0 + 5 * MINUTE) == ["done-earlier"]
    assert store.evicted["terminal_retention"] == 1
    assert "done-now" in store


# --------------------------------------------------------------------------------------------------
# Eviction: capacity


def test_capacity_evicts_the_oldest_first() -> None:
    store = make_store(max_sessions=3)
    feed = Feeder(store)
    for i in range(3):
        feed(ev(f"s{i}", "active", T0 + i * SECOND))
    assert store.evicted["max_sessions"] == 0
    outcome, transition = feed(ev("s3", "active", T0 + 3 * SECOND))
    assert outcome is Outcome.APPLIED
    assert transition is not None
    assert len(store) == 3
    assert "s0" not in store
    assert all(f"s{i}" in store for i in (1, 2, 3))
    assert store.evicted["max_sessions"] == 1

    for i in range(4, 10):
        feed(ev(f"s{i}", "active", T0 + i * SECOND))
    assert len(store) == 3
    assert [s for s in (f"s{i}" for i in range(10)) if s in store] == ["s7", "s8", "s9"]
    assert store.evicted["max_sessions"] == 7


def test_capacity_of_one_keeps_the_newest() -> None:
    store = make_store(max_sessions=1)
    feed = Feeder(store)
    feed(ev("a", "active", T0))
    feed(ev("b", "active", T0 + 1))
    assert "b" in store
    assert "a" not in store
    assert len(store) == 1


def test_updates_of_existing_sessions_do_not_evict() -> None:
    store = make_store(max_sessions=2)
    feed = Feeder(store)
    feed(ev("a", "active", T0))
    feed(ev("b", "active", T0 + 1))
    feed(ev("a", "fetched", T0 + 2))
    feed(ev("b", "completed", T0 + 3))
    assert len(store) == 2
    assert store.evicted["max_sessions"] == 0


@pytest.mark.parametrize(
    "ttl_ms",
    [
        pytest.param(64 * SECOND, id="updates-in-different-buckets"),
        pytest.param(DAY, id="updates-in-the-same-bucket"),  # the default TTL: buckets of 22.5 minutes
    ],
)
def test_capacity_never_evicts_a_recently_updated_session_before_an_older_one(ttl_ms: int) -> None:
    store = make_store(ttl_ms=ttl_ms, max_sessions=2)
    feed = Feeder(store)
    feed(ev("a", "active", T0))
    feed(ev("b", "active", T0 + 5 * SECOND))
    feed(ev("a", "fetched", T0 + 10 * SECOND))  # "a" is now the most recently updated session
    feed(ev("c", "active", T0 + 15 * SECOND))
    assert store.evicted["max_sessions"] == 1
    assert "b" not in store, "the least recently updated session should have been evicted"
    assert statuses(store, "a") == ["active", "fetched"]
    assert "c" in store


def test_capacity_skips_deleted_sessions() -> None:
    store = make_store(max_sessions=2)
    feed = Feeder(store)
    feed(ev("a", "active", T0))
    feed(ev("b", "active", T0 + SECOND))
    store.delete("a")
    feed(ev("c", "active", T0 + 2 * SECOND))
    assert len(store) == 2
    assert store.evicted["max_sessions"] == 0
    feed(ev("d", "active", T0 + 3 * SECOND))
    assert [s for s in "abcd" if s in store] == ["c", "d"]
    assert store.evicted["max_sessions"] == 1


# --------------------------------------------------------------------------------------------------
# Staleness and memory: what the store holds follows the live sessions


def test_a_session_past_its_ttl_is_never_served_even_before_a_sweep() -> None:
    clock = Clock(T0)
    store = make_store(retention_ms=MINUTE, ttl_ms=HOUR, clock=clock)
    feed = Feeder(store)
    feed(ev("idle", "active", T0))
    feed(ev("done", "completed", T0))
    clock.now_ms = T0 + MINUTE + 1
    assert store.get("done") is None, "a terminal session past its retention must not be served"
    assert store.get("idle") is not None
    clock.now_ms = T0 + HOUR + 1
    assert store.get("idle") is None, "an idle session past the TTL must not be served"
    assert "idle" in store and "done" in store, "not swept yet: only hidden"
    assert sorted(store.evict_expired(clock.now_ms)) == ["done", "idle"]
    assert len(store) == 0


def test_a_new_session_already_past_its_ttl_is_not_stored() -> None:
    store = make_store(retention_ms=MINUTE, ttl_ms=HOUR, clock=Clock(T0))
    feed = Feeder(store)
    assert feed(ev("old", "active", T0 - HOUR - 1)) == (Outcome.STALE, None)
    assert feed(ev("old-done", "completed", T0 - MINUTE - 1)) == (Outcome.STALE, None)
    assert feed(ev("recent", "active", T0 - HOUR + 1))[0] is Outcome.APPLIED
    assert len(store) == 1
    assert store.tenant_count == 1


def test_tenant_codes_are_released_with_their_last_session() -> None:
    store = make_store(retention_ms=MINUTE, clock=Clock(T0))
    feed = Feeder(store)
    feed(ev("a1", "active", T0, tenant="a"))
    feed(ev("a2", "active", T0, tenant="a"))
    feed(ev("b1", "completed", T0, tenant="b"))
    assert store.tenant_count == 2
    store.delete("a1")
    assert store.tenant_count == 2
    store.evict_expired(T0 + 2 * MINUTE)  # b1 ends its retention
    assert store.tenant_count == 1
    snapshot = store.get("a2")
    assert snapshot is not None and snapshot.tenant_id == "a"
    feed(ev("c1", "active", T0, tenant="c"))  # reuses b's freed code
    c1, a2 = store.get("c1"), store.get("a2")
    assert c1 is not None and c1.tenant_id == "c"
    assert a2 is not None and a2.tenant_id == "a"
    store.delete("a2")
    store.delete("c1")
    assert store.tenant_count == 0


def test_capacity_eviction_stays_linear_and_keeps_the_newest() -> None:
    store = make_store(max_sessions=10_000)
    feed = Feeder(store)
    for i in range(60_000):
        feed(ev(f"s{i}", "active", T0))
    assert len(store) <= 10_000
    assert store.evicted["max_sessions"] == 60_000 - len(store)
    assert all(f"s{i}" in store for i in range(59_000, 60_000)), "the most recent sessions are kept"
    assert "s0" not in store


def _container_bytes(store: SessionStore) -> int:
    """Bytes of the store's own tables (dicts and lists are malloc'ed, outside Python's block count)."""
    import sys

    tenants = store._tenants
    tables = (store._sessions, store._terminal, tenants.names, tenants.codes, tenants.refs, tenants.free)
    return sum(sys.getsizeof(table) for table in tables)


def test_memory_returns_to_its_baseline_after_a_flood_of_300000_sessions() -> None:
    """300,000 sessions of 300,000 tenants start, finish and are evicted: the store shrinks back.

    Small objects (ids, tenant names, session bytes) are counted as Python's allocated blocks, the
    tables by their size; both return to their baseline.
    """
    import gc
    import sys

    clock = Clock(T0)
    store = make_store(retention_ms=MINUTE, ttl_ms=HOUR, clock=clock)
    feed = Feeder(store)
    for i in range(1000):
        feed(ev(f"live-{i}", "active", T0 + HOUR, tenant=f"tenant-{i % 10}"))
    gc.collect()
    blocks, tables = sys.getallocatedblocks(), _container_bytes(store)
    active, completed = SessionStatus.ACTIVE, SessionStatus.COMPLETED
    for i in range(300_000):
        session_id, tenant = f"flood-{i}", f"flood-tenant-{i}"
        feed(StatusUpdate(session_id, tenant, active, T0, None))
        feed(StatusUpdate(session_id, tenant, completed, T0 + 1, None))
    peak_blocks, peak_tables = sys.getallocatedblocks() - blocks, _container_bytes(store) - tables
    clock.now_ms = T0 + 2 * MINUTE
    store.evict_expired(clock.now_ms)
    gc.collect()
    left_blocks, left_tables = sys.getallocatedblocks() - blocks, _container_bytes(store) - tables
    print(
        f"flood of 300,000 sessions: at its peak +{peak_blocks:,} blocks and +{peak_tables / 1e6:.1f} MB of tables; "
        f"after eviction {left_blocks:+,} blocks and {left_tables / 1e3:+.1f} KB of tables"
    )
    assert len(store) == 1000
    assert store.tenant_count == 10
    assert store.evicted["terminal_retention"] == 300_000
    assert peak_blocks > 900_000 and peak_tables > 10e6, "the flood should have cost memory"
    assert left_blocks < 1000, f"{left_blocks} blocks still held after the flood was evicted"
    assert left_tables < 64_000, f"{left_tables} bytes of tables still held after the flood was evicted"


# --------------------------------------------------------------------------------------------------
# Record order cannot defeat eviction: an update counts from no later than its arrival plus the skew

SKEW = MAX_CLOCK_SKEW_MS
SWEEP_EVERY = 5 * SECOND  # the consumer sweeps every GATEWAY_STORE_EVICTION_INTERVAL (5 s by default)


def test_future_dated_sessions_do_not_hold_back_ttl_eviction() -> None:
    """1,100 sessions dated 30 days ahead, then 20,000 normal ones; TTL 30 s, a sweep every 5 s.

    The sweep reads at most SWEEP_LOOKAHEAD (1,024) live entries past the front of the store, and the
    future-dated sessions counted as live for 30 days: nothing behind them was ever evicted (only
    GATEWAY_MAX_SESSIONS bounded memory). Now nothing stays past its arrival + skew + TTL, so a session
    is evicted at most ceil(skew / sweep interval) + 1 sweeps after it expired.
    """
    ttl = 30 * SECOND
    clock = Clock(T0)
    store = make_store(retention_ms=MINUTE, ttl_ms=ttl, clock=clock)
    feed = Feeder(store)
    arrived: dict[str, int] = {}
    for i in range(1_100):
        assert feed(ev(f"future-{i}", "active", T0 + 30 * DAY))[0] is Outcome.APPLIED
        arrived[f"future-{i}"] = T0
    for i in range(20_000):
        clock.now_ms = T0 + i  # one a millisecond, each arriving as it happens
        assert feed(ev(f"normal-{i}", "active", clock.now_ms))[0] is Outcome.APPLIED
        arrived[f"normal-{i}"] = clock.now_ms
    held: list[int] = []
    sweeps = 0
    while len(store) and sweeps < 40:
        sweeps += 1
        clock.now_ms = T0 + sweeps * SWEEP_EVERY
        store.evict_expired(clock.now_ms)
        held.append(len(store))
        overdue = [s for s, at in arrived.items() if at + SKEW + ttl < clock.now_ms and s in store]
        assert not overdue, (
            f"sweep {sweeps} at +{sweeps * SWEEP_EVERY // SECOND}s: {len(overdue)} sessions held past their "
            f"arrival + skew + TTL (e.g. {overdue[:3]}); sessions held after each sweep: {held}"
        )
    assert len(store) == 0, f"sessions held after each sweep: {held}"
    # The future-dated sessions count from their arrival + skew: the first sweep after that + TTL takes them,
    # and with them every normal session (all expired by then, the last one at +20 s + TTL).
    assert sweeps == (SKEW + ttl) // SWEEP_EVERY + 1, held
    print(f"\nsessions held after each sweep (every 5 s): {held}")
    assert store.evicted == {"terminal_retention": 0, "ttl": 21_100, "max_sessions": 0}


def test_a_future_dated_update_is_served_as_sent_and_expires_from_its_arrival() -> None:
    clock = Clock(T0)
    store = make_store(retention_ms=MINUTE, ttl_ms=HOUR, clock=clock)
    feed = Feeder(store, partition=3)
    assert feed(ev("ahead", "active", T0 + 30 * DAY, kind="presentation"))[0] is Outcome.APPLIED
    snapshot = store.get("ahead")
    assert snapshot is not None
    assert snapshot.type is SessionType.PRESENTATION and snapshot.tenant_id == "tenant-a"
    assert snapshot.transitions == (Transition("ahead", SessionStatus.ACTIVE, T0 + 30 * DAY, 3, 0),)
    clock.now_ms = T0 + SKEW + HOUR
    assert store.get("ahead") is not None
    clock.now_ms += 1
    assert store.get("ahead") is None, "served past its arrival + skew + TTL"
    assert store.evict_expired(clock.now_ms) == ["ahead"]
    assert store.tenant_count == 0


def test_the_clamp_follows_the_last_update() -> None:
    """A session dated ahead, then updated normally, counts from that update; dated ahead again, from its arrival."""
    clock = Clock(T0)
    store = make_store(retention_ms=MINUTE, ttl_ms=HOUR, clock=clock)
    feed = Feeder(store)
    feed(ev("s1", "active", T0 + DAY, kind="issuance"))
    clock.now_ms = T0 + 10 * MINUTE
    assert feed(ev("s1", "fetched", T0 + 10 * MINUTE))[0] is Outcome.APPLIED  # within the skew: not clamped
    assert statuses(store, "s1") == ["active", "fetched"]
    clock.now_ms = T0 + 10 * MINUTE + HOUR
    assert store.get("s1") is not None, "counts from its own updatedAt again"
    clock.now_ms += 1
    assert store.get("s1") is None

    clock.now_ms = T0
    feed(ev("s2", "active", T0))
    feed(ev("s2", "completed", T0 + 2 * DAY))  # a terminal update dated ahead: retention from its arrival
    snapshot = store.get("s2")
    assert snapshot is not None and snapshot.current.updated_ms == T0 + 2 * DAY
    assert [t.updated_ms for t in snapshot.transitions] == [T0, T0 + 2 * DAY]
    assert store.evict_expired(T0 + SKEW + MINUTE) == []
    assert store.evict_expired(T0 + SKEW + MINUTE + 1) == ["s2"]


def test_tenant_renumbering_keeps_clamped_sessions_intact() -> None:
    clock = Clock(T0)
    store = make_store(retention_ms=MINUTE, ttl_ms=HOUR, clock=clock)
    feed = Feeder(store)
    for i in range(5_000):  # 5,000 tenants that end, so that the codes are renumbered at the next sweep
        feed(ev(f"gone-{i}", "completed", T0, tenant=f"gone-{i}"))
    feed(ev("ahead", "fetched", T0 + DAY, tenant="kept", kind="issuance"))
    store.evict_expired(T0 + SKEW + 2 * MINUTE)
    snapshot = store.get("ahead", T0 + SKEW)
    assert snapshot is not None and snapshot.tenant_id == "kept" and snapshot.type is SessionType.ISSUANCE
    assert snapshot.transitions == (Transition("ahead", SessionStatus.FETCHED, T0 + DAY, 0, 5_000),)
    assert store.get("ahead", T0 + SKEW + HOUR + 1) is None


def test_no_record_order_or_date_keeps_a_session_past_its_arrival_plus_skew_plus_ttl() -> None:
    """Random order, random dates (far ahead, just ahead, now, backdated, too old), random sweeps: the bound holds."""
    import random

    rng = random.Random(19)
    ttl, retention = 20 * MINUTE, 2 * MINUTE
    clock = Clock(T0)
    store = make_store(retention_ms=retention, ttl_ms=ttl, clock=clock)
    feed = Feeder(store)
    next_status = {"active": ["fetched", "completed", "failed"], "fetched": ["completed", "expired", "cancelled"]}
    current: dict[str, str] = {}
    last_arrival: dict[str, int] = {}
    dates = [30 * DAY, SKEW // 2, 0, -ttl // 2, -2 * ttl, 7 * DAY, -retention // 3]
    for step in range(60_000):
        clock.now_ms += rng.randrange(0, 200)
        session = f"s{rng.randrange(8_000)}"
        status = rng.choice(next_status.get(current.get(session, ""), ["active"]))
        outcome, _ = feed(ev(session, status, clock.now_ms + rng.choice(dates)))
        if outcome is Outcome.APPLIED:
            current[session] = status
            last_arrival[session] = clock.now_ms
        if step % 997 == 0:
            for gone in store.evict_expired(clock.now_ms):
                current.pop(gone)
            for session, status in current.items():
                limit = retention if status in ("completed", "failed", "expired", "cancelled") else ttl
                assert last_arrival[session] + SKEW + limit >= clock.now_ms, (
                    f"{session} ({status}) held past its arrival + skew + {limit // SECOND}s at step {step}"
                )
    assert store.evicted["ttl"] + store.evicted["terminal_retention"] > 1_000
