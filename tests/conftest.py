"""Shared fixtures. ``kafka_bootstrap`` finds or starts the broker every Kafka test runs against.

Plain helpers shared by the test modules (free ports, session ids, event ids, ``wait_until``) are in
``tests/support.py``; Kafka helpers in ``tests/kafka_support.py``; gateway processes, keys and the SSE
client in ``tests/gateway_support.py``; ``client`` is the HTTP client every gateway suite shares.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from tests.kafka_support import (
    BackgroundBroker,
    BrokerError,
    LocalBroker,
    background_broker,
    docker_available,
    testcontainers_broker,
)
from tests.support import on_the_terminal

# httpx logs every request URL at INFO, and stream URLs carry the token in their query: keep them out of
# the captured logs of a failing test (the gateway's own logs redact tokens; the test client does not).
logging.getLogger("httpx").setLevel(logging.WARNING)

BROKER_VARIABLE = "GATEWAY_KAFKA_BOOTSTRAP_SERVERS"
DEPRECATED_BROKER_VARIABLE = "KAFKA_BOOTSTRAP_SERVERS"


def configured_broker(environ: dict[str, str] | None = None) -> tuple[str, str | None]:
    """The broker the environment names, and a deprecation notice when it used the old variable."""
    environ = dict(os.environ) if environ is None else environ
    configured = environ.get(BROKER_VARIABLE, "").strip()
    if configured:
        return configured, None
    old = environ.get(DEPRECATED_BROKER_VARIABLE, "").strip()
    if old:
        return old, f"{DEPRECATED_BROKER_VARIABLE} is deprecated: set {BROKER_VARIABLE}={old} instead"
    return "", None


def _say(config: pytest.Config, message: str) -> None:
    with on_the_terminal(config):
        print(f"\n[kafka-fixture] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a broker, in this order of preference:

    1. ``GATEWAY_KAFKA_BOOTSTRAP_SERVERS`` when set, the same variable the gateway reads (the broker is
       used as is, never stopped); ``KAFKA_BOOTSTRAP_SERVERS`` still works, with a deprecation notice;
    2. a testcontainers ``KafkaContainer`` (KRaft) when a Docker engine answers;
    3. ``scripts/kafka.sh start`` on free ports chosen now and a state dir under pytest's temp dir, so a
       developer's broker on 9092 is never touched; stopped at the end of the session.

    Progress (image pull, jar download, broker start) goes to the terminal, past pytest's capture.
    A broker that cannot be started fails every test that needs it; it never skips them.
    """
    config = request.config
    configured, notice = configured_broker()
    if notice:
        _say(config, notice)
    if configured:
        _say(config, f"using the Kafka broker at {configured}")
        yield configured
        return
    if docker_available():
        _say(config, "Docker engine found: starting Kafka with testcontainers (the first run pulls the image) ...")
        with contextlib.ExitStack() as stack:
            try:
                with on_the_terminal(config):
                    bootstrap = stack.enter_context(testcontainers_broker())
            except BrokerError as error:
                pytest.fail(str(error), pytrace=False)
            _say(config, f"Kafka ready at {bootstrap}")
            yield bootstrap
        return
    broker = LocalBroker.allocate(tmp_path_factory.mktemp("kafka-state"))
    _say(config, f"no Docker engine: starting a local broker with scripts/kafka.sh on {broker.bootstrap}")
    try:
        with on_the_terminal(config):
            broker.start()
    except BrokerError as error:
        if broker.is_running():
            broker.stop()
        pytest.fail(str(error), pytrace=False)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest_asyncio.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """One HTTP client per test module, for every suite that talks to gateway processes.

    Room for hundreds of concurrent streams; no kept-alive connections, so no test's sockets outlive its
    requests (several suites count the sockets or waiting requests of one client address), and a pooled
    connection to a gateway another test stopped is never reused.
    """
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=limits) as http:
        yield http


@pytest.fixture(scope="module", autouse=True)
def outage_broker_start(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundBroker]:
    """A module's own broker for outage tests (``outage_broker``), started in the background as the module
    begins, only when a test of that module that will run asks for it."""
    with background_broker(request, tmp_path_factory, "outage_broker") as background:
        yield background


@pytest.fixture
def outage_broker(outage_broker_start: BackgroundBroker) -> LocalBroker:
    try:
        return outage_broker_start.result(timeout=300)
    except BrokerError as error:
        pytest.fail(str(error), pytrace=False)
