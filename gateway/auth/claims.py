"""What a verified token says (``Principal``), checked by type before any claim is used.

A claim of the wrong type is refused, never coerced: a tenant of ``123`` or a session of ``null``
would otherwise widen what the token may read. ``AuthenticationError`` is the one refusal every
step of verification raises; its reason goes to logs and metrics, the client only ever hears
"Invalid or expired token". A wrong ``iss`` or ``aud`` also carries the expected and the received
value as log fields (an operator's first question; claim values, never the token). See
docs/security.md (Tokens).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.settings import AuthSettings

# 9999-12-31T23:59:59Z: any later numeric date is nonsense, and every one up to it fits a float.
MAX_NUMERIC_DATE = 253_402_300_799


class AuthenticationError(Exception):
    def __init__(self, reason: str, fields: Mapping[str, object] | None = None, *, keys_loaded: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fields = fields  # for the refusal's log line (``consumers.log_fields``)
        # False when no key was found because the token's issuer never had its keys loaded: not a bad token.
        self.keys_loaded = keys_loaded


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    tenant: str | None
    session: str | None
    scopes: frozenset[str]
    expires_at: float
    roles: frozenset[str] = frozenset()  # of ``GATEWAY_TENANT_STREAM_ROLES_CLAIM``, for the tenant stream only
    # A stream ticket's session (``gateway.auth.tickets``): any other session is unknown to this principal.
    ticket_session: str | None = None


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationError(f"invalid_claim_{name}")
    if not (0 <= value <= MAX_NUMERIC_DATE) or (isinstance(value, float) and not math.isfinite(value)):
        raise AuthenticationError(f"invalid_claim_{name}")
    return float(value)


def _optional_string(claims: Mapping[str, Any], name: str, reason: str, *, non_empty: bool) -> str | None:
    if not name or name not in claims:
        return None
    value = claims[name]
    if not isinstance(value, str) or (non_empty and not value):
        raise AuthenticationError(reason)
    return value


def _roles(claims: Mapping[str, Any], path: str) -> frozenset[str]:
    """The strings of the list at the dotted ``path`` (``realm_access.roles``); nothing for any other shape."""
    if not path:
        return frozenset()
    value: Any = claims
    for name in path.split("."):
        if not isinstance(value, Mapping) or name not in value:
            return frozenset()
        value = value[name]
    if not isinstance(value, list):
        return frozenset()
    return frozenset(role for role in value if isinstance(role, str))


class ClaimsValidator:
    """Validates the claims of a token whose signature was verified; returns who it is for."""

    def __init__(self, settings: AuthSettings, issuer: str | None = None, tenant: str | None = None) -> None:
        """``issuer`` and ``tenant``: one entry of ``GATEWAY_JWT_ISSUERS`` (else the one-issuer settings)."""
        self._settings = settings
        self._issuer = issuer or settings.jwt_issuer or settings.oidc_issuer
        self._tenant = tenant  # every token of this issuer is for this tenant
        self._audience = settings.jwt_audience
        self._leeway = float(settings.jwt_leeway)

    def principal(self, claims: Mapping[str, Any], now: float | None = None) -> Principal:
        now = time.time() if now is None else now
        settings = self._settings
        # Types first, for every claim used, so that no check below can meet an unexpected type.
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
        tenant = _optional_string(claims, settings.tenant_claim, "invalid_claim_tenant", non_empty=True)
        session = _optional_string(claims, settings.session_claim, "invalid_claim_session", non_empty=True)
        subject = _optional_string(claims, "sub", "invalid_claim_sub", non_empty=False)
        if self._tenant is not None:
            # The issuer stands for one tenant (one realm per tenant): a token cannot speak for another.
            if tenant is not None and tenant != self._tenant:
                raise AuthenticationError("tenant_not_of_issuer")
            tenant = self._tenant
        if self._issuer:
            if "iss" not in claims:
                raise AuthenticationError("missing_claim_iss")
            if claims["iss"] != self._issuer or not isinstance(claims["iss"], str):
                raise AuthenticationError("invalid_claim_iss", {"expected": self._issuer, "received": claims["iss"]})
        if self._audience:
            self._check_audience(claims)
        if exp is None:
            raise AuthenticationError("missing_claim_exp")
        # Accepted while now < exp + leeway: the same bound at which open streams are closed.
        if exp + self._leeway <= now:
            raise AuthenticationError("expired")
        if nbf is not None and nbf - self._leeway > now:
            raise AuthenticationError("invalid_claim_nbf")
        if iat is not None and iat - self._leeway > now:
            raise AuthenticationError("invalid_claim_iat")
        scopes: set[str] = set()
        scope = claims.get("scope")
        if isinstance(scope, str):
            scopes.update(scope.split())
        roles = claims.get("roles")
        if isinstance(roles, list):
            scopes.update(role for role in roles if isinstance(role, str))
        return Principal(
            subject=subject or "",
            tenant=tenant,
            session=session,
            scopes=frozenset(scopes),
            expires_at=exp,
            roles=_roles(claims, settings.tenant_stream_roles_claim),
        )

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        if "aud" not in claims:
            raise AuthenticationError("missing_claim_aud")
        aud = claims["aud"]
        if isinstance(aud, str):
            audiences = [aud]
        elif isinstance(aud, list) and all(isinstance(item, str) for item in aud):
            audiences = aud
        else:
            raise AuthenticationError("invalid_claim_aud", {"expected": self._audience, "received": aud})
        if self._audience not in audiences:
            raise AuthenticationError("invalid_claim_aud", {"expected": self._audience, "received": aud})
