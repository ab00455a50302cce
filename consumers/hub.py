"""Fan-out: hands each applied transition to the subscribers of its session.

Lookup is one dict access, a session nobody watches costs nothing beyond the store update, and
each event is encoded once (by the injected encoder) however many subscribers receive it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from consumers.store import Transition


class Subscriber(Protocol):
    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        """Queues one encoded event; must not block."""

    def session_deleted(self) -> None:
        """The session was deleted (tombstone); the subscriber should end its stream."""


class Hub:
    def __init__(self, encode: Callable[[Transition], bytes]) -> None:
        self._encode = encode
        self._subscribers: dict[str, set[Subscriber]] = {}

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

    def publish(self, transition: Transition, record_timestamp_ms: int) -> int:
        """Delivers one transition; returns how many subscribers got it."""
        subscribers = self._subscribers.get(transition.session_id)
        if not subscribers:
            return 0
        frame = self._encode(transition)
        terminal = transition.is_terminal
        for subscriber in tuple(subscribers):
            subscriber.deliver(frame, record_timestamp_ms, terminal)
        return len(subscribers)

    def session_deleted(self, session_id: str) -> None:
        for subscriber in tuple(self._subscribers.get(session_id, ())):
            subscriber.session_deleted()
