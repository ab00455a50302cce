"""Writes session-status records to Kafka: for integrators testing their wiring, and the demo."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import UnknownTopicOrPartitionError

from consumers import aiokafka_seam
from consumers.settings import ConsumerSettings
from schemas import SessionStatus, SessionStatusEvent, SessionType


def build_event(
    session_id: str,
    status: SessionStatus,
    tenant: str,
    kind: SessionType | None = None,
    updated_at: datetime | None = None,
) -> SessionStatusEvent:
    return SessionStatusEvent(
        id=session_id, tenantId=tenant, status=status, updatedAt=updated_at or datetime.now(UTC), type=kind
    )


def event_value(event: SessionStatusEvent) -> bytes:
    """The record value as producers write it (``updatedAt`` with milliseconds and 'Z')."""
    data = event.model_dump(mode="json", exclude_none=True)
    data["updatedAt"] = event.updatedAt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps(data)


class StatusPublisher:
    """A started producer; use as ``async with StatusPublisher(settings) as publisher``."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **settings.kafka_client_options())

    async def __aenter__(self) -> StatusPublisher:
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()
            raise
        return self

    async def check_topic(self) -> None:
        """Fails fast on a missing topic (a send would retry until the request timeout)."""
        if self._settings.primary_topic not in await aiokafka_seam.cluster_topics(self._producer, self._settings):
            raise UnknownTopicOrPartitionError(f"topic {self._settings.primary_topic!r} does not exist")

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def publish(self, event: SessionStatusEvent) -> tuple[int, int]:
        """Returns the (partition, offset) the record was written at."""
        metadata = await self._producer.send_and_wait(
            self._settings.primary_topic, key=event.id.encode("utf-8"), value=event_value(event)
        )
        return metadata.partition, metadata.offset

    async def delete(self, session_id: str) -> tuple[int, int]:
        metadata = await self._producer.send_and_wait(
            self._settings.primary_topic, key=session_id.encode("utf-8"), value=None
        )
        return metadata.partition, metadata.offset
