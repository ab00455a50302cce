"""Several issuers against a real Keycloak: one realm per tenant, as many deployments run it.

Two realms are imported into the session's Keycloak through its admin REST API (``POST /admin/realms``):
``e2e-tenant-a`` and ``e2e-tenant-b``, each with a confidential client getting tokens by the
client-credentials grant and no tenant claim (the realm is the tenant); realm b also has a client whose
tokens say ``tenant_id: tenant-a`` (a tenant claim that contradicts the issuer). A key we generate is
imported into realm b as one of its RSA key providers, so that we can sign with a realm-b key what
Keycloak never would: a token with realm a's ``iss``. The gateway trusts both realms through
``GATEWAY_JWT_ISSUERS`` with OIDC discovery and knows nothing of the committed realm.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.e2e.conftest import AUDIENCE, Keycloak
from tests.e2e.support import metrics_text, publish, sample
from tests.gateway_support import GatewayProcess, clean_env, sse
from tests.kafka_support import create_topic, unique_topic
from tests.support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REALM_A, REALM_B = "e2e-tenant-a", "e2e-tenant-b"
MIN_REFRESH = 10
MAX_WAITING = 5


def _client(client_id: str, tenant_claim: str | None = None) -> dict[str, Any]:
    mappers: list[dict[str, Any]] = [
        {
            "name": "audience",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-audience-mapper",
            "config": {"included.custom.audience": AUDIENCE, "access.token.claim": "true"},
        }
    ]
    if tenant_claim is not None:
        mappers.append(
            {
                "name": "tenant_id",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-hardcoded-claim-mapper",
                "config": {
                    "claim.name": "tenant_id",
                    "claim.value": tenant_claim,
                    "jsonType.label": "String",
                    "access.token.claim": "true",
                },
            }
        )
    return {
        "clientId": client_id,
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": False,
        "clientAuthenticatorType": "client-secret",
        "secret": f"{client_id}-secret",
        "serviceAccountsEnabled": True,
        "standardFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "fullScopeAllowed": False,
        "protocolMappers": mappers,
    }


def _realm(name: str, clients: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": name,
        "realm": name,
        "enabled": True,
        "sslRequired": "none",
        "accessTokenLifespan": 300,
        "defaultSignatureAlgorithm": "RS256",
        "clients": clients,
    }


@dataclass
class Realms:
    keycloak: Keycloak
    admin_token: str
    own_key: RSAKey  # imported into realm b: a realm-b key whose private half we hold
    own_kid: str

    def issuer(self, realm: str) -> str:
        return f"{self.keycloak.url}/realms/{realm}"

    async def token(self, realm: str, client_id: str) -> str:
        async with httpx.AsyncClient(timeout=30.0) as client:
            response = await client.post(
                f"{self.issuer(realm)}/protocol/openid-connect/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": f"{client_id}-secret",
                },
            )
        assert response.status_code == 200, f"token request for {client_id} in {realm} failed: {response.text}"
        token: str = response.json()["access_token"]
        return token

    def forge(self, iss: str, kid: str | None = None, **extra: Any) -> str:
        """A token signed by the key imported into realm b, saying whatever we like."""
        now = int(time.time())
        claims = {"iss": iss, "aud": AUDIENCE, "sub": "forger", "iat": now, "exp": now + 300, **extra}
        return jwt.encode({"alg": "RS256", "kid": kid or self.own_kid}, claims, self.own_key, algorithms=["RS256"])


async def _admin_token(keycloak: Keycloak) -> str:
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(
            f"{keycloak.url}/realms/master/protocol/openid-connect/token",
            data={"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": "admin"},
        )
    assert response.status_code == 200, f"admin login failed: {response.text}"
    token: str = response.json()["access_token"]
    return token


@pytest_asyncio.fixture(scope="module")
async def realms(keycloak: Keycloak) -> Realms:
    headers = {"authorization": f"Bearer {await _admin_token(keycloak)}"}
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    async with httpx.AsyncClient(base_url=f"{keycloak.url}/admin/realms", headers=headers, timeout=60.0) as admin:
        for name, clients in (
            (REALM_A, [_client("backend-a")]),
            (REALM_B, [_client("backend-b"), _client("backend-b-says-a", tenant_claim="tenant-a")]),
        ):
            created = await admin.post("", json=_realm(name, clients))
            assert created.status_code == 201, f"importing realm {name}: {created.status_code} {created.text}"
        imported = await admin.post(
            f"/{REALM_B}/components",
            json={
                "name": "imported-by-test",
                "providerId": "rsa",
                "providerType": "org.keycloak.keys.KeyProvider",
                "parentId": REALM_B,
                # A low priority: realm b keeps signing its own tokens with its generated key.
                "config": {"priority": ["1"], "enabled": ["true"], "active": ["true"], "privateKey": [pem]},
            },
        )
        assert imported.status_code == 201, imported.text
        component = imported.headers["location"].rsplit("/", 1)[-1]
        keys = (await admin.get(f"/{REALM_B}/keys")).json()["keys"]
    own = [key["kid"] for key in keys if key.get("providerId") == component]
    assert own, f"the imported key is not among realm b's keys: {keys}"
    key = RSAKey.import_key(pem)
    return Realms(keycloak, headers["authorization"], key, own[0])


@pytest_asyncio.fixture(scope="module")
async def topic(kafka_bootstrap: str) -> str:
    name = unique_topic("e2e-realms")
    await create_topic(kafka_bootstrap, name, partitions=2, compacted=True)
    return name


@pytest_asyncio.fixture(scope="module")
async def gateway(
    kafka_bootstrap: str, topic: str, realms: Realms, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    """A gateway trusting realm a (tenant-a) and realm b (tenant-b) by OIDC discovery, nothing else."""
    issuers = [
        {"issuer": realms.issuer(REALM_A), "tenant": "tenant-a"},
        {"issuer": realms.issuer(REALM_B), "tenant": "tenant-b"},
    ]
    env = clean_env(
        GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        GATEWAY_KAFKA_TOPIC=topic,
        GATEWAY_JWT_ISSUERS=json.dumps(issuers),
        GATEWAY_JWT_AUDIENCE=AUDIENCE,
        GATEWAY_JWKS_MIN_REFRESH=str(MIN_REFRESH),
        GATEWAY_JWKS_MAX_WAITING=str(MAX_WAITING),
        GATEWAY_UNKNOWN_SESSION_WAIT="1",
        GATEWAY_KAFKA_HEALTH_INTERVAL="1",
        GATEWAY_LOG_FORMAT="text",
        GATEWAY_REQUEST_LOG_LINES="100000",
    )
    process = GatewayProcess(env, Path(tmp_path_factory.mktemp("e2e-realms")) / "gateway.log").start()
    try:
        await process.wait_ready(timeout=120)
        yield process
    finally:
        process.stop()


@pytest_asyncio.fixture(scope="module")
async def sessions(kafka_bootstrap: str, topic: str, gateway: GatewayProcess, realms: Realms) -> tuple[str, str]:
    session_a, session_b = f"realm-a-{uuid.uuid4()}", f"realm-b-{uuid.uuid4()}"
    await publish(kafka_bootstrap, topic, session_a, "tenant-a", "active")
    await publish(kafka_bootstrap, topic, session_b, "tenant-b", "fetched")
    token_a = await realms.token(REALM_A, "backend-a")
    token_b = await realms.token(REALM_B, "backend-b")
    # The topic has two partitions, so the sessions may be applied in either order: wait for each of them.
    deadline = time.monotonic() + 30
    for session, token in ((session_a, token_a), (session_b, token_b)):
        while (await open_status(gateway, session, token))[0] == 404:
            assert time.monotonic() < deadline, f"the gateway did not consume {session} within 30 s"
            await asyncio.sleep(0.2)
    return session_a, session_b


async def open_status(gateway: GatewayProcess, session_id: str, token: str) -> tuple[int, list[str]]:
    """Status of a stream request sent with ``Authorization: Bearer``, and its first event's status if it opened."""
    url = f"{gateway.url}/session/{session_id}/events"
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30.0) as client, sse(client, url, headers=headers) as stream:
        if stream.status != 200:
            return stream.status, []
        event = await stream.next_event(timeout=20)
        assert event is not None, "the stream ended before its first event"
        return 200, [event.json()["status"]]


async def test_a_realms_token_reads_its_tenants_session_and_not_the_other(
    gateway: GatewayProcess, realms: Realms, sessions: tuple[str, str], keycloak: Keycloak
) -> None:
    session_a, session_b = sessions
    token_a = await realms.token(REALM_A, "backend-a")
    token_b = await realms.token(REALM_B, "backend-b")
    assert await open_status(gateway, session_a, token_a) == (200, ["active"])
    assert await open_status(gateway, session_b, token_b) == (200, ["fetched"])
    assert await open_status(gateway, session_b, token_a) == (404, [])
    assert await open_status(gateway, session_a, token_b) == (404, [])
    # A realm the gateway does not trust (the committed one, whose token says tenant-a) gets nothing.
    assert await open_status(gateway, session_a, await keycloak.token("wallet-backend")) == (401, [])


async def test_a_tenant_claim_contradicting_the_realm_is_refused(
    gateway: GatewayProcess, realms: Realms, sessions: tuple[str, str]
) -> None:
    token = await realms.token(REALM_B, "backend-b-says-a")
    for session in sessions:
        assert await open_status(gateway, session, token) == (401, [])
    assert "reason=tenant_not_of_issuer" in gateway.logs()


async def test_a_realm_b_key_cannot_sign_for_realm_a(
    gateway: GatewayProcess, realms: Realms, sessions: tuple[str, str]
) -> None:
    session_a, session_b = sessions
    # The imported key really is one of realm b's keys: with realm b's iss, the gateway accepts it.
    assert await open_status(gateway, session_b, realms.forge(realms.issuer(REALM_B))) == (200, ["fetched"])
    # The same key and kid with realm a's iss, even naming tenant-a: refused, on every session.
    forged = realms.forge(realms.issuer(REALM_A), tenant_id="tenant-a")
    for session in (session_a, session_b):
        assert await open_status(gateway, session, forged) == (401, [])
    assert await open_status(gateway, session_a, realms.forge(realms.issuer(REALM_A))) == (401, [])


async def test_a_kid_flood_on_realm_a_does_not_delay_realm_b(
    gateway: GatewayProcess, realms: Realms, sessions: tuple[str, str]
) -> None:
    session_a, session_b = sessions
    token_b = await realms.token(REALM_B, "backend-b")
    assert await open_status(gateway, session_b, token_b) == (200, ["fetched"])
    baseline_started = time.monotonic()
    assert await open_status(gateway, session_b, token_b) == (200, ["fetched"])
    baseline = time.monotonic() - baseline_started
    # Well-formed tokens for realm a with kids realm a never had: they wait for realm a's next allowed
    # refetch (MIN_REFRESH), at most MAX_WAITING of them; the rest are refused at once.
    flood = [
        asyncio.create_task(
            open_status(gateway, session_a, realms.forge(realms.issuer(REALM_A), kid=f"flood-{i}-{uuid.uuid4().hex}"))
        )
        for i in range(40)
    ]
    issuer_a = realms.issuer(REALM_A)

    async def a_waits_full() -> bool:
        text = await metrics_text(gateway)
        return sample(text, "gateway_jwks_issuer_waiting_requests", issuer=issuer_a) == MAX_WAITING

    await wait_until(a_waits_full, 30, "realm a's waiting requests did not reach their cap")
    started = time.monotonic()
    assert await open_status(gateway, session_b, token_b) == (200, ["fetched"])
    during = time.monotonic() - started
    still_waiting = not all(task.done() for task in flood)
    text = await metrics_text(gateway)
    assert sample(text, "gateway_jwks_issuer_waiting_requests", issuer=realms.issuer(REALM_B)) == 0
    answers = await asyncio.gather(*flood)
    assert {status for status, _ in answers} == {401}
    print(f"realm b during realm a's kid flood: {during * 1000:.0f} ms (before the flood {baseline * 1000:.0f} ms)")
    assert still_waiting, "realm a's flood was over before realm b was asked"
    # A generous bound on a shared machine: realm a's waiters wait up to MIN_REFRESH (10 s).
    assert during < MIN_REFRESH / 2, f"realm b's token took {during:.1f}s during realm a's kid flood"
