"""Where one issuer's signing keys are: a JWKS URL, else an OpenID configuration document naming it.

One per issuer (``gateway.auth.issuers``); its label names the issuer in the per-issuer JWKS metrics
and log lines. See docs/security.md (Several issuers).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.settings import AuthSettings


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where one issuer's keys are: a JWKS URL, else an OpenID configuration document naming it."""

    label: str  # the ``issuer`` label of the per-issuer metrics: the issuer, else the URL
    jwks_url: str | None
    discovery_url: str | None

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> KeySource:
        """The one-issuer form: ``GATEWAY_JWKS_URL`` or ``GATEWAY_OIDC_ISSUER``."""
        issuer = settings.oidc_issuer
        discovery = issuer.rstrip("/") + "/.well-known/openid-configuration" if issuer else None
        label = settings.jwt_issuer or issuer or settings.jwks_url or ""
        return cls(label, settings.jwks_url, discovery)
