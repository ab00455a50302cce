"""Details of a log line as fields, not only words in its message (docs/operations.md, "Logs").

``log.warning("skipped malformed record: %s", detail, extra=fields(topic=t, partition=p, reason=r))``:
the gateway's formatters (``gateway.runtime.logging_setup``) write each field as a key of the JSON
line, or as ``[name=value ...]`` after a text line, so a log system can filter on them. Here, apart
from the formatters, because the consumer (which never imports ``gateway``) logs with fields too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

FIELDS_ATTRIBUTE = "fields"  # the LogRecord attribute ``fields(...)`` sets


def fields(**values: object) -> dict[str, Mapping[str, object]]:
    """``extra=`` for a log call (None values are left out)."""
    return {FIELDS_ATTRIBUTE: {name: value for name, value in values.items() if value is not None}}


def session_hash(session_id: str) -> str:
    """A session id's stand-in in log fields: 16 hex digits of its SHA-256, the same in every replica."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
