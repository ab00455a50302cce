"""The second round of connection-cost fast paths (issue 24 item 2) against what they replaced, on hostile input.

Each fast path is compared with the straightforward implementation it replaced (kept here as the reference)
on many generated inputs, including the ones an attacker or a careless client would send: Unicode whose
case folding differs from ASCII (Kelvin sign, long s, dotted I), percent-encoded names, tickets, JWTs cut
short, control characters.

- ``redact`` skips substitutions that cannot match on ASCII text, and ``_suspect`` replaces the
  case-insensitive pre-check: same output as running every substitution (``gateway.runtime.redaction``).
- ``JsonFormatter`` caches the formatted second and encodes with msgspec: the line ``json.dumps`` writes (compact).
- The access line is logged without the caller lookup of ``Logger.info``: same record, same JSON line.
- ``ClientAddresses.peer`` caches its answers per peer, bounded: same answers as parsing every time.
- ``?lastEventId=`` is read without parsing a query that cannot hold it: same value as ``parse_qsl``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import Any, cast
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from consumers.log_aggregation import ReasonFolding
from consumers.log_fields import FIELDS_ATTRIBUTE
from gateway.admission.client_address import ClientAddresses, _ip, _key
from gateway.admission.endpoint import _query_last_event_id
from gateway.edge.access_line import access_log, log_access
from gateway.runtime import logging_setup, redaction
from gateway.runtime.logging_setup import JsonFormatter
from gateway.runtime.redaction import REDACTED, redact

_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0xxxx.c2lnbmF0dXJl"
_TICKET = "v1.AAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB"


def _reference_redact(text: str) -> str:
    """``redact`` before this change: the case-insensitive pre-check, then every substitution."""
    if not redaction._SUSPECT.search(text):
        return text
    text = redaction._PARAM.sub(redaction._redact_param, text)
    text = redaction._BEARER.sub(r"\1" + REDACTED, text)
    text = redaction._TICKET.sub(REDACTED, text)
    if "%" in text:
        text = redaction._URL_RUN.sub(redaction._redact_encoded_jwt, text)
    return redaction._redact_jwts(text) if redaction._JWT_HEAD.search(text) else text


_FRAGMENTS = st.sampled_from(
    [
        "token",
        "TOKEN",
        "ToKeN",
        "tok",
        "en",
        "ticket",
        "TICKET",
        "Ticket",
        "access_token",
        "id_token",
        "refresh_token",
        "bearer",
        "Bearer ",
        "BEARER\t",
        "bEaReR  ",
        "Authorization: ",
        "v1.",
        "V1.",
        "v1",
        _TICKET,
        _TICKET[:20],
        _JWT,
        _JWT[:30],
        "eyJhbGciOiJSUzI1NiJ9",
        "EYJHBGCIOIJSUZI1NIJ9",
        "eY",
        "Ew",
        "ew",
        "%",
        "%74oken",
        "%54OKEN",
        "tok%65n",
        "%2E",
        "%252E",
        "+",
        "=",
        "?",
        "&",
        ";",
        " ",
        "\t",
        "\n",
        '"',
        "'",
        "/session/abc/events",
        " HTTP/1.1",
        "-",
        "_",
        ".",
        "a",
        "Z",
        "9",
        "xxxxxxxxxxxx",
        "\u212a",
        "to\u212aen",
        "\u017f",
        "\u0130",
        "\u0131",
        "tic\u212aet",
        "b\u0117arer",
        "\u00e9",
        "\u2028",
    ]
)
_HOSTILE_TEXT = st.lists(_FRAGMENTS | st.text(max_size=4), max_size=24).map("".join)


@hypothesis_settings(max_examples=4000, deadline=None)
@given(_HOSTILE_TEXT)
def test_redact_agrees_with_every_substitution(text: str) -> None:
    assert redact(text) == _reference_redact(text)


@hypothesis_settings(max_examples=4000, deadline=None)
@given(_HOSTILE_TEXT | st.text(max_size=40))
def test_the_suspect_check_agrees_with_the_case_insensitive_pattern(text: str) -> None:
    assert redaction._suspect(text) == (redaction._SUSPECT.search(text) is not None)


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: BEARER abc.def",  # only the Bearer substitution applies
        "authorization: bearer\tsecret",
        "?TOKEN=secret&x=1",  # a parameter in capitals
        "?ToKeN=secret",
        "?tok%65n=secret",  # a percent-encoded name
        "?to\u212aen=secret",  # the Kelvin sign folds to k (not ASCII: every substitution runs)
        f"x {_TICKET} y",  # a ticket alone
        f"x {_JWT.upper()} y",  # a JWT head in capitals is suspect, though not redacted as a JWT
        f"GET /session/a/events?token={_JWT} HTTP/1.1",
        'GET /x/Bearer HTTP/1.1" 200',
        "?access_token=abc&ticket=def&id_token=ghi&refresh_token=jkl",
        "?ticket=secret",  # a ticket parameter: no "token" in the text
        "x TICKET=secret",
        "?Refresh_Token=secret",
        "nothing here at all",
    ],
)
def test_redact_examples_each_skip_must_not_miss(text: str) -> None:
    assert redact(text) == _reference_redact(text)
    assert "secret" not in redact(text) or "secret" not in _reference_redact(text)


def _record(created: float, message: str = "m", fields: dict[str, object] | None = None) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, message, None, None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    if fields is not None:
        setattr(record, FIELDS_ATTRIBUTE, fields)
    return record


@hypothesis_settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False), min_size=1, max_size=30))
def test_the_cached_second_is_the_formatted_second(created: list[float]) -> None:
    formatter = JsonFormatter("i")
    times = sorted(created) + created  # repeated seconds (cache hits) and jumps back (misses)
    for value in times:
        entry = json.loads(formatter.format(_record(value)))
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(value)) + f".{int(_record(value).msecs):03d}Z"
        assert entry["time"] == expected


@hypothesis_settings(max_examples=1000, deadline=None)
@given(_HOSTILE_TEXT, st.dictionaries(st.sampled_from(["status", "tenant", "reason", "x"]), _HOSTILE_TEXT))
def test_the_shared_encoder_writes_what_json_dumps_wrote(message: str, fields: dict[str, object]) -> None:
    line = JsonFormatter("inst").format(_record(1_765_000_000.25, message, fields))
    entry = json.loads(line)
    reference = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    reference = logging_setup._JSON_RAW.sub(logging_setup._json_escape, reference)
    assert line == reference


class _Transport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.1.2.3", 40123) if name == "peername" else default


def _access_lines(log_call: Any) -> list[str]:
    """What the access logger writes (JSON) while ``log_call`` runs."""
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter("inst"))
    old_level, old_propagate = access_log.level, access_log.propagate
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    try:
        log_call()
    finally:
        access_log.removeHandler(handler)
        access_log.setLevel(old_level)
        access_log.propagate = old_propagate
    return sink.getvalue().splitlines()


def _without_time(line: str) -> dict[str, Any]:
    entry = cast(dict[str, Any], json.loads(line))
    entry.pop("time")
    return entry


@pytest.mark.parametrize(
    "target",
    [
        "/session/abc/events",
        f"/session/abc/events?token={_JWT}",
        "/session/abc/events?token=" + "a" * 600,
        "/session/\u2028x/events?Bearer",
        "/x/Bearer",
    ],
)
def test_the_access_record_without_caller_lookup_is_the_same_line(target: str) -> None:
    refusals = ReasonFolding(access_log, 10)
    fields = {"status": 200, "session_hash": "0123abcd", "tenant": "t-1"}
    transport = cast(asyncio.Transport, _Transport())
    fast = _access_lines(lambda: log_access(transport, refusals, (target, "1.1"), 200, fields=fields))
    path = redaction.log_value(target)
    reference = _access_lines(
        lambda: access_log.info(
            '%s - "%s %s HTTP/%s" %d', "10.1.2.3:40123", "GET", path, "1.1", 200, extra={FIELDS_ATTRIBUTE: fields}
        )
    )
    assert len(fast) == len(reference) == 1
    assert _without_time(fast[0]) == _without_time(reference[0])
    assert _JWT not in fast[0]


def _reference_peer(addresses: ClientAddresses, host: str | None) -> tuple[str | None, bool]:
    address = _ip(host) if host else None
    if address is None:
        return None, False
    return _key(address), addresses._is_trusted(address)


_HOSTS = st.sampled_from(
    [
        "127.0.0.1",
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.1:80",
        "192.168.1.1",
        "192.168.1.2",
        "2001:db9::1",
        "::1",
        "[::1]",
        "[::1]:443",
        "::ffff:10.0.0.1",
        "2001:db8::1",
        "2001:db8::2",
        "[2001:db8::1]",
        "fe80::1%eth0",
        "",
        "localhost",
        "1.2.3",
        "999.1.1.1",
        "[",
        "]",
        ":",
        "\u0661.1.1.1",
        " 10.0.0.1",
        "10.0.0.1 ",
    ]
) | st.text(max_size=12)


@hypothesis_settings(max_examples=2000, deadline=None)
@given(st.lists(_HOSTS, max_size=40))
def test_the_peer_cache_answers_what_parsing_answers(hosts: list[str]) -> None:
    addresses = ClientAddresses(["10.0.0.0/8", "::1/128"], "X-Forwarded-For")
    for host in hosts + hosts:  # the second time from the cache
        assert addresses.peer(host) == _reference_peer(addresses, host)
    assert addresses.peer(None) == (None, False)


def test_the_peer_cache_tells_peers_apart() -> None:
    addresses = ClientAddresses(["10.0.0.0/8"], "x-forwarded-for")
    hosts = ["10.0.0.1", "10.0.0.2", "192.168.1.1", "192.168.1.2", "2001:db8::1", "2001:db9::1", "nonsense", "::1"]
    for host in hosts * 2:
        assert addresses.peer(host) == _reference_peer(addresses, host)


def test_the_peer_cache_is_bounded() -> None:
    addresses = ClientAddresses(["127.0.0.0/8"], "x-forwarded-for")
    for number in range(ClientAddresses.MAX_PEERS * 2 + 7):
        host = f"10.{number // 65536}.{number // 256 % 256}.{number % 256}"
        assert addresses.peer(host) == (host, False)
        assert len(addresses._peers) <= ClientAddresses.MAX_PEERS
    assert addresses.peer("127.0.0.1") == ("127.0.0.1", True)


_QUERY = st.lists(
    st.sampled_from(
        [
            "lastEventId",
            "lasteventid",
            "last%45ventId",
            "last+EventId",
            "lastEventId%3D",
            "%",
            "%4",
            "%zz",
            "+",
            "=",
            "&",
            ";",
            "0-12",
            "1-5-end",
            "token",
            _JWT,
            "\u00e9",
            "a",
            " ",
        ]
    )
    | st.text(max_size=3),
    max_size=16,
).map("".join)


@hypothesis_settings(max_examples=3000, deadline=None)
@given(_QUERY)
def test_last_event_id_of_the_query_agrees_with_parse_qsl(query: str) -> None:
    raw = query.encode("latin-1", errors="replace")
    expected = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)).get("lastEventId")
    assert _query_last_event_id(raw) == expected
