"""Kafka connection, replay and store settings (environment prefix ``GATEWAY_``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.durations import milliseconds_fields, seconds_fields, timedelta_fields


class ConsumerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    kafka_bootstrap_servers: str = Field("localhost:9092", description="Comma-separated host:port list.")
    kafka_topic: str = Field("session-status", description="Topic carrying session-status records.")
    kafka_client_id: str = Field("session-events-gateway", description="Kafka client.id, visible in broker logs.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = Field(None, repr=False)
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_request_timeout_ms: int = Field(30_000, ge=1_000)
    kafka_health_interval: float = Field(
        5.0, gt=0, description="Seconds between broker probes (lag metrics, readiness, new partitions)."
    )
    kafka_max_fetch_bytes: int = Field(50 * 1024 * 1024, ge=1024 * 1024)

    replay_window: timedelta | None = Field(
        None, description="Replay only this much of the log on start (e.g. 'PT6H' or seconds); default: all."
    )
    max_record_bytes: int = Field(64 * 1024, ge=256, description="Larger record values are rejected.")
    terminal_retention: timedelta = Field(timedelta(minutes=10))
    session_ttl: timedelta = Field(timedelta(hours=24))
    max_sessions: int = Field(1_000_000, ge=1)

    # Durations: plain seconds, 6h / 30m / 90s / 1d / 500ms, ISO 8601 (PT6H) or HH:MM:SS (consumers/durations.py).
    _seconds = timedelta_fields("replay_window", "terminal_retention", "session_ttl")
    _seconds_float = seconds_fields("kafka_health_interval")
    _milliseconds = milliseconds_fields("kafka_request_timeout_ms")

    def kafka_client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by every aiokafka client this project makes."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "client_id": self.kafka_client_id,
            "security_protocol": self.kafka_security_protocol,
            "request_timeout_ms": self.kafka_request_timeout_ms,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.kafka_sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            context = create_ssl_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
                certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
                keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
            context.check_hostname = self.kafka_ssl_check_hostname
            options["ssl_context"] = context
        return options
