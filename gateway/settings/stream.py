"""What an open stream does: heartbeats, retry, replay and end (docs/configuration.md)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from consumers.durations import milliseconds_fields, seconds_fields
from consumers.settings import SettingsGroup


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
