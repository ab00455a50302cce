"""The stream-ticket key set (``GATEWAY_TICKET_KEYS``): ``kid:secret`` entries, the first signing, all verifying.

Parsed once, at start-up (the settings validator calls ``parse_ticket_keys``), and refused there with a
message that names the entry and never the secret: a secret shorter than 32 bytes, one that is not
base64url, one that cannot be random (a handful of distinct bytes), a kid listed twice or a secret
listed under two kids. Imports nothing of the gateway, so the settings can use it. See docs/tickets.md.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

MIN_SECRET_BYTES = 32
MAX_SECRET_BYTES = 256
# A random 32-byte secret has about 30 distinct byte values; fewer than this means it was typed, not drawn.
_MIN_DISTINCT_BYTES = 16
_KID = re.compile(r"[A-Za-z0-9._-]{1,32}", re.ASCII)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}", re.ASCII)


@dataclass(frozen=True, slots=True)
class TicketKey:
    kid: str
    secret: bytes

    def __repr__(self) -> str:  # never the secret, also not in a traceback's locals
        return f"TicketKey(kid={self.kid!r})"


def decode_secret(text: str) -> bytes | None:
    """The bytes of a base64url secret (padding optional), or None when it is not base64url."""
    if not _BASE64URL.fullmatch(text):
        return None
    unpadded = text.rstrip("=")
    if len(unpadded) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except ValueError:
        return None


def parse_ticket_keys(entries: list[str]) -> list[TicketKey]:
    """``kid:secret`` entries as keys, in order; ``ValueError`` naming the entry (never its secret)."""
    try:
        return _parse(entries)
    except ValueError as error:
        raise ValueError(f"{error}; use e.g. {_EXAMPLE}") from None


_EXAMPLE = "k2:<new secret>,k1:<old secret>, each from python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _parse(entries: list[str]) -> list[TicketKey]:
    keys: list[TicketKey] = []
    kids: set[str] = set()
    secrets: set[bytes] = set()
    for number, entry in enumerate(entries, start=1):
        kid, separator, encoded = entry.strip().partition(":")
        # The kid is named only when it is one: an entry without its kid may be a bare secret.
        where = f"entry {number} (kid {kid!r})" if separator and _KID.fullmatch(kid) else f"entry {number}"
        if not separator or not _KID.fullmatch(kid):
            raise ValueError(f"{where}: expected kid:secret, the kid 1-32 characters of A-Z a-z 0-9 . _ -")
        secret = decode_secret(encoded.strip())
        if secret is None:
            raise ValueError(f"{where}: the secret is not base64url (A-Z a-z 0-9 - _, padding optional)")
        if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
            raise ValueError(
                f"{where}: the secret decodes to {len(secret)} bytes, not {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}"
            )
        if len(set(secret)) < _MIN_DISTINCT_BYTES:
            raise ValueError(f"{where}: the secret is not random (too few distinct bytes); draw it from secrets")
        if kid in kids:
            raise ValueError(f"{where}: kid {kid!r} is listed twice")
        if secret in secrets:
            raise ValueError(f"{where}: the same secret is listed under another kid")
        kids.add(kid)
        secrets.add(secret)
        keys.append(TicketKey(kid, secret))
    return keys
