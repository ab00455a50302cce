"""Several issuers (``GATEWAY_JWT_ISSUERS``) and header-only clients (``GATEWAY_ALLOW_QUERY_TOKENS=false``).

Real processes: ``session-gateway serve`` subprocesses, two real JWKS servers (one per issuer, as one
Keycloak realm per tenant would be), the real broker. The gateways of this module share one topic:

- ``issuers``: issuer A (tenant-a) and issuer B (tenant-b), each with its own JWKS server, a 10 s
  unknown-kid refetch interval and at most 5 waiting requests (per issuer);
- ``headers``: the one-issuer form with ``GATEWAY_ALLOW_QUERY_TOKENS=false`` and a token cookie.

The same tests against a real Keycloak with two realms are in tests/e2e/test_e2e_keycloak_realms.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.gateway_support import (
    GatewayProcess,
    JwksServer,
    SigningKey,
    gateway_world,
    mint,
    rsa_key,
    sse,
)
from tests.kafka_support import event_bytes
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
COOKIE = "sess_token"
MIN_REFRESH = 10
MAX_WAITING = 5
NO_LIMITS = {"GATEWAY_MAX_CONNECTIONS_PER_SESSION": "100000", "GATEWAY_MAX_CONNECTIONS_PER_SUBJECT": "100000"}
QUERY_TOKEN_REFUSED = (
    "Tokens in the URL are not accepted (GATEWAY_ALLOW_QUERY_TOKENS=false). "
    "Send the token in the 'Authorization: Bearer' header."
)
MISSING_TOKEN_HEADER = "Authentication required. Provide a valid JWT token in the 'Authorization: Bearer' header."


@dataclass
class World:
    jwks_a: JwksServer
    jwks_b: JwksServer
    key_a: SigningKey
    key_b: SigningKey
    issuers: GatewayProcess
    headers: GatewayProcess
    session_a: str
    session_b: str
    one_issuer_key: SigningKey

    @property
    def iss_a(self) -> str:
        return self.jwks_a.issuer_url

    @property
    def iss_b(self) -> str:
        return self.jwks_b.issuer_url

    def token_a(self, **claims: Any) -> str:
        return mint(self.key_a, iss=self.iss_a, tenant=claims.pop("tenant", None), **claims)

    def token_b(self, **claims: Any) -> str:
        return mint(self.key_b, iss=self.iss_b, tenant=claims.pop("tenant", None), **claims)


def _new_session(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture(scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    # The same kid on both issuers: a key cache keyed by kid alone could not tell them apart.
    key_a, key_b = rsa_key("shared-kid"), rsa_key("shared-kid")
    jwks_a = JwksServer(keys=[key_a]).start()
    jwks_b = JwksServer(keys=[key_b]).start()
    one_issuer_key = rsa_key("one-issuer")
    session_a, session_b = _new_session("a"), _new_session("b")
    issuers = json.dumps(
        [
            {"issuer": jwks_a.issuer_url, "jwksUrl": jwks_a.url, "tenant": TENANT_A},
            # Issuer B's keys by OpenID discovery under the issuer (the JWKS server serves it).
            {"issuer": jwks_b.issuer_url, "tenant": TENANT_B},
        ]
    )
    one = JwksServer(keys=[one_issuer_key]).start()
    try:
        async with gateway_world(
            kafka_bootstrap,
            tmp_path_factory,
            "issuers",
            records=[
                (session_a.encode(), event_bytes(session_a, TENANT_A, "active")),
                (session_b.encode(), event_bytes(session_b, TENANT_B, "active")),
            ],
            keys=one.keys,
            jwks=one,
            common=NO_LIMITS,
            gateways={
                "issuers": {
                    "GATEWAY_JWKS_URL": None,
                    "GATEWAY_JWT_ISSUER": None,
                    "GATEWAY_JWT_ISSUERS": issuers,
                    "GATEWAY_JWKS_MIN_REFRESH": str(MIN_REFRESH),
                    "GATEWAY_JWKS_MAX_WAITING": str(MAX_WAITING),
                },
                "headers": {"GATEWAY_ALLOW_QUERY_TOKENS": "false", "GATEWAY_TOKEN_COOKIE": COOKIE},
            },
        ) as made:
            yield World(
                jwks_a,
                jwks_b,
                key_a,
                key_b,
                made["issuers"],
                made["headers"],
                session_a,
                session_b,
                one_issuer_key,
            )
    finally:
        for server in (jwks_a, jwks_b, one):
            server.stop()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
        yield http


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    first: dict[str, Any] | None

    def json(self) -> Any:
        return json.loads(self.body)


async def ask(
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    session_id: str,
    *,
    bearer: str | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Opens the stream (the token in ``Authorization`` unless ``params`` carries it); reads one event or the error."""
    sent = dict(headers or {})
    if bearer is not None:
        sent["authorization"] = f"Bearer {bearer}"
    async with sse(client, f"{gateway.url}/session/{session_id}/events", params=params, headers=sent) as stream:
        if stream.status == 200:
            event = await stream.next_event(10.0)
            return Answer(200, stream.headers, b"", event.json() if event else None)
        return Answer(stream.status, stream.headers, stream.response.content, None)


def assert_streams(answer: Answer, session_id: str) -> None:
    assert answer.status == 200, f"expected a stream, got {answer.status} {answer.body!r}"
    assert answer.first is not None and answer.first["id"] == session_id


def assert_invalid_token(answer: Answer) -> None:
    assert answer.status == 401, f"expected 401, got {answer.status} {answer.body!r}"
    assert answer.json() == {"statusCode": 401, "message": "Invalid or expired token", "error": "Unauthorized"}


def assert_not_found(answer: Answer, session_id: str) -> None:
    assert answer.status == 404, f"expected 404, got {answer.status} {answer.body!r}"
    assert answer.json()["message"] == f"Session {session_id} not found"


# --------------------------------------------------------------------------------------------------
# Several issuers


async def test_each_issuer_reads_its_tenants_sessions_only(world: World, client: httpx.AsyncClient) -> None:
    # Neither token has a tenant claim: the issuer is the tenant.
    assert_streams(await ask(client, world.issuers, world.session_a, bearer=world.token_a()), world.session_a)
    assert_streams(await ask(client, world.issuers, world.session_b, bearer=world.token_b()), world.session_b)
    assert_not_found(await ask(client, world.issuers, world.session_b, bearer=world.token_a()), world.session_b)
    assert_not_found(await ask(client, world.issuers, world.session_a, bearer=world.token_b()), world.session_a)


async def test_a_tenant_claim_naming_another_tenant_is_refused(world: World, client: httpx.AsyncClient) -> None:
    assert_streams(
        await ask(client, world.issuers, world.session_a, bearer=world.token_a(tenant=TENANT_A)), world.session_a
    )
    for session in (world.session_a, world.session_b):
        assert_invalid_token(await ask(client, world.issuers, session, bearer=world.token_a(tenant=TENANT_B)))
    await wait_until(
        lambda: "reason=tenant_not_of_issuer" in world.issuers.logs(), 10, "no tenant_not_of_issuer refusal logged"
    )


async def test_a_key_of_issuer_b_cannot_vouch_for_issuer_a(world: World, client: httpx.AsyncClient) -> None:
    # Signed by B's key, same kid as A's key, claiming A's iss (and A's tenant): looked up among A's keys.
    forged = mint(world.key_b, iss=world.iss_a, tenant=TENANT_A)
    assert_invalid_token(await ask(client, world.issuers, world.session_a, bearer=forged))
    # And the other way round, with B's tenant.
    forged_b = mint(world.key_a, iss=world.iss_b, tenant=TENANT_B)
    assert_invalid_token(await ask(client, world.issuers, world.session_b, bearer=forged_b))
    await wait_until(lambda: "reason=bad_signature" in world.issuers.logs(), 10, "no bad_signature refusal logged")


async def test_a_kid_only_issuer_b_has_does_not_verify_a_token_claiming_issuer_a(
    world: World, client: httpx.AsyncClient
) -> None:
    only_b = rsa_key(f"only-b-{uuid.uuid4().hex[:6]}")
    world.jwks_b.keys.append(only_b)
    try:
        # Issuer B vouches for the key (a refetch of B's keys finds it) ...
        own = mint(only_b, iss=world.iss_b, tenant=None)
        assert_streams(await ask(client, world.issuers, world.session_b, bearer=own), world.session_b)
        # ... but not for issuer A: a cache keyed by kid alone would accept this one.
        forged = mint(only_b, iss=world.iss_a, tenant=TENANT_A)
        assert_invalid_token(await ask(client, world.issuers, world.session_a, bearer=forged))
        # The access line is written as the answer goes out: wait for it rather than race it.
        await wait_until(lambda: "reason=unknown_key" in world.issuers.logs(), 10, "no unknown_key refusal logged")
    finally:
        world.jwks_b.keys.remove(only_b)


async def test_an_unknown_or_missing_iss_is_refused_without_asking_any_key_server(
    world: World, client: httpx.AsyncClient
) -> None:
    fetches = (world.jwks_a.fetches, world.jwks_b.fetches)
    for iss in ("https://attacker.test", world.iss_a + "/", None):
        token = mint(world.key_a, iss=iss, tenant=None, kid=f"new-{uuid.uuid4().hex[:6]}")
        assert_invalid_token(await ask(client, world.issuers, world.session_a, bearer=token))
    assert (world.jwks_a.fetches, world.jwks_b.fetches) == fetches
    await wait_until(
        lambda: all(f"reason={r}" in world.issuers.logs() for r in ("invalid_claim_iss", "missing_claim_iss")),
        10,
        "the iss refusals were not logged",
    )


async def test_a_kid_flood_on_one_issuer_does_not_delay_the_other(world: World, client: httpx.AsyncClient) -> None:
    # Wait out A's and B's refetch interval, then let one flood request per batch refetch A at once: the
    # others wait for A's next allowed refetch (MIN_REFRESH later), at most MAX_WAITING of them.
    await wait_until(
        lambda: world.jwks_a.idle_for(MIN_REFRESH + 0.5) and world.jwks_b.idle_for(MIN_REFRESH + 0.5),
        MIN_REFRESH * 3,
        "the JWKS servers kept being asked",
    )
    rotated_b = rsa_key("rotated-b")
    world.jwks_b.keys.append(rotated_b)
    try:
        flood = [
            asyncio.create_task(
                ask(client, world.issuers, world.session_a, bearer=world.token_a(kid=f"flood-{i}-{uuid.uuid4().hex}"))
            )
            for i in range(40)
        ]
        await wait_until(
            lambda: _gauge(world.issuers, "gateway_jwks_issuer_waiting_requests", world.iss_a) == MAX_WAITING,
            20,
            "issuer A's waiting requests did not reach its cap",
        )
        # Issuer B: a known key and a kid B has just published are both admitted at once.
        started = time.monotonic()
        assert_streams(await ask(client, world.issuers, world.session_b, bearer=world.token_b()), world.session_b)
        known_latency = time.monotonic() - started
        started = time.monotonic()
        rotated = mint(rotated_b, iss=world.iss_b, tenant=None)
        assert_streams(await ask(client, world.issuers, world.session_b, bearer=rotated), world.session_b)
        new_kid_latency = time.monotonic() - started
        assert not all(task.done() for task in flood), "issuer A's flood was over before B was asked"
        assert _gauge(world.issuers, "gateway_jwks_issuer_waiting_requests", world.iss_b) == 0
        # Generous bounds on a shared machine: A's waiters wait up to MIN_REFRESH (10 s).
        assert known_latency < MIN_REFRESH / 2, f"issuer B's known key took {known_latency:.1f}s"
        assert new_kid_latency < MIN_REFRESH / 2, f"issuer B's new kid took {new_kid_latency:.1f}s"
        answers = await asyncio.gather(*flood)
        assert {answer.status for answer in answers} == {401}
        print(
            f"issuer B during A's kid flood: known key {known_latency * 1000:.0f} ms, "
            f"new kid {new_kid_latency * 1000:.0f} ms"
        )
    finally:
        world.jwks_b.keys.remove(rotated_b)


async def test_readiness_and_metrics_per_issuer(world: World, client: httpx.AsyncClient) -> None:
    ready = (await client.get(f"{world.issuers.internal_url}/readyz")).json()
    assert ready["status"] == "ready"
    assert [(entry["issuer"], entry["tenant"], entry["signing_keys_loaded"]) for entry in ready["issuers"]] == [
        (world.iss_a, TENANT_A, True),
        (world.iss_b, TENANT_B, True),
    ]
    text = (await client.get(f"{world.issuers.internal_url}/metrics")).text
    for iss in (world.iss_a, world.iss_b):
        assert f'gateway_jwks_issuer_fetches_total{{issuer="{iss}"}}' in text
    # The totals of before stay, without labels.
    assert "\ngateway_jwks_fetches_total " in text and "\ngateway_jwks_waiting_requests " in text


def _gauge(gateway: GatewayProcess, name: str, issuer: str) -> float:
    text = httpx.get(f"{gateway.internal_url}/metrics", timeout=10).text
    prefix = f'{name}{{issuer="{issuer}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return -1.0


# --------------------------------------------------------------------------------------------------
# GATEWAY_ALLOW_QUERY_TOKENS=false


def _one_token(world: World) -> str:
    return mint(world.one_issuer_key, tenant=TENANT_A)


@pytest.mark.parametrize("name", ["token", "access_token"])
async def test_query_tokens_off_refuses_a_token_in_the_url(world: World, client: httpx.AsyncClient, name: str) -> None:
    token = _one_token(world)
    answer = await ask(client, world.headers, world.session_a, params={name: token})
    assert answer.status == 401
    assert answer.json() == {"statusCode": 401, "message": QUERY_TOKEN_REFUSED, "error": "Unauthorized"}
    assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_request"')
    # Even with a good header as well: the URL's token is in some log already, its sender should know.
    both = await ask(client, world.headers, world.session_a, params={name: token}, bearer=token)
    assert both.status == 401 and both.json()["message"] == QUERY_TOKEN_REFUSED
    assert token not in world.headers.logs()
    assert token.split(".")[2] not in world.headers.logs()


async def test_query_tokens_off_keeps_the_header_and_the_cookie(world: World, client: httpx.AsyncClient) -> None:
    token = _one_token(world)
    assert_streams(await ask(client, world.headers, world.session_a, bearer=token), world.session_a)
    # Same origin (no Origin header): the cookie is accepted as before.
    assert_streams(
        await ask(client, world.headers, world.session_a, headers={"cookie": f"{COOKIE}={token}"}), world.session_a
    )


async def test_query_tokens_off_names_the_header_when_there_is_no_token(
    world: World, client: httpx.AsyncClient
) -> None:
    # A name that is not a token parameter as sent (``tok%65n``) is no token either.
    for params in (None, {"tok%65n": _one_token(world)}, {"lastEventId": "0-1"}):
        answer = await ask(client, world.headers, world.session_a, params=params)
        assert answer.status == 401
        assert answer.json()["message"] == MISSING_TOKEN_HEADER


async def test_query_tokens_on_by_default(world: World, client: httpx.AsyncClient) -> None:
    token = mint(world.key_a, iss=world.iss_a, tenant=None)
    assert_streams(await ask(client, world.issuers, world.session_a, params={"token": token}), world.session_a)


# --------------------------------------------------------------------------------------------------
# One issuer's keys never loaded


async def test_an_issuer_whose_keys_never_loaded_gets_503_and_the_other_is_served(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    key_a, key_c = rsa_key("a"), rsa_key("c")
    jwks_a = JwksServer(keys=[key_a]).start()
    jwks_c = JwksServer(keys=[key_c], failing=True).start()  # down since before the gateway started
    session = _new_session("half")
    issuers = json.dumps(
        [
            {"issuer": jwks_a.issuer_url, "jwksUrl": jwks_a.url, "tenant": TENANT_A},
            {"issuer": jwks_c.issuer_url, "jwksUrl": jwks_c.url, "tenant": TENANT_A},
        ]
    )
    try:
        async with (
            gateway_world(
                kafka_bootstrap,
                tmp_path_factory,
                "issuers-half",
                records=[(session.encode(), event_bytes(session, TENANT_A, "active"))],
                jwks=jwks_a,
                ready=False,
                gateways={
                    "half": {"GATEWAY_JWKS_URL": None, "GATEWAY_JWT_ISSUER": None, "GATEWAY_JWT_ISSUERS": issuers}
                },
            ) as world,
            httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client,
        ):
            gateway = world.gateway
            # Not ready, and /readyz names the issuer whose keys are missing.
            ready = await client.get(f"{gateway.internal_url}/readyz")
            assert ready.status_code == 503
            assert any(reason.startswith(jwks_c.issuer_url + ": ") for reason in ready.json()["reasons"]), ready.json()
            # Issuer A's tokens are served (once the session is read); issuer C's get 503 with Retry-After, not 401.
            token_a = mint(key_a, iss=jwks_a.issuer_url, tenant=None)
            await wait_until(lambda: _status(gateway, session, token_a) == 200, 60, "issuer A's token was not served")
            answer = await ask(client, gateway, session, bearer=mint(key_c, iss=jwks_c.issuer_url, tenant=None))
            assert answer.status == 503 and "retry-after" in answer.headers, (answer.status, answer.body)
            # A forged kid for issuer A is a bad token (401), not "keys not loaded".
            forged = mint(key_c, iss=jwks_a.issuer_url, tenant=None)
            assert_invalid_token(await ask(client, gateway, session, bearer=forged))
    finally:
        jwks_a.stop()
        jwks_c.stop()


def _status(gateway: GatewayProcess, session_id: str, token: str) -> int:
    with httpx.stream(
        "GET",
        f"{gateway.url}/session/{session_id}/events",
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    ) as response:
        return response.status_code
