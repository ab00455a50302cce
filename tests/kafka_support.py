"""Kafka test helpers: finding or starting a broker, topics, producing records, running the consumer.

Plain functions and small classes, importable by any test module (``from tests.kafka_support import ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from consumers.consumer import SessionStatusConsumer
from consumers.hub import Hub
from consumers.progress import PartitionProgress
from consumers.settings import ConsumerSettings
from consumers.store import SessionStore, Transition
from consumers.supervision import Supervisor
from tests.support import free_port, wait_until

__all__ = ["free_port", "wait_until"]  # re-exported: one definition, in tests/support.py

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO_ROOT / "scripts" / "kafka.sh"
# The same Apache Kafka image and version as docker-compose.kafka.yml and scripts/kafka.sh (a test checks it).
TESTCONTAINERS_IMAGE = "apache/kafka:4.1.1"


# --------------------------------------------------------------------------------------------------
# Brokers


class BrokerError(RuntimeError):
    """A broker could not be started; the message says why and where its logs are."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago (all bound at once, so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        content = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(content[-lines:])


@dataclass
class LocalBroker:
    """A single-node KRaft broker run by ``scripts/kafka.sh`` on ports of its own, with its own state dir.

    The script's progress lines go to stderr, which the subprocess inherits.
    """

    port: int
    controller_port: int
    state_dir: Path

    @classmethod
    def allocate(cls, state_dir: Path) -> LocalBroker:
        port, controller_port = free_ports(2)
        return cls(port=port, controller_port=controller_port, state_dir=state_dir)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_STATE_DIR": str(self.state_dir),
        }

    def _run(self, command: str, timeout: float) -> int:
        try:
            completed = subprocess.run(
                [str(KAFKA_SCRIPT), command],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr,  # progress is wanted, and stdout of a test run belongs to pytest
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise BrokerError(f"`scripts/kafka.sh {command}` did not finish within {timeout:.0f}s") from error
        return completed.returncode

    def reallocate(self) -> None:
        """New free ports (a port chosen free a moment ago can be taken by the time the broker binds it)."""
        self.port, self.controller_port = free_ports(2)

    def fetch(self, timeout: float = 900.0) -> None:
        """Downloads the broker's jars unless they are cached (``scripts/kafka.sh fetch``), one process at a time:
        the pytest-xdist workers each start a broker, and on a fresh machine they would all download at once."""
        cache = Path(
            os.environ.get("KAFKA_CACHE_DIR")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "session-events-gateway"
        )
        cache.mkdir(parents=True, exist_ok=True)
        with (cache / ".fetch.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            code = self._run("fetch", timeout)
        if code != 0:
            raise BrokerError(f"`scripts/kafka.sh fetch` could not download the Kafka broker (exit code {code})")

    def start(self, timeout: float = 180.0, attempts: int = 3) -> None:
        """Starts the broker; a first start that lost its ports to another process retries on new ones."""
        self.fetch()
        first = not (self.state_dir / "server.properties").exists()
        for attempt in range(attempts):
            code = self._run("start", timeout)
            if code == 0:
                return
            lost_port = "Address already in use" in _tail(self.state_dir / "broker.log", 400)
            if not (lost_port and attempt + 1 < attempts):
                break
            self._run("stop", 60)
            if first:
                shutil.rmtree(self.state_dir, ignore_errors=True)
                self.state_dir.mkdir(parents=True)
                self.reallocate()
            else:
                time.sleep(2.0)  # a restart keeps its ports (clients know them): wait for them instead
        if code != 0:
            raise BrokerError(
                f"could not start a Kafka broker with scripts/kafka.sh on {self.bootstrap} "
                f"(exit code {code}); state and logs in {self.state_dir}\n"
                f"--- broker.log ---\n{_tail(self.state_dir / 'broker.log')}\n"
                f"--- server.log ---\n{_tail(self.state_dir / 'server.log')}"
            )

    def stop(self, timeout: float = 60.0) -> None:
        code = self._run("stop", timeout)
        if code != 0:
            raise BrokerError(f"`scripts/kafka.sh stop` failed for {self.bootstrap} (exit code {code})")

    def is_running(self) -> bool:
        pidfile = self.state_dir / "kafka.pid"
        try:
            pid = int(pidfile.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


class BackgroundBroker:
    """A ``LocalBroker`` whose (10-30 s) start may overlap with other tests."""

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="background-broker")
        self._started: Future[None] | None = None

    def begin(self) -> None:
        if self._started is None:
            self._started = self._pool.submit(self.broker.start)

    def result(self, timeout: float) -> LocalBroker:
        self.begin()
        assert self._started is not None
        self._started.result(timeout=timeout)
        return self.broker

    def close(self) -> None:
        if self._started is not None:
            with contextlib.suppress(Exception):
                self._started.result(timeout=300)
            self.broker.stop()
        self._pool.shutdown()


@contextlib.contextmanager
def background_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fixture: str
) -> Iterator[BackgroundBroker]:
    """For a module-scoped autouse fixture: a broker of the module's own, its start begun at once (in a thread)
    when a test of this module that will run uses ``fixture``; stopped when the module ends."""
    background = BackgroundBroker(LocalBroker.allocate(tmp_path_factory.mktemp("kafka-own")))
    module = request.module
    if any(
        getattr(item, "module", None) is module and fixture in getattr(item, "fixturenames", ())
        for item in request.session.items
    ):
        background.begin()
    try:
        yield background
    finally:
        background.close()


def docker_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout`` seconds."""
    try:
        docker = importlib.import_module("docker")
        client = docker.from_env(timeout=timeout)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()


@contextlib.contextmanager
def testcontainers_broker() -> Iterator[str]:
    """A KRaft broker in an ``apache/kafka`` container (only when a Docker engine is available).

    testcontainers' ``KafkaContainer`` drives Confluent's images only, so this is a plain container
    configured like docker-compose.kafka.yml. The advertised address (host and mapped port) is known
    only once the container runs: the container waits for a start script, written after start.
    """
    import io
    import tarfile

    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    script = "/tmp/tc-start.sh"
    container = (
        DockerContainer(TESTCONTAINERS_IMAGE)
        .with_exposed_ports(9092)
        .with_env("CLUSTER_ID", "dfwsfynOQ8alTJgRUU7lLw")
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9094")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT")
        .with_env("KAFKA_INTER_BROKER_LISTENER_NAME", "BROKER")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_NUM_PARTITIONS", "1")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_LOG_CLEANER_BACKOFF_MS", "1000")
        .with_command(["sh", "-c", f"while [ ! -f {script} ]; do sleep 0.1; done; exec sh {script}"])
    )
    try:
        container.start()
        bootstrap = f"{container.get_container_host_ip()}:{container.get_exposed_port(9092)}"
        content = (
            f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{bootstrap},BROKER://localhost:9093\n"
            "exec /etc/kafka/docker/run\n"
        ).encode()
        with io.BytesIO() as archive:
            with tarfile.TarFile(fileobj=archive, mode="w") as tar:
                info = tarfile.TarInfo(name=script.lstrip("/"))
                info.size = len(content)
                info.mode = 0o755
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(content))
            archive.seek(0)
            container.get_wrapped_container().put_archive("/", archive.getvalue())
        wait_for_logs(container, "Kafka Server started", timeout=120)
    except Exception as error:
        with contextlib.suppress(Exception):
            container.stop()
        raise BrokerError(f"could not start Kafka with testcontainers ({TESTCONTAINERS_IMAGE}): {error}") from error
    try:
        yield bootstrap
    finally:
        container.stop()


# --------------------------------------------------------------------------------------------------
# Topics and records


def unique_topic(prefix: str = "session-status") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def rfc3339(moment: datetime) -> str:
    """RFC 3339 with milliseconds and 'Z'."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_bytes(
    session_id: str,
    tenant: str,
    status: str,
    updated_at: datetime | str | None = None,
    **extra: Any,
) -> bytes:
    """A JSON record value; ``extra`` fields are added last, so they may also override ``id`` etc."""
    if updated_at is None:
        updated_at = datetime.now(UTC)
    payload: dict[str, Any] = {
        "id": session_id,
        "tenantId": tenant,
        "status": status,
        "updatedAt": rfc3339(updated_at) if isinstance(updated_at, datetime) else updated_at,
    }
    payload.update(extra)
    return json.dumps(payload).encode("utf-8")


async def _with_admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    return admin


async def topic_partitions(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> leader id, as the broker's metadata reports them now (empty if the topic is unknown)."""
    admin = await _with_admin(bootstrap)
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    leaders: dict[int, int] = {}
    for entry in described:
        if entry["topic"] == topic and entry["error_code"] == 0:
            for part in entry["partitions"]:
                leaders[int(part["partition"])] = int(part["leader"])
    return leaders


async def wait_for_partitions(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> None:
    """Waits until the topic has ``count`` partitions, each with a leader."""
    deadline = time.monotonic() + timeout
    leaders: dict[int, int] = {}
    while time.monotonic() < deadline:
        leaders = await topic_partitions(bootstrap, topic)
        if len(leaders) == count and all(leader >= 0 for leader in leaders.values()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic} has partitions {leaders}, expected {count} with leaders")


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 3,
    compacted: bool = False,
    configs: dict[str, str] | None = None,
) -> None:
    """Creates a topic (the brokers have auto.create.topics.enable=false) and waits for its leaders."""
    topic_configs = dict(configs or {})
    if compacted:
        topic_configs.setdefault("cleanup.policy", "compact")
    admin = await _with_admin(bootstrap)
    try:
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=topic_configs)]
        )
    finally:
        await admin.close()
    for entry in response.topic_errors:
        if entry[1] != 0:
            raise AssertionError(f"could not create topic {name}: {entry}")
    await wait_for_partitions(bootstrap, name, partitions)


async def add_partitions(bootstrap: str, topic: str, total: int) -> None:
    from aiokafka.admin import NewPartitions

    admin = await _with_admin(bootstrap)
    try:
        await admin.create_partitions({topic: NewPartitions(total_count=total)})
    finally:
        await admin.close()
    await wait_for_partitions(bootstrap, topic, total)


Record = tuple[bytes | None, bytes | None]


async def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[Record],
    partition: int | None = None,
    *,
    timestamp_ms: int | None = None,
) -> list[tuple[int, int]]:
    """Writes ``(key, value)`` records (partitioned by key unless ``partition`` is given).

    Returns ``(partition, offset)`` of every record, in order. Records of one partition keep their order.
    """
    async with started_producer(bootstrap) as producer:
        return await send(producer, topic, records, partition, timestamp_ms=timestamp_ms)


@contextlib.asynccontextmanager
async def started_producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A producer started (and stopped) around the block: a test that times a delivery sends with it, so the
    time measured holds no producer start-up or shutdown (seconds on a loaded machine)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, enable_idempotence=True)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def send(
    producer: AIOKafkaProducer,
    topic: str,
    records: Sequence[Record],
    partition: int | None = None,
    *,
    timestamp_ms: int | None = None,
) -> list[tuple[int, int]]:
    """``produce`` with a producer already started; returns once every record is acknowledged."""
    futures = [
        await producer.send(topic, value=value, key=key, partition=partition, timestamp_ms=timestamp_ms)
        for key, value in records
    ]
    metadata = await asyncio.gather(*futures)
    return [(int(meta.partition), int(meta.offset)) for meta in metadata]


# A record the Kafka client itself cannot parse: a header name that is not UTF-8 (librdkafka allows it; the
# broker keeps header names as bytes). aiokafka refuses such names itself, so the producer runs aiokafka's
# pure-Python batch builder (AIOKAFKA_NO_EXTENSIONS) with a name that encodes to invalid UTF-8. Two batches
# built explicitly, so that their boundaries are known: [`before` valid ones, bad record, `behind` valid ones],
# [`after` valid ones].
_UNPARSEABLE_BATCH_PRODUCER = """
import asyncio, json, sys
from datetime import datetime, timezone
from aiokafka import AIOKafkaProducer

class NotUtf8(str):
    def encode(self, *args, **kwargs):
        return b"\\xff\\xfe-not-utf8"

def value(session_id):
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"id": session_id, "tenantId": "t", "status": "active", "updatedAt": now}).encode()

async def main(bootstrap, topic, partition, prefix, behind, after, before):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=8 << 20, max_request_size=16 << 20)
    await producer.start()
    try:
        bad = producer.create_batch()
        for i in range(before):
            key = f"{prefix}-before-{i}".encode()
            assert bad.append(key=key, value=value(key.decode()), timestamp=None) is not None
        key = (prefix + "-poison").encode()
        bad.append(key=key, value=value(key.decode()), timestamp=None, headers=[(NotUtf8("h"), b"v")])
        for i in range(behind):
            key = f"{prefix}-behind-{i}".encode()
            assert bad.append(key=key, value=value(key.decode()), timestamp=None) is not None
        first = await (await producer.send_batch(bad, topic, partition=partition))
        offsets = [first.offset]
        if after:
            good = producer.create_batch()
            for i in range(after):
                key = f"{prefix}-after-{i}".encode()
                assert good.append(key=key, value=value(key.decode()), timestamp=None) is not None
            offsets.append((await (await producer.send_batch(good, topic, partition=partition))).offset)
    finally:
        await producer.stop()
    print(json.dumps(offsets))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], *map(int, sys.argv[5:8])))
"""


async def produce_unparseable_batch(
    bootstrap: str, topic: str, prefix: str, behind: int, after: int, partition: int = 0, before: int = 0
) -> list[int]:
    """``partition`` gets a batch of ``before`` valid records ``{prefix}-before-<i>``, ``{prefix}-poison`` (a record
    the client cannot parse) and ``behind`` valid records ``{prefix}-behind-<i>``, then a batch of ``after`` valid
    records ``{prefix}-after-<i>`` (if any); returns the base offsets of the batches."""
    arguments = [bootstrap, topic, str(partition), prefix, str(behind), str(after), str(before)]
    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _UNPARSEABLE_BATCH_PRODUCER, *arguments],
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    offsets: list[int] = json.loads(completed.stdout)
    return offsets


# One record of ``mib`` MiB of zeros: a few KB as zstd, about 0.1% as gzip; under the broker's message limit.
_BOMB_PRODUCER = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

async def main(bootstrap, topic, codec, mib):
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, compression_type=codec, max_request_size=2**31 - 1, acks="all"
    )
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, key=b"bomb", value=bytes(mib << 20), partition=0)
    finally:
        await producer.stop()
    print(meta.offset)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def produce_bomb(bootstrap: str, topic: str, codec: str, mib: int) -> int:
    """Writes a decompression bomb to partition 0 with aiokafka's producer (in a subprocess: building it takes
    a few times ``mib`` of memory, which stays out of the test process); returns its offset."""
    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _BOMB_PRODUCER, bootstrap, topic, codec, str(mib)],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return int(completed.stdout)


@dataclass(frozen=True)
class StoredRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


async def read_all(bootstrap: str, topic: str, *, read_committed: bool = True) -> list[StoredRecord]:
    """Every record the topic holds now, in partition then offset order (reads up to the end offsets)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    # aiokafka's partitions_for_topic() answers from a cache that topics() does not fill: ask the admin API.
    partitions = sorted(await topic_partitions(bootstrap, topic))
    if not partitions:
        raise AssertionError(f"topic {topic} does not exist")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[StoredRecord] = []
        deadline = time.monotonic() + 30

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end offsets {ends}")
            batches = await consumer.getmany(timeout_ms=200)
            for tp_records in batches.values():
                records.extend(StoredRecord(r.partition, r.offset, r.key, r.value, r.timestamp) for r in tp_records)
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def metric(name: str, **labels: str) -> float:
    """Current value of a sample of the default prometheus registry (0 when it does not exist yet)."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


# --------------------------------------------------------------------------------------------------
# Consumer


def encode_frame(transition: Transition) -> bytes:
    return f"{transition.session_id}:{transition.status}:{transition.offset}".encode()


class RecordingSubscriber:
    """A hub subscriber that remembers everything it was handed, in order."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.timestamps: list[int] = []
        self.terminal: list[bool] = []
        self.deleted = 0
        self.closed: str | None = None
        self.on_deliver: Callable[[bytes], None] | None = None

    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        self.frames.append(frame)
        self.timestamps.append(record_timestamp_ms)
        self.terminal.append(terminal)
        if self.on_deliver is not None:
            self.on_deliver(frame)

    def session_deleted(self) -> None:
        self.deleted += 1

    def close(self, reason: str) -> None:
        self.closed = reason

    @property
    def statuses(self) -> list[str]:
        return [frame.decode().split(":")[1] for frame in self.frames]

    @property
    def offsets(self) -> list[int]:
        return [int(frame.decode().rsplit(":", 1)[1]) for frame in self.frames]


@dataclass
class RunningConsumer:
    settings: ConsumerSettings
    store: SessionStore
    hub: Hub
    progress: PartitionProgress
    consumer: SessionStatusConsumer
    task: asyncio.Task[None]
    subscribers: dict[str, RecordingSubscriber] = field(default_factory=dict)
    supervisor: Supervisor = field(default_factory=Supervisor)

    def check_alive(self) -> None:
        """Fails when the consumer task ended (it must run until it is stopped)."""
        if self.task.done():
            error = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"the consumer task ended unexpectedly: {error!r}") from error

    def subscribe(self, session_id: str) -> RecordingSubscriber:
        subscriber = RecordingSubscriber()
        self.hub.subscribe(session_id, subscriber)
        self.subscribers[session_id] = subscriber
        return subscriber

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, message: str = "") -> None:
        def check() -> bool:
            self.check_alive()
            return predicate()

        await wait_until(check, timeout, lambda: f"{message} (progress: {self.describe()})")

    async def wait_caught_up(self, timeout: float = 30.0) -> None:
        await self.wait_until(self.progress.caught_up.is_set, timeout, "store never caught up")

    def describe(self) -> str:
        p = self.progress
        return (
            f"positions={dict(sorted(p.positions.items()))} targets={dict(sorted(p.targets.items()))} "
            f"caught_up={p.caught_up.is_set()} reachable={p.broker_reachable} error={p.last_error!r} "
            f"sessions={len(self.store)}"
        )


def make_settings(bootstrap: str, topic: str, **overrides: Any) -> ConsumerSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_topic": topic,
        "kafka_health_interval": 0.5,
        "store_eviction_interval": 0.5,
        "kafka_request_timeout_ms": 5_000,
    }
    values.update(overrides)
    return ConsumerSettings(**values)


def make_store(settings: ConsumerSettings) -> SessionStore:
    return SessionStore(
        terminal_retention_ms=int(settings.terminal_retention.total_seconds() * 1000),
        session_ttl_ms=int(settings.session_ttl.total_seconds() * 1000),
        max_sessions=settings.max_sessions,
    )


@contextlib.asynccontextmanager
async def running_consumer(
    bootstrap: str,
    topic: str,
    *,
    subscribe: list[str] | tuple[str, ...] = (),
    **settings_overrides: Any,
) -> AsyncIterator[RunningConsumer]:
    """Runs a ``SessionStatusConsumer`` on ``topic`` in a task; stops it (and checks it ended cleanly) on exit.

    ``subscribe`` lists sessions that get a ``RecordingSubscriber`` before consumption starts. The task
    is created but has not run yet when the context is entered, so anything attached before the first
    ``await`` in the ``async with`` body also sees every record.
    """
    settings = make_settings(bootstrap, topic, **settings_overrides)
    store = make_store(settings)
    hub = Hub(encode=encode_frame)
    progress = PartitionProgress()
    consumer = SessionStatusConsumer(settings, store, hub, progress)
    subscribers: dict[str, RecordingSubscriber] = {}
    for session_id in subscribe:
        subscribers[session_id] = RecordingSubscriber()
        hub.subscribe(session_id, subscribers[session_id])
    task = asyncio.create_task(consumer.run(), name=f"consumer-{topic}")
    # The probe and eviction run as in the gateway, supervised; the consumer task itself is watched
    # by the test (check_alive), so that a crash fails the test instead of being restarted.
    supervisor = Supervisor(crash_limit=1000)
    for name, factory in consumer.tasks().items():
        if name != "kafka-consumer":
            supervisor.start(name, factory)
    running = RunningConsumer(settings, store, hub, progress, consumer, task, subscribers, supervisor)
    failed = False
    try:
        yield running
    except BaseException:
        failed = True
        raise
    finally:
        await supervisor.stop()
        await consumer.stop()
        done, _ = await asyncio.wait({task}, timeout=10.0)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if not failed:
                raise AssertionError("the consumer did not stop within 10s of stop()")
        elif not failed and not task.cancelled() and task.exception() is not None:
            raise AssertionError("the consumer task failed") from task.exception()
