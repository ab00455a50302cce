"""Kafka, record and store settings (environment prefix ``GATEWAY_``), one class per concern.

The consumer takes only these groups; ``ConsumerSettings`` is all of them, read from the environment once.
Meaning and defaults: docs/configuration.md (generated from these classes by ``make docs``).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from consumers.durations import milliseconds_fields, seconds_fields, timedelta_fields
from consumers.formats.mapping import RecordMapping, load_mapping
from consumers.partitions import MAX_TOPICS

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}", re.ASCII)
# What one compressed batch may decompress to (consumers.aiokafka_seam). A producer's batch is at most the
# broker's message limit (1 MB by default) compressed; JSON session records compress 5-20 times.
DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES = 32 * 1024 * 1024


def split_list(value: object) -> object:
    """A comma-separated setting as a list (every list setting of both packages goes through this)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SettingsGroup(BaseSettings):
    """One concern's settings; ``section`` is its title in docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")
    section: ClassVar[str] = ""


class KafkaSettings(SettingsGroup):
    """How every Kafka client of this project connects, and what it reads."""

    section: ClassVar[str] = "Kafka"

    kafka_bootstrap_servers: str = Field("localhost:9092", description="comma-separated `host:port` list")
    kafka_topic: str = Field(
        "session-status",
        description=(
            "the session-status topic, or several comma-separated (their order numbers them in event ids: "
            "append, never reorder; see [Several topics](event-bus.md#several-topics))"
        ),
    )
    kafka_client_id: str = Field("session-events-gateway", description="Kafka `client.id`")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None,
        description="`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`",
        json_schema_extra={"shown": "unset (`PLAIN` when SASL)"},
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: str | None = Field(None, repr=False, description="SASL password")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) to verify the brokers")
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    kafka_ssl_keyfile: Path | None = Field(None, description="client key (PEM) for mutual TLS")
    kafka_ssl_check_hostname: bool = Field(True, description="verify the broker's host name")
    kafka_request_timeout_ms: int = Field(30000, ge=1000, description="Kafka request timeout")
    kafka_health_interval: float = Field(
        5.0, gt=0, description="seconds between broker probes (readiness, lag, new partitions)"
    )
    kafka_max_fetch_bytes: int = Field(
        50 * 1024 * 1024, ge=1024 * 1024, description="fetch size; bigger replays faster"
    )

    replay_window: timedelta | None = Field(
        None,
        description="replay only records newer than now minus this",
        json_schema_extra={"shown": "unset (whole log)"},
    )

    _kafka_seconds = seconds_fields("kafka_health_interval")
    _kafka_timedeltas = timedelta_fields("replay_window")
    _kafka_milliseconds = milliseconds_fields("kafka_request_timeout_ms")

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

    @property
    def kafka_topics(self) -> tuple[str, ...]:
        """The topics read, in the order of the setting (a topic's index appears in its event ids)."""
        return tuple(self.kafka_topic.split(","))

    @property
    def primary_topic(self) -> str:
        """The first topic: where ``publish`` and the dev tools write."""
        return self.kafka_topics[0]

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


class RecordSettings(SettingsGroup):
    """What a record may be and how it is read: sizes, formats, the mapping, dead letters."""

    section: ClassVar[str] = "Records"

    max_record_bytes: int = Field(64 * 1024, ge=256, description="larger record values are rejected")
    max_decompressed_batch_bytes: int = Field(
        DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES,
        ge=64 * 1024,
        description=(
            "a compressed batch that would decompress to more than this, or to more than (twice "
            "`GATEWAY_MAX_RECORD_BYTES` plus 2 KiB) per record it holds but at least 4 MiB, is skipped before"
            " that memory is allocated (see "
            "[Security](security.md#limits-on-what-a-producer-can-make-us-hold-or-write))"
        ),
        json_schema_extra={"shown": "`33554432` (32 MiB)"},
    )
    record_log_lines: int = Field(
        10,
        ge=0,
        description=(
            "log lines about skipped records written in full per reject reason and minute; the rest are "
            "counted and summed up in one line per reason and minute"
        ),
    )
    cloudevents_types: Annotated[list[str], NoDecode] = Field(
        [],
        description=(
            "CloudEvent `type`s used; records of other types are ignored "
            '(`gateway_records_ignored_total{reason="cloudevents_type"}`)'
        ),
        json_schema_extra={"shown": "empty (every type)"},
    )
    record_mapping: str | None = Field(
        None,
        description=(
            "records in another shape: a mapping as inline JSON or the path of a JSON file (see [Records in "
            "another shape](event-bus.md#records-in-another-shape))"
        ),
    )
    dlq_topic: str | None = Field(
        None,
        description=(
            "copy every rejected record to this topic (see [Dead-letter topic](event-bus.md#dead-letter-topic))"
        ),
    )
    dlq_writer: bool = Field(True, description="whether this replica writes to the dead-letter topic")

    _mapping: RecordMapping | None = PrivateAttr(None)

    @field_validator("cloudevents_types", mode="before")
    @classmethod
    def _types(cls, value: object) -> object:
        return split_list(value)

    @field_validator("dlq_topic", "record_mapping", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _load_mapping(self) -> RecordSettings:
        if self.record_mapping is not None:
            try:
                self._mapping = load_mapping(self.record_mapping)
            except ValueError as error:
                raise ValueError(f"{error} (try a mapping on a sample record: session-gateway mapping check)") from None
        if self.dlq_topic is not None and not _TOPIC_NAME.fullmatch(self.dlq_topic):
            raise ValueError("GATEWAY_DLQ_TOPIC is not a Kafka topic name")
        return self

    def mapping_for(self, topic: str) -> RecordMapping | None:
        mapping = self._mapping
        return mapping if mapping is not None and mapping.applies_to(topic) else None


class StoreSettings(SettingsGroup):
    """What the in-memory store keeps, and for how long."""

    section: ClassVar[str] = "Store"

    terminal_retention: timedelta = Field(
        timedelta(minutes=10),
        description="how long a finished session stays in the store",
        json_schema_extra={"shown": "`600` (10 min)"},
    )
    session_ttl: timedelta = Field(
        timedelta(hours=24),
        description="a session without update for this long is evicted",
        json_schema_extra={"shown": "`86400` (24 h)"},
    )
    max_sessions: int = Field(1000000, ge=1, description="hard cap; the least recently updated sessions go first")
    store_eviction_interval: float = Field(
        5.0, gt=0, description="seconds between store sweeps that evict finished and expired sessions"
    )

    _store_timedeltas = timedelta_fields("terminal_retention", "session_ttl")
    _store_seconds = seconds_fields("store_eviction_interval")


class ConsumerSettings(KafkaSettings, RecordSettings, StoreSettings):
    """Every consumer group, read from the environment once; checks what spans groups."""

    @model_validator(mode="after")
    def _topics_agree(self) -> ConsumerSettings:
        mapping = self._mapping
        if mapping is not None:
            unknown = sorted(set(mapping.topics or ()) - set(self.kafka_topics))
            if unknown:
                raise ValueError(f"the record mapping names topics not in GATEWAY_KAFKA_TOPIC: {', '.join(unknown)}")
        if self.dlq_topic is not None and self.dlq_topic in self.kafka_topics:
            raise ValueError("GATEWAY_DLQ_TOPIC must not be one of the topics the gateway reads")
        return self


GROUPS: tuple[type[SettingsGroup], ...] = (KafkaSettings, RecordSettings, StoreSettings)
