"""Stream tickets: short-lived, one-session credentials the gateway signs with a key every replica shares.

Format (docs/tickets.md): ``v1.<payload>.<mac>``, both parts base64url without padding; the payload is a
JSON object ``{"kid", "sub", "tid", "sid", "exp"}`` and the mac is HMAC-SHA256 of ``v1.<payload>`` under
the kid's secret. A ticket is a token type of its own: it is only read from ``?ticket=``, checked here
and never by the identity-provider verifier (which refuses HMAC), and an identity-provider token is
never a ticket (it cannot start with ``v1.``). Checks run cheapest first; the mac covers the payload
text as sent and is compared, as the signer spells it, in constant time, so no bit of a ticket can be
flipped unnoticed.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import math
import time
from dataclasses import dataclass

import orjson

from gateway.auth.claims import AuthenticationError, Principal
from gateway.auth.ticket_keys import TicketKey

PREFIX = "v1."
MAX_TICKET_CHARS = 2048
MAX_SUBJECT_CHARS = 512
_MAC_CHARS = 43  # 32 bytes of base64url without padding
_FIELDS = frozenset({"kid", "sub", "tid", "sid", "exp"})


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified ticket allows: reading session ``session`` of ``tenant``, as ``subject``, until ``expires``."""

    subject: str
    tenant: str | None
    session: str
    expires: int

    def principal(self) -> Principal:
        return Principal(self.subject, self.tenant, None, frozenset(), float(self.expires), ticket_session=self.session)


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_PADDING = ("", "", "==", "=")


def _unb64(text: str) -> bytes | None:
    """The bytes of unpadded base64url ASCII text, or None. Lenient on purpose: the mac covers the text as sent,
    so a spelling the signer would not produce (other padding bits, other characters) fails the mac anyway."""
    if len(text) % 4 == 1:
        return None
    try:
        return binascii.a2b_base64((text + _PADDING[len(text) % 4]).encode("ascii").translate(_FROM_URLSAFE))
    except binascii.Error:
        return None


class _Mac:
    """HMAC-SHA256 under one secret, its key schedule computed once (a copy per ticket costs half a fresh one)."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def __call__(self, signing_input: bytes) -> str:
        """The mac as the signer spells it: comparing spellings (not bytes) refuses any other spelling of it."""
        keyed = self._keyed.copy()
        keyed.update(signing_input)
        return _b64(keyed.digest())


class TicketCodec:
    """Signs with the first key, verifies with any listed key; ``leeway`` seconds of clock skew between replicas."""

    def __init__(self, keys: list[TicketKey], leeway: float) -> None:
        if not keys:
            raise ValueError("tickets need at least one key")
        self._signing = keys[0]
        self._sign = _Mac(keys[0].secret)
        self._macs = {key.kid: _Mac(key.secret) for key in keys}
        self._leeway = leeway

    def mint(self, grant: Grant) -> str:
        payload: dict[str, object] = {
            "kid": self._signing.kid,
            "sub": grant.subject,
            "tid": grant.tenant,
            "sid": grant.session,
            "exp": grant.expires,
        }
        encoded = _b64(orjson.dumps(payload))
        return f"{PREFIX}{encoded}.{self._sign(f'{PREFIX}{encoded}'.encode('ascii'))}"

    def verify(self, ticket: str, now: float | None = None) -> Grant:
        """The ticket's grant; ``AuthenticationError`` (malformed, unknown_key, bad_signature, expired)."""
        if len(ticket) > MAX_TICKET_CHARS:
            raise AuthenticationError("too_large")
        if not ticket.startswith(PREFIX) or not ticket.isascii():
            raise AuthenticationError("malformed")
        encoded, dot, mac = ticket[len(PREFIX) :].partition(".")
        payload_bytes = _unb64(encoded) if dot and len(mac) == _MAC_CHARS else None
        if payload_bytes is None:
            raise AuthenticationError("malformed")
        try:
            payload = orjson.loads(payload_bytes)
        except orjson.JSONDecodeError:
            raise AuthenticationError("malformed") from None
        if not isinstance(payload, dict):
            raise AuthenticationError("malformed")
        kid = payload.get("kid")
        mac_of = self._macs.get(kid) if isinstance(kid, str) else None
        if mac_of is None:
            raise AuthenticationError("unknown_key")  # a retired key, or never one of ours
        if not hmac.compare_digest(mac_of(ticket[: len(PREFIX) + len(encoded)].encode("ascii")), mac):
            raise AuthenticationError("bad_signature")
        return self._grant(payload, time.time() if now is None else now)

    def _grant(self, payload: dict[str, object], now: float) -> Grant:
        if payload.keys() != _FIELDS:
            raise AuthenticationError("malformed")
        subject, tenant, session, expires = payload["sub"], payload["tid"], payload["sid"], payload["exp"]
        if not isinstance(subject, str) or not isinstance(session, str) or not session:
            raise AuthenticationError("malformed")
        if tenant is not None and not (isinstance(tenant, str) and tenant):
            raise AuthenticationError("malformed")
        if isinstance(expires, bool) or not isinstance(expires, int) or not 0 < expires < 2**53:
            raise AuthenticationError("malformed")
        if expires + self._leeway <= now:  # accepted while now < exp + leeway, as for tokens
            raise AuthenticationError("expired")
        return Grant(subject, tenant, session, expires)


def expiry(now: float, ttl: float) -> int:
    """The ``exp`` of a ticket issued at ``now`` for ``ttl`` seconds: whole seconds, never later than asked."""
    return math.floor(now + ttl)
