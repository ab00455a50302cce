"""Mints a stream ticket without calling the gateway (format: docs/tickets.md). Needs only the standard library."""

import base64
import hashlib
import hmac
import json
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_ticket(kid: str, secret: str, tenant: str | None, session: str, sub: str = "backend", ttl: int = 900) -> str:
    """``secret`` as in GATEWAY_TICKET_KEYS (base64url); ``tenant`` None when the gateway checks no tenant."""
    key = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    claims = {"kid": kid, "sub": sub, "tid": tenant, "sid": session, "exp": int(time.time()) + ttl}
    signing_input = "v1." + b64url(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    return signing_input + "." + b64url(hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest())


if __name__ == "__main__":  # python3 mint_ticket.py KID SECRET TENANT SESSION [TTL_SECONDS]
    print(mint_ticket(*sys.argv[1:5], ttl=int(sys.argv[5]) if len(sys.argv) > 5 else 900))
