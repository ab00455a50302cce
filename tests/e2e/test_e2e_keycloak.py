"""A real identity provider: Keycloak issues the tokens, the gateway finds its keys by OIDC discovery.

The realm is the committed deploy/keycloak/realm.json: confidential clients ``wallet-backend`` (tenant-a) and
``wallet-backend-b`` (tenant-b) get tokens with the client-credentials grant, as an issuer/verifier backend
does; a hard-coded claim mapper adds ``tenant_id``. Key rotation goes through Keycloak's admin REST API.
The tests of this module run in file order: the rotation comes last, since it changes the realm's keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.e2e.conftest import AUDIENCE, Keycloak
from tests.e2e.support import metrics_text, publish, sample
from tests.gateway_support import GatewayProcess, clean_env, sse
from tests.kafka_support import create_topic, unique_topic

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return value


def kid(token: str) -> str:
    header = token.split(".", maxsplit=1)[0]
    value: str = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    return value


@pytest_asyncio.fixture(scope="module")
async def topic(kafka_bootstrap: str) -> str:
    name = unique_topic("e2e-keycloak")
    await create_topic(kafka_bootstrap, name, partitions=3, compacted=True)
    return name


@pytest_asyncio.fixture(scope="module")
async def gateway(
    kafka_bootstrap: str, topic: str, keycloak: Keycloak, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    """A gateway trusting the realm through GATEWAY_OIDC_ISSUER only, with JWKS caching set low for the test."""
    env = clean_env(
        GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        GATEWAY_KAFKA_TOPIC=topic,
        GATEWAY_OIDC_ISSUER=keycloak.issuer,
        GATEWAY_JWT_AUDIENCE=AUDIENCE,
        GATEWAY_JWKS_MIN_REFRESH="1",
        GATEWAY_JWKS_CACHE_TTL="2",
        GATEWAY_JWKS_CACHE_MIN_TTL="0",
        GATEWAY_JWKS_CACHE_MAX_TTL="5",
        GATEWAY_UNKNOWN_SESSION_WAIT="1",
        GATEWAY_KAFKA_HEALTH_INTERVAL="1",
        GATEWAY_LOG_FORMAT="text",
        GATEWAY_TICKET_KEYS=f"kc:{secrets.token_urlsafe(32)}",
    )
    process = GatewayProcess(env, Path(tmp_path_factory.mktemp("e2e-keycloak")) / "gateway.log").start()
    try:
        await process.wait_ready(timeout=120)
        yield process
    finally:
        process.stop()


async def open_status(
    gateway: GatewayProcess, session_id: str, token: str, credential: str = "token"
) -> tuple[int, list[str]]:
    """The status of a stream request and, when it opened, the statuses it delivered until the first one."""
    url = f"{gateway.url}/session/{session_id}/events"
    async with httpx.AsyncClient(timeout=30.0) as client, sse(client, url, params={credential: token}) as stream:
        if stream.status != 200:
            return stream.status, []
        event = await stream.next_event(timeout=20)
        assert event is not None, "the stream ended before its first event"
        return 200, [event.json()["status"]]


async def open_status_within(
    gateway: GatewayProcess, session_id: str, token: str, timeout: float
) -> tuple[int, list[str]]:
    """``open_status`` asked again while it answers 404 (the session not consumed yet), for ``timeout`` s at most."""
    deadline = time.monotonic() + timeout
    while (answer := await open_status(gateway, session_id, token))[0] == 404 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return answer


async def test_keycloak_tokens_open_streams_and_tenants_stay_apart(
    kafka_bootstrap: str, topic: str, keycloak: Keycloak, gateway: GatewayProcess
) -> None:
    token_a = await keycloak.token("wallet-backend")
    token_b = await keycloak.token("wallet-backend-b")
    assert claims(token_a)["tenant_id"] == "tenant-a" and claims(token_b)["tenant_id"] == "tenant-b"
    assert claims(token_a)["iss"] == keycloak.issuer
    session_a, session_b = f"kc-a-{uuid.uuid4()}", f"kc-b-{uuid.uuid4()}"
    await publish(kafka_bootstrap, topic, session_a, "tenant-a", "active")
    await publish(kafka_bootstrap, topic, session_b, "tenant-b", "fetched")

    # The gateway waits 1 s for an unknown session: poll until it consumed both records.
    assert await open_status_within(gateway, session_a, token_a, 30) == (200, ["active"])
    assert await open_status_within(gateway, session_b, token_b, 30) == (200, ["fetched"])
    # Another tenant's session is answered exactly like an unknown one.
    assert await open_status(gateway, session_a, token_b) == (404, [])
    assert await open_status(gateway, session_b, token_a) == (404, [])
    assert await open_status(gateway, f"kc-unknown-{uuid.uuid4()}", token_a) == (404, [])
    assert await open_status(gateway, session_a, token_a + "x") == (401, [])


async def ticket(gateway: GatewayProcess, session_id: str, bearer: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30.0) as client:
        return await client.post(
            f"{gateway.url}/session/{session_id}/ticket", headers={"authorization": f"Bearer {bearer}"}
        )


async def test_a_backend_with_a_client_credentials_token_gets_tickets_for_its_sessions_only(
    kafka_bootstrap: str, topic: str, keycloak: Keycloak, gateway: GatewayProcess
) -> None:
    """docs/tickets.md with Keycloak's tokens: the backend's tenant-wide token buys a one-session ticket."""
    token_a = await keycloak.token("wallet-backend")
    token_b = await keycloak.token("wallet-backend-b")
    session_a, session_b = f"kc-ta-{uuid.uuid4()}", f"kc-tb-{uuid.uuid4()}"
    await publish(kafka_bootstrap, topic, session_a, "tenant-a", "active")
    await publish(kafka_bootstrap, topic, session_b, "tenant-b", "active")
    assert await open_status_within(gateway, session_a, token_a, 30) == (200, ["active"])
    assert await open_status_within(gateway, session_b, token_b, 30) == (200, ["active"])

    issued = await ticket(gateway, session_a, token_a)
    assert issued.status_code == 201 and issued.headers["cache-control"] == "no-store", issued.text
    ticket_a = issued.json()["ticket"]
    assert token_a not in ticket_a
    assert await open_status(gateway, session_a, ticket_a, "ticket") == (200, ["active"])
    # Another session of the same tenant, another tenant's session: like unknown ones.
    assert await open_status(gateway, session_b, ticket_a, "ticket") == (404, [])
    foreign = (await ticket(gateway, session_a, token_b)).json()["ticket"]  # tenant-b's backend, tenant-a's id
    assert await open_status(gateway, session_a, foreign, "ticket") == (404, [])
    # Neither credential stands in for the other.
    assert await open_status(gateway, session_a, token_a, "ticket") == (401, [])
    assert await open_status(gateway, session_a, ticket_a) == (401, [])
    assert (await ticket(gateway, session_a, ticket_a)).status_code == 401
    logs = gateway.logs()
    assert token_a not in logs and token_b not in logs and ticket_a not in logs and foreign not in logs


async def rotate_keys(keycloak: Keycloak) -> tuple[str, str]:
    """Adds a new RSA key provider that outranks the current one, then deletes the current one.

    Returns (old kid, new kid) of the realm's active RS256 key.
    """
    admin = await keycloak.admin()
    async with admin:
        realm_id = (await admin.get("")).json()["id"]
        before = (await admin.get("/keys")).json()
        old_kid = before["active"]["RS256"]
        providers = (await admin.get("/components", params={"type": "org.keycloak.keys.KeyProvider"})).json()
        old = [p for p in providers if p["providerId"] in ("rsa-generated", "rsa") and p["name"] != "rotated"]
        assert old, f"no RSA signing key provider in the realm: {providers}"
        created = await admin.post(
            "/components",
            json={
                "name": "rotated",
                "providerId": "rsa-generated",
                "providerType": "org.keycloak.keys.KeyProvider",
                "parentId": realm_id,
                "config": {
                    "priority": ["1000"],
                    "enabled": ["true"],
                    "active": ["true"],
                    "algorithm": ["RS256"],
                    "keySize": ["2048"],
                },
            },
        )
        assert created.status_code == 201, created.text
        for provider in old:
            deleted = await admin.delete(f"/components/{provider['id']}")
            assert deleted.status_code == 204, deleted.text
        after = (await admin.get("/keys")).json()
        new_kid = after["active"]["RS256"]
        remaining = {key["kid"] for key in after["keys"]}
    assert new_kid != old_kid, after
    assert old_kid not in remaining, f"the old key {old_kid} is still in the realm: {after}"
    return old_kid, new_kid


async def test_key_rotation_needs_no_restart_and_removed_keys_are_refused(
    kafka_bootstrap: str, topic: str, keycloak: Keycloak, gateway: GatewayProcess
) -> None:
    session_id = f"kc-rot-{uuid.uuid4()}"
    await publish(kafka_bootstrap, topic, session_id, "tenant-a", "active")
    old_token = await keycloak.token("wallet-backend")
    # The gateway waits 1 s for an unknown session: poll until it consumed the record.
    assert await open_status_within(gateway, session_id, old_token, 30) == (200, ["active"])
    fetches_before = sample(await metrics_text(gateway), "gateway_jwks_fetches_total")

    old_kid, new_kid = await rotate_keys(keycloak)
    new_token = await keycloak.token("wallet-backend")
    assert kid(old_token) == old_kid and kid(new_token) == new_kid

    # The new key is unknown to the gateway: it refetches the JWKS by itself (no restart) and accepts the token
    # at the first try. An unknown kid refetches at most once per GATEWAY_JWKS_MIN_REFRESH (1 s here); when the
    # gateway's own refresh ran just before the rotation, the token waits for the next allowed refetch.
    assert await open_status(gateway, session_id, new_token) == (200, ["active"])
    # A token signed by the deleted key is refused once the gateway's key set no longer has it (at once here,
    # since the refetch above dropped it; in general within GATEWAY_JWKS_CACHE_TTL).
    deadline = time.monotonic() + 30
    while (status := (await open_status(gateway, session_id, old_token))[0]) != 401:
        assert status == 200, status
        assert time.monotonic() < deadline, "a token signed by the removed key is still accepted after 30s"
    assert gateway.process is not None and gateway.process.poll() is None, "the gateway restarted"
    text = await metrics_text(gateway)
    assert sample(text, "gateway_jwks_fetches_total") > fetches_before
    assert sample(text, "gateway_auth_failures_total", reason="unknown_key") >= 1, "the refusal names its reason"
