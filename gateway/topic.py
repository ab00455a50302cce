"""Creates the session-status topic the way the gateway expects it: compacted, several partitions."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from consumers.settings import ConsumerSettings


async def create_topic(settings: ConsumerSettings, partitions: int = 6, replication_factor: int = 1) -> bool:
    """Returns False when the topic already existed."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        topic = NewTopic(
            settings.primary_topic,
            num_partitions=partitions,
            replication_factor=replication_factor,
            topic_configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        )
        try:
            response = await admin.create_topics([topic])
        except TopicAlreadyExistsError:
            return False
        for _, code, *_ in getattr(response, "topic_errors", []) or getattr(response, "topics", []):
            if code == TopicAlreadyExistsError.errno:
                return False
        return True
    finally:
        await admin.close()
