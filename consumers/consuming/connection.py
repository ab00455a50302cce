"""The Kafka client: connecting (retried, never fatal), which partitions it reads and where it starts.

Every partition of every topic is assigned by hand, without a consumer group (why: ``consumers.consumer``).
A first start reads the retained log from its beginning, or from ``GATEWAY_REPLAY_WINDOW`` ago; a restarted
consumer resumes at the positions it had reached, which the store already holds (docs/operations.md,
"Start-up" and "Readiness means can serve"). Partitions the probe finds later are assigned here too, read
from their beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers import aiokafka_seam, metrics
from consumers.kafka_errors import ConnectErrorLog
from consumers.partitions import MAX_PARTITION, global_partition, split_partition
from consumers.progress import PartitionProgress
from consumers.settings import KafkaSettings

log = logging.getLogger("gateway.consumer")

_MAX_BACKOFF_S = 10.0


class Topics:
    """The topics read, in the order of ``GATEWAY_KAFKA_TOPIC``, and the one number per (topic, partition)
    that the store, the replay progress and event ids use (``consumers.partitions``)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.index = {topic: index for index, topic in enumerate(names)}

    def tp(self, number: int) -> TopicPartition:
        index, partition = split_partition(number)
        return TopicPartition(self.names[index], partition)

    def number(self, tp: TopicPartition) -> int:
        return global_partition(self.index[tp.topic], tp.partition)


class Connection:
    """The aiokafka consumer while connected, the partitions assigned to it, and when the broker last answered."""

    def __init__(self, settings: KafkaSettings, progress: PartitionProgress, topics: Topics) -> None:
        self.settings = settings
        self.progress = progress
        self.topics = topics
        self._consumer: AIOKafkaConsumer | None = None
        self.partitions: set[int] = set()  # global partition numbers (consumers.partitions)
        self.gained: set[int] = set()  # found by the probe, assigned by the consume loop between fetches
        self.connected = asyncio.Event()
        self.last_contact: float | None = None  # monotonic time the broker last answered a fetch or probe
        self._connect_errors = ConnectErrorLog(settings)

    @property
    def client(self) -> AIOKafkaConsumer:
        client = self._consumer
        assert client is not None, "not connected"
        return client

    def seconds_since_contact(self) -> float:
        return -1.0 if self.last_contact is None else time.monotonic() - self.last_contact

    async def open_retrying(self, stop_requested: asyncio.Event) -> bool:
        """Connects, retrying with backoff until it works; False (and closed) when a stop came first."""
        backoff = 0.5
        while not stop_requested.is_set():
            try:
                await self.open()
                break
            except Exception as error:  # any start-up failure is retried, never fatal
                self.progress.last_error = self._connect_errors.report(error, backoff)  # one line per kind, counted
                metrics.BROKER_REACHABLE.set(0)
                await self.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_requested.wait(), backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        if stop_requested.is_set():
            await self.close()
            return False
        return True

    async def open(self) -> None:
        settings = self.settings
        progress = self.progress
        number = self.topics.number
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            metadata_max_age_ms=int(settings.kafka_health_interval * 1000) * 6,
            fetch_max_bytes=settings.kafka_max_fetch_bytes,
            max_partition_fetch_bytes=min(settings.kafka_max_fetch_bytes, 8 * 1024 * 1024),
            **settings.kafka_client_options(),
        )
        self._consumer = consumer
        await consumer.start()
        partitions = await self.partitions_on_broker()
        tps = [self.topics.tp(partition) for partition in sorted(partitions)]
        consumer.assign(tps)
        self.partitions = set(partitions)
        end_offsets = await consumer.end_offsets(tps)
        resumed = progress.positions
        if resumed:  # a restart after a crash: the store already holds everything before these positions
            for tp in tps:
                consumer.seek(tp, resumed.get(number(tp), 0))
            if any(number(tp) not in resumed for tp in tps):
                await consumer.seek_to_beginning(*(tp for tp in tps if number(tp) not in resumed))
        else:
            await self._seek_start(tps, end_offsets)
        progress.end_offsets = {number(tp): offset for tp, offset in end_offsets.items()}
        if not progress.targets:
            progress.set_targets(progress.end_offsets)
        for tp in tps:
            progress.advance(number(tp), await consumer.position(tp))
        self.last_contact = time.monotonic()
        self.connected.set()
        progress.broker_reachable = True
        progress.last_error = None
        metrics.BROKER_REACHABLE.set(1)
        log.info(
            "consuming %s: %d partitions, replaying %d records",
            settings.kafka_topic,
            len(tps),
            sum(max(0, end_offsets[tp] - progress.positions.get(number(tp), 0)) for tp in tps),
        )

    async def _seek_start(self, tps: list[TopicPartition], end_offsets: dict[TopicPartition, int]) -> None:
        """Positions every partition explicitly (no lazy offset reset; see below).

        ``seek_to_end`` only marks a partition for a reset to "latest", while the fetcher may already
        be resolving the "earliest" reset that ``assign()`` started; whichever answer comes last wins,
        so a partition sometimes started at 0. An explicit ``seek`` cancels any pending reset.
        """
        consumer = self.client
        window = self.settings.replay_window
        if window is None:
            await consumer.seek_to_beginning(*tps)
            return
        since_ms = int((time.time() - window.total_seconds()) * 1000)
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            hit = found.get(tp)
            # No record at or after the window's start: start at the end offset captured before.
            consumer.seek(tp, hit.offset if hit is not None else end_offsets[tp])

    async def partitions_on_broker(self, strict: bool = True) -> set[int]:
        """Fresh partition numbers of every topic (see ``consumers.aiokafka_seam``).

        ``strict``: raises LookupError when a topic does not exist (at start, the gateway would otherwise
        turn ready without it); the probe passes False and keeps what it has.
        """
        consumer = self.client
        topics = self.topics.names
        await aiokafka_seam.refresh_topics(consumer, topics)
        numbers: set[int] = set()
        for index, topic in enumerate(topics):
            partitions = consumer.partitions_for_topic(topic)
            if not partitions and strict:
                raise LookupError(f"topic {topic!r} does not exist")
            if partitions and max(partitions) > MAX_PARTITION:
                raise LookupError(f"topic {topic!r} has more partitions than event ids can carry ({MAX_PARTITION + 1})")
            numbers.update(global_partition(index, partition) for partition in partitions or ())
        return numbers

    async def assign_gained(self) -> None:
        """Adds the partitions the probe found, read from their beginning; the others keep their positions."""
        consumer = self.client
        tp = self.topics.tp
        added, self.gained = self.gained, set()
        keep = {number: await consumer.position(tp(number)) for number in self.partitions}
        self.partitions |= added
        consumer.assign([tp(number) for number in sorted(self.partitions)])
        for number, position in keep.items():
            consumer.seek(tp(number), position)
        await consumer.seek_to_beginning(*(tp(number) for number in added))

    async def close(self) -> None:
        self.connected.clear()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
