"""Who may open a stream: issuers, keys, claims, algorithms and tickets (docs/configuration.md, docs/security.md)."""

from __future__ import annotations

import json
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from consumers.durations import seconds_fields
from consumers.settings import SettingsGroup, split_list
from gateway.auth.ticket_keys import parse_ticket_keys

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)


class TrustedIssuer(BaseModel):
    """One entry of ``GATEWAY_JWT_ISSUERS``: an issuer, where its keys are, and the tenant it stands for.

    Spelt in camelCase as a Helm values file would (``jwksUrl``); see docs/security.md (Several issuers).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    issuer: str = Field(min_length=1, description="the exact `iss` of this issuer's tokens")
    jwks_url: str | None = Field(None, alias="jwksUrl", description="its JWKS endpoint")
    discovery: str | None = Field(
        None,
        description="its OpenID configuration URL (default: `{issuer}/.well-known/openid-configuration`)",
    )
    tenant: str | None = Field(
        None, min_length=1, description="every token of this issuer is for this tenant (a claim saying otherwise: 401)"
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedIssuer:
        if self.jwks_url and self.discovery:
            raise ValueError(f"issuer {self.issuer!r}: give jwksUrl or discovery, not both")
        for url in (self.jwks_url, self.discovery, None if self.jwks_url or self.discovery else self.issuer):
            if url is not None and not url.startswith(("https://", "http://")):
                raise ValueError(f"issuer {self.issuer!r}: {url!r} is not an http(s) URL")
        return self

    @property
    def discovery_url(self) -> str:
        return self.discovery or self.issuer.rstrip("/") + "/.well-known/openid-configuration"


class AuthSettings(SettingsGroup):
    """Who may read a session: token sources, the key set, the claims."""

    section: ClassVar[str] = "Authentication and authorization"

    jwks_url: str | None = Field(None, description="JWKS endpoint with the token signing keys")
    oidc_issuer: str | None = Field(
        None,
        description=(
            "alternative: discover the JWKS from `{issuer}/.well-known/openid-configuration`; also the "
            "expected `iss` unless `GATEWAY_JWT_ISSUER` is set"
        ),
    )
    jwt_issuer: str | None = Field(None, description="when set, `iss` must equal it")
    jwt_issuers: Annotated[list[TrustedIssuer], NoDecode] = Field(
        [],
        json_schema_extra={"example": '[{"issuer": "https://idp/realms/a", "jwksUrl": "https://...", "tenant": "a"}]'},
        description=(
            "several issuers instead of the three settings above: a JSON list of "
            '`{"issuer": ..., "jwksUrl": ...}` (or `"discovery"`, the OpenID configuration URL; neither: '
            'discovery under the issuer), each with an optional `"tenant"` that all its tokens stand for; '
            "keys are looked up per issuer (see [Several issuers](security.md#several-issuers))"
        ),
    )
    jwt_audience: str | None = Field(None, description="when set, `aud` must contain it")
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        ["RS256", "PS256", "ES256", "EdDSA", "Ed25519"],
        description=(
            "allow-list (`Ed25519` is RFC 9864's name for EdDSA over Ed25519); only asymmetric algorithms can"
            " be listed (`none` and HMAC are always refused)"
        ),
    )
    jwt_leeway: float = Field(30.0, ge=0, description="seconds of clock skew allowed for `exp`, `nbf`, `iat`")
    jwks_min_refresh: float = Field(
        10.0,
        ge=0,
        description=(
            "an unknown `kid` refetches the JWKS at most this often (single-flight); inside the interval it "
            "waits for the next allowed refetch"
        ),
    )
    jwks_max_waiting: int = Field(
        1000,
        ge=0,
        description=(
            "requests that may wait for that deferred refetch at once; beyond, or while the JWKS endpoint "
            "keeps failing (two fetches in a row), an unknown `kid` gets 401 at once (`0` = never wait)"
        ),
    )
    jwks_cache_ttl: float = Field(
        300.0, gt=0, description="JWKS lifetime when the response has no `Cache-Control: max-age`"
    )
    jwks_cache_min_ttl: float = Field(60.0, ge=0, description="lower bound applied to `max-age`")
    jwks_cache_max_ttl: float = Field(86400.0, gt=0, description="upper bound applied to `max-age`")
    jwks_timeout: float = Field(
        5.0,
        gt=0,
        description=(
            "total deadline in seconds for one JWKS refresh (discovery included), however slowly the server sends"
        ),
    )
    jwks_max_bytes: int = Field(
        512 * 1024,
        ge=1024,
        description=(
            "a JWKS or discovery response larger than this (512 KiB) is abandoned while streaming; the cached keys stay"
        ),
    )
    jwks_max_keys: int = Field(
        100, ge=1, description="a JWKS with more keys than this is refused; the cached keys stay"
    )
    token_cookie: str | None = Field(
        None,
        description=(
            "cookie name to read the token from (after `token`, `access_token`, `Authorization`); query "
            "parameter names are taken as sent, so `?tok%65n=` is not a token"
        ),
    )
    allow_query_tokens: bool = Field(
        True,
        description=(
            "accept identity-provider tokens in `?token=`/`?access_token=` (EventSource cannot send headers); "
            "`false`: 401 for a token in the URL, `Authorization` and the cookie stay"
        ),
    )
    max_token_bytes: int = Field(8192, ge=256, description="longer tokens are rejected before parsing")
    token_cache_size: int = Field(
        10000,
        ge=0,
        description=(
            "verified tokens remembered by their SHA-256 (never the token), so a reconnect costs no signature"
            " check; an entry lasts until `exp` plus `GATEWAY_JWT_LEEWAY`, or until its key leaves the JWKS; "
            "`0` disables"
        ),
    )
    tenant_claim: str = Field(
        "tenant_id", description="claim that must equal the session's `tenantId`; empty disables the check"
    )
    session_claim: str = Field("session_id", description="if the token has this claim, it must equal the path id")
    required_scope: str | None = Field(
        None, description="the token's `scope` (space-separated) or `roles` must contain it"
    )
    tenant_stream_scope: str | None = Field(
        None,
        description=(
            "enables `GET /tenant/events` (404 while unset): a token must carry this in `scope` (space-separated),"
            " `roles` or `GATEWAY_TENANT_STREAM_ROLES_CLAIM` to open its tenant's stream (403 without)"
        ),
        json_schema_extra={"shown": "unset (the tenant stream is off)"},
    )
    tenant_stream_roles_claim: str = Field(
        "",
        description=(
            "a further claim holding a list of roles for `GATEWAY_TENANT_STREAM_SCOPE`, as a dotted path into the "
            "token (Keycloak: `realm_access.roles`)"
        ),
    )

    ticket_keys: Annotated[list[SecretStr], NoDecode] = Field(
        [],
        repr=False,
        description=(
            "stream tickets (`POST /session/{id}/ticket`, `?ticket=`): comma-separated `kid:secret`, each "
            "secret base64url of at least 32 random bytes; the first signs, all verify; unset: tickets are "
            "off (see [Stream tickets](tickets.md))"
        ),
    )
    ticket_ttl: float = Field(
        900.0,
        gt=0,
        le=86400,
        description="lifetime of a ticket the gateway issues (15 minutes); a request may ask for less, never more",
    )

    _auth_seconds = seconds_fields(
        "jwt_leeway",
        "jwks_min_refresh",
        "jwks_cache_ttl",
        "jwks_cache_min_ttl",
        "jwks_cache_max_ttl",
        "jwks_timeout",
        "ticket_ttl",
    )

    @field_validator("jwt_algorithms", "ticket_keys", mode="before")
    @classmethod
    def _algorithm_list(cls, value: object) -> object:
        return split_list(value)

    @field_validator("ticket_keys")
    @classmethod
    def _ticket_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        parse_ticket_keys([item.get_secret_value() for item in value])  # refuses weak or duplicate keys
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        refused = [alg for alg in value if alg not in ALLOWED_ALGORITHMS]
        if refused:
            raise ValueError(
                f"algorithms {refused} are not allowed; choose from {sorted(ALLOWED_ALGORITHMS)} "
                "('none' and HMAC algorithms are always refused)"
            )
        if not value:
            raise ValueError("at least one algorithm is required")
        return value

    @field_validator("jwt_issuers", mode="before")
    @classmethod
    def _issuer_list(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return []
            try:
                return json.loads(value)
            except ValueError as error:
                raise ValueError(f"not JSON ({error})") from None
        return value

    @field_validator("jwt_issuers")
    @classmethod
    def _distinct_issuers(cls, value: list[TrustedIssuer], info: ValidationInfo) -> list[TrustedIssuer]:
        names = [entry.issuer for entry in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"issuers listed twice: {repeated}")
        if value and any(info.data.get(name) for name in ("jwks_url", "oidc_issuer", "jwt_issuer")):
            raise ValueError(
                "it replaces GATEWAY_JWKS_URL, GATEWAY_OIDC_ISSUER and GATEWAY_JWT_ISSUER: set either the list or those"
            )
        return value

    @property
    def tenants_enforced(self) -> bool:
        """Whether a principal only sees its tenant's sessions: the tenant claim, or issuers standing for tenants."""
        return bool(self.tenant_claim) or any(entry.tenant is not None for entry in self.jwt_issuers)

    @property
    def keys_configured(self) -> bool:
        """Whether any key source is set (one issuer or several)."""
        return bool(self.jwks_url or self.oidc_issuer or self.jwt_issuers)
