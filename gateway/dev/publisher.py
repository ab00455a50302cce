"""The demo's publishing: one Kafka producer for dev mode's lifetime, and what the store did with a record.

A demo user publishes a status and expects to see it; so a publish waits (briefly) until this
gateway's own consumer has read the record back, and reports whether the store applied or ignored
it and why (docs/cli.md, "Trying it locally"). Any failure is one 503 naming the topic and broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from fastapi import HTTPException
from pydantic import BaseModel, Field

from gateway.cli.publish import StatusPublisher, build_event
from schemas import TERMINAL_STATUSES, SessionStatus, SessionType

if TYPE_CHECKING:
    from gateway.runtime.app import Runtime

log = logging.getLogger("gateway.dev.routes")  # the logger name of every dev-mode line; unchanged by the split

_KAFKA_TIMEOUT_S = 15.0
_CONSUMED_WAIT_S = 5.0

# What the store does with a record that does not move the session forward (see consumers/store.py).
IGNORED_REPEATED = "ignored: repeated status"
IGNORED_BACKWARD = "ignored: status would move backward"
IGNORED_AFTER_TERMINAL = "ignored: the session already ended"
IGNORED_TENANT = "ignored: the session belongs to another tenant"


class PublishedStatus(BaseModel):
    id: str
    tenant: str
    status: SessionStatus
    partition: int
    offset: int
    outcome: str = Field(
        "applied",
        description="What the gateway's store did with the record: `applied`, or `ignored: <why>` "
        "(repeated status, backward move, after a terminal status, tenant changed), or `not consumed yet`.",
    )


class DevPublisher:
    """One producer for the dev routes' lifetime: started on first use, stopped on shutdown."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._publisher: StatusPublisher | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> StatusPublisher:
        async with self._lock:
            if self._publisher is None:
                publisher = StatusPublisher(self._runtime.consumer_settings)
                try:
                    await asyncio.wait_for(publisher.__aenter__(), _KAFKA_TIMEOUT_S)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await publisher.__aexit__(None, None, None)
                    raise
                self._publisher = publisher
            return self._publisher

    async def publish(
        self, session_id: str, status: SessionStatus, tenant: str, kind: SessionType | None
    ) -> PublishedStatus:
        settings = self._runtime.consumer_settings
        try:
            publisher = await self._started()
            partition, offset = await asyncio.wait_for(
                publisher.publish(build_event(session_id, status, tenant, kind)), _KAFKA_TIMEOUT_S
            )
        except Exception as error:  # broker down, topic missing, timeout: all the same to a demo user
            reason = str(error) or type(error).__name__
            log.warning("dev publish to %s failed: %s", settings.kafka_topic, reason)
            raise HTTPException(
                503,
                f"could not publish to Kafka topic {settings.kafka_topic!r} at {settings.kafka_bootstrap_servers}: "
                f"{reason}",
            ) from None
        # Let our own consumer see the record first, so a stream opened right away finds the session.
        consumed = await self._runtime.progress.wait_for(partition, offset, _CONSUMED_WAIT_S)
        outcome = _outcome(self._runtime, session_id, status, tenant, partition, offset) if consumed else None
        return PublishedStatus(
            id=session_id,
            tenant=tenant,
            status=status,
            partition=partition,
            offset=offset,
            outcome=outcome or "not consumed yet",
        )

    async def close(self) -> None:
        async with self._lock:
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.__aexit__(None, None, None)
            log.info("dev: Kafka producer stopped")


def _outcome(runtime: Runtime, session_id: str, status: SessionStatus, tenant: str, partition: int, offset: int) -> str:
    """What the store did with the record at ``partition``/``offset`` (it has consumed it)."""
    snapshot = runtime.store.get(session_id)
    if snapshot is None:
        return "ignored: the session is not in the store"
    if any(t.partition == partition and t.offset == offset for t in snapshot.transitions):
        return "applied"
    if snapshot.tenant_id != tenant:
        return IGNORED_TENANT
    current = snapshot.current.status
    if current in TERMINAL_STATUSES:
        return IGNORED_REPEATED if current == status else IGNORED_AFTER_TERMINAL
    if current == status:
        return IGNORED_REPEATED
    return IGNORED_BACKWARD
