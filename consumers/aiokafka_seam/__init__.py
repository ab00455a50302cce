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
   unbounded decompression, unreadable records found one re-fetch at a time (``consumers.consumer``).

The modules' docstrings say which internals each one uses.
"""

from __future__ import annotations

from consumers.aiokafka_seam._common import TESTED_AIOKAFKA, check
from consumers.aiokafka_seam.batches import UnreadableBatch
from consumers.aiokafka_seam.decompression import (
    BATCH_FLOOR_BYTES,
    RECORD_FRAMING_BYTES,
    DecompressedTooLarge,
    DecompressionLimits,
    use_limits,
)
from consumers.aiokafka_seam.metadata import refresh_topics
from consumers.aiokafka_seam.patching import install, installed, uninstall

__all__ = [
    "BATCH_FLOOR_BYTES",
    "RECORD_FRAMING_BYTES",
    "TESTED_AIOKAFKA",
    "DecompressedTooLarge",
    "DecompressionLimits",
    "UnreadableBatch",
    "check",
    "install",
    "installed",
    "refresh_topics",
    "uninstall",
    "use_limits",
]
