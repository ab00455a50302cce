"""Signing keys from a JWKS endpoint (or OIDC discovery), cached.

- The set is refreshed after its TTL (``Cache-Control: max-age``, clamped to configured bounds)
  in the background, while the current keys keep serving.
- An unknown ``kid`` triggers a refetch at most once per ``jwks_min_refresh`` seconds, and
  concurrent callers share one fetch (single-flight): a flood of forged tokens cannot flood
  the identity provider.
- When the endpoint fails, the last good keys keep working.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import httpx
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey

from gateway import metrics
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.jwks")

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
_KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_KEY_TYPES: tuple[type[Any], ...] = (RSAKey, ECKey, OKPKey)


class JwksCache:
    def __init__(self, settings: GatewaySettings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client
        self._keys: list[Key] = []
        self._by_kid: dict[str, Key] = {}
        self._expires_at = 0.0
        self._last_fetch_attempt = float("-inf")
        self._refresh: asyncio.Task[None] | None = None
        self._jwks_url = settings.jwks_url
        self.last_error: str | None = None
        self.last_refresh: float | None = None  # monotonic time of the last successful fetch

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    @property
    def due(self) -> bool:
        """The cached set reached its TTL (or a failed fetch's retry time)."""
        return time.monotonic() >= self._expires_at

    def seconds_since_refresh(self) -> float:
        return -1.0 if self.last_refresh is None else time.monotonic() - self.last_refresh

    async def load(self) -> None:
        """Initial fetch; failure leaves the cache empty (readiness reports it) and is retried on use."""
        await self._refresh_once()

    async def key_for(self, kid: str | None, alg: str) -> Key | None:
        now = time.monotonic()
        if now >= self._expires_at and (self._refresh is None or self._refresh.done()):
            if self._keys:
                self._start_refresh()  # stale-while-revalidate
            else:
                await self._refresh_once()
        key = self._select(kid, alg)
        unknown_kid = key is None and kid is not None and kid not in self._by_kid
        refreshing = self._refresh is not None and not self._refresh.done()
        if unknown_kid and (refreshing or now - self._last_fetch_attempt >= self._settings.jwks_min_refresh):
            await self._refresh_once()
            key = self._select(kid, alg)
        return key

    def _select(self, kid: str | None, alg: str) -> Key | None:
        kty = _KTY_FOR_ALG.get(alg[:2])
        if kid is not None:
            key = self._by_kid.get(kid)
            return key if key is not None and key.key_type == kty else None
        candidates = [k for k in self._keys if k.key_type == kty]
        # Without a kid the choice is only unambiguous when one key could have signed it.
        return candidates[0] if len(candidates) == 1 and len(self._keys) == 1 else None

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._fetch(), name="jwks-refresh")
        return self._refresh

    async def _refresh_once(self) -> None:
        await asyncio.shield(self._start_refresh())

    async def _fetch(self) -> None:
        self._last_fetch_attempt = time.monotonic()
        try:
            url = self._jwks_url or await self._discover()
            metrics.JWKS_FETCHES.inc()
            response = await self._client.get(url, timeout=self._settings.jwks_timeout)
            response.raise_for_status()
            keys = _parse_keys(response.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            metrics.JWKS_FAILURES.inc()
            self.last_error = f"JWKS fetch failed: {type(error).__name__}: {error}"
            log.warning("%s; keeping %d cached keys", self.last_error, len(self._keys))
            # Retry a failed endpoint no sooner than the unknown-kid rate limit allows.
            self._expires_at = time.monotonic() + max(self._settings.jwks_min_refresh, 1.0)
            return
        self._keys = keys
        self._by_kid = {k.kid: k for k in keys if k.kid}
        self._expires_at = time.monotonic() + self._ttl(response.headers.get("cache-control", ""))
        self.last_error = None
        self.last_refresh = time.monotonic()
        log.info("loaded %d signing keys from JWKS", len(keys))

    async def _discover(self) -> str:
        issuer = self._settings.oidc_issuer
        if not issuer:
            raise ValueError("neither GATEWAY_JWKS_URL nor GATEWAY_OIDC_ISSUER is set")
        metrics.JWKS_FETCHES.inc()
        response = await self._client.get(
            issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=self._settings.jwks_timeout
        )
        response.raise_for_status()
        url = response.json()["jwks_uri"]
        if not isinstance(url, str):
            raise ValueError("jwks_uri missing from the OpenID configuration")
        self._jwks_url = url
        return url

    def _ttl(self, cache_control: str) -> float:
        settings = self._settings
        match = _MAX_AGE.search(cache_control)
        ttl = float(match.group(1)) if match else settings.jwks_cache_ttl
        return min(max(ttl, settings.jwks_cache_min_ttl), settings.jwks_cache_max_ttl)


def _parse_keys(document: Any) -> list[Key]:
    """Public signing keys of a JWKS document; private parts, HMAC and encryption keys are dropped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: list[Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue
        public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth", "k")}
        try:
            key = KeySet.import_key_set({"keys": [public]}).keys[0]
        except Exception as error:  # an unusable key must not hide the usable ones
            log.warning("ignoring a JWKS key (kid=%s): %s", entry.get("kid"), error)
            continue
        if isinstance(key, _KEY_TYPES):
            keys.append(key)
    if not keys:
        raise ValueError("JWKS holds no usable signing key")
    return keys
