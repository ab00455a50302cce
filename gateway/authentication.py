"""Who is calling: finds the bearer token and verifies it against the JWKS.

Every failure becomes ``AuthenticationError`` with a short reason for logs and metrics; the client
only ever hears "Invalid or expired token". Neither the token nor its claims are ever logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwt import JWTClaimsRegistry

from gateway.jwks import JwksCache
from gateway.settings import GatewaySettings


class AuthenticationError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    tenant: str | None
    session: str | None
    scopes: frozenset[str]
    expires_at: float


def find_token(query: Mapping[str, str], headers: Mapping[str, str], cookie_name: str | None) -> str | None:
    """First found wins: ?token=, ?access_token=, Authorization: Bearer, then the configured cookie."""
    for name in ("token", "access_token"):
        value = query.get(name)
        if value:
            return value
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if cookie_name:
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == cookie_name and value:
                return value
    return None


class TokenVerifier:
    def __init__(self, settings: GatewaySettings, jwks: JwksCache) -> None:
        self._settings = settings
        self._jwks = jwks
        self._algorithms = list(settings.jwt_algorithms)
        options: dict[str, Any] = {"exp": {"essential": True}}
        issuer = settings.jwt_issuer or settings.oidc_issuer
        if issuer:
            options["iss"] = {"essential": True, "value": issuer}
        if settings.jwt_audience:
            options["aud"] = {"essential": True, "value": settings.jwt_audience}
        self._claims = JWTClaimsRegistry(leeway=int(settings.jwt_leeway), **options)

    async def verify(self, token: str) -> Principal:
        settings = self._settings
        if len(token) > settings.max_token_bytes:
            raise AuthenticationError("too_large")
        try:
            compact = jws.extract_compact(token.encode("ascii"))
            header = compact.headers()
        except (JoseError, ValueError, UnicodeError, TypeError):
            raise AuthenticationError("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthenticationError("algorithm_not_allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("malformed")
        key = await self._jwks.key_for(kid, alg)
        if key is None:
            raise AuthenticationError("unknown_key" if kid else "no_kid")
        try:
            # The token is parsed once: the signature is checked on the object the header came from.
            if not jws.validate_compact(compact, key, algorithms=[alg]):
                raise AuthenticationError("bad_signature")
            claims = json.loads(compact.payload)
            if not isinstance(claims, dict):
                raise AuthenticationError("malformed")
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise AuthenticationError("expired") from None
        except JoseError as error:
            raise AuthenticationError(_reason(error)) from None
        except (ValueError, TypeError):
            raise AuthenticationError("malformed") from None
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        settings = self._settings
        tenant = claims.get(settings.tenant_claim) if settings.tenant_claim else None
        session = claims.get(settings.session_claim) if settings.session_claim else None
        scopes: set[str] = set()
        scope = claims.get("scope")
        if isinstance(scope, str):
            scopes.update(scope.split())
        roles = claims.get("roles")
        if isinstance(roles, list):
            scopes.update(role for role in roles if isinstance(role, str))
        subject = claims.get("sub")
        exp = claims["exp"]
        return Principal(
            subject=subject if isinstance(subject, str) and subject else "",
            tenant=str(tenant) if tenant is not None else None,
            session=str(session) if session is not None else None,
            scopes=frozenset(scopes),
            expires_at=float(exp) if isinstance(exp, int | float) else time.time(),
        )


def _reason(error: JoseError) -> str:
    error_name = getattr(error, "error", None) or type(error).__name__
    claim = getattr(error, "claim", None)
    return f"{error_name}_{claim}" if claim else str(error_name)
