"""The limits a stream is admitted under: connections, shares, rates and waiting (docs/configuration.md)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from consumers.durations import seconds_fields
from consumers.settings import SettingsGroup


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
