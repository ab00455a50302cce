"""Issue 25 (an integrator's first day), items 1, 6 and 9, against real processes.

- A Debezium-style topic (JSON key ``{"id": ...}``, ``after.updated_at`` in epoch microseconds, rows
  without it taking the Kafka record's timestamp) read by a real ``session-gateway serve``, streamed to an
  SSE client; its tombstones delete.
- ``python -m gateway mapping check`` prints what that gateway stores, or exactly why it rejects.
- A bad mapping setting stops ``serve`` with one readable line, without a raw Python dict.
- The gateway's own JSON and text log lines carry topic, partition, offset, reason, session hash, tenant,
  request id and a wrong claim's expected and received values as fields (never the token); ``/metrics``
  has ``gateway_build_info``, no ``_created`` series, and counts a normal end (204) apart from refusals.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from consumers.log_fields import session_hash
from tests.gateway_support import (
    AUDIENCE,
    ISSUER,
    REPO,
    GatewayWorld,
    SseEvent,
    clean_env,
    gateway_world,
    mint,
    sse,
)
from tests.kafka_support import produce
from tests.support import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

TENANT = "acme"
# Recent times: the store ignores a session whose last update is older than GATEWAY_SESSION_TTL (24 h).
NOW_MS = int(time.time() * 1000) // 1000 * 1000 + 123
WHEN_US = NOW_MS * 1000 + 456
WHEN_TEXT = datetime.fromtimestamp(NOW_MS / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
DEBEZIUM: dict[str, Any] = {
    "keyId": "/id",
    "id": "/after/id",
    "tenantId": "/after/tenant",
    "status": "/after/status",
    "updatedAt": "/after/updated_at",
    "updatedAtFormat": "epochMicros",
    "updatedAtFallback": "recordTimestamp",
    "statusValues": {"OPEN": "active", "FETCHED": "fetched", "DONE": "completed", "DRAFT": None},
}


def debezium_key(session_id: str) -> bytes:
    return json.dumps({"id": session_id}).encode()


def debezium_value(session_id: str, status: str, updated_at: int | None = WHEN_US) -> bytes:
    after: dict[str, Any] = {"id": session_id, "tenant": TENANT, "status": status}
    if updated_at is not None:
        after["updated_at"] = updated_at
    return json.dumps({"before": None, "after": after, "op": "u", "source": {"connector": "postgresql"}}).encode()


def new_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@dataclass
class Cdc:
    world: GatewayWorld
    client: httpx.AsyncClient

    def gateway(self, name: str = "json") -> Any:
        return self.world.gateways[name]

    async def events(self, session_id: str, count: int, **headers: str) -> tuple[int, list[SseEvent]]:
        url = f"{self.gateway().url}/session/{session_id}/events"
        params = {"token": mint(self.world.key, tenant=TENANT)}
        async with sse(self.client, url, params=params, headers=headers or None) as stream:
            events: list[SseEvent] = []
            while stream.status == 200 and len(events) < count and (event := await stream.next_event(15)):
                events.append(event)
            return stream.status, events

    async def metrics(self) -> str:
        response = await self.client.get(f"{self.gateway().internal_url}/metrics")
        assert response.status_code == 200
        return response.text


@pytest_asyncio.fixture(scope="module")
async def cdc(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, client: httpx.AsyncClient
) -> AsyncIterator[Cdc]:
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "first-day",
        gateways={"json": {"GATEWAY_LOG_FORMAT": "json"}, "text": {"GATEWAY_LOG_FORMAT": "text"}},
        GATEWAY_RECORD_MAPPING=json.dumps(DEBEZIUM),
        GATEWAY_UNKNOWN_SESSION_WAIT="10",
    ) as world:
        yield Cdc(world, client)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sample's value, 0 when the series is absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------------------------------
# 25.1: epoch times, the record timestamp, JSON keys through a real gateway


async def test_a_debezium_row_streams_with_its_epoch_microseconds_and_json_key(cdc: Cdc) -> None:
    sid = new_id("cdc")
    await produce(cdc.world.bootstrap, cdc.world.topic, [(debezium_key(sid), debezium_value(sid, "OPEN"))])
    status, events = await cdc.events(sid, 1)
    assert status == 200, cdc.gateway().logs()[-3000:]
    assert [event.json() for event in events] == [{"id": sid, "status": "active", "updatedAt": WHEN_TEXT}]


async def test_a_row_without_updated_at_takes_the_kafka_record_timestamp(cdc: Cdc) -> None:
    sid = new_id("cdc-ts")
    record = (debezium_key(sid), debezium_value(sid, "FETCHED", updated_at=None))
    await produce(cdc.world.bootstrap, cdc.world.topic, [record], timestamp_ms=NOW_MS + 876)
    status, [event] = await cdc.events(sid, 1)
    assert status == 200
    assert event.json()["updatedAt"] == WHEN_TEXT.replace(".123Z", ".999Z")


async def test_a_tombstone_with_a_json_key_deletes_the_session(cdc: Cdc) -> None:
    sid = new_id("cdc-del")
    before = metric_value(await cdc.metrics(), "gateway_sessions_deleted_total")
    await produce(cdc.world.bootstrap, cdc.world.topic, [(debezium_key(sid), debezium_value(sid, "OPEN"))])
    assert (await cdc.events(sid, 1))[0] == 200
    await produce(cdc.world.bootstrap, cdc.world.topic, [(debezium_key(sid), None)])

    async def deleted() -> bool:
        return metric_value(await cdc.metrics(), "gateway_sessions_deleted_total") == before + 1

    await wait_until(deleted, 20, "the tombstone did not delete the session")
    assert (await cdc.events(sid, 1))[0] == 404


# --------------------------------------------------------------------------------------------------
# 25.9: log fields


async def test_a_rejected_record_logs_topic_partition_offset_and_reason_as_fields(cdc: Cdc) -> None:
    sid = new_id("cdc-bad")
    [(partition, offset)] = await produce(
        cdc.world.bootstrap, cdc.world.topic, [(debezium_key(sid), debezium_value(sid, "OPEN", updated_at=None)[:-1])]
    )

    def skipped(name: str) -> list[str]:
        return [line for line in cdc.gateway(name).logs().splitlines() if "skipped malformed record" in line]

    await wait_until(lambda: bool(skipped("json") and skipped("text")), 20, "no line about the skipped record")
    [entry] = [json.loads(line) for line in skipped("json")]
    assert entry["message"] == "skipped malformed record: value is not JSON"
    assert {key: entry[key] for key in ("topic", "partition", "offset", "reason")} == {
        "topic": cdc.world.topic,
        "partition": partition,
        "offset": offset,
        "reason": "not_json",
    }
    [text] = skipped("text")
    assert text.endswith(
        f"skipped malformed record: value is not JSON "
        f"[topic={cdc.world.topic} partition={partition} offset={offset} reason=not_json]"
    ), text


@pytest.mark.parametrize(
    ("claims", "reason", "expected", "received"),
    [
        ({"aud": "another-app"}, "invalid_claim_aud", AUDIENCE, "another-app"),
        ({"aud": ["account", "another-app"]}, "invalid_claim_aud", AUDIENCE, '["account", "another-app"]'),
        (
            {"iss": "https://keycloak.example/realms/other"},
            "invalid_claim_iss",
            ISSUER,
            "https://keycloak.example/realms/other",
        ),
    ],
)
async def test_a_wrong_audience_or_issuer_logs_expected_and_received_never_the_token(
    cdc: Cdc, claims: dict[str, Any], reason: str, expected: str, received: str
) -> None:
    sid = new_id("aud")
    token = mint(cdc.world.key, tenant=TENANT, **claims)
    request_id = f"rid-{uuid.uuid4().hex[:12]}"
    for name in ("json", "text"):
        url = f"{cdc.gateway(name).url}/session/{sid}/events"
        response = await cdc.client.get(url, params={"token": token}, headers={"x-request-id": request_id})
        assert response.status_code == 401
        assert response.json()["message"] == "Invalid or expired token"  # the client hears nothing more

    def line(name: str) -> str | None:
        return next((entry for entry in cdc.gateway(name).logs().splitlines() if request_id in entry), None)

    await wait_until(lambda: bool(line("json") and line("text")), 10, "no log line for the refused request")
    entry = json.loads(line("json") or "")
    assert entry["request_id"] == request_id
    assert (entry["reason"], entry["status"], entry["expected"], entry["received"]) == (reason, 401, expected, received)
    assert entry["session_hash"] == session_hash(sid)
    text = line("text") or ""
    assert f"reason={reason}" in text and f"expected={expected} " in text, text
    assert f"request_id={request_id}" in text and f"session_hash={session_hash(sid)}" in text, text
    for name in ("json", "text"):
        logs = cdc.gateway(name).logs()
        assert token.split(".")[2] not in logs and token.split(".")[1] not in logs


async def test_a_jwt_shaped_audience_is_redacted_in_the_received_field(cdc: Cdc) -> None:
    """An attacker's token whose aud is itself a token must not get that token into the logs."""
    inner = mint(cdc.world.key, tenant=TENANT)
    token = mint(cdc.world.key, tenant=TENANT, aud=inner)
    request_id = f"rid-{uuid.uuid4().hex[:12]}"
    url = f"{cdc.gateway().url}/session/{new_id('jwt-aud')}/events"
    response = await cdc.client.get(url, params={"token": token}, headers={"x-request-id": request_id})
    assert response.status_code == 401

    def line() -> str | None:
        return next((entry for entry in cdc.gateway().logs().splitlines() if request_id in entry), None)

    await wait_until(lambda: line() is not None, 10, "no log line for the refused request")
    entry = json.loads(line() or "")
    assert entry["received"] == "[REDACTED]"
    assert inner.split(".")[2] not in cdc.gateway().logs()


# --------------------------------------------------------------------------------------------------
# 25.9: metrics


async def test_metrics_have_build_info_and_no_created_series(cdc: Cdc) -> None:
    text = await cdc.metrics()
    assert "_created" not in text
    [info] = [line for line in text.splitlines() if line.startswith("gateway_build_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info))
    assert set(labels) == {"version", "python", "aiokafka", "uvicorn"}, info
    assert labels["python"] == ".".join(str(part) for part in sys.version_info[:3])
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", labels["version"]) and re.fullmatch(r"\d+\.\d+.*", labels["uvicorn"])
    assert info.endswith(" 1.0")
    assert sum(line.startswith("# TYPE ") for line in text.splitlines()) < 70


async def test_a_normal_end_is_counted_apart_from_refusals(cdc: Cdc) -> None:
    sid = new_id("ended")
    await produce(cdc.world.bootstrap, cdc.world.topic, [(debezium_key(sid), debezium_value(sid, "DONE"))])
    status, [event] = await cdc.events(sid, 1)
    assert status == 200 and event.id is not None and event.id.endswith("-end")
    before = await cdc.metrics()
    status, _ = await cdc.events(sid, 1, **{"last-event-id": event.id})
    assert status == 204
    after = await cdc.metrics()
    assert metric_value(after, "gateway_stream_requests_ended_total") == (
        metric_value(before, "gateway_stream_requests_ended_total") + 1
    )
    assert metric_value(after, "gateway_stream_requests_refused_total", status="204") == 0


# --------------------------------------------------------------------------------------------------
# 25.1: `mapping check`, 25.6: a bad mapping setting


def run_gateway(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env or clean_env(),
        timeout=60,
        check=False,
    )


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    (tmp_path / "mapping.json").write_text(json.dumps(DEBEZIUM))
    (tmp_path / "row.json").write_bytes(debezium_value("wallet-42", "DONE"))
    (tmp_path / "key.json").write_bytes(debezium_key("wallet-42"))
    return tmp_path


def test_mapping_check_prints_what_the_gateway_would_store(sample: Path) -> None:
    result = run_gateway(
        "mapping", "check", "--mapping", str(sample / "mapping.json"), "--key-file", str(sample / "key.json"),
        str(sample / "row.json"),
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout == (
        'stored: {"id": "wallet-42", "tenantId": "acme", "status": "completed", "updatedAt": "' + WHEN_TEXT + '"}\n'
    )


def test_mapping_check_says_exactly_why_a_record_is_rejected(sample: Path) -> None:
    millis = {**DEBEZIUM, "updatedAtFormat": "epochMillis"}
    result = run_gateway(
        "mapping", "check", "--mapping", json.dumps(millis), "--key", '{"id": "wallet-42"}', str(sample / "row.json")
    )
    assert result.returncode == 1, result
    assert result.stdout == (
        "rejected (gateway_records_rejected_total reason time_out_of_range): updatedAt at /after/updated_at read "
        "as epochMillis is outside the years 0001-9999 (a 16-digit number looks like epochMicros)\n"
    )
    # A plain-text key where the mapping reads a JSON key.
    result = run_gateway("mapping", "check", "--mapping", str(sample / "mapping.json"), "--key", "wallet-42", "-",
                         stdin=debezium_value("wallet-42", "DONE"))  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.startswith("rejected (gateway_records_rejected_total reason not_json): record key is not JSON")


def test_mapping_check_of_ignored_records_tombstones_and_the_record_timestamp(sample: Path) -> None:
    mapping = str(sample / "mapping.json")
    (sample / "draft.json").write_bytes(debezium_value("wallet-42", "DRAFT"))
    result = run_gateway("mapping", "check", "--mapping", mapping, str(sample / "draft.json"))
    assert (result.returncode, result.stdout) == (
        0,
        "ignored (gateway_records_ignored_total reason mapping_status_ignored): the gateway skips it quietly\n",
    )
    result = run_gateway("mapping", "check", "--mapping", mapping, "--key-file", str(sample / "key.json"),
                         "--tombstone", "-")  # fmt: skip
    assert (result.returncode, result.stdout) == (0, 'deleted: a tombstone for session "wallet-42"\n')
    (sample / "no-time.json").write_bytes(debezium_value("wallet-42", "OPEN", updated_at=None))
    result = run_gateway("mapping", "check", "--mapping", mapping, "--timestamp", "1765096000999",
                         str(sample / "no-time.json"))  # fmt: skip
    assert result.returncode == 0 and '"updatedAt": "2025-12-07T08:26:40.999Z"' in result.stdout, result


def test_mapping_check_reads_the_mapping_setting_and_checks_its_topics(sample: Path) -> None:
    env = clean_env(GATEWAY_RECORD_MAPPING=json.dumps({**DEBEZIUM, "topics": ["cdc.public.sessions"]}))
    result = run_gateway("mapping", "check", "--topic", "other", str(sample / "row.json"), env=env)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "note: the mapping does not apply to topic other (its topics: cdc.public.sessions); "
        "the record is read as a plain session event"
    )
    result = run_gateway("mapping", "check", "--topic", "cdc.public.sessions", str(sample / "row.json"), env=env)
    assert result.returncode == 0 and result.stdout.startswith("stored: "), result


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("row.json",), "no mapping: pass --mapping FILE (or inline JSON), or set GATEWAY_RECORD_MAPPING"),
        (("--mapping", "missing.json", "row.json"), "cannot read the record mapping file missing.json"),
        (("--mapping", '{"status": "/s"}', "row.json"), "record mapping GATEWAY_RECORD_MAPPING: statusValues"),
        (("--mapping", "mapping.json", "nope.json"), "cannot read the record file nope.json: No such file"),
        (("--mapping", "mapping.json", "--header", "ce_id", "row.json"), "--header 'ce_id': write NAME=VALUE"),
        (("--mapping", "mapping.json", "--key", "a", "--key-file", "key.json", "row.json"), "give the key once"),
    ],
)
def test_mapping_check_mistakes_are_one_line(sample: Path, args: tuple[str, ...], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "mapping", "check", *args],
        capture_output=True, text=True, cwd=sample, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr.startswith(f"session-gateway: error: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "GATEWAY_RECORD_MAPPING",
            '{"status": "/s", "tenantId": "/t"}',
            "session-gateway: error: invalid setting: record mapping GATEWAY_RECORD_MAPPING: statusValues: Field "
            "required (try a mapping on a sample record: session-gateway mapping check)",
        ),
        ("GATEWAY_DLQ_TOPIC", "dead letters", "session-gateway: error: invalid setting: GATEWAY_DLQ_TOPIC is not a "
                                              "Kafka topic name"),
    ],
)  # fmt: skip
def test_a_bad_setting_checked_across_fields_prints_no_python_dict(variable: str, value: str, line: str) -> None:
    env = clean_env(**{variable: value, "GATEWAY_PORT": str(free_port()), "GATEWAY_INTERNAL_PORT": str(free_port())})
    result = run_gateway("serve", env=env)
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [line]
    assert "{'" not in result.stderr and "setting=" not in result.stderr


async def test_a_bad_mapping_is_refused_before_serve_touches_kafka() -> None:
    """The same line when the mapping is a file, and no broker is needed to get it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve",
        env=clean_env(GATEWAY_RECORD_MAPPING="/nonexistent/mapping.json", GATEWAY_KAFKA_BOOTSTRAP_SERVERS="x:1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert stderr.decode().startswith(
        "session-gateway: error: invalid setting: cannot read the record mapping file /nonexistent/mapping.json"
    )
