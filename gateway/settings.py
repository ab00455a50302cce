"""Gateway settings (environment prefix ``GATEWAY_``); Kafka and store settings live in ``consumers``."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from consumers.durations import milliseconds_fields, seconds_fields

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    internal_host: str = Field("127.0.0.1", description="Address of the internal port (health, metrics, docs).")
    internal_port: int = Field(
        9090, ge=0, le=65535, description="Health, metrics and docs; 0 serves them on the public port instead."
    )
    root_path: str = Field("", description="Path prefix a proxy strips before forwarding (ASGI root_path).")
    http_engine: Literal["native", "asgi"] = Field(
        "native",
        description="native: the gateway's own HTTP edge on uvicorn (asgi, the removed portable engine, "
        "is refused at start-up).",
    )
    instance_id: str = Field(default_factory=socket.gethostname, description="Replica name, for logs.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    access_log: bool = True
    request_log_lines: int = Field(
        10,
        ge=0,
        description="Refused requests logged in full per reason and minute; the rest are counted "
        "(gateway_request_log_lines_suppressed_total) and summed up in one line per reason.",
    )

    # Authentication
    jwks_url: str | None = None
    oidc_issuer: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = ["RS256", "PS256", "ES256", "EdDSA", "Ed25519"]
    jwt_leeway: float = Field(30.0, ge=0)
    jwks_min_refresh: float = Field(10.0, ge=0)
    jwks_max_waiting: int = Field(1000, ge=0, description="Requests that may wait for a deferred JWKS refetch.")
    jwks_cache_ttl: float = Field(300.0, gt=0, description="JWKS lifetime when the response has no max-age.")
    jwks_cache_min_ttl: float = Field(60.0, ge=0)
    jwks_cache_max_ttl: float = Field(86_400.0, gt=0)
    jwks_timeout: float = Field(5.0, gt=0)
    token_cookie: str | None = None
    max_token_bytes: int = Field(8192, ge=256)

    # Authorization
    tenant_claim: str = "tenant_id"
    session_claim: str = "session_id"
    required_scope: str | None = None

    # Streams
    cors_origins: Annotated[list[str], NoDecode] = []
    unknown_session_wait: float = Field(5.0, ge=0)
    resume_wait: float = Field(5.0, ge=0)
    replay_wait: float = Field(10.0, ge=0, description="A stream request during the initial replay waits this long.")
    heartbeat_interval: float = Field(15.0, gt=0)
    retry_ms: int = Field(3000, ge=0)
    retry_jitter: float = Field(0.5, ge=0, le=1, description="retry: varies by up to this fraction.")
    max_buffered_bytes: int = Field(64 * 1024, ge=1024, description="Per-stream buffer before a slow client is cut.")
    close_on_token_expiry: bool = True
    max_connections: int = Field(16_000, ge=1, description="Open and waiting streams per process (503 beyond).")
    max_connections_per_subject: int = Field(0, ge=0, description="0: no per-subject limit.")
    max_waiting_requests: int = Field(1000, ge=1, description="Requests waiting for a session or position.")
    max_connections_per_session: int = Field(20, ge=1)
    drain_seconds: float = Field(20.0, ge=0)
    shutdown_grace_seconds: float = Field(5.0, ge=0)

    # HTTP edge (native engine)
    idle_timeout: float = Field(10.0, gt=0, description="A connection that sends nothing for this long is closed.")
    request_head_timeout: float = Field(10.0, gt=0, description="Deadline for a whole request head (408).")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="Request line plus headers (431 beyond).")
    max_sockets: int = Field(16_384, ge=1, description="Open connections on the public port (503 beyond).")

    # Health
    readiness_strict: bool = Field(
        False, description="Also require a reachable broker and fresh signing keys (see README: empties the fleet)."
    )
    task_crash_limit: int = Field(5, ge=1, description="/livez fails when a task crashed more often than this ...")
    task_crash_window: float = Field(300.0, gt=0, description="... within this many seconds.")

    # Development only
    dev_mode: bool = False
    dev_issuer_url: str = "http://127.0.0.1:8090"

    # --- Added by the auth branch (issue 11 / issue 10's token cache); lead: merge into the sections above.
    jwks_max_bytes: int = Field(
        512 * 1024, ge=1024, description="A JWKS or discovery response larger than this is abandoned."
    )
    jwks_max_keys: int = Field(100, ge=1, description="A JWKS with more keys than this is refused.")
    token_cache_size: int = Field(
        10_000, ge=0, description="Verified tokens remembered (by SHA-256) to skip signature checks; 0 disables."
    )
    # --- End of the auth branch's block.
    # Worker processes (issue 16): each an independent replica on the same ports (SO_REUSEPORT).
    workers: int = Field(
        1, ge=1, le=64, description="Server processes, each holding the whole store and reading every partition."
    )
    # Fair shares (issue 19): no client address and no tenant can take what the others need.
    max_sockets_per_address: int | None = Field(
        None,
        ge=1,
        description="Open connections on the public port per client address (429 beyond); unset: half "
        "of max_sockets. IPv6 addresses count per /64 (native engine).",
    )
    max_waiting_requests_per_tenant: int | None = Field(
        None, ge=1, description="Waiting requests per tenant (429 beyond); unset: half of max_waiting_requests."
    )
    max_waiting_requests_per_address: int | None = Field(
        None,
        ge=1,
        description="Waiting requests per client address (429 beyond); unset: a quarter of max_waiting_requests.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        ["127.0.0.0/8", "::1"],
        description="Addresses or CIDR ranges of proxies whose client_address_header names the client; "
        "empty: none (every TCP peer is the client).",
    )
    client_address_header: str = Field(
        "X-Forwarded-For",
        description="Header in which a trusted proxy names the client (comma-separated, nearest hop last); "
        "the right-most address that is not a trusted proxy is the client.",
    )
    # Durations: plain seconds or 6h / 30m / 90s / 1d / 500ms (consumers/durations.py).
    _seconds = seconds_fields(
        "jwt_leeway", "jwks_min_refresh", "jwks_cache_ttl", "jwks_cache_min_ttl", "jwks_cache_max_ttl",
        "jwks_timeout", "unknown_session_wait", "resume_wait", "heartbeat_interval", "drain_seconds",
        "shutdown_grace_seconds", "task_crash_window", "replay_wait", "idle_timeout", "request_head_timeout",
    )  # fmt: skip
    _milliseconds = milliseconds_fields("retry_ms")

    @field_validator("jwt_algorithms", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split(value)

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

    @property
    def waiting_per_tenant(self) -> int:
        return self.max_waiting_requests_per_tenant or max(1, self.max_waiting_requests // 2)

    @property
    def waiting_per_address(self) -> int:
        return self.max_waiting_requests_per_address or max(1, self.max_waiting_requests // 4)
