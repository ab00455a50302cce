"""Runs ``session-gateway serve`` under a profiler (``python -m benchmarks --profile``).

``python -m benchmarks.profiled cpu OUT``: pyinstrument (1 ms samples; ``pip install pyinstrument``)
around the whole server, written to ``OUT.pyisession`` and ``OUT.txt`` when the server exits (the
orchestrator stops it with SIGINT, which drains and returns); without pyinstrument, cProfile stats in
``OUT``.

``python -m benchmarks.profiled thread-cpu OUT``: cProfile timed with ``time.thread_time``, so a function is
charged only the CPU its thread spent (with the wall clock, on 2 cores shared with the load processes, a
``transport.write`` that wakes a client is charged the time the client then runs: 184 µs of wall time per
write against 29 µs of CPU, measured). The timer is a system call per event, so the totals are inflated
by the number of calls: read the shares, not the µs. Stats in ``OUT``, the top of them in ``OUT.txt``.
E.g. ``BENCH_GATEWAY_CMD="python -m benchmarks.profiled thread-cpu OUT" python -m benchmarks --only 2
--gateway-only``.

``python -m benchmarks.profiled gc OUT``: no profiler; ``gc.callbacks`` time every collection per
generation, and ``OUT.txt`` gets the counts, the totals, the process CPU time and each pause of 2 ms or
more with its wall-clock time when the server exits (each server of a run overwrites it).

``python -m benchmarks.profiled memory OUT``: tracemalloc (12 frames) from the start; each SIGUSR1
writes ``OUT.<n>.txt`` with the allocations grown since the previous SIGUSR1 (the first one only
records the reference snapshot and writes ``OUT.0.txt``), grouped by line and by traceback.
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import signal
import sys
import time
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


def _cprofile(out: Path, thread_time: bool = False) -> int:
    """cProfile stats in ``OUT``; timed with the thread's CPU time (and the top of them in ``OUT.txt``) or not."""
    profiler = cProfile.Profile(time.thread_time) if thread_time else cProfile.Profile()
    profiler.enable()
    try:
        return _serve()
    finally:
        profiler.disable()
        profiler.dump_stats(out)
        if thread_time:
            text = io.StringIO()
            stats = pstats.Stats(str(out), stream=text)
            stats.sort_stats("tottime").print_stats(50)
            stats.sort_stats("cumulative").print_stats(90)
            Path(f"{out}.txt").write_text(text.getvalue())


def main(argv: list[str]) -> int:
    mode, out = argv[0], Path(argv[1])
    if mode == "memory":
        return _memory(out)
    if mode == "gc":
        return _gc(out)
    if mode == "thread-cpu":
        return _cprofile(out, thread_time=True)
    code = _pyinstrument(out)
    return _cprofile(out) if code is None else code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
