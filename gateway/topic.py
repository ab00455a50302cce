"""Creates the session-status topic the way the gateway expects it: compacted, several partitions."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from consumers import aiokafka_seam
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
            codes = await aiokafka_seam.create_topics(admin, [topic])
        except TopicAlreadyExistsError:
            return False
        return TopicAlreadyExistsError.errno not in codes.values()
    finally:
        await admin.close()
