"""Gateway settings (environment prefix ``GATEWAY_``), one class per concern.

Each component takes only its own group (``AuthSettings`` for the verifier, ``AdmissionSettings`` for
the limits, ...); ``GatewaySettings`` is all of them, read from the environment once. Kafka and store
settings live in ``consumers.settings``. Meaning and defaults: docs/configuration.md (generated from these
classes by ``make docs``).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from consumers.durations import milliseconds_fields, seconds_fields
from consumers.settings import SettingsGroup, split_list
from gateway.auth.ticket_keys import parse_ticket_keys

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)


class EdgeSettings(SettingsGroup):
    """The public and internal ports: where they listen and what one connection may hold."""

    section: ClassVar[str] = "HTTP edge"

    host: str = Field("127.0.0.1", description="bind address of the public port (`serve --host`)")
    port: int = Field(
        8080, ge=0, le=65535, description="public port: streams and a bare `/livez` only (`serve --port`)"
    )
    internal_host: str = Field(
        "127.0.0.1", description="bind address of the internal port (`0.0.0.0` in a pod, for probes and scrapes)"
    )
    internal_port: int = Field(
        9090,
        ge=0,
        le=65535,
        description=(
            "internal port: `/livez`, `/readyz`, `/metrics`, `/docs`, `/openapi.json`; `0` serves them on the"
            " public port instead"
        ),
    )
    root_path: str = Field(
        "",
        description=(
            "path prefix a reverse proxy strips before forwarding (ASGI `root_path`); the stream route "
            "matches with or without it"
        ),
    )
    http_engine: Literal["native", "asgi"] = Field(
        "native",
        description=(
            "the gateway's own HTTP edge on uvicorn, the only engine; `asgi` (the portable engine, removed) "
            "is refused at start-up with the supported uvicorn and httptools versions, as is an untested "
            "uvicorn"
        ),
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [], description="origins allowed to read streams cross-origin (`*` for any, without credentials)"
    )
    idle_timeout: float = Field(10.0, gt=0, description="a connection that has sent no byte for this long is closed")
    request_head_timeout: float = Field(
        10.0, gt=0, description="deadline for a complete request head from its first byte: slowloris gets 408"
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request line plus headers; larger heads get 431")
    max_sockets: int = Field(
        16384,
        ge=1,
        description=(
            "open connections on the public port, streams or not; more are answered 503 and closed; the "
            "internal port is not counted, so probes get through; `serve` warns when the open-files limit is "
            "below this plus 100 (see [Open files](operations.md#open-files))"
        ),
    )
    max_sockets_per_address: int | None = Field(
        None,
        ge=1,
        description=(
            "open connections on the public port from one client address (429 and closed beyond); IPv6 "
            "addresses count per /64"
        ),
        json_schema_extra={"shown": "unset: half of `GATEWAY_MAX_SOCKETS` (8192)"},
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        ["127.0.0.0/8", "::1"],
        description=(
            "addresses or CIDR ranges of proxies (ingress, sidecar) whose `GATEWAY_CLIENT_ADDRESS_HEADER` "
            "names the client for the per-address shares; empty: none"
        ),
    )
    client_address_header: str = Field(
        "X-Forwarded-For",
        description=(
            "where a trusted proxy names the client: comma-separated, nearest hop last; the right-most "
            "address that is not a trusted proxy is the client"
        ),
    )

    _edge_seconds = seconds_fields("idle_timeout", "request_head_timeout")

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _edge_lists(cls, value: object) -> object:
        return split_list(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP address or CIDR range") from None
        return value

    @property
    def sockets_per_address(self) -> int:
        return self.max_sockets_per_address or max(1, self.max_sockets // 2)


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


class AdmissionSettings(SettingsGroup):
    """How many streams and waiting requests the process, a tenant, a subject, a session and an address may hold."""

    section: ClassVar[str] = "Admission and limits"

    max_connections: int = Field(16000, ge=1, description="open and waiting streams per process (503 beyond)")
    max_waiting_requests: int = Field(
        1000,
        ge=1,
        description="requests waiting for a session that does not exist yet or for a resume position (503 beyond)",
    )
    max_connections_per_subject: int = Field(
        0,
        ge=0,
        description=(
            "open and waiting streams per tenant and token `sub` (429 beyond); off by default because many "
            "browsers often share one client token"
        ),
        json_schema_extra={"shown": "`0` (off)"},
    )
    max_connections_per_session: int = Field(
        20,
        ge=1,
        description=(
            "open and waiting streams per tenant and session (429 beyond); another tenant's requests never "
            "count against it"
        ),
    )
    max_waiting_requests_per_tenant: int | None = Field(
        None,
        ge=1,
        description=(
            "waiting requests of one tenant (429 beyond), so that one tenant cannot take the whole waiting "
            "budget; no share without `GATEWAY_TENANT_CLAIM`"
        ),
        json_schema_extra={"shown": "unset: half of `GATEWAY_MAX_WAITING_REQUESTS` (500)"},
    )
    max_waiting_requests_per_address: int | None = Field(
        None,
        ge=1,
        description="waiting requests of one client address (429 beyond)",
        json_schema_extra={"shown": "unset: a quarter of `GATEWAY_MAX_WAITING_REQUESTS` (250)"},
    )
    max_tenant_streams_per_tenant: int = Field(
        10,
        ge=1,
        description=(
            "open and waiting tenant streams (`GET /tenant/events`) per tenant (429 beyond); they also count "
            "against `GATEWAY_MAX_CONNECTIONS` and the per-subject limit"
        ),
    )
    tenant_stream_opening_rate: float = Field(
        1.0,
        gt=0,
        description=(
            "tenant stream openings per second and tenant (each reads the whole store once; 429 with "
            "`Retry-After` beyond); the process allows ten times as many"
        ),
    )
    tenant_stream_opening_burst: int = Field(
        5, ge=1, description="openings a tenant may make at once before the rate applies (the process: four times)"
    )
    unknown_session_wait: float = Field(
        5.0, ge=0, description="seconds to wait for a session not yet in the store before 404"
    )
    replay_wait: float = Field(
        10.0,
        ge=0,
        description=(
            "a stream request reaching a replica that is still replaying its topic waits this long (counted "
            "as waiting) before 503: a replica restarting alone does not turn its browsers' reconnects into "
            "errors"
        ),
    )
    resume_wait: float = Field(
        5.0,
        ge=0,
        description="seconds to wait for this replica to reach a client's `Last-Event-ID` position before 503",
    )

    _admission_seconds = seconds_fields("unknown_session_wait", "replay_wait", "resume_wait")

    @property
    def waiting_per_tenant(self) -> int:
        return self.max_waiting_requests_per_tenant or max(1, self.max_waiting_requests // 2)

    @property
    def waiting_per_address(self) -> int:
        return self.max_waiting_requests_per_address or max(1, self.max_waiting_requests // 4)


class StreamSettings(SettingsGroup):
    """One open stream: heartbeats, reconnect advice, the slow-client bound, token expiry and the drain."""

    section: ClassVar[str] = "Streams"

    heartbeat_interval: float = Field(
        15.0, gt=0, description="seconds between SSE comment heartbeats on an idle stream"
    )
    retry_ms: int = Field(3000, ge=0, description="`retry:` sent to clients")
    retry_jitter: float = Field(
        0.5, ge=0, le=1, description="`retry:` varies per connection by up to this fraction, to spread reconnect storms"
    )
    max_buffered_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description=(
            "per-stream buffer; a client that falls further behind is disconnected (it resumes by `Last-Event-ID`)"
        ),
    )
    close_on_token_expiry: bool = Field(
        True, description="end a stream when its token stops being accepted (`exp` plus `GATEWAY_JWT_LEEWAY`)"
    )
    tenant_stream_max_snapshot: int = Field(
        1000,
        ge=1,
        description=(
            "sessions a tenant stream starts with (the most recently updated); beyond, one `truncated` event "
            "says how many were left out"
        ),
    )
    drain_seconds: float = Field(20.0, ge=0, description="on SIGTERM, open streams are closed spread over this time")
    shutdown_grace_seconds: float = Field(
        5.0, ge=0, description="after the drain, uvicorn's bound on closing what is left"
    )

    _stream_seconds = seconds_fields("heartbeat_interval", "drain_seconds", "shutdown_grace_seconds")
    _stream_milliseconds = milliseconds_fields("retry_ms")


class HealthSettings(SettingsGroup):
    """What `/readyz` and `/livez` require."""

    section: ClassVar[str] = "Health"

    readiness_strict: bool = Field(
        False,
        description=(
            "also require a reachable broker and freshly refreshed keys for `/readyz` (an outage then empties"
            " the fleet: see [Readiness](operations.md#readiness-means-can-serve))"
        ),
    )
    task_crash_limit: int = Field(
        5, ge=1, description="`/livez` answers 503 when one supervised task crashed more often than this ..."
    )
    task_crash_window: float = Field(
        300.0, gt=0, description="... within this many seconds (Kubernetes then restarts the replica)"
    )

    _health_seconds = seconds_fields("task_crash_window")


class ProcessSettings(SettingsGroup):
    """The process: its name, workers, logs and development mode."""

    section: ClassVar[str] = "Process"

    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="replica name, added to every log line",
        json_schema_extra={"shown": "host name"},
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "server processes (`serve --workers N`), each an independent replica on the same ports "
            "(`SO_REUSEPORT`): its own consumer reading every partition, its own store and limits, so memory "
            "grows by a whole replica per worker (see [Scaling](operations.md#scaling)); worker *i* logs as "
            "`<instance id>-w<i>` and only worker 0 writes dead letters"
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="`DEBUG`, `INFO`, `WARNING`, `ERROR`"
    )
    log_format: Literal["json", "text"] = Field("json", description="`json` (one object per line) or `text`")
    access_log: bool = Field(True, description="uvicorn's access log (tokens redacted)")
    request_log_lines: int = Field(
        10,
        ge=0,
        description=(
            "log lines of refused requests written in full per refusal reason and minute; the rest are "
            "counted (`gateway_request_log_lines_suppressed_total`) and summed up in one line per reason and "
            "minute"
        ),
    )
    dev_mode: bool = Field(
        False, description="demo page and unauthenticated publishing endpoints: **never in production**"
    )
    dev_issuer_url: str = Field(
        "http://127.0.0.1:8090",
        description=(
            "dev mode: where the demo obtains tokens; without `GATEWAY_JWKS_URL`/`GATEWAY_OIDC_ISSUER`, where"
            " `serve --dev` starts its own dev issuer (loopback only)"
        ),
    )


class GatewaySettings(EdgeSettings, AuthSettings, AdmissionSettings, StreamSettings, HealthSettings, ProcessSettings):
    """Every gateway group, read from the environment once (``serve``); components take their own group."""


GROUPS: tuple[type[SettingsGroup], ...] = (
    EdgeSettings,
    AuthSettings,
    AdmissionSettings,
    StreamSettings,
    HealthSettings,
    ProcessSettings,
)
