"""1. Metadata on demand (the consumer).

aiokafka has no public call that refreshes a topic's partition list now; its client does
(``AIOKafkaConsumer._client``: ``add_topic``, ``force_metadata_update``). The gateway uses it to notice new
partitions and missing topics promptly. Fallback: aiokafka's periodic refresh (``metadata_max_age_ms``),
public and only slower.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka.client import AIOKafkaClient

from consumers.aiokafka_seam._common import check, warn_once

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
