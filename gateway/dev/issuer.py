"""A token issuer for local development ONLY: serves a JWKS and mints RS256 tokens on request.

Anyone who can reach it can mint any token, so it refuses to bind anything but a loopback address.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.middleware.cors import CORSMiddleware
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.runtime.logging_setup import configure_logging

log = logging.getLogger("gateway.dev.issuer")

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

    def mint(
        self,
        tenant: str,
        session: str | None = None,
        subject: str | None = None,
        ttl: int = 3600,
        scope: str | None = None,
    ) -> str:
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
        if scope:
            claims["scope"] = scope
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
        scope: str | None = Query(None, max_length=256),
    ) -> dict[str, Any]:
        if not tenant.strip():
            raise HTTPException(400, "tenant is required")
        token = issuer.mint(tenant, session, sub, ttl, scope)
        return {"access_token": token, "token_type": "Bearer", "expires_in": ttl}

    return app


def token_help(issuer_url: str, tenant: str = "demo-tenant") -> list[str]:
    """How to get a token from the dev issuer, for banners and the README."""
    issuer_flag = "" if issuer_url == DEFAULT_URL else f" --issuer {issuer_url}"
    return [
        f"  a token:  curl '{issuer_url}/token?tenant={tenant}'   (optional: &session=SESSION_ID, &ttl=SECONDS)",
        f"  or:       session-gateway dev-token --tenant {tenant}{issuer_flag}",
        f'  watch:    session-gateway watch SESSION_ID --token "$(session-gateway dev-token --tenant {tenant}'
        f'{issuer_flag})"',
    ]


DEFAULT_URL = "http://127.0.0.1:8090"


@dataclass
class BackgroundIssuer:
    """A dev issuer served by uvicorn in a daemon thread of this process (``serve --dev`` without keys)."""

    issuer: DevIssuer
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.issuer.issuer

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5.0)


def start_background_issuer(host: str, port: int, audience: str | None = None) -> BackgroundIssuer:
    """Binds ``host:port`` (any free port if it is taken, or with port 0) and serves the issuer in a thread."""
    if not is_loopback(host):
        raise ValueError(f"the dev issuer refuses to bind {host!r}: it only listens on loopback addresses")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.bind((host, 0))
    bound = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    issuer = DevIssuer(f"http://{url_host}:{bound}", audience)
    config = uvicorn.Config(create_issuer_app(issuer), log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dev-issuer", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the dev issuer did not start on {issuer.issuer}")
        time.sleep(0.02)
    return BackgroundIssuer(issuer, server, thread)


def serve_dev_issuer(host: str, port: int, audience: str | None = None) -> None:
    if not is_loopback(host):
        raise ValueError(f"the dev issuer refuses to bind {host!r}: it only listens on loopback addresses")
    configure_logging("INFO", "text")
    print(BANNER, file=sys.stderr, flush=True)
    issuer = DevIssuer(f"http://{host}:{port}", audience)
    print("\n".join(token_help(issuer.issuer)) + "\n", file=sys.stderr, flush=True)
    uvicorn.run(create_issuer_app(issuer), host=host, port=port, log_config=None, access_log=False)
