"""The edge's access line: one per answered request or opened stream, in uvicorn's shape (``uvicorn.access``).

A stream's target carries its token when a browser sends it in the query (EventSource cannot send headers),
so the target is redacted and clipped (``log_value``) before it is interpolated, and the formatter redacts
the whole line once more, like every line (``gateway.runtime.logging_setup``). A refused request's line names
its reason and is folded per reason (``consumers.log_aggregation.ReasonFolding``): a flood of refusals writes
a bounded number of lines. What a line costs and how to turn it off (GATEWAY_ACCESS_LOG=false):
docs/operations.md ("Logs").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from consumers.log_aggregation import ReasonFolding
from consumers.log_fields import FIELDS_ATTRIBUTE
from gateway.runtime.redaction import log_value

access_log = logging.getLogger("uvicorn.access")

_LINE = '%s - "%s %s HTTP/%s" %d'
_REFUSED_LINE = _LINE + " reason=%s"
_NO_FILE, _NO_FUNCTION = "(unknown file)", "(unknown function)"  # what logging records without a caller lookup


def log_access(
    transport: asyncio.BaseTransport | None,
    refusals: ReasonFolding,
    target: tuple[str, str],
    status: int,
    reason: str = "",
    method: bytes = b"GET",
    fields: Mapping[str, object] | None = None,
) -> None:
    """Logs the line of ``target`` (the request target as sent, the HTTP version) answered with ``status``.

    ``fields`` are the line's details (status, reason, session hash, tenant, a wrong claim's expected and
    received values), written as fields of the line (``consumers.log_fields``)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    extra = None if fields is None else {FIELDS_ATTRIBUTE: fields}
    peer = transport.get_extra_info("peername") if transport is not None else None
    client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
    path = log_value(target[0])
    verb = method.decode("ascii", errors="replace")
    if not reason:
        # ``access_log.info`` without its caller lookup (a walk up the stack): no format prints the line.
        args = (client, verb, path, target[1], status)
        access_log.handle(
            access_log.makeRecord(access_log.name, logging.INFO, _NO_FILE, 0, _LINE, args, None, _NO_FUNCTION, extra)
        )
        return
    refused = (client, verb, path, target[1], status, reason)
    refusals.log(logging.INFO, reason, _REFUSED_LINE, *refused, logger=access_log, extra=extra)
