"""The server's garbage-collector policy (gateway/runtime/heap.py): after the replay the heap is frozen and a
full collection comes ten times less often than CPython's default; young cycles as often as before."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.runtime.heap import freeze_heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_freezing_the_heap_freezes_what_is_alive_and_spaces_full_collections() -> None:
    alive = [[n] for n in range(1000)]
    freeze_heap()
    assert gc.get_freeze_count() >= len(alive)
    young, middle, full = gc.get_threshold()
    assert (young, middle) == (700, 10)  # young cycles (a stream's, a request's) collected as often as before
    assert full == 100


@pytest.mark.usefixtures("restored_collector")
def test_cycles_made_after_the_freeze_are_still_collected() -> None:
    freeze_heap()

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    collected_before = sum(stats["collected"] for stats in gc.get_stats())
    for _ in range(5000):
        first, second = Node(), Node()
        first.other, second.other = second, first
    gc.collect(1)
    collected = sum(stats["collected"] for stats in gc.get_stats()) - collected_before
    assert collected >= 9000  # the 5,000 pairs of the loop, not waiting for a full collection
