"""A token issuer for local development ONLY: serves a JWKS and mints RS256 tokens on request.

Anyone who can reach it can mint any token, so it refuses to bind anything but a loopback address.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import sys
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.middleware.cors import CORSMiddleware
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.logging_setup import configure_logging

log = logging.getLogger("gateway.dev_issuer")

BANNER = (
    "\n"
    "  ***************************************************************\n"
    "  *  DEV TOKEN ISSUER - FOR LOCAL DEVELOPMENT ONLY.             *\n"
    "  *  It mints a valid token for ANY tenant and session to       *\n"
    "  *  whoever asks. Never expose it or use it in production.     *\n"
    "  ***************************************************************\n"
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DevIssuer:
    def __init__(self, issuer: str, audience: str | None = None) -> None:
        self.issuer = issuer
        self.audience = audience
        self.key = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def mint(self, tenant: str, session: str | None = None, subject: str | None = None, ttl: int = 3600) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject or f"dev-user-{secrets.token_hex(4)}",
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "tenant_id": tenant,
        }
        if self.audience:
            claims["aud"] = self.audience
        if session:
            claims["session_id"] = session
        return jwt.encode({"alg": "RS256", "kid": self.key.kid, "typ": "JWT"}, claims, self.key)


def create_issuer_app(issuer: DevIssuer) -> FastAPI:
    app = FastAPI(title="DEV token issuer (development only)", docs_url=None, redoc_url=None)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"])

    @app.get("/.well-known/openid-configuration")
    async def discovery() -> dict[str, Any]:
        return {
            "issuer": issuer.issuer,
            "jwks_uri": f"{issuer.issuer}/jwks.json",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    @app.get("/jwks.json")
    async def jwks() -> dict[str, Any]:
        return issuer.jwks()

    @app.api_route("/token", methods=["GET", "POST"])
    async def token(
        tenant: str = Query(..., min_length=1, max_length=256),
        session: str | None = Query(None, max_length=256),
        sub: str | None = Query(None, max_length=256),
        ttl: int = Query(3600, ge=1, le=86_400),
    ) -> dict[str, Any]:
        if not tenant.strip():
            raise HTTPException(400, "tenant is required")
        return {"access_token": issuer.mint(tenant, session, sub, ttl), "token_type": "Bearer", "expires_in": ttl}

    return app


def serve_dev_issuer(host: str, port: int, audience: str | None = None) -> None:
    if not is_loopback(host):
        raise ValueError(f"the dev issuer refuses to bind {host!r}: it only listens on loopback addresses")
    configure_logging("INFO", "text")
    print(BANNER, file=sys.stderr, flush=True)
    issuer = DevIssuer(f"http://{host}:{port}", audience)
    uvicorn.run(create_issuer_app(issuer), host=host, port=port, log_config=None, access_log=False)
