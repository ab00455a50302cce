"""Creates the session-status topic the way the gateway expects it: compacted, several partitions."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

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
        code = codes.get(settings.primary_topic, 0)
        if code == TopicAlreadyExistsError.errno:
            return False
        if code:  # e.g. a replication factor above the number of brokers (38)
            error = for_code(code)
            raise error(f"the broker refused to create topic {settings.primary_topic}: {error.__name__} ({code})")
        return True
    finally:
        await admin.close()
