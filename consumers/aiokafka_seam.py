"""The one place that reaches below aiokafka's public API, with a fallback when it is not there.

aiokafka has no public call that refreshes a topic's partition list on demand; its client does
(``_client.add_topic`` and ``force_metadata_update``). The gateway uses it to notice new partitions
and missing topics promptly. The aiokafka versions tested are pinned in pyproject.toml
(``aiokafka>=0.14,<0.15``); when the private client is not there as expected, the metadata is left to
aiokafka's own periodic refresh (``metadata_max_age_ms``), which is public and only slower.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import aiokafka

log = logging.getLogger("gateway.consumer")

TESTED_AIOKAFKA = ("0.14.",)
_warned: set[str] = set()  # one warning per process


def _private_client(consumer: Any) -> Any | None:
    client = getattr(consumer, "_client", None)
    if client is None or not callable(getattr(client, "add_topic", None)):
        return None
    if not callable(getattr(client, "force_metadata_update", None)):
        return None
    return client


def check() -> str | None:
    """None when the private refresh is usable with the installed aiokafka, else why not."""
    version = getattr(aiokafka, "__version__", "?")
    if not version.startswith(TESTED_AIOKAFKA):
        return f"aiokafka {version} is not a tested version ({', '.join(TESTED_AIOKAFKA)}x)"
    return None


async def refresh_topics(consumer: Any, topics: Iterable[str]) -> bool:
    """Fetches fresh metadata of ``topics`` now; False when only the periodic refresh is available."""
    client = _private_client(consumer) if check() is None else None
    if client is None:
        if not _warned:
            _warned.add("refresh")
            log.warning(
                "cannot refresh Kafka metadata on demand (%s): new partitions are noticed at the periodic refresh",
                check() or "aiokafka's client changed",
            )
        return False
    for topic in topics:
        client.add_topic(topic)
    await client.force_metadata_update()
    return True
