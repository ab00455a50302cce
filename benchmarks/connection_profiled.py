"""``session-gateway serve`` under a CPU-time profiler, or counting its garbage collections (issue 24 item 2).

``BENCH_GATEWAY_CMD="python -m benchmarks.connection_profiled cpu OUT" python -m benchmarks --only 2 --gateway-only``

- ``cpu``: cProfile with ``time.thread_time`` as the timer. ``benchmarks.profiled`` times with the wall
  clock: on this 2-core machine shared with the load processes, a ``transport.write`` that wakes a client is
  charged the time the client then runs (184 µs of wall time per write against 29 µs of CPU, measured).
  Here a function is charged only the CPU its thread spent. The timer itself is a system call per event,
  so the totals are inflated by the number of calls: read the shares, not the µs. Stats to ``OUT``, the
  top of them to ``OUT.txt``.
- ``gc``: no profiler; ``gc.callbacks`` time every collection, per generation, and ``OUT.txt`` gets the
  counts, the total and the process CPU time when the server exits (each round's server overwrites it).
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any


def _serve() -> int:
    from gateway.cli.main import main as gateway_main

    return gateway_main(["serve"])


def _cpu(out: Path) -> int:
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        return _serve()
    finally:
        profiler.disable()
        profiler.dump_stats(out)
        text = io.StringIO()
        stats = pstats.Stats(str(out), stream=text)
        stats.sort_stats("tottime").print_stats(50)
        stats.sort_stats("cumulative").print_stats(90)
        Path(f"{out}.txt").write_text(text.getvalue())


def _gc(out: Path) -> int:
    counts = [0, 0, 0]
    seconds = [0.0, 0.0, 0.0]
    started: list[float] = [0.0]
    long_pauses: list[str] = []

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            generation = info["generation"]
            counts[generation] += 1
            spent = time.thread_time() - started[0]
            seconds[generation] += spent
            if spent >= 0.002:  # the pauses that show in a delay tail, with their wall-clock time
                long_pauses.append(
                    f"{time.strftime('%H:%M:%S', time.localtime())} generation {generation} {spent * 1e3:.1f} ms"
                )

    gc.callbacks.append(timed)
    try:
        return _serve()
    finally:
        gc.callbacks.remove(timed)
        cpu = time.process_time()
        lines = [f"process CPU {cpu:.3f} s; in collections {sum(seconds):.3f} s ({sum(seconds) / cpu:.1%})"]
        lines += [f"generation {n}: {counts[n]} collections, {seconds[n]:.3f} s" for n in range(3)]
        lines.append(f"frozen objects {gc.get_freeze_count()}")
        lines += ["collections of 2 ms or more:", *long_pauses]
        Path(f"{out}.txt").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    mode, out = argv[0], Path(argv[1])
    return _gc(out) if mode == "gc" else _cpu(out)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
