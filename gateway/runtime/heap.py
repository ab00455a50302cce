"""The garbage-collector policy of the server process: freeze the heap once the replay has caught up.

A process-wide choice, so it is the runtime's to make (``app.Runtime`` calls it once); tests, benchmarks
of the consumer alone and other library users of ``consumers`` keep their heap as is. The measurements
behind it: benchmarks/README.md ("Pauses of the event loop"); docs/operations.md ("The whole store").
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("gateway.consumer")

# CPython's thresholds, but a full collection after 100 middle ones instead of 10: every full collection walks
# every open stream's objects (25-75 ms at 6,000-10,000 streams), and a reconnect storm triggered one every
# few hundred streams (7% of the server's CPU, ~24 µs a stream: benchmarks/README.md, "Connection cost").
# Young cycles are still collected as often as before; the streams break theirs when they close.
_YOUNG, _MIDDLE, _FULL = 700, 10, 100


def freeze_heap() -> None:
    """Moves every object alive after the replay (the store, modules, caches) out of the collector's reach.

    A full collection walks every tracked object: with a replayed store that is millions of objects and,
    with the event loop stopped, every stream's delivery waits for it (benchmarks/README.md: 40-47 ms per
    full collection in a 10,000-stream run; 763 ms for a naive store of 1,000,000 sessions). Frozen objects
    are still freed by reference counting when the store drops them; only reference cycles among them
    would stay, and the store holds none. Done once, when the replay has caught up. Requests that waited for
    the replay (``gateway.admission.endpoint``) may be open then: their objects are frozen too, and are
    freed as usual when they close, except any caught in a reference cycle, which would stay.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(_YOUNG, _MIDDLE, _FULL)
    log.info(
        "froze %d objects after the replay for the garbage collector (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )
