"""``session-gateway serve`` under cProfile counting CPU time, not wall time (issue 24 item 2).

``BENCH_GATEWAY_CMD="python -m benchmarks.connection_profiled OUT" python -m benchmarks --only 2 --gateway-only``

``benchmarks.profiled`` times with the wall clock: on this 2-core machine shared with the load processes, a
``transport.write`` that wakes a client is charged the time the client then runs (184 µs of wall time per
write against 29 µs of CPU, measured). With ``time.thread_time`` as the timer a function is charged only
the CPU its thread spent, so the profile adds up to the server CPU the benchmark reports. Stats are written
to ``OUT`` when the server exits, and the top of them to ``OUT.txt``.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    from gateway.cli.main import main as gateway_main

    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        return gateway_main(["serve"])
    finally:
        profiler.disable()
        profiler.dump_stats(out)
        text = io.StringIO()
        stats = pstats.Stats(str(out), stream=text)
        stats.sort_stats("tottime").print_stats(50)
        stats.sort_stats("cumulative").print_stats(90)
        Path(f"{out}.txt").write_text(text.getvalue())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
