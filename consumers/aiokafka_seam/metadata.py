"""1. Metadata on demand (the consumer) and 4. the topics a cluster has now (``gateway.cli.publish``).

1. aiokafka has no public call that refreshes a topic's partition list now; its client does
   (``AIOKafkaConsumer._client``: ``add_topic``, ``force_metadata_update``). The gateway uses it to notice
   new partitions and missing topics promptly. Fallback: aiokafka's periodic refresh
   (``metadata_max_age_ms``), public and only slower.
4. ``publish`` fails fast on a missing topic (a send would retry until the request timeout) by asking the
   producer's own connection for the cluster's metadata (``AIOKafkaProducer.client.fetch_all_metadata()``,
   whose answer lists its topics with ``topics()``). Fallback: the public ``AIOKafkaAdminClient.list_topics()``,
   on a connection of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata

from consumers.aiokafka_seam._common import check, warn_once
from consumers.settings import KafkaSettings

_REFRESH = ("add_topic", "force_metadata_update")


def check_refresh() -> str | None:
    """1: None when ``refresh_topics`` can refresh on demand with the installed aiokafka, else why not."""
    problem = check()
    if problem is None and not all(callable(getattr(AIOKafkaClient, name, None)) for name in _REFRESH):
        problem = "aiokafka's client has no add_topic() and force_metadata_update()"
    return problem


def _private_client(consumer: Any) -> Any | None:
    client = getattr(consumer, "_client", None)
    if client is None or not all(callable(getattr(client, name, None)) for name in _REFRESH):
        return None
    return client


async def refresh_topics(consumer: Any, topics: Iterable[str]) -> bool:
    """Fetches fresh metadata of ``topics`` now; False when only the periodic refresh is available."""
    problem = check_refresh()
    client = _private_client(consumer) if problem is None else None
    if client is None:
        warn_once(
            "refresh",
            "cannot refresh Kafka metadata on demand (%s): new partitions are noticed at the periodic refresh",
            problem or "aiokafka's client changed",
        )
        return False
    for topic in topics:
        client.add_topic(topic)
    await client.force_metadata_update()
    return True


def check_cluster_topics() -> str | None:
    """4: None when ``cluster_topics`` can ask the producer's connection with the installed aiokafka."""
    problem = check()
    if problem is None and not callable(getattr(AIOKafkaClient, "fetch_all_metadata", None)):
        problem = "aiokafka's client has no fetch_all_metadata()"
    if problem is None and not callable(getattr(ClusterMetadata, "topics", None)):
        problem = "aiokafka's cluster metadata has no topics()"
    return problem


async def cluster_topics(producer: Any, settings: KafkaSettings) -> set[str]:
    """The topics the cluster has now, asked through the started ``producer`` (an ``AIOKafkaProducer``).

    Fallback: an admin client of its own (made from ``settings``) lists them.
    """
    problem = check_cluster_topics()
    client: Any = getattr(producer, "client", None)
    if problem is None and not isinstance(client, AIOKafkaClient):
        problem = "the producer has no client"
    if problem is None:
        metadata = await client.fetch_all_metadata()
        return set(metadata.topics())
    warn_once(
        "cluster-topics",
        "cannot ask the producer's connection for the Kafka topics (%s): a connection of its own lists them",
        problem,
    )
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    try:
        await admin.start()
        return set(await admin.list_topics())
    finally:
        await admin.close()
