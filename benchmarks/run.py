"""``python -m benchmarks [--quick] [--only N[,N...]] [--profile cpu|memory]``

Starts a Kafka broker (``scripts/kafka.sh`` on free ports; or uses ``KAFKA_BOOTSTRAP_SERVERS``), a
JWKS server, and for each benchmark a real server process of the gateway and then of the baseline
(``benchmarks/baseline_app.py``), each driven by separate load processes (``benchmarks/loadgen.py``).
Prints a table and rewrites the results table of ``benchmarks/README.md``, ``benchmarks/results/``
(``results.json``, ``latency_cdf.png``). Everything started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.common import (
    AUDIENCE,
    BENCH_DIR,
    ISSUER,
    OUT_DIR,
    RESULTS_DIR,
    FastProducer,
    JwksServer,
    KafkaBroker,
    ServerProcess,
    code_version,
    create_topic,
    delete_topics,
    describe_topic,
    event_value,
    free_ports,
    http_get,
    log,
    machine_description,
    new_signing_key,
    publish_active_sessions,
    raise_nofile_limit,
    stop_process,
    topic_offsets,
)
from benchmarks.loadgen import LoadGroup

IMPLS = ("gateway", "baseline")
README = BENCH_DIR / "README.md"
RESULTS_JSON = RESULTS_DIR / "results.json"
CDF_PNG = RESULTS_DIR / "latency_cdf.png"
TABLE_START = "<!-- results:start -->"
TABLE_END = "<!-- results:end -->"


@dataclass(frozen=True)
class Scale:
    name: str
    load_processes: int
    memory_streams: int
    storm_streams: int
    storm_concurrency: int  # in flight per load process
    latency_streams: int
    latency_rate: int  # transitions per second
    fanout_sessions: int
    fanout_subscribers: int
    fanout_rounds: int
    replay_records: int
    open_concurrency: int = 100  # per load process, when opening streams for the other benchmarks
    settle_seconds: float = 5.0


FULL = Scale("full", 3, 15_000, 6_000, 100, 10_000, 1_000, 100, 100, 3, 1_000_000)
QUICK = Scale("quick", 3, 1_500, 1_500, 100, 1_500, 1_000, 15, 100, 1, 100_000, settle_seconds=3.0)


@dataclass
class Row:
    key: str
    figure: str
    target: str
    unit: str
    lower_is_better: bool
    target_value: float
    project: float | None = None
    baseline: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    scale: str = ""
    date: str = ""
    machine: str = ""
    version: str = ""

    @property
    def met(self) -> bool | None:
        if self.project is None:
            return None
        return self.project <= self.target_value if self.lower_is_better else self.project >= self.target_value

    @property
    def ratio(self) -> float | None:
        """How many times better than the baseline (> 1: better)."""
        if not self.project or not self.baseline:
            return None
        return self.baseline / self.project if self.lower_is_better else self.project / self.baseline


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "KB":
        return f"{value / 1024:.1f} KB"
    if unit == "B":
        return f"{value:.0f} B"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:,.0f}/s"


# --- the run context ---------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


@dataclass
class Context:
    scale: Scale
    bootstrap: str
    jwks: JwksServer
    private_jwk: dict[str, Any]
    run_id: str
    profile: str | None
    impls: tuple[str, ...] = IMPLS
    topics: list[str] = field(default_factory=list)
    live: list[Any] = field(default_factory=list)  # servers and load groups to stop on the way out

    @property
    def out(self) -> Path:
        return OUT_DIR / self.run_id

    def topic(self, name: str) -> str:
        topic = f"bench-{self.run_id}-{name}"
        self.topics.append(topic)
        return topic

    @contextlib.contextmanager
    def server(self, impl: str, topic: str, bench: str, **env: str) -> Iterator[ServerProcess]:
        port = free_ports(1)[0]
        log_path = self.out / f"{bench}-{impl}.log"
        if impl == "gateway":
            argv = [sys.executable, "-m", "gateway", "serve"]
            if os.environ.get("BENCH_GATEWAY_CMD"):  # experiments: e.g. a patched gateway
                argv = os.environ["BENCH_GATEWAY_CMD"].split()
            if self.profile:
                argv = [sys.executable, "-m", "benchmarks.profiled", self.profile, str(self.out / f"{bench}-profile")]
            environment = {
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(port),
                "GATEWAY_INSTANCE_ID": f"bench-{bench}",
                "GATEWAY_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "GATEWAY_KAFKA_TOPIC": topic,
                "GATEWAY_JWKS_URL": self.jwks.url,
                "GATEWAY_JWT_ISSUER": ISSUER,
                "GATEWAY_JWT_AUDIENCE": AUDIENCE,
                "GATEWAY_LOG_LEVEL": "INFO",
                **env,
            }
        else:
            argv = [sys.executable, "-m", "benchmarks.baseline_app"]
            environment = {
                "BASELINE_PORT": str(port),
                "BASELINE_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "BASELINE_KAFKA_TOPIC": topic,
                "BASELINE_JWKS_URL": self.jwks.url,
                "BASELINE_JWT_ISSUER": ISSUER,
                "BASELINE_JWT_AUDIENCE": AUDIENCE,
            }
        server = ServerProcess(f"{impl} ({bench})", argv, environment, port, log_path)
        self.live.append(server)
        server.start()
        try:
            seconds = server.wait_ready()
            log(f"{server.name} ready on port {port} after {seconds:.1f}s (pid {server.pid})")
            yield server
            if not server.alive():
                raise RuntimeError(f"{server.name} died during the benchmark:\n{server.tail()}")
        finally:
            server.stop(timeout=90.0 if self.profile else 20.0)  # a profiler writes its report on exit
            self.live.remove(server)

    @contextlib.contextmanager
    def load(self, port: int) -> Iterator[LoadGroup]:
        group = LoadGroup(self.scale.load_processes, {"port": port, "private_jwk": self.private_jwk})
        self.live.append(group)
        try:
            yield group
        finally:
            group.stop()
            self.live.remove(group)

    def stop_all(self) -> None:
        for thing in reversed(self.live):
            with contextlib.suppress(Exception):
                thing.stop()
        self.live.clear()


def sessions(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def split(items: Sequence[str], parts: int) -> list[list[str]]:
    return [list(items[i::parts]) for i in range(parts)]


def open_streams(
    load: LoadGroup, shares: list[list[str]], concurrency: int, distinct: bool = False, timeout: float = 60.0
) -> dict[str, Any]:
    replies = load.call(
        [
            {
                "cmd": "open",
                "sessions": share,
                "concurrency": concurrency,
                "timeout": timeout,
                "deadline_s": 600.0,
                "distinct_tokens": distinct,
            }
            for share in shares
        ],
        timeout=700,
    )
    errors: dict[str, int] = {}
    for reply in replies:
        for reason, count in reply["errors"].items():
            errors[reason] = errors.get(reason, 0) + count
    ok = sum(r["ok"] for r in replies)
    total = sum(len(s) for s in shares)
    if ok < total:
        log(f"  {total - ok} of {total} streams failed to open: {errors}")
    return {
        "ok": ok,
        "failed": total - ok,
        "errors": errors,
        "first_start": min(r["first_start"] for r in replies),
        "last_first_event": max(r["last_first_event"] for r in replies),
        "handshake_ms": [ms for r in replies for ms in r["handshake_ms"]],
    }


def mint(load: LoadGroup, count: int, prefix: str) -> None:
    load.call([{"cmd": "mint", "count": count, "prefix": f"{prefix}-{i}"} for i in range(len(load))], timeout=300)


def warm_up(load: LoadGroup, session_ids: list[str]) -> None:
    """A few streams opened and closed, so one-time costs (imports, caches) are not measured."""
    shares = [session_ids[:10]] + [[] for _ in range(len(load) - 1)]
    open_streams(load, shares, 10)
    load.broadcast({"cmd": "close"})


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median_rss(server: ServerProcess, samples: int = 3, gap: float = 0.5) -> int:
    values = []
    for _ in range(samples):
        values.append(server.rss())
        time.sleep(gap)
    return int(statistics.median(values))


def kafka(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# --- 1. memory per open stream -----------------------------------------------------------------------


def bench_memory(ctx: Context) -> Row:
    scale = ctx.scale
    row = Row(
        "1-memory",
        f"Memory per open authenticated stream ({scale.memory_streams:,} idle streams, one process)",
        "≤ 12 KB",
        "KB",
        True,
        12 * 1024,
    )
    for impl in ctx.impls:
        topic = ctx.topic(f"memory-{impl}")
        ids = sessions(scale.memory_streams + 10)
        kafka(publish_active_sessions(ctx.bootstrap, topic, ids))
        env = {"GATEWAY_MAX_CONNECTIONS_PER_SUBJECT": "20000"}
        with ctx.server(impl, topic, "memory", **env) as server, ctx.load(server.port) as load:
            mint(load, 64, f"mem-{impl}")
            warm_up(load, ids[-10:])
            time.sleep(scale.settle_seconds / 2)
            if ctx.profile == "memory" and impl == "gateway":
                _memory_snapshot(server, before=True, out=ctx.out)
            rss_before = median_rss(server)
            opened = open_streams(load, split(ids[: scale.memory_streams], len(load)), scale.open_concurrency)
            time.sleep(scale.settle_seconds)
            rss_after = median_rss(server)
            if ctx.profile == "memory" and impl == "gateway":
                _memory_snapshot(server, before=False, out=ctx.out)
            per_stream = (rss_after - rss_before) / max(1, opened["ok"])
            log(
                f"  {impl}: {opened['ok']} streams, RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB, "
                f"{per_stream / 1024:.1f} KB/stream"
            )
            load.broadcast({"cmd": "close"})
        setattr(row, "project" if impl == "gateway" else "baseline", per_stream)
        row.details[impl] = {
            "streams": opened["ok"],
            "failed": opened["failed"],
            "rss_before_mib": round(rss_before / 2**20, 1),
            "rss_after_mib": round(rss_after / 2**20, 1),
        }
    return row


def _memory_snapshot(server: ServerProcess, before: bool, out: Path) -> None:
    """With --profile memory: SIGUSR1 asks benchmarks.profiled to snapshot tracemalloc; waits for the file."""
    path = out / f"memory-profile.{0 if before else 1}.txt"
    server.process.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
    deadline = time.monotonic() + 300
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)


# --- 2. reconnect storm ------------------------------------------------------------------------------


def bench_storm(ctx: Context) -> Row:
    scale = ctx.scale
    row = Row(
        "2-storm",
        f"New authenticated streams per second (reconnect storm, {scale.storm_streams:,} RS256 tokens, "
        f"{scale.storm_concurrency * scale.load_processes} in flight)",
        "≥ 2,000/s",
        "/s",
        False,
        2000,
    )
    for impl in ctx.impls:
        topic = ctx.topic(f"storm-{impl}")
        ids = sessions(scale.storm_streams + 10)
        kafka(publish_active_sessions(ctx.bootstrap, topic, ids))
        with ctx.server(impl, topic, "storm") as server, ctx.load(server.port) as load:
            per_process = -(-scale.storm_streams // len(load))
            mint(load, per_process, f"storm-{impl}")
            warm_up(load, ids[-10:])
            mint(load, per_process, f"storm2-{impl}")  # fresh tokens: none verified before
            time.sleep(1.0)
            cpu_before = server.cpu_seconds()
            opened = open_streams(
                load, split(ids[: scale.storm_streams], len(load)), scale.storm_concurrency, distinct=True
            )
            cpu = server.cpu_seconds() - cpu_before
            seconds = opened["last_first_event"] - opened["first_start"]
            rate = opened["ok"] / seconds if seconds > 0 else 0.0
            log(
                f"  {impl}: {opened['ok']} streams in {seconds:.2f}s = {rate:,.0f}/s; server CPU "
                f"{cpu * 1e6 / max(1, opened['ok']):.0f} µs/stream"
            )
            load.broadcast({"cmd": "close"})
        setattr(row, "project" if impl == "gateway" else "baseline", rate)
        handshakes = opened["handshake_ms"]
        row.details[impl] = {
            "streams": opened["ok"],
            "failed": opened["failed"],
            "errors": opened["errors"],
            "seconds": round(seconds, 3),
            "server_cpu_us_per_stream": round(cpu * 1e6 / max(1, opened["ok"])),
            "handshake_p50_ms": round(percentile(handshakes, 50), 1),
            "handshake_p99_ms": round(percentile(handshakes, 99), 1),
        }
    return row


# --- 3. produce-to-client delay ----------------------------------------------------------------------


async def paced_produce(bootstrap: str, topic: str, transitions: list[tuple[str, str]], rate: int) -> float:
    """Sends ``transitions`` at ``rate`` per second, each stamped (updatedAt) when it is sent."""
    async with FastProducer(bootstrap, linger_ms=0) as producer:
        pending = []
        started = time.monotonic()
        sent = 0
        while sent < len(transitions):
            due = min(len(transitions), int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                session_id, status = transitions[sent]
                now_ms = int(time.time() * 1000)
                value = event_value(session_id, status, now_ms, kind="presentation")
                pending.append(await producer.send(topic, session_id.encode(), value))
                sent += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*pending)
        return time.monotonic() - started


def wait_for_deliveries(load: LoadGroup, expected: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        counters = load.broadcast({"cmd": "counters"})
        if sum(c["live_events"] for c in counters) >= expected or time.monotonic() > deadline:
            return counters
        time.sleep(0.05)


def bench_latency(ctx: Context, cdf: dict[str, list[float]]) -> list[Row]:
    scale = ctx.scale
    p50 = Row(
        "3-delay-p50",
        f"Delay Kafka produce → event at client, p50 ({scale.latency_rate:,} transitions/s over "
        f"{scale.latency_streams:,} streams)",
        "≤ 10 ms",
        "ms",
        True,
        10,
    )
    p99 = Row("3-delay-p99", p50.figure.replace("p50", "p99"), "≤ 50 ms", "ms", True, 50)
    for impl in ctx.impls:
        topic = ctx.topic(f"latency-{impl}")
        ids = sessions(scale.latency_streams + 10)
        kafka(publish_active_sessions(ctx.bootstrap, topic, ids))
        env = {"GATEWAY_MAX_CONNECTIONS_PER_SUBJECT": "20000"}
        watched = ids[: scale.latency_streams]
        with ctx.server(impl, topic, "latency", **env) as server, ctx.load(server.port) as load:
            mint(load, 64, f"lat-{impl}")
            warm_up(load, ids[-10:])
            opened = open_streams(load, split(watched, len(load)), scale.open_concurrency)
            load.broadcast({"cmd": "reset", "latency": True})
            transitions = [(sid, "fetched") for sid in watched] + [(sid, "completed") for sid in watched]
            probe = KafkaProbe(
                ctx.bootstrap,
                topic,
                len(transitions),
                len(transitions) / scale.latency_rate + 20,
                ctx.out / f"latency-{impl}-kafka-alone.json",
            )
            ctx.live.append(probe)
            histogram_before = delay_histogram(server.port) if impl == "gateway" else {}
            time.sleep(1.0)
            cpu_before = server.cpu_seconds()
            seconds = kafka(paced_produce(ctx.bootstrap, topic, transitions, scale.latency_rate))
            counters = wait_for_deliveries(load, 2 * opened["ok"], 15.0)
            cpu = server.cpu_seconds() - cpu_before
            histogram = histogram_delta(histogram_before, delay_histogram(server.port)) if impl == "gateway" else {}
            by_status: dict[str, list[float]] = {}
            for reply in load.broadcast({"cmd": "latencies"}):
                for status, values in reply["latencies_ms"].items():
                    by_status.setdefault(status, []).extend(values)
            load.broadcast({"cmd": "close"})
            floor = probe.result()
            ctx.live.remove(probe)
        latencies = [ms for values in by_status.values() for ms in values]
        received = sum(c["live_events"] for c in counters)
        cdf[impl] = latencies
        cdf[f"{impl}-kafka"] = floor
        log(
            f"  {impl}: {len(transitions)} transitions in {seconds:.1f}s, {received} of {2 * opened['ok']} "
            f"delivered; p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
            f"max {max(latencies, default=float('nan')):.1f} ms; server CPU {cpu / seconds * 100:.0f}%; "
            f"Kafka alone (same run): p50 {percentile(floor, 50):.1f} ms, p99 {percentile(floor, 99):.1f} ms"
        )
        for row, q in ((p50, 50), (p99, 99)):
            setattr(row, "project" if impl == "gateway" else "baseline", percentile(latencies, q))
        p50.details[impl] = {
            "streams": opened["ok"],
            "transitions": len(transitions),
            "produce_seconds": round(seconds, 2),
            "delivered": received,
            "expected": 2 * opened["ok"],
            **summary(latencies),
            "by_status": {status: summary(values) for status, values in sorted(by_status.items())},
            "kafka_alone": summary(floor),
            "server_cpu_share": round(cpu / seconds, 2),
        }
        if histogram:
            p50.details[impl]["server_side_delay_histogram_s"] = histogram
    p99.details = p50.details
    return [p50, p99]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 2),
        "p90_ms": round(percentile(values, 90), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "p999_ms": round(percentile(values, 99.9), 2),
        "max_ms": round(max(values, default=float("nan")), 2),
    }


class KafkaProbe:
    """``benchmarks.kafka_probe`` in its own process: the Kafka-only delay, measured in the same run."""

    def __init__(self, bootstrap: str, topic: str, expected: int, timeout: float, out: Path) -> None:
        import subprocess

        self._out = out
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.kafka_probe", bootstrap, topic, str(expected), str(timeout), str(out)],
            cwd=BENCH_DIR.parent,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # "ready" once positioned at the end offsets
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError("the Kafka probe did not start")

    def result(self, timeout: float = 60.0) -> list[float]:
        self._process.wait(timeout)
        try:
            delays: list[float] = json.loads(self._out.read_text())
        except (OSError, ValueError):
            log("  the Kafka probe left no result")
            return []
        return delays

    def stop(self) -> None:
        stop_process(self._process, signal.SIGTERM, 5)  # type: ignore[arg-type]


def delay_histogram(port: int) -> dict[str, float]:
    """The gateway's own ``gateway_delivery_delay_seconds`` buckets (record timestamp -> written)."""
    status, body = http_get(port, "/metrics")
    buckets: dict[str, float] = {}
    if status != 200:
        return buckets
    for line in body.decode().splitlines():
        if line.startswith("gateway_delivery_delay_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Cumulative fraction of the writes within each bucket bound, for this benchmark's window only."""
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    total = counts.get("+Inf", 0.0)
    return {le: round(count / total, 4) for le, count in counts.items()} if total else {}


def draw_cdf(cdf: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    curves = (
        ("gateway", "this project (gateway)", "-", "C0"),
        ("baseline", "baseline (FastAPI + sse-starlette)", "-", "C1"),
        ("gateway-kafka", "Kafka alone, during the gateway's run", ":", "C0"),
        ("baseline-kafka", "Kafka alone, during the baseline's run", ":", "C1"),
    )
    for key, label, style, color in curves:
        values = sorted(cdf.get(key, []))
        if not values:
            continue
        ys = [(i + 1) / len(values) for i in range(len(values))]
        ax.plot(
            [max(v, 0.05) for v in values],
            ys,
            linestyle=style,
            color=color,
            label=f"{label}: p50 {percentile(values, 50):.1f} ms, p99 {percentile(values, 99):.1f} ms",
        )
    ax.axvline(10, color="grey", linestyle=":", linewidth=1)
    ax.axvline(50, color="grey", linestyle="--", linewidth=1)
    ax.text(10, 0.95, " p50 target", color="grey", fontsize=8)
    ax.text(50, 0.90, " p99 target", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("delay from Kafka produce to event bytes at the client (ms, log scale)")
    ax.set_ylabel("fraction of events")
    ax.set_ylim(0, 1.005)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- 4. fan-out ----------------------------------------------------------------------------------------


async def burst(bootstrap: str, topic: str, session_ids: list[str], status: str) -> None:
    async with FastProducer(bootstrap, linger_ms=2) as producer:
        now_ms = int(time.time() * 1000)
        futures = [
            await producer.send(topic, sid.encode(), event_value(sid, status, now_ms, kind="issuance"))
            for sid in session_ids
        ]
        await asyncio.gather(*futures)


def bench_fanout(ctx: Context) -> Row:
    scale = ctx.scale
    sessions_per_round, subscribers = scale.fanout_sessions, scale.fanout_subscribers
    row = Row(
        "4-fanout",
        f"Event deliveries per second ({sessions_per_round} sessions x {subscribers} subscribers, "
        f"{scale.fanout_rounds} rounds of fetched+completed bursts)",
        "≥ 50,000/s",
        "/s",
        False,
        50_000,
    )
    for impl in ctx.impls:
        topic = ctx.topic(f"fanout-{impl}")
        ids = sessions(sessions_per_round * scale.fanout_rounds + 10)
        kafka(publish_active_sessions(ctx.bootstrap, topic, ids))
        env = {
            "GATEWAY_MAX_CONNECTIONS_PER_SUBJECT": "20000",
            "GATEWAY_MAX_CONNECTIONS_PER_SESSION": str(subscribers + 50),
        }
        deliveries = 0
        window = 0.0
        bursts = []
        with ctx.server(impl, topic, "fanout", **env) as server, ctx.load(server.port) as load:
            mint(load, 64, f"fan-{impl}")
            warm_up(load, ids[-10:])
            for round_index in range(scale.fanout_rounds):
                round_ids = ids[round_index * sessions_per_round : (round_index + 1) * sessions_per_round]
                streams = [sid for _ in range(subscribers) for sid in round_ids]
                opened = open_streams(load, split(streams, len(load)), scale.open_concurrency)
                time.sleep(1.0)
                for status in ("fetched", "completed"):
                    load.broadcast({"cmd": "reset"})
                    load_cpu = sum(c["cpu_s"] for c in load.broadcast({"cmd": "counters"}))
                    user, system = server.cpu_split()
                    kafka(burst(ctx.bootstrap, topic, round_ids, status))
                    counters = wait_for_deliveries(load, opened["ok"], 30.0)
                    user_after, system_after = server.cpu_split()
                    user, system = user_after - user, system_after - system
                    server_cpu = user + system
                    load_cpu = sum(c["cpu_s"] for c in counters) - load_cpu
                    got = sum(c["live_events"] for c in counters)
                    active = [c for c in counters if c["live_events"]]
                    span = max(c["last_live"] for c in active) - min(c["first_live"] for c in active) if active else 0
                    deliveries += got
                    window += span
                    bursts.append(
                        {
                            "status": status,
                            "deliveries": got,
                            "expected": opened["ok"],
                            "ms": round(span * 1000, 1),
                            "server_cpu_ms": round(server_cpu * 1000),
                            "server_kernel_share": round(system / server_cpu, 2) if server_cpu else None,
                            "load_processes_cpu_ms": round(load_cpu * 1000),
                        }
                    )
                    log(
                        f"  {impl} round {round_index + 1} {status}: {got}/{opened['ok']} in {span * 1000:.0f} ms "
                        f"(server CPU {server_cpu * 1000:.0f} ms, {system / max(server_cpu, 1e-9):.0%} in the kernel; "
                        f"load processes CPU {load_cpu * 1000:.0f} ms, "
                        f"both from the burst's produce to its last delivery)"
                    )
                load.broadcast({"cmd": "close"})
        rate = deliveries / window if window > 0 else 0.0
        log(f"  {impl}: {deliveries} deliveries in {window:.2f}s of bursts = {rate:,.0f}/s")
        setattr(row, "project" if impl == "gateway" else "baseline", rate)
        row.details[impl] = {"deliveries": deliveries, "window_s": round(window, 3), "bursts": bursts}
    return row


# --- 5. replay ---------------------------------------------------------------------------------------------


REPLAY_PARTITIONS = 6


def replay_records(count: int) -> Iterator[tuple[bytes, bytes]]:
    rng = random.Random(20261128)
    now = int(time.time() * 1000)
    statuses = ["active"] * 6 + ["fetched"] * 2 + ["completed", "expired"]
    kinds = ["issuance", "presentation"]
    for _ in range(count):
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        tenant = f"tenant-{rng.randrange(50):02d}"
        value = event_value(session_id, rng.choice(statuses), now - rng.randrange(3_600_000), tenant, rng.choice(kinds))
        yield session_id.encode(), value


async def ensure_replay_topic(bootstrap: str, count: int) -> str:
    """The replay topic is made once per size and reused while it holds exactly ``count`` records."""
    topic = f"bench-replay-v1-{count}"
    leaders = await describe_topic(bootstrap, topic)
    if len(leaders) == REPLAY_PARTITIONS:
        begins, ends = await topic_offsets(bootstrap, topic)
        if sum(ends.values()) == count and not any(begins.values()):
            log(f"reusing topic {topic} ({count:,} records)")
            return topic
    if leaders:
        log(f"topic {topic} is not as expected; recreating it")
        await delete_topics(bootstrap, [topic])
        await asyncio.sleep(2)
    await create_topic(bootstrap, topic, REPLAY_PARTITIONS, {"retention.ms": "-1", "retention.bytes": "-1"})
    started = time.monotonic()
    async with FastProducer(bootstrap, linger_ms=20) as producer:
        written = await producer.bulk(topic, REPLAY_PARTITIONS, replay_records(count))
    log(f"produced {written:,} records to {topic} in {time.monotonic() - started:.1f}s")
    return topic


def run_replay(impl: str, bootstrap: str, topic: str, count: int, profile: Path | None) -> dict[str, Any]:
    import subprocess

    env = {**os.environ, "BENCH_REPLAY_PROFILE": str(profile)} if profile else None
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.replay", impl, bootstrap, topic, str(count)],
        cwd=BENCH_DIR.parent,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        start_new_session=True,
        env=env,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"replay {impl} failed:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def bench_replay(ctx: Context) -> list[Row]:
    count = ctx.scale.replay_records
    rate_row = Row(
        "5-replay-rate",
        f"Replay into the store ({count:,} records, {REPLAY_PARTITIONS} partitions, until caught up)",
        "≥ 100,000/s",
        "/s",
        False,
        100_000,
    )
    memory_row = Row(
        "5-replay-memory", f"Memory per cached session at {count:,} sessions (RSS growth)", "≤ 400 B", "B", True, 400
    )
    topic = kafka(ensure_replay_topic(ctx.bootstrap, count))
    for impl, worker in (("gateway", "gateway"), ("baseline", "naive")):
        if impl not in ctx.impls:
            continue
        profile = ctx.out / f"replay-{impl}-profile" if ctx.profile == "cpu" else None
        result = run_replay(worker, ctx.bootstrap, topic, count, profile)
        rate = result["records"] / result["seconds"]
        per_session = (result["rss_after"] - result["rss_before"]) / max(1, result["sessions"])
        log(
            f"  {impl}: {result['records']:,} records in {result['seconds']:.2f}s = {rate:,.0f}/s; "
            f"{result['sessions']:,} sessions, {per_session:.0f} B/session RSS, "
            f"{result['deep_bytes'] / max(1, result['sessions']):.0f} B/session by object sizes"
        )
        side = "project" if impl == "gateway" else "baseline"
        setattr(rate_row, side, rate)
        setattr(memory_row, side, per_session)
        details = {
            "records": result["records"],
            "sessions": result["sessions"],
            "seconds": round(result["seconds"], 2),
            "rss_before_mib": round(result["rss_before"] / 2**20, 1),
            "rss_caught_up_mib": round(result["rss_caught_up"] / 2**20, 1),
            "rss_after_mib": round(result["rss_after"] / 2**20, 1),
            "object_bytes_per_session": round(result["deep_bytes"] / max(1, result["sessions"])),
        }
        rate_row.details[impl] = details
        memory_row.details[impl] = details
    return [rate_row, memory_row]


# --- output ------------------------------------------------------------------------------------------------


def load_results() -> dict[str, dict[str, Any]]:
    try:
        data: dict[str, dict[str, Any]] = json.loads(RESULTS_JSON.read_text())
        return data
    except (OSError, ValueError):
        return {}


def row_cells(row: dict[str, Any]) -> list[str]:
    r = Row(**{k: row[k] for k in Row.__dataclass_fields__ if k in row})
    met = {True: " ✅", False: " ❌", None: ""}[r.met]
    ratio = r.ratio
    ratio_text = "n/a" if ratio is None else f"{ratio:.1f}x {'better' if ratio >= 1 else 'worse'}"
    return [
        r.figure,
        r.target,
        fmt(r.project, r.unit) + met,
        fmt(r.baseline, r.unit),
        ratio_text,
        f"{r.date} ({r.scale}, {r.version or '?'})",
        r.machine,
    ]


HEADER = ["figure", "target", "this project", "baseline", "ratio", "date (scale, commit)", "machine"]


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for key in sorted(results):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row_cells(results[key])) + " |")
    return "\n".join(lines)


def update_readme(table: str) -> None:
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{TABLE_START}\n{TABLE_END}\n"
    if TABLE_START not in text or TABLE_END not in text:
        text += f"\n## Results\n\n{TABLE_START}\n{TABLE_END}\n"
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    README.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}")


def print_table(rows: list[Row]) -> None:
    cells = [["figure", "target", "this project", "baseline", "ratio"]]
    for row in rows:
        cells.append(row_cells(asdict(row))[:5])
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    widths[0] = min(widths[0], 70)
    print()
    for index, line in enumerate(cells):
        print("  ".join(cell[: widths[i]].ljust(widths[i]) for i, cell in enumerate(line)))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    print()


# --- main ----------------------------------------------------------------------------------------------------


BENCHES: dict[int, str] = {1: "memory", 2: "storm", 3: "latency", 4: "fanout", 5: "replay"}


def parse_only(value: str) -> list[int]:
    chosen = sorted({int(part) for part in value.replace(" ", "").split(",") if part})
    if not chosen or any(n not in BENCHES for n in chosen):
        raise argparse.ArgumentTypeError(f"choose among {sorted(BENCHES)}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    parser.add_argument("--only", type=parse_only, default=sorted(BENCHES), help="benchmarks to run, e.g. 1 or 2,3")
    parser.add_argument("--quick", action="store_true", help="small scale (1,500 streams, 100k records): smoke test")
    parser.add_argument(
        "--profile",
        choices=["cpu", "memory"],
        help="run the gateway under cProfile / tracemalloc (see benchmarks/README.md)",
    )
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md and results/")
    parser.add_argument(
        "--gateway-only", action="store_true", help="skip the baseline (A/B experiments; implies --no-readme)"
    )
    args = parser.parse_args(argv)
    if args.profile or args.gateway_only:
        args.no_readme = True  # profiled figures are slowed down: never put them in the table

    scale = QUICK if args.quick else FULL
    limit = raise_nofile_limit()
    need = max(scale.memory_streams, scale.latency_streams, scale.fanout_sessions * scale.fanout_subscribers) + 500
    if limit < need:
        log(f"warning: open-files limit {limit} is below the {need} this scale needs")
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    machine = machine_description()
    version = code_version()
    log(f"run {run_id}, scale {scale.name}, benchmarks {args.only}, code {version}; {machine}")

    signal.signal(signal.SIGTERM, _on_sigterm)
    broker: KafkaBroker | None = None
    jwks: JwksServer | None = None
    ctx: Context | None = None
    rows: list[Row] = []
    cdf: dict[str, list[float]] = {}
    failures: list[int] = []
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if bootstrap:
            log(f"using KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        else:
            broker = KafkaBroker(OUT_DIR / "kafka-state")
            broker.start()
            bootstrap = broker.bootstrap
        key = new_signing_key()
        jwks = JwksServer(key.as_dict(private=False)).start()
        ctx = Context(scale, bootstrap, jwks, key.as_dict(private=True), run_id, args.profile)
        if args.gateway_only:
            ctx.impls = ("gateway",)
        ctx.out.mkdir(parents=True, exist_ok=True)
        runners: dict[int, Callable[[], list[Row]]] = {
            1: lambda: [bench_memory(ctx)],
            2: lambda: [bench_storm(ctx)],
            3: lambda: bench_latency(ctx, cdf),
            4: lambda: [bench_fanout(ctx)],
            5: lambda: bench_replay(ctx),
        }
        for number in args.only:
            log(f"--- benchmark {number}: {BENCHES[number]} ---")
            try:
                produced = runners[number]()
            except Exception as error:  # one failed benchmark must not stop the others (Ctrl-C still does)
                log(f"benchmark {number} failed: {type(error).__name__}: {error}")
                failures.append(number)
                ctx.stop_all()
                continue
            date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            for row in produced:
                row.scale, row.date, row.machine, row.version = scale.name, date, machine, version
                row.details["load_avg_1min_after"] = round(os.getloadavg()[0], 1)
            rows.extend(produced)
            print_table(produced)
    except (KeyboardInterrupt, Interrupted):
        log("interrupted: stopping everything")
        return_code = 130
    else:
        return_code = 1 if failures else 0
    finally:
        if ctx is not None:
            ctx.stop_all()
            if ctx.topics:
                with contextlib.suppress(Exception):
                    kafka(delete_topics(ctx.bootstrap, ctx.topics))
        if jwks is not None:
            jwks.stop()
        if broker is not None:
            broker.stop()

    if rows:
        print("\n=== results (ratio: how many times better than the baseline) ===")
        print_table(rows)
        for row in rows:
            print(f"{row.key}: {json.dumps(row.details)}")
        if not args.no_readme and return_code != 130:
            results = load_results()
            for row in rows:
                results[row.key] = asdict(row)
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            RESULTS_JSON.write_text(json.dumps(results, indent=1, default=str) + "\n")
            update_readme(markdown_table(results))
            if cdf:
                draw_cdf(cdf, CDF_PNG, rows_title(rows))
            log(f"wrote {README.relative_to(BENCH_DIR.parent)} and {RESULTS_DIR.relative_to(BENCH_DIR.parent)}/")
        if args.profile and ctx is not None:
            report_profiles(ctx.out, args.profile)
    return return_code


def rows_title(rows: list[Row]) -> str:
    for row in rows:
        if row.key == "3-delay-p50":
            return row.figure.replace(", p50", "").replace("Delay", "CDF of the delay")
    return "delay CDF"


def report_profiles(out: Path, mode: str) -> None:
    if mode == "cpu":
        import pstats

        for path in sorted(out.glob("*-profile")):  # cProfile stats (replay worker, or no pyinstrument)
            report = out / f"{path.name}.txt"
            with report.open("w") as stream:
                stats = pstats.Stats(str(path), stream=stream)
                stats.strip_dirs().sort_stats("tottime").print_stats(40)
                stats.sort_stats("cumulative").print_stats(60)
        for path in sorted(out.glob("*-profile.txt")):
            log(f"CPU profile: {path}")
    else:
        for path in sorted(out.glob("*-profile.*.txt")):
            log(f"memory profile: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
