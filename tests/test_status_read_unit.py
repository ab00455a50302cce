"""The status read's pure parts (``test_status_read`` proves the same through a real process and broker).

- The route: ``/session/{id}`` and nothing else (not the stream's path, no empty or nested id), behind a
  root path, percent-decoded like the stream's.
- The entity tag: quoted, strong, 16 opaque characters; the same for the same state (so every replica
  agrees), different for another position, status, time or tenant.
- ``If-None-Match``: one tag, weak form, lists, ``*``, and no match for a missing session.
- ``?wait``: plain decimals only, the last one wins, names taken as sent.
- In process: a replaying replica's 503 (at once, or after the wait asked for, counted meanwhile), a long poll
  woken by the hub, and ended 404 by its session's deletion.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from consumers.progress import PartitionProgress
from consumers.records import StatusUpdate
from consumers.store import SessionSnapshot, Transition
from gateway.edge.errors import StreamRefused
from gateway.edge.route import match, match_status
from gateway.reads.etag import entity_tag, none_match
from gateway.reads.status import StatusRead, StatusReads, parse_wait
from schemas import SessionStatus
from tests.test_admission_unit import Admissions


def snapshot(
    tenant: str = "t1", status: SessionStatus = SessionStatus.ACTIVE, offset: int = 7, ms: int = 1
) -> SessionSnapshot:
    return SessionSnapshot("s1", tenant, None, (Transition("s1", status, ms, 0, offset),))


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        (b"/session/abc", "", "abc"),
        (b"/session/a%2Fb", "", "a/b"),
        (b"/api/session/abc", "/api", "abc"),
        (b"/session/abc", "/api", "abc"),
        (b"/session/abc/events", "", None),
        (b"/session/", "", None),
        (b"/session/abc/", "", None),
        (b"/sessions/abc", "", None),
        (b"/livez", "", None),
    ],
)
def test_the_status_route(path: bytes, root: str, expected: str | None) -> None:
    assert match_status(path, root) == expected
    assert match(path, root) is None or expected is None  # never both routes


def test_the_entity_tag_is_opaque_strong_and_follows_the_state() -> None:
    tag = entity_tag(snapshot())
    assert tag is not None and tag.startswith(b'"') and tag.endswith(b'"') and len(tag) == 18
    assert entity_tag(snapshot()) == tag  # deterministic: every replica computes the same
    others = {
        entity_tag(snapshot(tenant="t2")),
        entity_tag(snapshot(offset=8)),
        entity_tag(snapshot(status=SessionStatus.FETCHED)),
        entity_tag(snapshot(ms=2)),
    }
    assert tag not in others and len(others) == 4
    assert entity_tag(None) is None


def test_if_none_match() -> None:
    tag = entity_tag(snapshot())
    assert tag is not None
    assert none_match(tag, tag)
    assert none_match(b"W/" + tag, tag)
    assert none_match(b'"a", ' + tag + b' ,"b"', tag)
    assert none_match(b"*", tag)
    assert not none_match(b'"a", "b"', tag)
    assert not none_match(b"", tag)
    assert not none_match(b"*", None)  # no session: * does not match, the answer is 404
    assert not none_match(tag[1:-1], tag)  # unquoted is not the tag


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", 0.0),
        (b"token=x", 0.0),
        (b"wait=5", 5.0),
        (b"wait=2.5&token=x", 2.5),
        (b"wait=1&wait=3", 3.0),
        (b"w%61it=abc", 0.0),
        (b"await=3", 0.0),
    ],
)
def test_wait_values(query: bytes, expected: float) -> None:
    assert parse_wait(query) == expected


@pytest.mark.parametrize(
    "value", [b"", b"-1", b"abc", b"1e9", b"nan", b"inf", b"0x10", b"1234567890", b"1,5", b"+1", b"1."]
)
def test_bad_wait_values_are_400(value: bytes) -> None:
    with pytest.raises(StreamRefused) as refused:
        parse_wait(b"token=x&wait=" + value)
    assert refused.value.status == 400


# In process, over the stream's admission (``test_admission_unit.Admissions``: a real store, hub and registry, claims
# validation without the signature check): what a read answers while the replica replays, and when a long poll's
# session is deleted.


def reads_of(gateway: Admissions) -> StatusReads:
    return StatusReads(gateway.endpoint)


async def test_a_replaying_replica_answers_503_at_once_or_after_the_wait_asked_for() -> None:
    gateway = Admissions(unknown_session_wait=5, replay_wait=5)
    gateway.create("s1", "t")
    progress = PartitionProgress()
    progress.set_targets({0: 10})  # not caught up
    gateway.endpoint.sessions.progress = progress
    reads = reads_of(gateway)
    token = gateway.tokens.token("t")
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await reads.read(StatusRead("s1", f"token={token}".encode(), {}))
    assert (answer.status, answer.reason) == (503, "replaying") and loop.time() - started < 1
    waiting = asyncio.ensure_future(reads.read(StatusRead("s1", f"token={token}&wait=0.3".encode(), {})))
    await asyncio.sleep(0.1)
    assert gateway.registry.waiting == 1  # counted while it waits for the replay
    answer = await waiting
    assert (answer.status, answer.reason) == (503, "replaying") and gateway.registry.waiting == 0
    # Caught up while it waits: the answer is the state.
    waiting = asyncio.ensure_future(reads.read(StatusRead("s1", f"token={token}&wait=2".encode(), {})))
    await asyncio.sleep(0.1)
    progress.advance(0, 10)
    answer = await waiting
    assert answer.status == 200 and json.loads(answer.body)["status"] == "active"
    assert gateway.registry.waiting == 0


async def test_a_long_poll_ends_404_when_its_session_is_deleted() -> None:
    gateway = Admissions(unknown_session_wait=5)
    gateway.create("s1", "t")
    reads = reads_of(gateway)
    token = gateway.tokens.token("t")
    first = await reads.read(StatusRead("s1", f"token={token}".encode(), {}))
    etag = next(value for name, value in first.headers if name == b"etag")
    poll = asyncio.ensure_future(reads.read(StatusRead("s1", f"token={token}&wait=5".encode(), {}, etag)))
    await asyncio.sleep(0.05)
    assert not poll.done() and gateway.hub.count("s1") == 1 and gateway.registry.waiting == 1
    gateway.store.delete("s1")
    gateway.hub.session_deleted("s1")
    answer = await asyncio.wait_for(poll, 2)  # woken by the deletion, not by the end of its wait
    assert answer.status == 404 and gateway.hub.count("s1") == 0 and gateway.registry.waiting == 0


async def test_a_long_poll_is_woken_by_the_hub() -> None:
    gateway = Admissions(unknown_session_wait=5)
    gateway.create("s1", "t")
    reads = reads_of(gateway)
    token = gateway.tokens.token("t")
    first = await reads.read(StatusRead("s1", f"token={token}".encode(), {}))
    etag = next(value for name, value in first.headers if name == b"etag")
    poll = asyncio.ensure_future(reads.read(StatusRead("s1", f"token={token}&wait=5".encode(), {}, etag)))
    await asyncio.sleep(0.05)
    update = StatusUpdate("s1", "t", SessionStatus.FETCHED, int(time.time() * 1000), None)
    gateway.store.apply(update, 0, gateway.offset)
    snapshot = gateway.store.get("s1")
    assert snapshot is not None
    gateway.hub.publish(snapshot.current, 0)
    answer = await asyncio.wait_for(poll, 2)
    assert answer.status == 200 and json.loads(answer.body)["status"] == "fetched"
    assert next(value for name, value in answer.headers if name == b"etag") != etag
