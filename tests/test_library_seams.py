"""Checks of code that depends on other libraries' internals: an untested version falls back and says why."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

import aiokafka
import aiokafka.codec
import aiokafka.record.default_records
import httptools
import pytest
import uvicorn

from consumers import aiokafka_seam
from consumers.aiokafka_seam import DecompressionLimits, _common, decompression, patching
from gateway.diagnostics import UserError
from gateway.server import check_http_engine
from gateway.settings import GatewaySettings
from gateway.uvicorn_edge import TESTED_UVICORN, check_engine, supported_versions
from tests.kafka_support import create_topic, metric, produce_unparseable_batch, running_consumer, unique_topic


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
