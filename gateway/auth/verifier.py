"""Who is calling: finds the bearer token and verifies it against the JWKS.

Every failure becomes ``AuthenticationError`` with a short reason for logs and metrics; the client
only ever hears "Invalid or expired token". Neither the token nor its claims are ever logged.

Parsing is ours, end to end, and typed before anything is used: the compact JWS is split into
exactly three strict base64url segments; the protected header and the claims must each be a JSON
object (no duplicate members, no ``NaN``/``Infinity``, bounded nesting); joserfc only checks the
signature, with the key the JWKS gives for the header's ``kid`` and the allow-listed ``alg``.

JOSE header parameters, deliberately (RFC 7515):

- ``alg`` and ``kid`` are the only header parameters ever used. Keys come from the configured JWKS
  and nowhere else: ``jku``, ``jwk``, ``x5u`` and ``x5c`` are never used to find or build a key.
- Any other parameter is accepted and ignored (identity providers add ``x5t``, ``x5t#S256`` or
  fields of their own), because ignoring a non-critical parameter is what RFC 7515 §4 asks of a
  recipient that does not understand it.
- ``crit`` (§4.1.11) lists extensions the recipient MUST understand; this gateway implements none,
  so a token with ``crit`` is refused (``unsupported_crit``), as is ``b64`` other than ``true``
  (RFC 7797 unencoded payloads, ``unsupported_header``).
- The header must start with ``{``: together with the compact form this makes every acceptable
  token match the JWT shape that log redaction looks for (see ``gateway.runtime.logging_setup``).

Claims are checked by type before use: the tenant claim must be a non-empty string when present,
the session claim a non-empty string when present (``null`` is not "absent"), ``sub`` a string
when present, ``iss`` and ``aud`` strings (``aud`` may be a list of strings), and the numeric dates
``exp`` (required), ``nbf`` and ``iat`` JSON numbers (not booleans) between 0 and year 9999.

Verified tokens are cached (``GATEWAY_TOKEN_CACHE_SIZE`` entries, least recently used first out),
keyed by the SHA-256 of the token, never the token: a reconnect with the same token costs no
signature check. An entry is used only while the token would still be accepted (``exp`` plus
``GATEWAY_JWT_LEEWAY``, the same bound that ends streams) and while the key that verified it is
still in the JWKS; a refresh that removes or replaces a key drops the entries it verified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from joserfc.errors import JoseError
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry
from prometheus_client import Counter

from gateway.auth.jwks import JwksCache
from gateway.settings import GatewaySettings

# Kept here, not in gateway.metrics, while that module is being reworked; same registry.
TOKEN_CACHE_HITS = Counter(
    "gateway_token_cache_hits_total", "Tokens accepted from the verified-token cache, without a signature check."
)
SIGNATURE_CHECKS = Counter("gateway_token_signature_checks_total", "Token signatures checked against a JWKS key.")

TOKEN_QUERY_PARAMETERS = ("token", "access_token")
# 9999-12-31T23:59:59Z: any later numeric date is nonsense, and every one up to it fits a float.
MAX_NUMERIC_DATE = 253_402_300_799
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")


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


def find_token(
    query: Mapping[str, str] | bytes | str, headers: Mapping[str, str], cookie_name: str | None
) -> str | None:
    """First found wins: ?token=, ?access_token=, Authorization: Bearer, then the configured cookie.

    ``query`` should be the raw query string as received (``scope["query_string"]``): a token is
    then accepted only under its documented names spelled plainly on the wire, so that
    ``?tok%65n=...`` or ``?access%5Ftoken=...`` are not tokens (what the access log shows and what
    is accepted agree). A mapping of already-decoded parameters is still accepted, with the old
    meaning, for callers that have not moved to the raw query yet.
    """
    return locate_token(query, headers, cookie_name)[0]


def locate_token(
    query: Mapping[str, str] | bytes | str, headers: Mapping[str, str], cookie_name: str | None
) -> tuple[str | None, str]:
    """``find_token`` and where the token came from: ``query``, ``authorization``, ``cookie`` (or ``none``).

    A cookie is the one source a browser adds to another site's request by itself, so the caller
    checks the request's ``Origin`` for it (``CorsPolicy.sends_credentials``).
    """
    if isinstance(query, bytes | str):
        found = _token_from_raw_query(query)
        if found:
            return found, "query"
    else:
        for name in TOKEN_QUERY_PARAMETERS:
            value = query.get(name)
            if value:
                return value, "query"
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip(), "authorization"
    if cookie_name:
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == cookie_name and value:
                return value, "cookie"
    return None, "none"


def _token_from_raw_query(query: bytes | str) -> str | None:
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    found: dict[str, str] = {}
    for pair in text.split("&"):
        name, sep, value = pair.partition("=")
        # The name is compared as sent: no percent-decoding, no '+' folding.
        if sep and name in TOKEN_QUERY_PARAMETERS and name not in found and value:
            found[name] = unquote_plus(value, encoding="latin-1")
    for name in TOKEN_QUERY_PARAMETERS:
        if found.get(name):
            return found[name]
    return None


# --------------------------------------------------------------------------------------------------
# Strict compact JWS parsing


@dataclass(frozen=True, slots=True)
class _Compact:
    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


def _b64url_decode(segment: bytes) -> bytes:
    """Strict, canonical base64url without padding (RFC 7515 §2)."""
    if len(segment) % 4 == 1 or not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    decoded = base64.b64decode(segment + b"=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment:
        raise ValueError("not canonical base64url")
    return decoded


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object(data: bytes) -> dict[str, Any]:
    """A JSON object, or ValueError: anything else (list, string, number, invalid JSON, too deep)."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def parse_compact(token: str) -> _Compact:
    """Splits and decodes a compact JWS; ``AuthenticationError("malformed")`` for anything not one."""
    try:
        raw = token.encode("ascii")
        parts = raw.split(b".")
        if len(parts) != 3:
            raise ValueError("not three segments")
        header_bytes = _b64url_decode(parts[0])
        if not header_bytes.startswith(b"{"):
            raise ValueError("header is not a JSON object")
        header = json_object(header_bytes)
        payload = _b64url_decode(parts[1])
        signature = _b64url_decode(parts[2])
    except (ValueError, UnicodeError):
        raise AuthenticationError("malformed") from None
    return _Compact(header, payload, parts[0] + b"." + parts[1], signature)


def check_header(header: Mapping[str, Any], algorithms: list[str]) -> tuple[str, str | None]:
    """``(alg, kid)`` of an acceptable protected header (see the module docstring for the policy)."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise AuthenticationError("algorithm_not_allowed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise AuthenticationError("malformed")
    if "crit" in header:
        raise AuthenticationError("unsupported_crit")
    if "b64" in header and header["b64"] is not True:
        raise AuthenticationError("unsupported_header")
    return alg, kid


# --------------------------------------------------------------------------------------------------
# Claims


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


class ClaimsValidator:
    """Validates the claims of a token whose signature was verified; returns who it is for."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._issuer = settings.jwt_issuer or settings.oidc_issuer
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
        if self._issuer:
            if "iss" not in claims:
                raise AuthenticationError("missing_claim_iss")
            if claims["iss"] != self._issuer or not isinstance(claims["iss"], str):
                raise AuthenticationError("invalid_claim_iss")
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
            subject=subject or "", tenant=tenant, session=session, scopes=frozenset(scopes), expires_at=exp
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
            raise AuthenticationError("invalid_claim_aud")
        if self._audience not in audiences:
            raise AuthenticationError("invalid_claim_aud")


# --------------------------------------------------------------------------------------------------
# Verified-token cache


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    key_thumbprint: str
    valid_until: float  # exp + leeway, wall clock


class VerifiedTokenCache:
    """Bounded LRU of verified tokens by SHA-256 digest; entries end at ``exp + leeway`` or with their key."""

    def __init__(self, size: int, leeway: float) -> None:
        self._size = size
        self._leeway = leeway
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float, key_present: Callable[[str], bool]) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry.valid_until or not key_present(entry.key_thumbprint):
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry.principal

    def put(self, digest: bytes, principal: Principal, key_thumbprint: str) -> None:
        if self._size <= 0:
            return
        self._entries[digest] = _Verified(principal, key_thumbprint, principal.expires_at + self._leeway)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def drop_keys(self, thumbprints: set[str]) -> None:
        """Forgets every token verified by one of these keys (removed from, or replaced in, the JWKS)."""
        stale = [digest for digest, entry in self._entries.items() if entry.key_thumbprint in thumbprints]
        for digest in stale:
            del self._entries[digest]


# --------------------------------------------------------------------------------------------------
# The verifier


class TokenVerifier:
    def __init__(self, settings: GatewaySettings, jwks: JwksCache) -> None:
        self._settings = settings
        self._jwks = jwks
        self._algorithms = list(settings.jwt_algorithms)
        self._registry = JWSRegistry(algorithms=self._algorithms)
        self._claims = ClaimsValidator(settings)
        self.cache = VerifiedTokenCache(settings.token_cache_size, float(settings.jwt_leeway))
        jwks.on_keys_removed(self.cache.drop_keys)

    async def verify(self, token: str) -> Principal:
        if len(token) > self._settings.max_token_bytes:
            raise AuthenticationError("too_large")
        if not token.isascii():
            raise AuthenticationError("malformed")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        now = time.time()
        cached = self.cache.get(digest, now, self._jwks.has_key)
        if cached is not None:
            self._jwks.refresh_if_stale()  # a cache hit must not keep a removed key's tokens alive
            TOKEN_CACHE_HITS.inc()
            return cached
        compact = parse_compact(token)
        alg, kid = check_header(compact.header, self._algorithms)
        # Only a token that passes every claim check may wait for the deferred JWKS refetch.
        key = await self._jwks.key_for(kid, alg, lambda: self._principal(compact))
        if key is None:
            raise AuthenticationError("unknown_key" if kid else "no_kid")
        thumbprint = self._jwks.thumbprint(key)
        if not self._signature_valid(compact, alg, key):
            raise AuthenticationError("bad_signature")
        principal = self._principal(compact)
        self.cache.put(digest, principal, thumbprint)
        return principal

    def _principal(self, compact: _Compact) -> Principal:
        try:
            claims = json_object(compact.payload)
        except (ValueError, UnicodeError):
            raise AuthenticationError("malformed") from None
        return self._claims.principal(claims, time.time())

    def _signature_valid(self, compact: _Compact, alg: str, key: Key) -> bool:
        SIGNATURE_CHECKS.inc()
        try:
            model = self._registry.get_alg(alg)
            model.check_key(key)
            return bool(model.verify(compact.signing_input, compact.signature, key))
        except (JoseError, ValueError, TypeError):
            return False
