"""Runs ``session-gateway serve`` under a profiler (``python -m benchmarks --profile``).

``python -m benchmarks.profiled cpu OUT``: pyinstrument (1 ms samples; ``pip install pyinstrument``)
around the whole server, written to ``OUT.pyisession`` and ``OUT.txt`` when the server exits (the
orchestrator stops it with SIGINT, which drains and returns); without pyinstrument, cProfile stats in
``OUT``.

``python -m benchmarks.profiled memory OUT``: tracemalloc (12 frames) from the start; each SIGUSR1
writes ``OUT.<n>.txt`` with the allocations grown since the previous SIGUSR1 (the first one only
records the reference snapshot and writes ``OUT.0.txt``), grouped by line and by traceback.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any


def _serve() -> int:
    from gateway.cli.main import main

    return main(["serve"])


def _memory(out: Path) -> int:
    tracemalloc.start(12)
    state: dict[str, Any] = {"ref": None, "n": 0}

    def dump(signum: int, frame: FrameType | None) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            ]
        )
        if state["ref"] is None:
            state["ref"] = snapshot
            Path(f"{out}.0.txt").write_text("reference snapshot taken\n")
            return
        state["n"] += 1
        lines = []
        by_line = snapshot.compare_to(state["ref"], "lineno")
        total = sum(stat.size_diff for stat in by_line)
        lines.append(f"total growth {total} bytes\n\n== top 40 by line ==")
        lines.extend(str(stat) for stat in by_line[:40])
        lines.append("\n== top 15 by traceback ==")
        for stat in snapshot.compare_to(state["ref"], "traceback")[:15]:
            lines.append(f"\n{stat.size_diff} bytes in {stat.count_diff} blocks")
            lines.extend(stat.traceback.format(limit=12))
        Path(f"{out}.{state['n']}.txt").write_text("\n".join(lines))

    signal.signal(signal.SIGUSR1, dump)
    return _serve()


def _pyinstrument(out: Path) -> int | None:
    """Statistical profile (1 ms samples) when pyinstrument is installed; None when it is not."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        return _serve()
    finally:
        profiler.stop()
        if profiler.last_session is not None:
            profiler.last_session.save(f"{out}.pyisession")  # re-render: pyinstrument --load OUT.pyisession
        Path(f"{out}.txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))


def main(argv: list[str]) -> int:
    mode, out = argv[0], Path(argv[1])
    if mode == "memory":
        return _memory(out)
    code = _pyinstrument(out)
    if code is not None:
        return code
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return _serve()
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
