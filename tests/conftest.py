"""Shared fixtures. ``kafka_bootstrap`` finds or starts the broker every Kafka test runs against."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.kafka_support import BrokerError, LocalBroker, docker_available, testcontainers_broker


def _say(message: str) -> None:
    print(f"[kafka-fixture] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a broker, in this order of preference:

    1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (the broker is used as is, never stopped);
    2. a testcontainers ``KafkaContainer`` (KRaft) when a Docker engine answers;
    3. ``scripts/kafka.sh start`` on free ports chosen now and a state dir under pytest's temp dir, so a
       developer's broker on 9092 is never touched; stopped at the end of the session.

    A broker that cannot be started fails every test that needs it; it never skips them.
    """
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        _say(f"using KAFKA_BOOTSTRAP_SERVERS={configured}")
        yield configured
        return
    if docker_available():
        _say("Docker engine found: starting Kafka with testcontainers")
        try:
            with testcontainers_broker() as bootstrap:
                yield bootstrap
        except BrokerError as error:
            pytest.fail(str(error), pytrace=False)
        return
    broker = LocalBroker.allocate(tmp_path_factory.mktemp("kafka-state"))
    _say(f"no Docker engine: starting a local broker with scripts/kafka.sh on {broker.bootstrap}")
    try:
        broker.start()
    except BrokerError as error:
        if broker.is_running():
            broker.stop()
        pytest.fail(str(error), pytrace=False)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
