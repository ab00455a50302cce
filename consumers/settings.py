"""Kafka connection, replay and store settings (environment prefix ``GATEWAY_``)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from consumers.durations import milliseconds_fields, seconds_fields, timedelta_fields
from consumers.formats.mapping import RecordMapping, load_mapping
from consumers.partitions import MAX_TOPICS

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}", re.ASCII)
# What one compressed batch may decompress to (consumers.aiokafka_seam). A producer's batch is at most the
# broker's message limit (1 MB by default) compressed; JSON session records compress 5-20 times.
DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES = 32 * 1024 * 1024


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ConsumerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    kafka_bootstrap_servers: str = Field("localhost:9092", description="Comma-separated host:port list.")
    kafka_topic: str = Field(
        "session-status",
        description="Topic(s) carrying session-status records, comma-separated; the order numbers them in event ids.",
    )
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
    max_decompressed_batch_bytes: int = Field(
        DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES,
        ge=64 * 1024,
        description=(
            "A compressed batch that would decompress to more than this (or to more than twice "
            "max_record_bytes plus 2 KiB per record it holds) is skipped before the memory is allocated."
        ),
    )
    record_log_lines: int = Field(
        10,
        ge=0,
        description="Per-record log lines (skipped records) logged in full per reason and minute; then one summary.",
    )
    terminal_retention: timedelta = Field(timedelta(minutes=10))
    session_ttl: timedelta = Field(timedelta(hours=24))
    max_sessions: int = Field(1_000_000, ge=1)

    # Durations: plain seconds, 6h / 30m / 90s / 1d / 500ms, ISO 8601 (PT6H) or HH:MM:SS (consumers/durations.py).
    _seconds = timedelta_fields("replay_window", "terminal_retention", "session_ttl")
    _seconds_float = seconds_fields("kafka_health_interval")
    _milliseconds = milliseconds_fields("kafka_request_timeout_ms")

    # Formats (consumers.formats)
    cloudevents_types: Annotated[list[str], NoDecode] = Field(
        [], description="CloudEvent types used; other types are ignored and counted. Empty: every type."
    )
    record_mapping: str | None = Field(
        None, description="Mapping of records in another shape: inline JSON or a JSON file's path."
    )

    # Dead-letter topic (consumers.dead_letter)
    dlq_topic: str | None = Field(None, description="Rejected records are copied to this topic.")
    dlq_writer: bool = Field(True, description="Whether this replica writes to the dead-letter topic.")

    _mapping: RecordMapping | None = PrivateAttr(None)

    @field_validator("kafka_topic", mode="before")
    @classmethod
    def _topic_list(cls, value: object) -> object:
        """Normalised to ``a,b``; every name a valid Kafka topic name, none twice."""
        if isinstance(value, list | tuple):
            value = ",".join(str(part) for part in value)
        if not isinstance(value, str):
            return value
        names = [part.strip() for part in value.split(",") if part.strip()]
        if not names:
            raise ValueError("name at least one topic")
        bad = [name for name in names if not _TOPIC_NAME.fullmatch(name) or name in (".", "..")]
        if bad:
            raise ValueError(f"not a Kafka topic name: {bad[0]!r} (letters, digits, '.', '_', '-'; at most 249)")
        if len(set(names)) != len(names):
            raise ValueError("a topic is listed twice")
        if len(names) > MAX_TOPICS:
            raise ValueError(f"at most {MAX_TOPICS} topics")
        return ",".join(names)

    @field_validator("cloudevents_types", mode="before")
    @classmethod
    def _types(cls, value: object) -> object:
        return _split(value)

    @field_validator("dlq_topic", "record_mapping", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_formats_and_dlq(self) -> ConsumerSettings:
        if self.record_mapping is not None:
            self._mapping = load_mapping(self.record_mapping)
            unknown = sorted(set(self._mapping.topics or ()) - set(self.kafka_topics))
            if unknown:
                raise ValueError(f"the record mapping names topics not in GATEWAY_KAFKA_TOPIC: {', '.join(unknown)}")
        if self.dlq_topic is not None:
            if not _TOPIC_NAME.fullmatch(self.dlq_topic):
                raise ValueError("GATEWAY_DLQ_TOPIC is not a Kafka topic name")
            if self.dlq_topic in self.kafka_topics:
                raise ValueError("GATEWAY_DLQ_TOPIC must not be one of the topics the gateway reads")
        return self

    @property
    def kafka_topics(self) -> tuple[str, ...]:
        """The topics read, in the order of the setting (a topic's index appears in its event ids)."""
        return tuple(self.kafka_topic.split(","))

    @property
    def primary_topic(self) -> str:
        """The first topic: where ``publish`` and the dev tools write."""
        return self.kafka_topics[0]

    def mapping_for(self, topic: str) -> RecordMapping | None:
        mapping = self._mapping
        return mapping if mapping is not None and mapping.applies_to(topic) else None

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
