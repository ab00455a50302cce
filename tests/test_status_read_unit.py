"""The status read's pure parts (``test_status_read`` proves the same through a real process and broker).

- The route: ``/session/{id}`` and nothing else (not the stream's path, no empty or nested id), behind a
  root path, percent-decoded like the stream's.
- The entity tag: quoted, strong, 16 opaque characters; the same for the same state (so every replica
  agrees), different for another position, status, time or tenant.
- ``If-None-Match``: one tag, weak form, lists, ``*``, and no match for a missing session.
- ``?wait``: plain decimals only, the last one wins, names taken as sent.
"""

from __future__ import annotations

import pytest

from consumers.store import SessionSnapshot, Transition
from gateway.edge.errors import StreamRefused
from gateway.edge.route import match, match_status
from gateway.reads.etag import entity_tag, none_match
from gateway.reads.status import parse_wait
from schemas import SessionStatus


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
