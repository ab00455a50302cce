"""Signing keys from a JWKS endpoint (or OIDC discovery), cached.

- The set is refreshed after its TTL (``Cache-Control: max-age``, clamped to configured bounds)
  in the background, while the current keys keep serving.
- An unknown ``kid`` triggers a refetch at most once per ``jwks_min_refresh`` seconds, and
  concurrent callers share one fetch (single-flight): a flood of forged tokens cannot flood
  the identity provider. A token whose kid is unknown while that limit holds is not refused at
  once: it waits for the next allowed refetch (one shared, deferred fetch), because an identity
  provider that just rotated its keys signs every new token with a kid we have not seen, and a
  browser's EventSource never retries after a 401. At most ``jwks_max_waiting`` requests wait;
  beyond that, or while the endpoint keeps failing (two fetches in a row), an unknown kid is refused
  at once.
- When the endpoint fails, the last good keys keep working.
- Every fetch is bounded: one total deadline (``jwks_timeout``) for the whole refresh, OIDC
  discovery included, however slowly the server drips bytes; bodies are streamed and abandoned
  past ``jwks_max_bytes``; a document with more than ``jwks_max_keys`` keys is refused; JSON
  parsing and key import run in a worker thread, never on the event loop.
- Only these keys verify tokens: key material or URLs found in a token's header (``jwk``, ``jku``,
  ``x5u``, ``x5c``) are never used (see ``gateway.auth.jws``).
- A failed fetch is logged once per kind and minute, like the Kafka client's repeats, in the words
  of ``gateway.auth.key_errors``.
- Listeners registered with ``on_keys_removed`` hear the RFC 7638 thumbprints of keys that a
  refresh removed or replaced, so that what those keys verified can be forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey

from consumers.log_aggregation import ReasonFolding
from gateway import metrics
from gateway.auth.key_errors import JwksFetchError, describe_failure, discovery_hint
from gateway.settings import AuthSettings

log = logging.getLogger("gateway.auth.jwks")

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
_KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_KEY_TYPES: tuple[type[Any], ...] = (RSAKey, ECKey, OKPKey)


class JwksCache:
    def __init__(self, settings: AuthSettings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = client
        self._keys: list[Key] = []
        self._by_kid: dict[str, Key] = {}
        self._expires_at = 0.0
        self._last_fetch_attempt = float("-inf")
        self._refresh: asyncio.Task[None] | None = None
        self._deferred: asyncio.Task[None] | None = None  # the next allowed refetch, awaited by unknown kids
        self._fetch_ended: asyncio.Event | None = None  # set when any fetch ends (wakes the deferred refetch)
        self._waiting = 0
        self._failures_in_a_row = 0  # a single failed fetch (a blip) still lets unknown kids wait; two do not
        self._jwks_url = settings.jwks_url
        self._thumbprint_by_id: dict[int, str] = {}
        self._thumbprints: frozenset[str] = frozenset()
        self._listeners: list[Callable[[set[str]], None]] = []
        self.last_error: str | None = None
        self.last_refresh: float | None = None  # monotonic time of the last successful fetch
        # The endpoint chooses how often a fetch fails: one line per kind and minute, the rest counted.
        self._failure_log = ReasonFolding(
            log, lines=1, what="JWKS fetch failures", suppressed=metrics.JWKS_LOG_SUPPRESSED
        )

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

    def on_keys_removed(self, listener: Callable[[set[str]], None]) -> None:
        self._listeners.append(listener)

    def has_key(self, thumbprint: str) -> bool:
        """Whether a key with this RFC 7638 thumbprint is in the current set."""
        return thumbprint in self._thumbprints

    def thumbprint(self, key: Key) -> str:
        """The RFC 7638 thumbprint of a key ``key_for`` returned (computed once per fetch)."""
        known = self._thumbprint_by_id.get(id(key))
        return known if known is not None else key.thumbprint()

    def refresh_if_stale(self) -> None:
        """Starts a background refresh when the set's lifetime is over (stale-while-revalidate)."""
        if self._keys and time.monotonic() >= self._expires_at and (self._refresh is None or self._refresh.done()):
            self._start_refresh()

    @property
    def waiting(self) -> int:
        """Requests waiting for the deferred refetch."""
        return self._waiting

    async def key_for(
        self, kid: str | None, alg: str, before_waiting: Callable[[], object] | None = None
    ) -> Key | None:
        """The key for a token's header, refetching for an unknown kid (see the module doc).

        ``before_waiting`` runs before the request would wait for the deferred refetch; it raises to
        refuse at once what could never be accepted (an expired token, another audience).
        """
        arrived = time.monotonic()
        if arrived >= self._expires_at and (self._refresh is None or self._refresh.done()):
            if self._keys:
                self._start_refresh()  # stale-while-revalidate
            else:
                await self._refresh_once()
        while True:
            key = self._select(kid, alg)
            if key is not None or kid is None or kid in self._by_kid:
                return key
            if self._last_fetch_attempt >= arrived:
                return None  # a fetch that began after this request arrived did not have it
            in_flight = self._refresh is not None and not self._refresh.done()
            if in_flight or time.monotonic() - self._last_fetch_attempt >= self._settings.jwks_min_refresh:
                await self._refresh_once()
            elif self._failures_in_a_row < 2 and self._waiting < self._settings.jwks_max_waiting:
                if before_waiting is not None:
                    before_waiting()
                await self._wait_for_deferred_refetch()
            else:
                metrics.JWKS_KEY_WAITS.labels("refused").inc()
                return None

    async def _wait_for_deferred_refetch(self) -> None:
        if self._deferred is None or self._deferred.done():
            self._deferred = asyncio.create_task(self._deferred_refetch(), name="jwks-deferred-refetch")
        self._waiting += 1
        try:
            await asyncio.shield(self._deferred)
        finally:
            self._waiting -= 1

    async def _deferred_refetch(self) -> None:
        """Fetches at the next allowed moment, unless another fetch (the set's own refresh) ends before."""
        scheduled = time.monotonic()
        while True:
            if self._last_fetch_attempt >= scheduled:
                return  # a fetch began after this was scheduled: that is what the waiters waited for
            delay = self._last_fetch_attempt + self._settings.jwks_min_refresh - time.monotonic()
            if delay <= 0:
                break
            self._fetch_ended = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fetch_ended.wait(), delay)
        metrics.JWKS_KEY_WAITS.labels("refetched").inc()
        await self._refresh_once()

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
        try:
            await self._fetch_keys()
        finally:
            if self._fetch_ended is not None:
                self._fetch_ended.set()

    async def _fetch_keys(self) -> None:
        self._last_fetch_attempt = time.monotonic()
        settings = self._settings
        try:
            # One deadline for the whole refresh, however slowly the server sends its bytes.
            async with asyncio.timeout(settings.jwks_timeout):
                url = self._jwks_url or await self._discover()
                metrics.JWKS_FETCHES.inc()
                body, headers = await self._get(url)
            keys = await asyncio.to_thread(_parse_document, body, settings.jwks_max_keys)
        except TimeoutError:
            self._failed("timeout", f"JWKS fetch failed: no complete answer within {settings.jwks_timeout:g}s")
            return
        except Exception as error:  # whatever the endpoint sent, a failed refresh only keeps the old keys
            self._failed(*describe_failure(error))
            return
        previous = self._thumbprints
        self._keys = [key for key, _ in keys]
        self._by_kid = {k.kid: k for k in self._keys if k.kid}
        self._thumbprint_by_id = {id(key): thumbprint for key, thumbprint in keys}
        self._thumbprints = frozenset(thumbprint for _, thumbprint in keys)
        self._expires_at = time.monotonic() + self._ttl(headers.get("cache-control", ""))
        self.last_error = None
        self._failures_in_a_row = 0
        self.last_refresh = time.monotonic()
        log.info("loaded %d signing keys from JWKS", len(keys))
        removed = set(previous - self._thumbprints)
        if removed:
            log.info("%d signing keys were removed from the JWKS", len(removed))
            for listener in self._listeners:
                listener(removed)

    def _failed(self, kind: str, message: str) -> None:
        self._failures_in_a_row += 1
        metrics.JWKS_FAILURES.inc()
        self.last_error = message
        self._failure_log.log(logging.WARNING, kind, "%s; keeping %d cached keys", message, len(self._keys))
        # Retry a failed endpoint no sooner than the unknown-kid rate limit allows.
        self._expires_at = time.monotonic() + max(self._settings.jwks_min_refresh, 1.0)

    async def _get(self, url: str) -> tuple[bytes, httpx.Headers]:
        """The body of a 2xx answer, streamed and abandoned past ``jwks_max_bytes``."""
        limit = self._settings.jwks_max_bytes
        request_headers = {"accept": "application/json", "accept-encoding": "identity"}
        async with self._http.stream(
            "GET", url, headers=request_headers, timeout=self._settings.jwks_timeout
        ) as response:
            response.raise_for_status()
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ValueError(f"unsupported content-encoding {encoding!r} (identity was asked for)")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise ValueError(f"the response has {declared} bytes, more than GATEWAY_JWKS_MAX_BYTES={limit}")
            body = bytearray()
            async for chunk in response.aiter_bytes():  # identity only (checked above): no decoding
                body += chunk
                if len(body) > limit:
                    raise ValueError(f"the response exceeds GATEWAY_JWKS_MAX_BYTES={limit}")
            return bytes(body), response.headers

    async def _discover(self) -> str:
        issuer = self._settings.oidc_issuer
        if not issuer:
            raise ValueError("neither GATEWAY_JWKS_URL nor GATEWAY_OIDC_ISSUER is set")
        metrics.JWKS_FETCHES.inc()
        body, _ = await self._get(issuer.rstrip("/") + "/.well-known/openid-configuration")
        document = await asyncio.to_thread(json.loads, body)
        url = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(url, str):
            raise ValueError("jwks_uri missing from the OpenID configuration")
        self._jwks_url = url
        return url

    def _ttl(self, cache_control: str) -> float:
        settings = self._settings
        match = _MAX_AGE.search(cache_control)
        ttl = float(match.group(1)) if match else settings.jwks_cache_ttl
        return min(max(ttl, settings.jwks_cache_min_ttl), settings.jwks_cache_max_ttl)


def _parse_document(body: bytes, max_keys: int) -> list[tuple[Key, str]]:
    """Keys and their RFC 7638 thumbprints from a JWKS body; CPU-bound, so run in a worker thread."""
    return [(key, key.thumbprint()) for key in _parse_keys(json.loads(body), max_keys)]


def _parse_keys(document: Any, max_keys: int | None = None) -> list[Key]:
    """Public signing keys of a JWKS document; private parts, HMAC and encryption keys are dropped."""
    if isinstance(document, dict) and "jwks_uri" in document and "keys" not in document:
        raise JwksFetchError("discovery_document", discovery_hint(document))
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError("not_jwks", 'not a JWKS document (no "keys" list)')
    if max_keys is not None and len(document["keys"]) > max_keys:
        raise ValueError(f"the JWKS has {len(document['keys'])} keys, more than GATEWAY_JWKS_MAX_KEYS={max_keys}")
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
