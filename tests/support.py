"""The small helpers every test module shares: free ports, session ids, event ids, waiting on a condition.

One definition each; ``kafka_support`` and the test modules import them from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

Condition = Callable[[], bool | Awaitable[bool]]
What = str | Callable[[], str | Awaitable[str]]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_session(label: str = "s") -> str:
    """A session id no other test uses: ``label-<12 hex>``."""
    return f"{label}-{uuid.uuid4().hex[:12]}"


def event_id(position: tuple[int, int], terminal: bool = False) -> str:
    """The SSE event id the gateway gives the record at ``(partition, offset)``: ``p-o`` or ``p-o-end``."""
    return f"{position[0]}-{position[1]}{'-end' if terminal else ''}"


async def _resolve(value: object) -> object:
    return await value if inspect.isawaitable(value) else value


async def wait_until(condition: Condition, timeout: float, what: What = "", interval: float = 0.05) -> None:
    """Polls ``condition`` (sync or async) until it is true; fails (AssertionError) after ``timeout`` seconds.

    ``what`` describes the awaited condition (or is called, sync or async, to describe the state seen),
    for the failure message. The only way tests wait: never a fixed sleep followed by an assertion.
    """
    deadline = time.monotonic() + timeout
    while True:
        if await _resolve(condition()):
            return
        if time.monotonic() >= deadline:
            text = what if isinstance(what, str) else await _resolve(what())
            raise AssertionError(f"condition not met within {timeout}s{': ' + str(text) if text else ''}")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def on_the_terminal(config: pytest.Config) -> Iterator[None]:
    """Lets output reach the real terminal while pytest captures the tests' output (progress of slow set-up)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        yield
        return
    with capture.global_and_fixture_disabled():
        yield
