"""The connection-cost changes of issue 24 keep what they replaced: same bytes, same verdicts.

- ``Wire.cork``/``uncork``: a stream's head and first frames leave in one ``transport.write``, byte for
  byte what the separate writes sent, and a stream that ends or is aborted while corked behaves as
  before (``gateway.edge.wire``).
- The canonical base64url check of ``gateway.auth.jws`` accepts and refuses exactly what decoding and
  re-encoding did (the implementation it replaced, kept here as the reference).
- Redaction's skip of the per-run JWT pass changes no line (``gateway.runtime.redaction``).
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import cast

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from gateway.auth.jws import _b64url_decode
from gateway.edge.wire import LAST_CHUNK, Wire
from gateway.runtime import redaction
from gateway.runtime.redaction import REDACTED, redact


class RecordingTransport:
    """The part of an asyncio transport a Wire uses; records every write call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0  # every write is taken at once

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default  # no socket: nothing to cork


def _wire() -> tuple[Wire, RecordingTransport]:
    transport = RecordingTransport()
    return Wire(cast(asyncio.Transport, transport)), transport


def test_corked_writes_leave_in_one_write_with_the_same_bytes() -> None:
    corked, corked_transport = _wire()
    plain, plain_transport = _wire()
    for wire in (corked, plain):
        if wire is corked:
            wire.cork()
        wire.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wire.write_event(b"retry: 3000\n\n")
        wire.write_event(b"id: 1\ndata: {}\n\n")
        if wire is corked:
            assert corked_transport.writes == []  # held until uncork
            wire.uncork()
    assert len(corked_transport.writes) == 1
    assert len(plain_transport.writes) == 3
    assert corked_transport.writes[0] == b"".join(plain_transport.writes)
    corked.write_event(b"data: live\n\n")  # after uncork: straight to the transport again
    assert corked_transport.writes[1] == b"c\r\ndata: live\n\n\r\n"


def test_a_stream_ended_while_corked_sends_what_was_held_then_its_end() -> None:
    wire, transport = _wire()
    wire.cork()
    wire.write(b"HEAD")
    wire.write_event(b"data: x\n\n")
    wire.end()
    assert b"".join(transport.writes) == b"HEAD" + b"9\r\ndata: x\n\n\r\n" + LAST_CHUNK
    assert transport.closed
    wire.uncork()  # the caller's finally: nothing more is written
    assert b"".join(transport.writes).endswith(LAST_CHUNK)


def test_an_aborted_corked_stream_writes_nothing() -> None:
    wire, transport = _wire()
    wire.cork()
    wire.write(b"HEAD")
    wire.abort()
    wire.uncork()
    assert transport.writes == []
    assert transport.aborted


def test_uncork_without_writes_or_on_a_closing_transport_writes_nothing() -> None:
    wire, transport = _wire()
    wire.cork()
    wire.uncork()
    assert transport.writes == []
    wire.cork()
    wire.write(b"HEAD")
    transport.closed = True
    wire.uncork()
    assert transport.writes == []


_B64URL = re.compile(rb"[A-Za-z0-9_-]*")


def _reference_decode(segment: bytes) -> bytes:
    """The decoder before issue 24: decode, then re-encode to compare (canonical form)."""
    if len(segment) % 4 == 1 or not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    decoded = base64.b64decode(segment + b"=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment:
        raise ValueError("not canonical base64url")
    return decoded


def _verdict(segment: bytes) -> bytes | None:
    try:
        return _b64url_decode(segment)
    except ValueError:
        return None


def _reference_verdict(segment: bytes) -> bytes | None:
    try:
        return _reference_decode(segment)
    except ValueError:
        return None


@pytest.mark.parametrize(
    "segment",
    [
        b"",
        b"A",
        b"AA",
        b"AB",
        b"AQ",
        b"AAA",
        b"AAB",
        b"AAE",
        b"AAAA",
        b"QQ",
        b"Qg",
        b"_w",
        b"__8",
        b"-_-_",
        b"AA=",
        b"A+",
        b"AI",  # 8: only the highest of the 4 unused bits set
        b"AE",
        b"AC",
        b"AAC",  # 2: the higher of the 2 unused bits set
        b"AAg",
        b"Ag",
    ],
)
def test_canonical_base64url_edges(segment: bytes) -> None:
    assert _verdict(segment) == _reference_verdict(segment)


@hypothesis_settings(max_examples=3000, deadline=None)
@given(
    st.binary(max_size=16).map(lambda data: base64.urlsafe_b64encode(data).rstrip(b"="))
    | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=11).map(str.encode)
    | st.binary(max_size=12)
)
def test_canonical_base64url_agrees_with_decoding_and_reencoding(segment: bytes) -> None:
    assert _verdict(segment) == _reference_verdict(segment)


def _reference_redact(text: str) -> str:
    """``redact`` before issue 24: the per-run JWT pass on every suspect line."""
    if not redaction._SUSPECT.search(text):
        return text
    text = redaction._PARAM.sub(redaction._redact_param, text)
    text = redaction._BEARER.sub(r"\1" + REDACTED, text)
    if "%" in text:
        text = redaction._URL_RUN.sub(redaction._redact_encoded_jwt, text)
    return redaction._redact_jwts(text)


_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0xxxx.c2lnbmF0dXJl"


@hypothesis_settings(max_examples=3000, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["eyJhbGciOiJSUzI1NiJ9", "eyJ", "ew", "eY", "EY", "xxxxxxxxxxxx", ".", "%2E", "%", "=", "?", "&"]
        )
        | st.sampled_from([" ", "token", "Bearer ", "access_token", _TOKEN, _TOKEN[:30], "-", "_", "a", "Z", "9"]),
        max_size=24,
    ).map("".join)
)
def test_redaction_is_unchanged_by_skipping_the_per_run_pass(text: str) -> None:
    assert redact(text) == _reference_redact(text)
    if _TOKEN in text:
        assert _TOKEN not in redact(text)
