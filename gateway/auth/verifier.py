"""Verifies a token against the JWKS: size, the verified-token cache, JWS parsing, key, signature, claims.

The steps live in their own modules (``jws``, ``claims``, ``token_cache``; keys in ``jwks``); this one
puts them in the order that spends the least on a bad token and never lets a forged one wait for a key
refetch. Every failure is an ``AuthenticationError``; the token is never logged, nor are its claims,
except a wrong ``iss`` or ``aud`` value (``claims``). See docs/security.md (Tokens, Key documents).
"""

from __future__ import annotations

import hashlib
import time

from joserfc.errors import JoseError
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry
from prometheus_client import Counter

from gateway.auth.claims import AuthenticationError, ClaimsValidator, Principal
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
    def __init__(self, settings: AuthSettings, jwks: JwksCache) -> None:
        self._settings = settings
        self._jwks = jwks
        self._algorithms = list(settings.jwt_algorithms)
        self._registry = JWSRegistry(algorithms=self._algorithms)
        self._claims = ClaimsValidator(settings)
        self.cache = VerifiedTokenCache(settings.token_cache_size, float(settings.jwt_leeway))
        jwks.on_keys_removed(self.cache.drop_keys)

    @property
    def keys_loaded(self) -> bool:
        """Whether a key set was ever loaded: before, no token can be verified, however good."""
        return self._jwks.loaded

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

    def _principal(self, compact: Compact) -> Principal:
        try:
            claims = json_object(compact.payload)
        except (ValueError, UnicodeError):
            raise AuthenticationError("malformed") from None
        return self._claims.principal(claims, time.time())

    def _signature_valid(self, compact: Compact, alg: str, key: Key) -> bool:
        SIGNATURE_CHECKS.inc()
        try:
            model = self._registry.get_alg(alg)
            model.check_key(key)
            return bool(model.verify(compact.signing_input, compact.signature, key))
        except (JoseError, ValueError, TypeError):
            return False
