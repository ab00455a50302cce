"""The public and internal ports: where they listen and what one connection may hold (docs/configuration.md)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from consumers.durations import seconds_fields
from consumers.settings import SettingsGroup, split_list


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
