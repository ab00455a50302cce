"""Checks of code that depends on other libraries' internals: an untested version falls back and says why."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

import aiokafka
import aiokafka.client
import aiokafka.codec
import aiokafka.record.default_records
import httptools
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    IllegalSaslStateError,
    InvalidReplicationFactorError,
    KafkaConnectionError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from aiokafka.protocol.admin import CreateTopicsRequest
from aiokafka.protocol.types import Schema

from consumers import aiokafka_seam
from consumers.aiokafka_seam import DecompressionLimits, _common, admin, bootstrap, decompression, patching
from consumers.kafka_errors import ConnectErrorLog, root_cause
from consumers.settings import ConsumerSettings
from gateway.cli.diagnostics import UserError
from gateway.cli.publish import StatusPublisher
from gateway.cli.topic import create_topic as create_topic_as_the_cli_does
from gateway.edge.uvicorn_seam import TESTED_UVICORN, check_engine, supported_versions
from gateway.runtime.server import check_http_engine
from gateway.settings import GatewaySettings
from tests.kafka_support import (
    add_partitions,
    create_topic,
    make_settings,
    metric,
    produce_unparseable_batch,
    running_consumer,
    unique_topic,
    wait_for_partitions,
)


def test_the_installed_versions_are_the_tested_ones() -> None:
    assert check_engine() is None, check_engine()
    assert uvicorn.__version__.startswith(TESTED_UVICORN)


def test_an_untested_uvicorn_is_refused_at_start_up_with_the_supported_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    problem = check_engine()
    assert problem is not None and "0.99.0" in problem
    with pytest.raises(UserError) as refused:
        check_http_engine(GatewaySettings())
    assert "0.99.0" in str(refused.value) and supported_versions() in str(refused.value)


def test_an_untested_parser_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httptools, "__version__", "1.0.0")
    with pytest.raises(UserError, match=r"httptools 1\.0\.0"):
        check_http_engine(GatewaySettings())


@pytest.mark.parametrize("hook", ["handle_exit", "on_tick"])
def test_a_uvicorn_without_a_hook_the_server_overrides_is_refused(monkeypatch: pytest.MonkeyPatch, hook: str) -> None:
    monkeypatch.delattr(uvicorn.Server, hook)
    assert check_engine() == f"uvicorn.Server.{hook} is gone"


def test_the_removed_portable_engine_is_refused_by_name() -> None:
    with pytest.raises(UserError, match="portable ASGI engine was removed"):
        check_http_engine(GatewaySettings(http_engine="asgi"))
    check_http_engine(GatewaySettings())  # native: fine


async def test_kafka_metadata_refresh_falls_back_on_an_untested_aiokafka(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert aiokafka_seam.check() is None, "the installed aiokafka is the tested one"
    monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
    monkeypatch.setattr(_common, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="gateway.consumer"):
        assert await aiokafka_seam.refresh_topics(object(), ["t"]) is False
        assert await aiokafka_seam.refresh_topics(object(), ["t"]) is False
    assert caplog.text.count("cannot refresh Kafka metadata on demand") == 1
    assert "0.99.0" in caplog.text


# --------------------------------------------------------------------------------------------------
# aiokafka: bounded decompression and unreadable batches (consumers/aiokafka_seam/)


def _in_own_context(limits: DecompressionLimits, call: Callable[[], Any]) -> Any:
    """Runs ``call`` with ``limits`` set in a context of its own (the limits are a context variable)."""

    def run() -> Any:
        aiokafka_seam.use_limits(limits)
        return call()

    return contextvars.copy_context().run(run)


def test_the_aiokafka_seam_is_installed_where_aiokafka_looks() -> None:
    import aiokafka.record._crecords.default_records as c_records
    import aiokafka.record.default_records as py_records
    from aiokafka.consumer import fetcher

    assert aiokafka_seam.install() is None
    assert aiokafka_seam.installed()
    assert getattr(fetcher.PartitionRecords, "_seam_tracking", False)
    for module in (c_records, py_records):
        for name in ("gzip_decode", "snappy_decode", "lz4_decode", "zstd_decode"):
            assert getattr(module, name).__module__ == "consumers.aiokafka_seam.decompression", (module.__name__, name)


PAYLOAD = b"".join(b'{"id": "s-%d", "status": "active"}' % i for i in range(2000))  # 68 KB
CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[Any], bytes]]] = {
    "gzip": (aiokafka.codec.gzip_encode, decompression._gzip_decode),
    "snappy": (aiokafka.codec.snappy_encode, decompression._snappy_decode),
    "snappy-raw": (
        lambda data: aiokafka.codec.snappy_encode(data, xerial_compatible=False),
        decompression._snappy_decode,
    ),
    "lz4": (aiokafka.codec.lz4_encode, decompression._lz4_decode),
    "zstd": (aiokafka.codec.zstd_encode, decompression._zstd_decode),
}


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_bounded_codecs_read_what_aiokafka_writes_and_stop_at_their_cap(codec: str) -> None:
    encode, decode = CODECS[codec]
    compressed = bytes(encode(PAYLOAD))
    fits = DecompressionLimits(batch_bytes=len(PAYLOAD), record_bytes=len(PAYLOAD))
    assert _in_own_context(fits, lambda: bytes(decode(memoryview(compressed)))) == PAYLOAD
    assert _in_own_context(fits, lambda: bytes(decode(compressed))) == PAYLOAD
    short = DecompressionLimits(batch_bytes=len(PAYLOAD) - 1, record_bytes=len(PAYLOAD))
    with pytest.raises(aiokafka_seam.DecompressedTooLarge):
        _in_own_context(short, lambda: decode(compressed))
    # Damaged data is the codec's error, not a size: it is counted as unreadable.
    damaged = compressed[: len(compressed) // 2]
    with pytest.raises(Exception) as raised:
        _in_own_context(fits, lambda: decode(damaged))
    assert not isinstance(raised.value, aiokafka_seam.DecompressedTooLarge)


def test_gzip_reads_every_member_and_their_padding_as_aiokafka_does() -> None:
    members = aiokafka.codec.gzip_encode(b"first,") + aiokafka.codec.gzip_encode(b"second") + b"\x00" * 8
    assert aiokafka.codec.gzip_decode(members) == b"first,second"
    limits = DecompressionLimits(batch_bytes=12, record_bytes=12)
    assert _in_own_context(limits, lambda: decompression._gzip_decode(members)) == b"first,second"
    with pytest.raises(aiokafka_seam.DecompressedTooLarge):
        _in_own_context(DecompressionLimits(11, 11), lambda: decompression._gzip_decode(members))


def test_a_batch_cap_follows_the_records_it_holds() -> None:
    limits = DecompressionLimits.from_sizes(max_batch_bytes=32 << 20, max_record_bytes=65536)
    assert limits.record_bytes == 2 * 65536 + 2048
    floor = aiokafka_seam.BATCH_FLOOR_BYTES
    assert limits.for_batch(1) == limits.for_batch(0) == limits.for_batch(-5) == floor
    assert limits.for_batch(100) == 100 * (2 * 65536 + 2048) > floor
    assert limits.for_batch(1_000_000) == limits.for_batch(None) == 32 << 20
    small = DecompressionLimits.from_sizes(max_batch_bytes=1 << 20, max_record_bytes=65536)
    assert small.for_batch(1) == 1 << 20  # the setting bounds the floor too


def test_an_untested_aiokafka_keeps_its_own_functions_and_the_gateway_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from aiokafka.consumer import fetcher

    try:
        monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
        with caplog.at_level(logging.ERROR, logger="gateway.consumer"):
            problem = aiokafka_seam.install()
            assert aiokafka_seam.install() == problem
        assert problem is not None and "0.99.0" in problem
        assert not aiokafka_seam.installed()
        assert caplog.text.count("decompressed batch sizes are NOT bounded") == 1
        assert not getattr(fetcher.PartitionRecords, "_seam_tracking", False)
        assert aiokafka.record.default_records.zstd_decode is aiokafka.codec.zstd_decode
    finally:
        monkeypatch.undo()
        assert aiokafka_seam.install() is None


async def test_without_the_seam_unreadable_records_are_still_skipped_one_by_one(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback when the seam's check fails: each record of the bad batch costs a re-fetch, none stops it.

    (The check is made to fail rather than the version changed, which would also take the metadata refresh.)
    """
    topic = unique_topic("no-seam")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    assert await produce_unparseable_batch(kafka_bootstrap, topic, "fallback", behind=2, after=1) == [0, 3]
    unreadable = metric("gateway_records_rejected_total", reason="unreadable")
    try:
        monkeypatch.setattr(patching, "_self_test", lambda: "aiokafka's fetcher changed (simulated)")
        async with running_consumer(kafka_bootstrap, topic) as running:
            assert not aiokafka_seam.installed()
            await running.wait_until(lambda: "fallback-after-0" in running.store, 60, "the records were not skipped")
            assert metric("gateway_records_rejected_total", reason="unreadable") - unreadable == 3
    finally:
        monkeypatch.undo()
        assert aiokafka_seam.install() is None


# --------------------------------------------------------------------------------------------------
# aiokafka: every concern of the seam is checked at start-up and has a fallback


def test_every_aiokafka_seam_passes_its_check_with_the_installed_aiokafka() -> None:
    assert aiokafka_seam.install() is None
    assert aiokafka_seam.problems() == dict.fromkeys(aiokafka_seam.problems())


def test_an_untested_aiokafka_takes_every_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
        aiokafka_seam.install()
        problems = aiokafka_seam.problems()
        assert all(problem is not None and "0.99.0" in problem for problem in problems.values()), problems
    finally:
        monkeypatch.undo()
        assert aiokafka_seam.install() is None


async def test_metadata_is_refreshed_on_demand_and_falls_back_without_the_client_calls(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topic("seam-refresh")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=5_000)
    await consumer.start()
    try:
        assert await aiokafka_seam.refresh_topics(consumer, [topic]) is True
        assert consumer.partitions_for_topic(topic) == {0}
        await add_partitions(kafka_bootstrap, topic, 3)
        assert await aiokafka_seam.refresh_topics(consumer, [topic]) is True
        assert consumer.partitions_for_topic(topic) == {0, 1, 2}  # now, not at the periodic refresh

        monkeypatch.setattr(_common, "_warned", set())
        monkeypatch.delattr(AIOKafkaClient, "force_metadata_update")
        with caplog.at_level(logging.WARNING, logger="gateway.consumer"):
            assert await aiokafka_seam.refresh_topics(consumer, [topic]) is False
            assert await aiokafka_seam.refresh_topics(consumer, [topic]) is False
        monkeypatch.undo()
        assert caplog.text.count("cannot refresh Kafka metadata on demand") == 1
        assert "force_metadata_update" in caplog.text
    finally:
        monkeypatch.undo()
        await consumer.stop()


async def test_publish_asks_the_producers_connection_for_topics_or_an_admin_client_of_its_own(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topic("seam-publish")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    settings = make_settings(kafka_bootstrap, topic)
    missing = make_settings(kafka_bootstrap, unique_topic("seam-missing"))
    async with StatusPublisher(settings) as publisher, StatusPublisher(missing) as nowhere:
        producer = publisher._producer
        assert topic in await aiokafka_seam.cluster_topics(producer, settings)
        await publisher.check_topic()
        with pytest.raises(UnknownTopicOrPartitionError):
            await nowhere.check_topic()

        monkeypatch.setattr(_common, "_warned", set())
        monkeypatch.delattr(AIOKafkaClient, "fetch_all_metadata")
        try:
            with caplog.at_level(logging.WARNING, logger="gateway.consumer"):
                assert topic in await aiokafka_seam.cluster_topics(producer, settings)
                await publisher.check_topic()
                with pytest.raises(UnknownTopicOrPartitionError):
                    await nowhere.check_topic()
        finally:
            monkeypatch.undo()
    assert caplog.text.count("cannot ask the producer's connection for the Kafka topics") == 1
    assert "fetch_all_metadata" in caplog.text


async def _failed_bootstrap(settings: ConsumerSettings) -> BaseException:
    consumer = AIOKafkaConsumer(**settings.kafka_client_options())
    try:
        await consumer.start()
    except Exception as error:
        return error
    finally:
        await consumer.stop()
    raise AssertionError("the bootstrap succeeded")


async def test_a_failed_bootstraps_cause_is_read_from_aiokafkas_line_or_from_the_chain(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SASL client at the broker's PLAINTEXT listener: aiokafka raises a bare KafkaConnectionError and logs
    the broker's IllegalSaslStateError; with the seam that is an ``auth`` failure, without it a connection one."""
    settings = make_settings(
        kafka_bootstrap,
        "seam-bootstrap",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="gateway",
        kafka_sasl_password="secret",
    )
    assert bootstrap.check_bootstrap_log() is None
    errors = ConnectErrorLog(settings)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="aiokafka")  # the CLI quiets it, in this process too
    error = await _failed_bootstrap(settings)
    assert isinstance(error, KafkaConnectionError)
    assert isinstance(root_cause(error), IllegalSaslStateError)
    assert "Kafka authentication failed" in errors.report(error, 1.0)
    assert not [record for record in caplog.records if record.name == "aiokafka"]  # said once, by the gateway

    # aiokafka's client logging elsewhere (a changed internal): the filter is not put where it sees nothing.
    caplog.clear()
    monkeypatch.setattr(_common, "_warned", set())
    monkeypatch.setattr(aiokafka.client, "log", logging.getLogger("aiokafka.client"))
    try:
        errors = ConnectErrorLog(settings)
        assert errors.report(await _failed_bootstrap(settings), 1.0).startswith("cannot connect to Kafka")
        assert aiokafka_seam.watch_bootstrap_failures() is not None
    finally:
        monkeypatch.undo()
    assert bootstrap._cause not in logging.getLogger("aiokafka").filters
    warnings = [r.getMessage() for r in caplog.records if "cause of a failed Kafka bootstrap" in r.getMessage()]
    assert len(warnings) == 1 and "'aiokafka' logger" in warnings[0]
    assert [record for record in caplog.records if record.name == "aiokafka.client"]  # aiokafka's own line stays
    assert aiokafka_seam.watch_bootstrap_failures() is None
    assert bootstrap._cause in logging.getLogger("aiokafka").filters


def test_the_bootstrap_check_reads_the_texts_aiokafka_logs_and_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    assert bootstrap.check_bootstrap_log() is None
    monkeypatch.setattr(bootstrap, "LINE_TEMPLATE", 'Unable to connect to "%s:%s": %s')
    problem = bootstrap.check_bootstrap_log()
    assert problem is not None and "Unable to connect to" in problem


def _renamed_create_topics_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if aiokafka named the answer's field as newer Kafka versions do (``topics``)."""
    for request in CreateTopicsRequest._CLASSES:
        schema = request.RESPONSE_TYPE.SCHEMA
        names = ["topics" if name == "topic_errors" else name for name in schema.names]
        monkeypatch.setattr(request.RESPONSE_TYPE, "SCHEMA", Schema(*zip(names, schema.fields, strict=True)))


async def test_create_topic_reads_the_brokers_answer_or_asks_which_topics_exist(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = unique_topic("seam-create"), unique_topic("seam-create")
    assert admin.check_create_topics() is None
    assert await create_topic_as_the_cli_does(make_settings(kafka_bootstrap, first)) is True
    assert await create_topic_as_the_cli_does(make_settings(kafka_bootstrap, first)) is False
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15_000)
    await client.start()
    try:
        impossible = NewTopic(unique_topic("seam-create"), num_partitions=1, replication_factor=3)
        codes = await aiokafka_seam.create_topics(client, [impossible, NewTopic(first, 1, 1)])
        assert codes == {impossible.name: InvalidReplicationFactorError.errno, first: TopicAlreadyExistsError.errno}

        monkeypatch.setattr(_common, "_warned", set())
        _renamed_create_topics_answers(monkeypatch)
        problem = admin.check_create_topics()
        assert problem is not None and "CreateTopicsResponse_v0" in problem
        with caplog.at_level(logging.WARNING, logger="gateway.consumer"):
            assert await create_topic_as_the_cli_does(make_settings(kafka_bootstrap, second)) is True
            await wait_for_partitions(kafka_bootstrap, second, 6)  # what list_topics() sees: the metadata
            assert await create_topic_as_the_cli_does(make_settings(kafka_bootstrap, second)) is False
            codes = await aiokafka_seam.create_topics(client, [NewTopic(first, 1, 1)])
            assert codes == {first: TopicAlreadyExistsError.errno}
    finally:
        monkeypatch.undo()
        await client.close()
    assert caplog.text.count("cannot read aiokafka's CreateTopics answer") == 1
