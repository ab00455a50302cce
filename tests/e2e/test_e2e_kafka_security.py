"""The gateway consumes through a SASL_SSL listener (SCRAM-SHA-512 over TLS), as a secured cluster requires.

The test makes a CA and a broker certificate with openssl, starts its own broker with scripts/kafka.sh and the
extra SASL_SSL listener (the PLAINTEXT one stays, for the test's own producer and admin client), and configures
the gateway with the settings a user puts in the Helm values. Wrong credentials and an untrusted certificate
must each be said once, clearly, counted in ``gateway_kafka_client_errors_total{kind}``, and keep the replica
unready.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.e2e.support import metrics_text, publish, sample
from tests.gateway_support import (
    GatewayProcess,
    JwksServer,
    SigningKey,
    clean_env,
    gateway_env,
    mint,
    rsa_key,
    sse,
)
from tests.kafka_support import BrokerError, LocalBroker, create_topic, free_ports, unique_topic
from tests.support import on_the_terminal as to_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

USER, PASSWORD = "gateway", "gateway-scram-secret"
KEYSTORE_PASSWORD = "broker-keystore-secret"
TENANT = "tenant-a"


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("openssl is needed to make the test's CA and broker certificate (apt-get install openssl)")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed: {done.stderr}", pytrace=False)


def make_ca(directory: Path, name: str) -> Path:
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.pem"


def make_broker_keystore(directory: Path, ca: str) -> Path:
    """A broker key and certificate for 127.0.0.1/localhost signed by ``ca``, in a PKCS12 keystore."""
    (directory / "broker.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "broker.key", "-out", "broker.csr", cwd=directory)  # fmt: skip
    openssl("x509", "-req", "-in", "broker.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", "broker.ext", "-out", "broker.pem", cwd=directory)  # fmt: skip
    openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", f"{ca}.pem",
            "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{KEYSTORE_PASSWORD}",
            cwd=directory)  # fmt: skip
    return directory / "broker.p12"


@dataclass
class SecuredBroker(LocalBroker):
    """scripts/kafka.sh's broker with the optional SASL_SSL listener next to the PLAINTEXT one."""

    sasl_ssl_port: int = 0
    keystore: Path | None = None
    scram_users: str = ""

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    def reallocate(self) -> None:
        self.port, self.controller_port, self.sasl_ssl_port = free_ports(3)

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "KAFKA_SASL_SSL_PORT": str(self.sasl_ssl_port),
            "KAFKA_SSL_KEYSTORE": str(self.keystore),
            "KAFKA_SSL_KEYSTORE_PASSWORD": KEYSTORE_PASSWORD,
            "KAFKA_SCRAM_USERS": self.scram_users,
        }


@dataclass
class Secured:
    broker: SecuredBroker
    ca: Path
    other_ca: Path
    topic: str
    jwks: JwksServer
    key: SigningKey
    logs: Path

    def gateway(self, name: str, **overrides: str) -> GatewayProcess:
        settings = {
            "GATEWAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "GATEWAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "GATEWAY_KAFKA_SASL_USERNAME": USER,
            "GATEWAY_KAFKA_SASL_PASSWORD": PASSWORD,
            "GATEWAY_KAFKA_SSL_CAFILE": str(self.ca),
            "GATEWAY_KAFKA_REQUEST_TIMEOUT_MS": "10000",
            "GATEWAY_LOG_FORMAT": "text",
            **overrides,
        }
        env = clean_env(**gateway_env(self.broker.sasl_ssl_bootstrap, self.topic, self.jwks, **settings))
        return GatewayProcess(env, self.logs / f"{name}.log")


@pytest_asyncio.fixture(scope="module")
async def secured(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    certs = tmp_path_factory.mktemp("kafka-certs")
    ca = make_ca(certs, "test-ca")
    other_ca = make_ca(certs, "other-ca")
    keystore = make_broker_keystore(certs, "test-ca")
    port, controller_port, sasl_ssl_port = free_ports(3)
    broker = SecuredBroker(
        port=port,
        controller_port=controller_port,
        state_dir=tmp_path_factory.mktemp("kafka-sasl-ssl-state"),
        sasl_ssl_port=sasl_ssl_port,
        keystore=keystore,
        scram_users=f"{USER}:{PASSWORD}",
    )
    try:
        with to_terminal(pytestconfig):
            await asyncio.to_thread(broker.start)
    except BrokerError as error:
        if broker.is_running():
            broker.stop()
        pytest.fail(f"the SASL_SSL broker could not be started: {error}", pytrace=False)
    jwks = JwksServer(keys=[rsa_key("e2e-kafka")]).start()
    try:
        topic = unique_topic("e2e-sasl-ssl")
        await create_topic(broker.bootstrap, topic, partitions=3, compacted=True)  # over PLAINTEXT, as an admin
        yield Secured(broker, ca, other_ca, topic, jwks, jwks.keys[0], tmp_path_factory.mktemp("e2e-kafka"))
    finally:
        jwks.stop()
        broker.stop()


async def test_gateway_streams_through_a_sasl_ssl_listener(secured: Secured) -> None:
    gateway = secured.gateway("secured").start()
    try:
        session_id = f"sasl-{uuid.uuid4()}"
        await publish(secured.broker.bootstrap, secured.topic, session_id, TENANT, "active")
        await gateway.wait_ready(timeout=90)
        token = mint(secured.key, tenant=TENANT)
        url = f"{gateway.url}/session/{session_id}/events"
        async with httpx.AsyncClient(timeout=30.0) as client, sse(client, url, params={"token": token}) as stream:
            assert stream.status == 200
            first = await stream.next_event(timeout=20)
            await publish(secured.broker.bootstrap, secured.topic, session_id, TENANT, "fetched")
            await publish(secured.broker.bootstrap, secured.topic, session_id, TENANT, "completed")
            rest = await stream.events_until_end(timeout=30)
        assert first is not None
        assert [event.json()["status"] for event in [first, *rest]] == ["active", "fetched", "completed"]
        text = await metrics_text(gateway)
        assert sample(text, "gateway_broker_reachable") == 1
        assert sum(sample(text, "gateway_kafka_client_errors_total", kind=k) for k in ("auth", "ssl")) == 0
    finally:
        gateway.stop()
    assert "consuming " in gateway.logs()


@pytest.mark.parametrize(
    ("case", "kind", "line"),
    [
        ("wrong_password", "auth", "Kafka authentication failed"),
        ("untrusted_certificate", "ssl", "Kafka TLS handshake failed"),
    ],
)
async def test_misconfigured_security_says_so_once_counts_it_and_stays_unready(
    secured: Secured, case: str, kind: str, line: str
) -> None:
    overrides = (
        {"GATEWAY_KAFKA_SASL_PASSWORD": "not-the-password"}
        if case == "wrong_password"
        else {"GATEWAY_KAFKA_SSL_CAFILE": str(secured.other_ca)}
    )
    gateway = secured.gateway(case, **overrides).start()
    try:
        await gateway.wait_status("/livez", 200, timeout=90)
        # Several attempts (the connect loop retries after 0.5 s, 1 s, 2 s, ...): each is counted ...
        deadline = time.monotonic() + 60
        while (count := sample(await metrics_text(gateway), "gateway_kafka_client_errors_total", kind=kind)) < 3:
            assert time.monotonic() < deadline, f"{kind} errors counted: {count}\n{gateway.logs()[-3000:]}"
            await asyncio.sleep(0.2)
        # ... and the replica is not ready, and says why.
        async with httpx.AsyncClient(timeout=10.0) as client:
            base = getattr(gateway, "internal_url", None) or gateway.url
            readiness = await client.get(f"{base}/readyz")
        assert readiness.status_code == 503, readiness.text
        assert line in readiness.text, readiness.text
    finally:
        gateway.stop()
    logs = gateway.logs()
    # ... but said once: one line naming the cause and what to check, not one per retry.
    said = [entry for entry in logs.splitlines() if line in entry]
    assert len(said) == 1, "\n".join(said) or logs[-3000:]
    assert "ERROR" in said[0]
    assert ("GATEWAY_KAFKA_SASL_PASSWORD" if kind == "auth" else "GATEWAY_KAFKA_SSL_CAFILE") in said[0], said[0]
    cause = "SaslAuthenticationFailed" if kind == "auth" else "CERTIFICATE_VERIFY_FAILED"
    assert sum(cause in entry for entry in logs.splitlines()) == 1, logs[-3000:]
    assert PASSWORD not in logs and "not-the-password" not in logs
