"""Stream tickets: short-lived, one-session credentials the gateway signs with a key every replica shares.

Format (docs/tickets.md): ``v1.<payload>.<mac>``, both parts base64url without padding; the payload is a
JSON object ``{"kid", "sub", "tid", "sid", "exp"}`` and the mac is HMAC-SHA256 of ``v1.<payload>`` under
the kid's secret. A ticket is a token type of its own: it is only read from ``?ticket=``, checked here
and never by the identity-provider verifier (which refuses HMAC), and an identity-provider token is
never a ticket (it cannot start with ``v1.``). Checks run cheapest first and the mac is compared in
constant time; encodings must be canonical, so no bit of a ticket can be flipped unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from dataclasses import dataclass

import orjson

from gateway.auth.claims import AuthenticationError, Principal
from gateway.auth.ticket_keys import TicketKey

PREFIX = "v1."
MAX_TICKET_CHARS = 2048
MAX_SUBJECT_CHARS = 512
_MAC_CHARS = 43  # 32 bytes of base64url without padding
_PLAIN = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
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
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Strict: the base64url alphabet, no padding, and the one (canonical) spelling of its bytes."""
    if not _PLAIN.fullmatch(text) or len(text) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return data if _b64(data) == text else None


def _mac(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


class TicketCodec:
    """Signs with the first key, verifies with any listed key; ``leeway`` seconds of clock skew between replicas."""

    def __init__(self, keys: list[TicketKey], leeway: float) -> None:
        if not keys:
            raise ValueError("tickets need at least one key")
        self._signing = keys[0]
        self._keys = {key.kid: key.secret for key in keys}
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
        mac = _mac(self._signing.secret, f"{PREFIX}{encoded}".encode("ascii"))
        return f"{PREFIX}{encoded}.{_b64(mac)}"

    def verify(self, ticket: str, now: float | None = None) -> Grant:
        """The ticket's grant; ``AuthenticationError`` (malformed, unknown_key, bad_signature, expired)."""
        if len(ticket) > MAX_TICKET_CHARS:
            raise AuthenticationError("too_large")
        if not ticket.startswith(PREFIX) or not ticket.isascii():
            raise AuthenticationError("malformed")
        encoded, dot, mac_text = ticket[len(PREFIX) :].partition(".")
        payload_bytes = _unb64(encoded) if dot and len(mac_text) == _MAC_CHARS else None
        mac = _unb64(mac_text) if payload_bytes is not None else None
        if payload_bytes is None or mac is None:
            raise AuthenticationError("malformed")
        try:
            payload = orjson.loads(payload_bytes)
        except orjson.JSONDecodeError:
            raise AuthenticationError("malformed") from None
        if not isinstance(payload, dict):
            raise AuthenticationError("malformed")
        kid = payload.get("kid")
        secret = self._keys.get(kid) if isinstance(kid, str) else None
        if secret is None:
            raise AuthenticationError("unknown_key")  # a retired key, or never one of ours
        if not hmac.compare_digest(_mac(secret, f"{PREFIX}{encoded}".encode("ascii")), mac):
            raise AuthenticationError("bad_signature")
        return self._grant(payload, time.time() if now is None else now)

    def _grant(self, payload: dict[str, object], now: float) -> Grant:
        subject, tenant, session, expires = (payload.get(name) for name in ("sub", "tid", "sid", "exp"))
        if set(payload) != _FIELDS or not isinstance(subject, str) or not isinstance(session, str) or not session:
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
