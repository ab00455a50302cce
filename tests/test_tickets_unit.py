"""Stream tickets as pure logic: the format, every refusal of the codec, the key set, the body, redaction.

The same behaviour against real gateway processes is in ``test_tickets``; these cover what is too many
cases for a process (every bit of a ticket flipped, every malformed key entry).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import secrets
from pathlib import Path

import pytest

from gateway.admission.authentication import bearer_token, find_ticket
from gateway.admission.ticket_endpoint import expires_at_text, requested_ttl
from gateway.auth.claims import AuthenticationError
from gateway.auth.ticket_keys import TicketKey, parse_ticket_keys
from gateway.auth.tickets import Grant, TicketCodec
from gateway.edge.errors import StreamRefused
from gateway.runtime.redaction import REDACTED, redact

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
NOW = 1_800_000_000.0
SECRET = secrets.token_urlsafe(32)
OTHER = secrets.token_urlsafe(32)


def codec(*entries: str, leeway: float = 0.0) -> TicketCodec:
    return TicketCodec(parse_ticket_keys(list(entries or (f"k1:{SECRET}",))), leeway)


def grant(session: str = "s-1", tenant: str | None = "tenant-a", expires: int = int(NOW) + 900) -> Grant:
    return Grant("backend-client", tenant, session, expires)


def reason(codec: TicketCodec, ticket: str, now: float = NOW) -> str:
    with pytest.raises(AuthenticationError) as refused:
        codec.verify(ticket, now)
    return refused.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: bytes, secret: str = SECRET) -> str:
    key = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    signing_input = "v1." + b64(payload)
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


# --- the codec --------------------------------------------------------------------------------------


def test_a_ticket_carries_tenant_session_subject_and_expiry() -> None:
    tickets = codec()
    ticket = tickets.mint(grant())
    assert ticket.startswith("v1.") and ticket.count(".") == 2
    assert tickets.verify(ticket, NOW) == grant()
    principal = tickets.verify(ticket, NOW).principal()
    assert (principal.subject, principal.tenant, principal.ticket_session) == ("backend-client", "tenant-a", "s-1")
    assert principal.session is None and principal.scopes == frozenset()  # never a session claim, never a scope


def test_the_format_is_the_documented_one() -> None:
    ticket = codec().mint(grant(tenant=None))
    payload = json.loads(base64.urlsafe_b64decode(ticket.split(".")[1] + "=="))
    assert payload == {"kid": "k1", "sub": "backend-client", "tid": None, "sid": "s-1", "exp": int(NOW) + 900}
    assert ticket == signed(json.dumps(payload, separators=(",", ":")).encode())


def test_every_flipped_bit_is_refused() -> None:
    tickets = codec()
    ticket = tickets.mint(grant(session="a-session/with:odd chars é"))
    for position, char in enumerate(ticket):
        for bit in range(7):
            flipped = chr(ord(char) ^ (1 << bit))
            forged = ticket[:position] + flipped + ticket[position + 1 :]
            with pytest.raises(AuthenticationError):
                tickets.verify(forged, NOW)


def test_non_canonical_base64_is_refused() -> None:
    """The last character of a 32-byte mac carries 2 unused bits: a decoder that ignores them would accept 4
    spellings of one mac."""
    tickets = codec()
    ticket = tickets.mint(grant())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(ticket[-1])
    for spare in (1, 2, 3):
        assert reason(tickets, ticket[:-1] + alphabet[last ^ spare]) == "bad_signature"
    assert reason(tickets, ticket + "=") == "malformed"
    # The payload's spelling is covered too: its last character's spare bits, padding, the standard alphabet.
    # A payload whose last character has spare bits (its length is not a multiple of 4).
    padded = next(t for t in (tickets.mint(grant(session="s" * n)) for n in range(1, 5)) if len(t.split(".")[1]) % 4)
    head, payload, mac = padded.split(".")
    spare_payload = payload[:-1] + alphabet[alphabet.index(payload[-1]) ^ 1]
    assert base64.urlsafe_b64decode(spare_payload + "==") == base64.urlsafe_b64decode(payload + "==")
    for spelling in (spare_payload, payload + "==", payload.replace("-", "+").replace("_", "/")):
        if spelling != payload:
            assert reason(tickets, f"{head}.{spelling}.{mac}") in ("bad_signature", "malformed"), spelling


def test_expiry_and_leeway() -> None:
    ticket = codec().mint(grant(expires=int(NOW)))
    assert reason(codec(), ticket, NOW) == "expired"
    assert codec(leeway=30).verify(ticket, NOW + 29.9).session == "s-1"
    assert reason(codec(leeway=30), ticket, NOW + 30) == "expired"


def test_key_rotation_first_signs_all_verify() -> None:
    old = codec(f"old:{OTHER}")
    rotated = codec(f"new:{SECRET}", f"old:{OTHER}")
    retired = codec(f"new:{SECRET}")
    old_ticket = old.mint(grant())
    assert rotated.verify(old_ticket, NOW).session == "s-1"
    assert '"kid":"new"' in base64.urlsafe_b64decode(rotated.mint(grant()).split(".")[1] + "==").decode()
    assert reason(retired, old_ticket) == "unknown_key"
    # The same kid with another secret (a key replaced in place) is a bad signature, not an acceptance.
    assert reason(codec(f"old:{SECRET}"), old_ticket) == "bad_signature"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"[]", "malformed"),
        (b"not json", "malformed"),
        (b'{"kid":"k1","sub":"x","tid":"t","sid":"s","exp":1900000000,"scope":"admin"}', "malformed"),
        (b'{"kid":"k1","sub":"x","tid":"t","sid":"s"}', "malformed"),
        (b'{"kid":"k1","sub":"x","tid":"t","sid":"","exp":1900000000}', "malformed"),
        (b'{"kid":"k1","sub":"x","tid":"","sid":"s","exp":1900000000}', "malformed"),
        (b'{"kid":"k1","sub":"x","tid":7,"sid":"s","exp":1900000000}', "malformed"),
        (b'{"kid":"k1","sub":null,"tid":"t","sid":"s","exp":1900000000}', "malformed"),
        (b'{"kid":"k1","sub":"x","tid":"t","sid":"s","exp":true}', "malformed"),
        (b'{"kid":"k1","sub":"x","tid":"t","sid":"s","exp":1.9e9}', "malformed"),
        (b'{"kid":"k1","sub":"x","tid":"t","sid":"s","exp":1e400}', "malformed"),
        (b'{"kid":"k2","sub":"x","tid":"t","sid":"s","exp":1900000000}', "unknown_key"),
        (b'{"kid":["k1"],"sub":"x","tid":"t","sid":"s","exp":1900000000}', "unknown_key"),
    ],
)
def test_a_careless_minter_is_refused(payload: bytes, expected: str) -> None:
    assert reason(codec(), signed(payload)) == expected


def test_shapes_that_are_not_tickets() -> None:
    tickets = codec()
    good = tickets.mint(grant())
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    for text in ("", "v1.", "v1..", jwt_like, good.replace("v1.", "v2.", 1), good + ".x", "v1." + "A" * 5000):
        assert reason(tickets, text) in ("malformed", "too_large")
    assert reason(tickets, good[:-1] + "\u00e9") == "malformed"


def test_the_python_example_mints_what_the_gateway_accepts() -> None:
    spec = importlib.util.spec_from_file_location("mint_ticket", EXAMPLES / "mint_ticket.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ticket = example.mint_ticket("k1", SECRET, "tenant-a", "s-1", ttl=60)
    accepted = codec().verify(ticket)
    assert (accepted.tenant, accepted.session, accepted.subject) == ("tenant-a", "s-1", "backend")


def test_a_ticket_sees_its_one_session_of_its_one_tenant() -> None:
    from consumers.store import SessionSnapshot, Transition
    from gateway.auth.access import AccessRule
    from gateway.settings import AuthSettings
    from schemas import SessionStatus

    def snapshot(session: str, tenant: str) -> SessionSnapshot:
        return SessionSnapshot(session, tenant, None, (Transition(session, SessionStatus.ACTIVE, 0, 0, 0),))

    principal = grant(session="s-1").principal()
    enforced = AccessRule(AuthSettings(tenant_claim="tenant_id"))
    assert enforced.visible(snapshot("s-1", "tenant-a"), principal) is not None
    assert enforced.visible(snapshot("s-2", "tenant-a"), principal) is None
    assert enforced.visible(snapshot("s-1", "tenant-b"), principal) is None
    # Without a tenant check the session still binds, and no session claim setting unbinds it.
    unchecked = AccessRule(AuthSettings(tenant_claim="", session_claim=""))
    assert unchecked.visible(snapshot("s-2", "tenant-a"), grant(tenant=None).principal()) is None
    assert unchecked.visible(snapshot("s-1", "tenant-b"), grant(tenant=None).principal()) is not None


# --- the key set --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("no-colon", "expected kid:secret"),
        (SECRET, "expected kid:secret"),
        (f"bad kid!:{SECRET}", "expected kid:secret"),
        (f":{SECRET}", "expected kid:secret"),
        ("k1:" + b64(secrets.token_bytes(31)), "decodes to 31 bytes"),
        ("k1:" + "QUFB" * 11, "not random"),
        ("k1:" + b64(bytes(range(8)) * 4), "not random"),
        ("k1:not*base64*url", "not base64url"),
        ("k1:" + SECRET.replace(SECRET[3], "+"), "not base64url"),
    ],
    # Stable ids: the entries hold secrets drawn at import, and parallel workers must collect the same tests.
    ids=["no-colon", "no-kid", "bad-kid", "empty-kid", "short", "repeated", "pattern", "not-base64", "plus"],
)
def test_weak_or_malformed_keys_are_refused_without_showing_the_secret(entry: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_ticket_keys([entry])
    assert message in str(refused.value)
    kid, colon, secret = entry.partition(":")
    assert (secret if colon else kid) not in str(refused.value)


def test_duplicate_kids_and_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="kid 'k1' is listed twice"):
        parse_ticket_keys([f"k1:{SECRET}", f"k1:{OTHER}"])
    with pytest.raises(ValueError, match="same secret is listed under another kid"):
        parse_ticket_keys([f"k1:{SECRET}", f"k2:{SECRET}="])


def test_keys_accept_padding_and_keep_their_order() -> None:
    padded = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    keys = parse_ticket_keys([f"new:{padded}", f" old:{SECRET} "])
    assert [key.kid for key in keys] == ["new", "old"]
    assert SECRET not in repr(keys) and padded not in repr(keys)
    assert repr(TicketKey("k", b"x" * 32)) == "TicketKey(kid='k')"


# --- request parts ------------------------------------------------------------------------------------


def test_the_ticket_parameter_is_taken_as_sent() -> None:
    assert find_ticket(b"ticket=v1.a.b&lastEventId=0-1") == "v1.a.b"
    assert find_ticket(b"x=1&ticket=v1.a%2Eb") == "v1.a.b"
    assert find_ticket(b"tick%65t=v1.a.b") is None
    assert find_ticket(b"xticket=v1.a.b") is None
    assert find_ticket(b"ticket=&ticket=second") == "second"
    assert bearer_token({"authorization": "Bearer  abc "}) == "abc"
    assert bearer_token({"authorization": "Basic abc"}) is None
    assert bearer_token({"authorization": "Bearer "}) is None


def test_the_requested_lifetime_is_at_most_the_setting() -> None:
    assert requested_ttl(b"", 900) == 900
    assert requested_ttl(b"  \n", 900) == 900
    assert requested_ttl(b"{}", 900) == 900
    assert requested_ttl(b'{"ttl": 60}', 900) == 60
    assert requested_ttl(b'{"ttl": 0.5}', 900) == 0.5
    assert requested_ttl(b'{"ttl": 86400}', 900) == 900
    for bad in (
        b'{"ttl": 0}',
        b'{"ttl": -5}',
        b'{"ttl": "60"}',
        b'{"ttl": true}',
        b'{"ttl": null}',
        b"[60]",
        b'{"ttl": 60, "session": "other"}',
        b"{",
        b'{"ttl": 1e999}',
        b"60",
    ):
        with pytest.raises(StreamRefused) as refused:
            requested_ttl(bad, 900)
        assert refused.value.status == 400, bad


def test_expires_at_is_iso_utc_with_milliseconds() -> None:
    assert expires_at_text(1_800_000_000) == "2027-01-15T08:00:00.000Z"


# --- redaction ------------------------------------------------------------------------------------------


def test_tickets_are_redacted_wherever_they_stand() -> None:
    ticket = codec().mint(grant())
    encoded = ticket.replace(".", "%2E")
    lines = [
        f'127.0.0.1:5 - "GET /session/s-1/events?ticket={ticket} HTTP/1.1" 200',
        f'"GET /session/s-1/events?lastEventId=0-1&ticket={encoded} HTTP/1.1"',
        f"Authorization: Bearer {ticket}",
        f"a ticket {ticket} in the middle of a sentence",
        f"quoted '{ticket}' and (in parentheses {ticket})",
        f"/session/s-1/events?tick%65t={ticket}",
        f"/session/s-1/events?x={encoded}",
    ]
    for line in lines:
        redacted = redact(line)
        assert ticket not in redacted and encoded not in redacted, line
        assert ticket.split(".")[2] not in redacted and REDACTED in redacted, line
    assert redact("version v1.2.3 of the chart") == "version v1.2.3 of the chart"
