"""The trusted issuers: each with its own key cache, expected ``iss`` and, optionally, its tenant.

Keys are looked up by (issuer, kid), never by kid alone: the unverified ``iss`` of a token only picks
which issuer's keys may verify it, and the claims check then requires that same ``iss``. A token signed
by issuer A's key but claiming issuer B is looked up among B's keys and refused; a key cache keyed by
kid alone would let one issuer's key vouch for another's tokens. An ``iss`` no issuer has is refused
before any key fetch, so a client cannot make us ask a server we do not trust. Each issuer's cache
has its own refetch limit, waiting cap and failures (``gateway.auth.jwks``).

``TrustedIssuers`` also answers for all of them what readiness, the refresh loop and the metrics ask
of a key cache. See docs/security.md (Several issuers).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from gateway import metrics
from gateway.auth.claims import AuthenticationError, ClaimsValidator
from gateway.auth.jwks import JwksCache
from gateway.auth.key_source import KeySource
from gateway.settings import AuthSettings


@dataclass(frozen=True, slots=True)
class Issuer:
    """One trusted issuer: its ``iss`` (None: the one-issuer form without an ``iss`` check), keys, claims."""

    index: int
    name: str | None
    tenant: str | None
    keys: JwksCache
    claims: ClaimsValidator


class TrustedIssuers:
    """Every issuer the gateway trusts, selected by a token's ``iss``."""

    def __init__(self, issuers: list[Issuer]) -> None:
        if not issuers:
            raise ValueError("at least one issuer is needed")
        self.issuers = issuers
        self._by_name = {issuer.name: issuer for issuer in issuers if issuer.name is not None}
        self.several = len(issuers) > 1 or issuers[0].tenant is not None

    @classmethod
    def from_settings(cls, settings: AuthSettings, client: httpx.AsyncClient) -> TrustedIssuers:
        """``GATEWAY_JWT_ISSUERS``, else the one issuer of ``GATEWAY_JWKS_URL``/``GATEWAY_OIDC_ISSUER``."""
        if not settings.jwt_issuers:
            return cls.single(settings, JwksCache(settings, client))
        issuers = []
        for index, entry in enumerate(settings.jwt_issuers):
            source = KeySource(entry.issuer, entry.jwks_url, None if entry.jwks_url else entry.discovery_url)
            cache = JwksCache(settings, client, source)
            claims = ClaimsValidator(settings, issuer=entry.issuer, tenant=entry.tenant)
            issuers.append(Issuer(index, entry.issuer, entry.tenant, cache, claims))
        return cls(issuers)

    @classmethod
    def single(cls, settings: AuthSettings, cache: JwksCache) -> TrustedIssuers:
        """The one-issuer form around an existing cache (``iss`` checked as ``ClaimsValidator`` does)."""
        name = settings.jwt_issuer or settings.oidc_issuer
        return cls([Issuer(0, name, None, cache, ClaimsValidator(settings))])

    @property
    def binds_tenants(self) -> bool:
        """Whether some issuer stands for a tenant (then the tenant rule applies to every token)."""
        return any(issuer.tenant is not None for issuer in self.issuers)

    def issuer_for(self, claims: Callable[[], Mapping[str, Any]]) -> Issuer:
        """The issuer whose keys may verify a token with these (unverified) claims."""
        if len(self.issuers) == 1:
            return self.issuers[0]  # its claims check refuses another iss after the signature
        iss = claims().get("iss")
        if iss is None:
            raise AuthenticationError("missing_claim_iss")
        issuer = self._by_name.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthenticationError("invalid_claim_iss")
        return issuer

    # The verified-token cache: a key is known by its issuer and thumbprint -------------------------
    @staticmethod
    def scoped(issuer: Issuer, thumbprint: str) -> str:
        return f"{issuer.index}:{thumbprint}"

    def has_key(self, scoped: str) -> bool:
        index, _, thumbprint = scoped.partition(":")
        return index.isdigit() and int(index) < len(self.issuers) and self.issuers[int(index)].keys.has_key(thumbprint)

    def on_keys_removed(self, listener: Callable[[set[str]], None]) -> None:
        for issuer in self.issuers:
            issuer.keys.on_keys_removed(functools.partial(self._removed, issuer, listener))

    def _removed(self, issuer: Issuer, listener: Callable[[set[str]], None], removed: set[str]) -> None:
        listener({self.scoped(issuer, thumbprint) for thumbprint in removed})

    def refresh_if_stale(self) -> None:
        for issuer in self.issuers:
            issuer.keys.refresh_if_stale()

    # What readiness, the refresh loop and the metrics ask, for all issuers --------------------------
    @property
    def loaded(self) -> bool:
        """Every issuer's keys were loaded once."""
        return all(issuer.keys.loaded for issuer in self.issuers)

    @property
    def due(self) -> bool:
        return any(issuer.keys.due for issuer in self.issuers)

    @property
    def last_error(self) -> str | None:
        errors = [self._named(issuer, issuer.keys.last_error) for issuer in self.issuers if issuer.keys.last_error]
        return "; ".join(errors) or None

    @property
    def not_loaded(self) -> list[str]:
        """Why some issuer has no keys yet, one line each."""
        return [
            self._named(issuer, issuer.keys.last_error or "signing keys not loaded yet")
            for issuer in self.issuers
            if not issuer.keys.loaded
        ]

    @property
    def waiting(self) -> int:
        return sum(issuer.keys.waiting for issuer in self.issuers)

    def seconds_since_refresh(self) -> float:
        """The oldest issuer's, or -1 while one never loaded."""
        ages = [issuer.keys.seconds_since_refresh() for issuer in self.issuers]
        return -1.0 if min(ages) < 0 else max(ages)

    async def load(self) -> None:
        """Loads the keys of every issuer that has none or whose set is due, concurrently."""
        await asyncio.gather(
            *(issuer.keys.load() for issuer in self.issuers if not issuer.keys.loaded or issuer.keys.due)
        )

    def report(self) -> list[dict[str, Any]]:
        """Per issuer, for ``/readyz`` (several issuers only)."""
        return [
            {
                "issuer": issuer.keys.source.label,
                "tenant": issuer.tenant,
                "signing_keys_loaded": issuer.keys.loaded,
                "seconds_since_keys_refreshed": round(issuer.keys.seconds_since_refresh(), 1),
                "error": issuer.keys.last_error,
            }
            for issuer in self.issuers
        ]

    def bind_metrics(self) -> None:
        metrics.JWKS_LAST_REFRESH_AGE.set_function(self.seconds_since_refresh)
        metrics.JWKS_WAITING.set_function(lambda: self.waiting)
        for issuer in self.issuers:
            label = issuer.keys.source.label
            metrics.JWKS_ISSUER_LAST_REFRESH_AGE.labels(label).set_function(issuer.keys.seconds_since_refresh)
            metrics.JWKS_ISSUER_WAITING.labels(label).set_function(functools.partial(_waiting, issuer.keys))

    def _named(self, issuer: Issuer, message: str) -> str:
        return f"{issuer.keys.source.label}: {message}" if self.several else message


def _waiting(keys: JwksCache) -> int:
    return keys.waiting
