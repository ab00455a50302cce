"""``session-gateway``: every command end to end, as a user runs it, against the real broker.

Each command runs as a subprocess of the installed console script (stdout and stderr captured).
``watch`` and the dev issuer's tokens are checked against real ``session-gateway serve`` processes.
User mistakes must end with one readable ``session-gateway: error: ...`` line (or argparse's usage
plus its error line), a non-zero exit, and never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.gateway_support import (
    AUDIENCE,
    REPO,
    DevIssuerProcess,
    GatewayProcess,
    JwksServer,
    SigningKey,
    clean_env,
    dev_issuer_gateway_env,
    gateway_world,
    mint,
    rsa_key,
    sse,
    stopping,
)
from tests.kafka_support import create_topic, event_bytes, produce, read_all, unique_topic
from tests.support import free_port, new_session

pytestmark = pytest.mark.timeout(180)

TENANT = "tenant-a"
COMMANDS = ("serve", "publish", "create-topic", "watch", "dev-issuer", "dev-token", "mapping")


# --------------------------------------------------------------------------------------------------
# Running the CLI


def cli_command() -> list[str]:
    """The installed console script, next to this interpreter (``pip install -e .`` puts it there)."""
    script = Path(sys.executable).parent / "session-gateway"
    if script.exists():
        return [str(script)]
    found = shutil.which("session-gateway")
    assert found, "the session-gateway console script is not installed (pip install -e .)"
    return [found]


@dataclass(frozen=True)
class Completed:
    code: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> Completed:
    """Runs ``session-gateway ARGS`` to completion; fails the test if it takes longer than ``timeout``."""
    process = await asyncio.create_subprocess_exec(
        *cli_command(),
        *args,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
        raise AssertionError(
            f"`session-gateway {' '.join(args)}` did not finish within {timeout:.0f}s (it hangs)\n"
            f"--- stdout ---\n{stdout.decode(errors='replace')}\n--- stderr ---\n{stderr.decode(errors='replace')}"
        ) from None
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


def assert_user_error(result: Completed, *fragments: str) -> str:
    """A failed command that explained itself: non-zero exit, no traceback, one error line with ``fragments``."""
    assert result.code != 0, result.describe()
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.describe()
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, f"expected exactly one error line\n{result.describe()}"
    line = errors[0]
    assert line.startswith("session-gateway"), result.describe()
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} missing from the error line {line!r}"
    assert len(line) < 400, f"the error line is not short: {line!r}"
    return line


# --------------------------------------------------------------------------------------------------
# The dev issuer as a process (also used by test_operability and test_browser)


@pytest_asyncio.fixture(scope="module")
async def topic(kafka_bootstrap: str) -> str:
    name = unique_topic("cli")
    await create_topic(kafka_bootstrap, name, partitions=3, compacted=True)
    return name


@pytest.fixture(scope="module")
def kafka_env(kafka_bootstrap: str, topic: str) -> dict[str, str]:
    return clean_env(GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, GATEWAY_KAFKA_TOPIC=topic)


@dataclass
class WatchWorld:
    jwks: JwksServer
    key: SigningKey
    gateway: GatewayProcess


@pytest_asyncio.fixture(scope="module")
async def watch_world(
    kafka_bootstrap: str, topic: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WatchWorld]:
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "cli-gateway",
        topic=topic,
        create=False,
        keys=[rsa_key("cli-key")],
        # `watch` starts right after its record is written: a few seconds for the gateway to apply it.
        GATEWAY_UNKNOWN_SESSION_WAIT="3",
        GATEWAY_TICKET_KEYS=f"cli:{secrets.token_urlsafe(32)}",
    ) as world:
        yield WatchWorld(world.jwks, world.key, world.gateway)


# --------------------------------------------------------------------------------------------------
# --help


async def test_help_lists_every_command() -> None:
    result = await run_cli("--help")
    assert result.code == 0, result.describe()
    assert result.stdout.startswith("usage: session-gateway")
    for command in COMMANDS:
        assert command in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command", COMMANDS)
async def test_help_of_each_command(command: str) -> None:
    result = await run_cli(command, "--help")
    assert result.code == 0, result.describe()
    assert result.stdout.startswith(f"usage: session-gateway {command}"), result.describe()
    assert "Traceback" not in result.stderr
    assert result.stderr == ""


async def test_no_command_is_a_usage_error() -> None:
    result = await run_cli()
    assert_user_error(result, "required")
    assert result.code == 2


async def test_python_dash_m_gateway_is_the_same_cli() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--help", stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    assert b"dev-issuer" in stdout


# --------------------------------------------------------------------------------------------------
# publish


async def test_publish_writes_the_record_producers_write(kafka_bootstrap: str, topic: str) -> None:
    session = new_session("pub")
    result = await run_cli(
        "publish", session, "active", "--tenant", TENANT, "--type", "issuance",
        "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
    )  # fmt: skip
    assert result.code == 0, result.describe()
    match = re.fullmatch(
        rf"published {re.escape(session)} active to {re.escape(topic)} partition (\d+) offset (\d+)\n", result.stdout
    )
    assert match, result.describe()
    partition, offset = int(match.group(1)), int(match.group(2))

    records = [r for r in await read_all(kafka_bootstrap, topic) if r.key == session.encode()]
    assert len(records) == 1
    record = records[0]
    assert (record.partition, record.offset) == (partition, offset)
    assert record.value is not None
    value = json.loads(record.value)
    assert value.keys() == {"id", "tenantId", "status", "updatedAt", "type"}
    assert value["id"] == session
    assert value["tenantId"] == TENANT
    assert value["status"] == "active"
    assert value["type"] == "issuance"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value["updatedAt"]), value["updatedAt"]
    assert abs(record.timestamp / 1000 - time.time()) < 60


async def test_publish_reads_kafka_settings_from_the_environment(
    kafka_bootstrap: str, topic: str, kafka_env: dict[str, str]
) -> None:
    session = new_session("pub-env")
    result = await run_cli("publish", session, "fetched", "--tenant", TENANT, env=kafka_env)
    assert result.code == 0, result.describe()
    assert f"published {session} fetched to {topic}" in result.stdout
    records = [r for r in await read_all(kafka_bootstrap, topic) if r.key == session.encode()]
    assert [json.loads(r.value or b"null")["status"] for r in records] == ["fetched"]
    assert "type" not in json.loads(records[0].value or b"{}")


# --------------------------------------------------------------------------------------------------
# create-topic


async def test_create_topic_creates_a_compacted_topic_once(kafka_bootstrap: str) -> None:
    name = unique_topic("cli-created")
    env = clean_env(GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    first = await run_cli("create-topic", "--topic", name, env=env)
    assert first.code == 0, first.describe()
    assert first.stdout.strip() == f"topic {name} created"

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        described = await admin.describe_topics([name])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 6
    entries = {entry[0]: entry[1] for entry in configs[0].resources[0][4]}
    assert entries["cleanup.policy"] == "compact"

    second = await run_cli("create-topic", "--topic", name, env=env)
    assert second.code == 0, second.describe()
    assert second.stdout.strip() == f"topic {name} already exists"
    assert "Traceback" not in second.stderr


async def test_create_topic_partitions_option(kafka_bootstrap: str) -> None:
    name = unique_topic("cli-created-2")
    result = await run_cli("create-topic", "--topic", name, "--partitions", "2", "--bootstrap-servers", kafka_bootstrap)
    assert result.code == 0, result.describe()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        described = await admin.describe_topics([name])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 2


async def test_create_topic_says_when_the_broker_refuses(kafka_bootstrap: str) -> None:
    """A replication factor above the brokers' number: the broker answers error 38; it said "created"."""
    name = unique_topic("cli-refused")
    env = clean_env(GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    result = await run_cli("create-topic", "--topic", name, "--replication-factor", "3", env=env)
    assert result.code != 0, result.describe()
    assert "created" not in result.stdout
    assert "InvalidReplicationFactorError" in result.stderr and "Traceback" not in result.stderr, result.describe()


# --------------------------------------------------------------------------------------------------
# watch


async def test_watch_prints_transitions_and_exits_on_a_terminal_status(
    kafka_bootstrap: str, topic: str, watch_world: WatchWorld
) -> None:
    session = new_session("watch")
    await produce(kafka_bootstrap, topic, [(session.encode(), event_bytes(session, TENANT, "active"))])
    token = mint(watch_world.key, tenant=TENANT, session=session)

    process = await asyncio.create_subprocess_exec(
        *cli_command(), "watch", session, "--token", token, "--url", watch_world.gateway.url,
        env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        first = await asyncio.wait_for(process.stdout.readline(), 20)
        assert first.decode().split()[1:] == [session, "active"], first
        await produce(kafka_bootstrap, topic, [(session.encode(), event_bytes(session, TENANT, "fetched"))])
        second = await asyncio.wait_for(process.stdout.readline(), 20)
        assert second.decode().split()[1:] == [session, "fetched"], second
        await produce(kafka_bootstrap, topic, [(session.encode(), event_bytes(session, TENANT, "completed"))])
        third = await asyncio.wait_for(process.stdout.readline(), 20)
        assert third.decode().split()[1:] == [session, "completed"], third
        code = await asyncio.wait_for(process.wait(), 20)
        rest = await process.stdout.read()
        stderr = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, stderr
    assert rest == b""
    assert "Traceback" not in stderr
    # Each line: updatedAt, session id, status.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.decode().split()[0])


async def test_watch_of_a_finished_session_prints_it_and_exits(
    kafka_bootstrap: str, topic: str, watch_world: WatchWorld
) -> None:
    session = new_session("watch-done")
    await produce(
        kafka_bootstrap,
        topic,
        [
            (session.encode(), event_bytes(session, TENANT, "active")),
            (session.encode(), event_bytes(session, TENANT, "failed")),
        ],
    )
    token = mint(watch_world.key, tenant=TENANT)
    result = await run_cli("watch", session, "--token", token, "--url", watch_world.gateway.url, timeout=30)
    assert result.code == 0, result.describe()
    assert [line.split()[1:] for line in result.stdout.splitlines()] == [[session, "failed"]]


async def test_watch_follows_a_session_with_a_stream_ticket(
    kafka_bootstrap: str, topic: str, watch_world: WatchWorld
) -> None:
    """What the demo page's ``watch --ticket`` line does: the ticket, never the tenant token (docs/tickets.md)."""
    session = new_session("watch-ticket")
    await produce(kafka_bootstrap, topic, [(session.encode(), event_bytes(session, TENANT, "completed"))])
    async with httpx.AsyncClient(timeout=30) as client:
        bearer = {"authorization": f"Bearer {mint(watch_world.key, tenant=TENANT)}"}
        issued = await client.post(f"{watch_world.gateway.url}/session/{session}/ticket", headers=bearer)
    assert issued.status_code == 201, issued.text
    ticket = issued.json()["ticket"]
    result = await run_cli("watch", session, "--ticket", ticket, "--url", watch_world.gateway.url, timeout=30)
    assert result.code == 0, result.describe()
    assert [line.split()[1:] for line in result.stdout.splitlines()] == [[session, "completed"]]
    other = await run_cli("watch", "s-other", "--ticket", ticket, "--url", watch_world.gateway.url, timeout=30)
    assert_user_error(other, "HTTP 404", "Session s-other not found")


async def test_watch_reports_http_errors_in_one_line(kafka_bootstrap: str, topic: str, watch_world: WatchWorld) -> None:
    session = new_session("watch-other")
    await produce(kafka_bootstrap, topic, [(session.encode(), event_bytes(session, "tenant-b", "active"))])
    wrong_tenant = mint(watch_world.key, tenant=TENANT)
    result = await run_cli("watch", session, "--token", wrong_tenant, "--url", watch_world.gateway.url, timeout=30)
    assert_user_error(result, "HTTP 404", f"Session {session} not found")
    assert result.code == 1

    result = await run_cli("watch", session, "--token", "not-a-token", "--url", watch_world.gateway.url, timeout=30)
    assert_user_error(result, "HTTP 401", "Invalid or expired token")
    assert result.code == 1


async def test_watch_of_an_unreachable_gateway_fails_fast() -> None:
    result = await run_cli("watch", "s-1", "--token", "x", "--url", f"http://127.0.0.1:{free_port()}", timeout=15)
    assert_user_error(result, "cannot reach")
    assert result.stderr.count("\n") == 1, result.describe()


async def test_watch_requires_a_token() -> None:
    result = await run_cli("watch", "some-session")
    assert_user_error(result, "--token")
    assert result.code == 2


# --------------------------------------------------------------------------------------------------
# dev-issuer


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.com", "::"])
async def test_dev_issuer_refuses_non_loopback_hosts(host: str) -> None:
    result = await run_cli("dev-issuer", "--host", host, "--port", str(free_port()), timeout=30)
    line = assert_user_error(result, "refuses to bind", "loopback")
    assert result.code == 1
    assert repr(host) in line
    assert "DEV TOKEN ISSUER" not in result.stderr  # refused before it started anything


async def test_dev_issuer_tokens_are_accepted_by_the_gateway(kafka_bootstrap: str, topic: str, tmp_path: Path) -> None:
    session, other = new_session("issued"), new_session("issued-other")
    await produce(
        kafka_bootstrap,
        topic,
        [
            (session.encode(), event_bytes(session, TENANT, "active")),
            (other.encode(), event_bytes(other, TENANT, "active")),
        ],
    )
    issuer = DevIssuerProcess(tmp_path / "issuer.log", audience=AUDIENCE).start()
    gateway = GatewayProcess(
        dev_issuer_gateway_env(kafka_bootstrap, topic, issuer, GATEWAY_UNKNOWN_SESSION_WAIT="0.5"),
        tmp_path / "gateway.log",
    )
    with stopping(gateway, issuer):
        await issuer.wait_ready()
        gateway.start()
        await gateway.wait_ready()
        async with httpx.AsyncClient(timeout=10.0) as client:
            jwks = (await client.get(f"{issuer.url}/jwks.json")).json()
            assert [key["kty"] for key in jwks["keys"]] == ["RSA"]
            assert all("d" not in key for key in jwks["keys"]), "the JWKS must hold public keys only"
            discovery = (await client.get(f"{issuer.url}/.well-known/openid-configuration")).json()
            assert discovery["issuer"] == issuer.url
            assert discovery["jwks_uri"] == f"{issuer.url}/jwks.json"
            assert (await client.get(f"{issuer.url}/token")).status_code == 422  # tenant is required

            scoped = await issuer.token(TENANT, session)
            events_url = f"{gateway.url}/session/{session}/events"
            async with sse(client, events_url, params={"token": scoped}) as stream:
                assert stream.status == 200, stream.response.text
                event = await stream.next_event()
                assert event is not None and event.json()["status"] == "active"
            # A session-scoped token opens that session only.
            async with sse(client, f"{gateway.url}/session/{other}/events", params={"token": scoped}) as stream:
                assert stream.status == 404
            # A tenant-wide token opens any session of the tenant.
            tenant_wide = await issuer.token(TENANT)
            async with sse(client, f"{gateway.url}/session/{other}/events", params={"token": tenant_wide}) as stream:
                assert stream.status == 200
            other_tenant = await issuer.token("tenant-b")
            async with sse(client, events_url, params={"token": other_tenant}) as stream:
                assert stream.status == 404
    banner = issuer.logs()
    assert "DEV TOKEN ISSUER - FOR LOCAL DEVELOPMENT ONLY" in banner
    assert "Traceback" not in banner


async def test_dev_issuer_port_in_use_is_one_line(tmp_path: Path) -> None:
    issuer = DevIssuerProcess(tmp_path / "issuer.log").start()
    with stopping(issuer):
        await issuer.wait_ready()
        result = await run_cli("dev-issuer", "--port", str(issuer.port), timeout=30)
    assert_user_error(result, f"port {issuer.port}", "already in use", "--port")
    assert len(result.stderr.splitlines()) == 1, result.describe()
    assert result.code == 1


# --------------------------------------------------------------------------------------------------
# User mistakes


async def test_publish_rejects_an_unknown_status(kafka_env: dict[str, str]) -> None:
    result = await run_cli("publish", "s-1", "bogus", "--tenant", TENANT, env=kafka_env)
    assert_user_error(result, "invalid choice: 'bogus'", "active")
    assert result.code == 2


async def test_publish_requires_a_tenant(kafka_env: dict[str, str]) -> None:
    result = await run_cli("publish", "s-1", "active", env=kafka_env)
    assert_user_error(result, "--tenant")
    assert result.code == 2


async def test_publish_rejects_an_unknown_type(kafka_env: dict[str, str]) -> None:
    result = await run_cli("publish", "s-1", "active", "--tenant", TENANT, "--type", "loan", env=kafka_env)
    assert_user_error(result, "invalid choice: 'loan'")


async def test_invalid_setting_is_one_line() -> None:
    env = clean_env(GATEWAY_KAFKA_REQUEST_TIMEOUT_MS="soon")
    result = await run_cli("publish", "s-1", "active", "--tenant", TENANT, env=env)
    assert_user_error(result, "invalid setting", "GATEWAY_KAFKA_REQUEST_TIMEOUT_MS='soon'", "500ms")
    assert result.code == 2


async def test_serve_without_keys_is_one_line() -> None:
    result = await run_cli("serve", "--port", str(free_port()), timeout=30)
    assert_user_error(result, "GATEWAY_JWKS_URL")
    assert result.code == 1


UNREACHABLE = clean_env(GATEWAY_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", GATEWAY_KAFKA_REQUEST_TIMEOUT_MS="2000")


@pytest.mark.parametrize(
    "args",
    [("publish", "s-1", "active", "--tenant", TENANT), ("create-topic",)],
    ids=["publish", "create-topic"],
)
async def test_unreachable_kafka_fails_fast_with_a_readable_error(args: tuple[str, ...]) -> None:
    started = time.monotonic()
    result = await run_cli(*args, env=UNREACHABLE, timeout=30)
    elapsed = time.monotonic() - started
    assert_user_error(result, "Kafka at 127.0.0.1:1")
    assert result.code == 1
    assert elapsed < 20, f"took {elapsed:.1f}s with GATEWAY_KAFKA_REQUEST_TIMEOUT_MS=2000"


MISSING_TOPIC = "cli-missing-topic"


@pytest.mark.parametrize(
    "case",
    ["publish-unreachable", "create-topic-unreachable", "publish-missing-topic"],
)
async def test_kafka_failures_print_only_the_error_line(case: str, kafka_bootstrap: str) -> None:
    if case == "publish-missing-topic":
        env = clean_env(
            GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
            GATEWAY_KAFKA_TOPIC=MISSING_TOPIC,
            GATEWAY_KAFKA_REQUEST_TIMEOUT_MS="2000",
        )
    else:
        env = UNREACHABLE
    args = ("create-topic",) if case.startswith("create-topic") else ("publish", "s-1", "active", "--tenant", TENANT)
    result = await run_cli(*args, env=env, timeout=30)
    assert result.code == 1, result.describe()
    assert len(result.stderr.splitlines()) == 1, result.describe()
    if case == "publish-missing-topic":
        assert MISSING_TOPIC in result.stderr and "create-topic" in result.stderr, result.describe()


async def test_publish_to_a_missing_topic_is_one_line(kafka_bootstrap: str) -> None:
    env = clean_env(
        GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        GATEWAY_KAFKA_TOPIC=unique_topic("cli-missing"),
        GATEWAY_KAFKA_REQUEST_TIMEOUT_MS="2000",
    )
    result = await run_cli("publish", "s-1", "active", "--tenant", TENANT, env=env, timeout=30)
    assert_user_error(result, kafka_bootstrap)
    assert result.code == 1
