"""The one place that reaches below aiokafka's public API, checked against the tested versions at start-up.

The aiokafka versions tested are pinned in pyproject.toml (``aiokafka>=0.14,<0.15``) and checked again
(``check()``, ``TESTED_AIOKAFKA``) by every concern below, each with its own check of the internals it uses
and a public fallback, taken with one log line on any other version or when the check fails:

1. **Metadata on demand** (``metadata.refresh_topics``; the consumer): the consumer's client refreshes a
   topic's partition list now. Fallback: aiokafka's periodic refresh (``metadata_max_age_ms``).
2. **Decompression bounded before allocation** (``decompression``): the decode functions aiokafka's
   record modules look up are replaced by ones that stop at a cap (``DecompressionLimits.for_batch``).
3. **Which batch could not be read** (``batches``): a subclass of aiokafka's ``PartitionRecords`` raises
   ``UnreadableBatch`` with the batch's offsets, so the consumer skips the batch in one step.
   ``install()`` (``patching``; the consumer, at start) puts 2 and 3 in place after a self-test. Fallback:
   unbounded decompression, unreadable records found one re-fetch at a time (``consumers.consuming.loop``).
4. **The topics a cluster has now** (``metadata.cluster_topics``; ``gateway.cli.publish``): asked through the
   producer's own client. Fallback: the public ``AIOKafkaAdminClient.list_topics()``.
5. **Why a bootstrap failed** (``bootstrap``; ``consumers.kafka_errors``): the cause aiokafka logs, kept
   by a filter on its logger. Fallback: the exception chain alone.
6. **What CreateTopics did per topic** (``admin.create_topics``; ``gateway.cli.topic``): the broker's error
   codes, read from aiokafka's response struct. Fallback: ``list_topics()`` before creating.

``problems()`` lists every concern's state; the modules' docstrings say which internals each one uses.
"""

from __future__ import annotations

from consumers.aiokafka_seam._common import TESTED_AIOKAFKA, check
from consumers.aiokafka_seam.admin import check_create_topics, create_topics
from consumers.aiokafka_seam.batches import UnreadableBatch
from consumers.aiokafka_seam.bootstrap import (
    bootstrap_cause,
    check_bootstrap_log,
    forget_bootstrap_cause,
    watch_bootstrap_failures,
)
from consumers.aiokafka_seam.decompression import (
    BATCH_FLOOR_BYTES,
    RECORD_FRAMING_BYTES,
    DecompressedTooLarge,
    DecompressionLimits,
    use_limits,
)
from consumers.aiokafka_seam.metadata import check_cluster_topics, check_refresh, cluster_topics, refresh_topics
from consumers.aiokafka_seam.patching import install, installed, uninstall, why_not_installed

__all__ = [
    "BATCH_FLOOR_BYTES",
    "RECORD_FRAMING_BYTES",
    "TESTED_AIOKAFKA",
    "DecompressedTooLarge",
    "DecompressionLimits",
    "UnreadableBatch",
    "bootstrap_cause",
    "check",
    "cluster_topics",
    "create_topics",
    "forget_bootstrap_cause",
    "install",
    "installed",
    "problems",
    "refresh_topics",
    "uninstall",
    "use_limits",
    "watch_bootstrap_failures",
]


def problems() -> dict[str, str | None]:
    """Every concern and why it falls back with the installed aiokafka (None: it does not).

    The checks of 1, 4, 5 and 6 are run now; 2 and 3 are as the last ``install()`` left them.
    """
    return {
        "metadata-refresh": check_refresh(),
        "bounded-decompression": why_not_installed(),
        "unreadable-batches": why_not_installed(),
        "cluster-topics": check_cluster_topics(),
        "bootstrap-cause": check_bootstrap_log(),
        "create-topics-answer": check_create_topics(),
    }
