"""Shared parts of the benchmarks: ports, file limits, the Kafka broker, a JWKS server, tokens,
server processes and fast Kafka producing.

Everything here talks to 127.0.0.1 only and owns what it starts: every process is started in a
session of its own (so a Ctrl-C at the terminal reaches only the orchestrator, which then stops
them in order) and stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
OUT_DIR = BENCH_DIR / "out"  # logs, broker state, profiles (git-ignored)
RESULTS_DIR = BENCH_DIR / "results"  # committed figures (PNG, results.json)
KAFKA_SCRIPT = REPO / "scripts" / "kafka.sh"

HOST = "127.0.0.1"
ISSUER = "https://issuer.bench.local"
AUDIENCE = "session-events"
TENANT = "tenant-bench"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_nofile_limit() -> int:
    """Raises the soft open-files limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def iso_millis(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def event_value(session_id: str, status: str, updated_ms: int, tenant: str = TENANT, kind: str | None = None) -> bytes:
    """A record value exactly as producers write it (see ``schemas.SessionStatusEvent``)."""
    payload: dict[str, Any] = {
        "id": session_id,
        "tenantId": tenant,
        "status": status,
        "updatedAt": iso_millis(updated_ms),
    }
    if kind is not None:
        payload["type"] = kind
    return orjson.dumps(payload)


# --- processes ------------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
    """Signals one process we started (by its pid), waits, then kills it if it is still there."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(10)


@dataclass
class ServerProcess:
    """An HTTP server under test, in its own process and session; its output goes to a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log_file: Any = None
    internal_port: int = 0  # the gateway's health/metrics port (0: the same port, as the baseline)

    @property
    def metrics_port(self) -> int:
        return self.internal_port or self.port

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, path: str = "/readyz", timeout: float = 120.0) -> float:
        """Polls ``path`` until it answers 200; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.tail()}")
            status, body = http_get(self.metrics_port, path)
            if status == 200:
                return time.monotonic() - started
            last = f"{status} {body[:200]!r}"
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s (last: {last}):\n{self.tail()}")

    def processes(self) -> list[Any]:
        """The server process and its children (``--workers N``: the supervisor and its workers)."""
        import psutil

        root = psutil.Process(self.pid)
        found = [root]
        with contextlib.suppress(psutil.Error):
            found.extend(root.children(recursive=True))
        return found

    def rss(self) -> int:
        """RSS of the server, summed over its worker processes (a process tree counts each worker once)."""
        import psutil

        total = 0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                total += int(process.memory_info().rss)
        return total

    def cpu_seconds(self) -> float:
        user, system = self.cpu_split()
        return user + system

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far, summed over the server's processes."""
        import psutil

        user = system = 0.0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                user += float(times.user)
                system += float(times.system)
        return user, system

    def stop(self, timeout: float = 20.0) -> None:
        stop_process(self.process, signal.SIGINT, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A tiny HTTP/1.0 GET against 127.0.0.1 (no client library involved); (0, b"") when unreachable."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return 0, b""
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, raw
    return status, body


# --- Kafka broker -----------------------------------------------------------------------------------


@dataclass
class KafkaBroker:
    """``scripts/kafka.sh`` on free ports, with a persistent state dir so the replay topic is reused."""

    state_dir: Path
    port: int = 0
    controller_port: int = 0
    started: bool = False

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_STATE_DIR": str(self.state_dir),
            "KAFKA_HEAP": os.environ.get("KAFKA_HEAP", "1g"),
        }

    def _script(self, command: str, timeout: float) -> int:
        completed = subprocess.run(
            ["bash", str(KAFKA_SCRIPT), command],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,
            timeout=timeout,
            check=False,
            start_new_session=True,  # the broker it forks must not get the terminal's Ctrl-C
        )
        return completed.returncode

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port, self.controller_port = free_ports(2)
        self.started = True  # from here on, stop() must run even if start fails half-way
        if self._script("start", 240) != 0:
            raise RuntimeError(f"scripts/kafka.sh start failed; logs in {self.state_dir}")

    def stop(self) -> None:
        if self.started:
            self._script("stop", 60)
            self.started = False


# --- JWKS and tokens --------------------------------------------------------------------------------


def new_signing_key() -> Any:
    from joserfc.jwk import RSAKey

    return RSAKey.generate_key(2048, parameters={"kid": "bench-1", "use": "sig", "alg": "RS256"})


class TokenMinter:
    """Mints RS256 tokens from a private JWK (built in each load process from the JWK dict)."""

    def __init__(self, private_jwk: dict[str, Any]) -> None:
        from joserfc.jwk import RSAKey

        self.key = RSAKey.import_key(private_jwk)
        self.kid = private_jwk.get("kid")

    def mint(
        self,
        sub: str,
        tenant: str = TENANT,
        ttl: int = 3600,
        scope: str | None = None,
        channels: list[str] | None = None,
    ) -> str:
        """An RS256 token; ``channels``: Centrifugo's claim of server-side subscriptions (benchmarks/centrifugo.py)."""
        from joserfc import jwt

        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + ttl,
            "tenant_id": tenant,
        }
        if scope:
            claims["scope"] = scope
        if channels is not None:
            claims["channels"] = channels
        return jwt.encode({"alg": "RS256", "kid": self.kid, "typ": "JWT"}, claims, self.key, algorithms=["RS256"])


@dataclass
class JwksServer:
    """A JWKS endpoint on a free port of 127.0.0.1, in a thread of the orchestrator."""

    public_jwk: dict[str, Any]
    port: int = 0
    fetches: int = 0
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/jwks.json"

    def start(self) -> JwksServer:
        owner = self
        body = json.dumps({"keys": [self.public_jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_response(404)
                    self.end_headers()
                    return
                owner.fetches += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", "max-age=3600")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="jwks", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# --- Kafka topics and producing ---------------------------------------------------------------------


async def create_topic(bootstrap: str, name: str, partitions: int, configs: dict[str, str] | None = None) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=configs or {})]
        )
    finally:
        await admin.close()
    await wait_for_leaders(bootstrap, name, partitions)


async def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    if not names:
        return
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(names))
    finally:
        await admin.close()


async def describe_topic(bootstrap: str, name: str) -> dict[int, int]:
    """Partition -> leader (empty when the topic does not exist)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        described = await admin.describe_topics([name])
    finally:
        await admin.close()
    leaders: dict[int, int] = {}
    for entry in described:
        if entry["topic"] == name and entry["error_code"] == 0:
            for part in entry["partitions"]:
                leaders[int(part["partition"])] = int(part["leader"])
    return leaders


async def wait_for_leaders(bootstrap: str, name: str, partitions: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = await describe_topic(bootstrap, name)
        if len(leaders) == partitions and all(leader >= 0 for leader in leaders.values()):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topic {name} has no leader for all {partitions} partitions after {timeout:.0f}s")


async def topic_offsets(bootstrap: str, name: str) -> tuple[dict[int, int], dict[int, int]]:
    """(beginning offsets, end offsets) per partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(name) or ())
        if not partitions:
            from consumers.aiokafka_seam.metadata import refresh_topics

            await refresh_topics(consumer, [name])
            partitions = sorted(consumer.partitions_for_topic(name) or ())
        tps = [TopicPartition(name, p) for p in partitions]
        begins = await consumer.beginning_offsets(tps) if tps else {}
        ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    return {tp.partition: off for tp, off in begins.items()}, {tp.partition: off for tp, off in ends.items()}


class FastProducer:
    """aiokafka producer writing explicit per-partition batches (no compression, big batches)."""

    def __init__(self, bootstrap: str, linger_ms: int = 0, batch_bytes: int = 512 * 1024) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks=1,
            linger_ms=linger_ms,
            max_batch_size=batch_bytes,
            max_request_size=4 * 1024 * 1024,
            compression_type=None,
            request_timeout_ms=30_000,
        )

    async def __aenter__(self) -> FastProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[Any]:
        """Queues one record (partitioned by key, like any producer); returns its delivery future."""
        future: asyncio.Future[Any] = await self._producer.send(topic, key=key, value=value, headers=headers)
        return future

    async def bulk(
        self, topic: str, partitions: int, records: Iterable[tuple[bytes, bytes]], in_flight: int = 24
    ) -> int:
        """Writes records round-robin over partitions in large batches; returns how many were written."""
        producer = self._producer
        batches = [producer.create_batch() for _ in range(partitions)]
        pending: list[asyncio.Future[Any]] = []
        written = 0
        timestamp = int(time.time() * 1000)

        async def flush(partition: int) -> None:
            batch = batches[partition]
            if batch.record_count() == 0:
                return
            batch.close()
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            batches[partition] = producer.create_batch()
            if len(pending) >= in_flight:
                await asyncio.gather(*pending)
                pending.clear()

        for index, (key, value) in enumerate(records):
            partition = index % partitions
            if batches[partition].append(key=key, value=value, timestamp=timestamp) is None:
                await flush(partition)
                if batches[partition].append(key=key, value=value, timestamp=timestamp) is None:
                    raise RuntimeError("record larger than a batch")
            written += 1
        for partition in range(partitions):
            await flush(partition)
        await asyncio.gather(*pending)
        return written

    async def flush(self) -> None:
        await self._producer.flush()


def channel_headers(session_id: str, with_headers: bool) -> list[tuple[str, bytes]] | None:
    """The headers Centrifugo's publication-data mode needs (``with_headers``), else none: our records as is."""
    if not with_headers:
        return None
    from benchmarks.centrifugo import record_headers

    return record_headers(session_id)


async def publish_active_sessions(
    bootstrap: str, topic: str, session_ids: Sequence[str], partitions: int = 6, headers: bool = False
) -> None:
    """Creates ``topic`` and writes one 'active' record per session (keyed by the session id)."""
    await create_topic(bootstrap, topic, partitions)
    now = int(time.time() * 1000)
    async with FastProducer(bootstrap, linger_ms=5) as producer:
        futures = [
            await producer.send(
                topic,
                sid.encode(),
                event_value(sid, "active", now, kind="presentation"),
                channel_headers(sid, headers),
            )
            for sid in session_ids
        ]
        await asyncio.gather(*futures)


# --- machine description ----------------------------------------------------------------------------


def code_version() -> str:
    """Short commit of the working tree, with '+dirty' when the product code differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway", "consumers", "schemas"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine_description() -> str:
    import platform

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        memory = "?"
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, load avg {load[0]:.1f} at start"
    )
