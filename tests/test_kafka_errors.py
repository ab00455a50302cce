"""consumers.kafka_errors: what kind a Kafka client error is, and one log line per kind instead of one per retry."""

from __future__ import annotations

import logging
import ssl

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, SaslAuthenticationFailed

from consumers.aiokafka_seam import bootstrap
from consumers.kafka_errors import ConnectErrorLog, classify_kafka_error
from consumers.settings import ConsumerSettings
from tests.kafka_support import metric


def bootstrap_failure(cause: BaseException) -> KafkaConnectionError:
    """What aiokafka does on a failed bootstrap, as the seam reads it: log the cause, raise a bare error.

    (tests/test_library_seams.py checks this against aiokafka's real bootstrap.)
    """
    logging.getLogger(bootstrap.LOGGER).error(bootstrap.LINE_TEMPLATE, "127.0.0.1", 9093, cause)
    return KafkaConnectionError(f"{bootstrap.FAILED_TEXT}[('127.0.0.1', 9093, <AddressFamily.AF_INET: 2>)]")


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def errors(clock: Clock) -> ConnectErrorLog:
    settings = ConsumerSettings(
        kafka_bootstrap_servers="127.0.0.1:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="gateway",
    )
    return ConnectErrorLog(settings, interval=60.0, clock=clock)


def test_classification_looks_through_aiokafkas_bootstrap_wrapping(errors: ConnectErrorLog) -> None:
    assert classify_kafka_error(bootstrap_failure(SaslAuthenticationFailed("invalid credentials"))) == "auth"
    assert classify_kafka_error(bootstrap_failure(ssl.SSLCertVerificationError("certificate verify failed"))) == "ssl"
    assert classify_kafka_error(bootstrap_failure(ConnectionRefusedError(111, "refused"))) == "connection"
    assert classify_kafka_error(KafkaTimeoutError()) == "connection"
    assert classify_kafka_error(LookupError("topic 'x' does not exist")) == "other"
    wrapped = RuntimeError("start failed")
    wrapped.__cause__ = ssl.SSLError("wrong version number")
    assert classify_kafka_error(wrapped) == "ssl"


def test_one_line_per_kind_and_interval_every_attempt_counted(
    errors: ConnectErrorLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = metric("gateway_kafka_client_errors_total", kind="auth")
    for _ in range(5):
        description = errors.report(bootstrap_failure(SaslAuthenticationFailed("invalid credentials")), 1.0)
        clock.now += 1
    assert "Kafka authentication failed" in description and "'gateway'" in description
    assert "invalid credentials" in description
    assert metric("gateway_kafka_client_errors_total", kind="auth") == before + 5
    lines = [r for r in caplog.records if r.name == "gateway.consumer"]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    # aiokafka's own line per attempt is folded into ours.
    assert not [r for r in caplog.records if r.name == "aiokafka"]

    # Another kind is said at once; its repeats within the interval are summed up in its next line.
    for _ in range(3):
        errors.report(bootstrap_failure(ssl.SSLCertVerificationError("certificate verify failed")), 1.0)
    clock.now += 61
    errors.report(bootstrap_failure(ssl.SSLCertVerificationError("certificate verify failed")), 1.0)
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.consumer"]
    assert len(messages) == 3, messages
    assert "TLS handshake failed" in messages[1] and "more failed attempts" not in messages[1]
    assert "TLS handshake failed" in messages[2] and "(2 more failed attempts since the last line)" in messages[2]
