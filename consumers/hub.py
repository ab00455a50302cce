"""Fan-out: hands each applied transition to the subscribers of its session.

Lookup is one dict access, a session nobody watches costs nothing beyond the store update, and
each event is encoded once (by the injected encoder) however many subscribers receive it. Tenant
subscribers (``GET /tenant/events``) are indexed by tenant: a record costs one more dict lookup,
whatever the number of tenant streams, and a tenant subscriber encodes its own frame (its event id is
its own cursor, ``gateway.streams.cursor``); a deleted session's tenant subscribers are told of it.

A subscriber that raises is a failure of that subscriber only: it is unsubscribed and told to
close, the error is logged and counted, and the others still get the event. An event that cannot be
encoded ends its session's streams (their clients reconnect) instead of reaching the consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from consumers import metrics
from consumers.store import Transition

log = logging.getLogger("gateway.hub")


class Subscriber(Protocol):
    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        """Queues one encoded event; must not block."""

    def session_deleted(self) -> None:
        """The session was deleted (tombstone); the subscriber should end its stream."""

    def close(self, reason: str) -> None:
        """Ends the subscriber's stream (called when it failed)."""


class TenantSubscriber(Protocol):
    def transition(self, transition: Transition, record_timestamp_ms: int) -> None:
        """Queues one transition of the tenant's sessions; must not block."""

    def deleted(self, session_id: str, partition: int, offset: int, record_timestamp_ms: int) -> None:
        """Queues the deletion (tombstone at ``partition``/``offset``) of one of the tenant's sessions."""

    def close(self, reason: str) -> None:
        """Ends the subscriber's stream (called when it failed)."""


class Hub:
    def __init__(self, encode: Callable[[Transition], bytes]) -> None:
        self._encode = encode
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._tenants: dict[str, set[TenantSubscriber]] = {}

    def subscribe_tenant(self, tenant_id: str, subscriber: TenantSubscriber) -> None:
        self._tenants.setdefault(tenant_id, set()).add(subscriber)

    def unsubscribe_tenant(self, tenant_id: str, subscriber: TenantSubscriber) -> None:
        subscribers = self._tenants.get(tenant_id)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._tenants[tenant_id]

    def tenant_count(self, tenant_id: str) -> int:
        return len(self._tenants.get(tenant_id, ()))

    def subscribe(self, session_id: str, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(session_id)
        if subscribers is None:
            self._subscribers[session_id] = {subscriber}
        else:
            subscribers.add(subscriber)

    def unsubscribe(self, session_id: str, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(session_id)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[session_id]

    def count(self, session_id: str) -> int:
        subscribers = self._subscribers.get(session_id)
        return len(subscribers) if subscribers else 0

    def publish(self, transition: Transition, record_timestamp_ms: int, tenant_id: str = "") -> int:
        """Delivers one transition of ``tenant_id``'s session; returns how many session subscribers got it."""
        watchers = self._tenants.get(tenant_id)
        if watchers:
            self._publish_tenant(tenant_id, watchers, transition, record_timestamp_ms)
        subscribers = self._subscribers.get(transition.session_id)
        if not subscribers:
            return 0
        try:
            frame = self._encode(transition)
        except Exception as error:
            log.error(
                "cannot encode an event of session %r: %s; closing its %d streams",
                transition.session_id,
                type(error).__name__,
                len(subscribers),
            )
            self._fail_all(transition.session_id, "encode_error")
            return 0
        terminal = transition.is_terminal
        delivered = 0
        for subscriber in tuple(subscribers):
            try:
                subscriber.deliver(frame, record_timestamp_ms, terminal)
                delivered += 1
            except Exception as error:
                self._fail(transition.session_id, subscriber, error)
        return delivered

    def _publish_tenant(
        self, tenant_id: str, watchers: set[TenantSubscriber], transition: Transition, record_timestamp_ms: int
    ) -> None:
        for watcher in tuple(watchers):
            try:
                watcher.transition(transition, record_timestamp_ms)
            except Exception as error:
                self._fail_tenant(tenant_id, watcher, error)

    def _fail_tenant(self, tenant_id: str, watcher: TenantSubscriber, error: Exception) -> None:
        metrics.SUBSCRIBER_ERRORS.inc()
        log.error("a tenant subscriber raised %s; closing it", type(error).__name__, exc_info=error)
        self.unsubscribe_tenant(tenant_id, watcher)
        try:
            watcher.close("subscriber_error")
        except Exception:
            log.exception("closing a failed tenant subscriber raised too")

    def session_deleted(
        self,
        session_id: str,
        tenant_id: str | None = None,
        partition: int = -1,
        offset: int = -1,
        timestamp_ms: int = 0,
    ) -> None:
        """A tombstone deleted the session: its streams end, its tenant's streams are told (at the tombstone's
        ``partition`` and ``offset``)."""
        for subscriber in tuple(self._subscribers.get(session_id, ())):
            try:
                subscriber.session_deleted()
            except Exception as error:
                self._fail(session_id, subscriber, error)
        watchers = self._tenants.get(tenant_id) if tenant_id is not None else None
        for watcher in tuple(watchers or ()):
            try:
                watcher.deleted(session_id, partition, offset, timestamp_ms)
            except Exception as error:
                self._fail_tenant(tenant_id or "", watcher, error)

    def _fail(self, session_id: str, subscriber: Subscriber, error: Exception) -> None:
        metrics.SUBSCRIBER_ERRORS.inc()
        log.error("a subscriber of session %r raised %s; closing it", session_id, type(error).__name__, exc_info=error)
        self.unsubscribe(session_id, subscriber)
        try:
            subscriber.close("subscriber_error")
        except Exception:
            log.exception("closing a failed subscriber of session %r raised too", session_id)

    def _fail_all(self, session_id: str, reason: str) -> None:
        for subscriber in tuple(self._subscribers.get(session_id, ())):
            self.unsubscribe(session_id, subscriber)
            try:
                subscriber.close(reason)
            except Exception:
                log.exception("closing a subscriber of session %r raised", session_id)
