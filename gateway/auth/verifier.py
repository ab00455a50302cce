"""Verifies a token against the JWKS: size, the verified-token cache, JWS parsing, issuer, key, signature, claims.

The steps live in their own modules (``jws``, ``claims``, ``token_cache``; keys in ``jwks``, per issuer
in ``issuers``: a key is looked up among the keys of the issuer the token names, never by kid alone); this one
puts them in the order that spends the least on a bad token and never lets a forged one wait for a key
refetch. Every failure is an ``AuthenticationError``; the token is never logged, nor are its claims,
except a wrong ``iss`` or ``aud`` value (``claims``). See docs/security.md (Tokens, Key documents).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry
from prometheus_client import Counter

from gateway.auth.claims import AuthenticationError, Principal
from gateway.auth.issuers import Issuer, TrustedIssuers
from gateway.auth.jwks import JwksCache
from gateway.auth.jws import Compact, check_header, json_object, parse_compact
from gateway.auth.token_cache import VerifiedTokenCache
from gateway.settings import AuthSettings

# Kept here, not in gateway.metrics, while that module is being reworked; same registry.
TOKEN_CACHE_HITS = Counter(
    "gateway_token_cache_hits_total", "Tokens accepted from the verified-token cache, without a signature check."
)
SIGNATURE_CHECKS = Counter("gateway_token_signature_checks_total", "Token signatures checked against a JWKS key.")


class TokenVerifier:
    def __init__(self, settings: AuthSettings, keys: TrustedIssuers | JwksCache) -> None:
        self._settings = settings
        self._issuers = keys if isinstance(keys, TrustedIssuers) else TrustedIssuers.single(settings, keys)
        self._algorithms = list(settings.jwt_algorithms)
        self._registry = JWSRegistry(algorithms=self._algorithms)
        self.cache = VerifiedTokenCache(settings.token_cache_size, float(settings.jwt_leeway))
        self._issuers.on_keys_removed(self.cache.drop_keys)

    @property
    def keys_loaded(self) -> bool:
        """Whether every issuer's key set was ever loaded: before, not every token can be verified, however good."""
        return self._issuers.loaded

    async def verify(self, token: str) -> Principal:
        if len(token) > self._settings.max_token_bytes:
            raise AuthenticationError("too_large")
        if not token.isascii():
            raise AuthenticationError("malformed")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        now = time.time()
        issuers = self._issuers
        cached = self.cache.get(digest, now, issuers.has_key)
        if cached is not None:
            issuers.refresh_if_stale()  # a cache hit must not keep a removed key's tokens alive
            TOKEN_CACHE_HITS.inc()
            return cached
        compact = parse_compact(token)
        alg, kid = check_header(compact.header, self._algorithms)
        claims = _LazyClaims(compact)
        issuer = issuers.issuer_for(claims.get)  # whose keys: the token's iss, unverified so far
        # Only a token that passes every claim check may wait for the deferred JWKS refetch.
        key = await issuer.keys.key_for(kid, alg, lambda: self._principal(issuer, claims))
        if key is None:
            raise AuthenticationError("unknown_key" if kid else "no_kid", keys_loaded=issuer.keys.loaded)
        thumbprint = issuers.scoped(issuer, issuer.keys.thumbprint(key))
        if not self._signature_valid(compact, alg, key):
            raise AuthenticationError("bad_signature")
        principal = self._principal(issuer, claims)
        self.cache.put(digest, principal, thumbprint)
        return principal

    @staticmethod
    def _principal(issuer: Issuer, claims: _LazyClaims) -> Principal:
        return issuer.claims.principal(claims.get(), time.time())

    def _signature_valid(self, compact: Compact, alg: str, key: Key) -> bool:
        SIGNATURE_CHECKS.inc()
        try:
            model = self._registry.get_alg(alg)
            model.check_key(key)
            return bool(model.verify(compact.signing_input, compact.signature, key))
        except (JoseError, ValueError, TypeError):
            return False


class _LazyClaims:
    """A token's payload as a JSON object, parsed at most once and only when asked for."""

    __slots__ = ("_claims", "_compact")

    def __init__(self, compact: Compact) -> None:
        self._compact = compact
        self._claims: Mapping[str, Any] | None = None

    def get(self) -> Mapping[str, Any]:
        if self._claims is None:
            try:
                self._claims = json_object(self._compact.payload)
            except (ValueError, UnicodeError):
                raise AuthenticationError("malformed") from None
        return self._claims
