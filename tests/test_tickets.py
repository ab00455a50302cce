"""Stream tickets against real processes: ``POST /session/{id}/ticket`` and ``?ticket=`` (docs/tickets.md).

Every test talks over a socket to ``session-gateway serve`` subprocesses that verify tokens against a
real JWKS server and read sessions from the real broker:

- ``main``: tickets on (two keys, the first signing), a 1 s unknown-session wait, a token cookie, an
  allowed CORS origin, a 1 s leeway (so an expired ticket is refused soon);
- ``off``: no ``GATEWAY_TICKET_KEYS``: the route is unknown and ``?ticket=`` refused.

Key rotation and a restart are run on gateways of their own, on one port (the browser's URL stays the
same). Every ticket and token a test used must be absent from every log line of every gateway.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.gateway_support import GatewayProcess, GatewayWorld, gateway_world, sse
from tests.kafka_support import event_bytes, produce
from tests.support import new_session, wait_until

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
ORIGIN = "https://app.example"
COOKIE = "sess_token"
WAIT = 1.0
NEW_SECRET = secrets.token_urlsafe(32)
OLD_SECRET = secrets.token_urlsafe(32)
KEYS = f"new:{NEW_SECRET},old:{OLD_SECRET}"
INVALID = {"statusCode": 401, "message": "Invalid or expired token", "error": "Unauthorized"}
MISSING = {
    "statusCode": 401,
    "message": "Authentication required. Provide a valid JWT token via the 'token' query parameter.",
    "error": "Unauthorized",
}
# Every credential a test sends: none may appear in any log (checked last).
SECRETS_SEEN: set[str] = {NEW_SECRET, OLD_SECRET}


@pytest_asyncio.fixture(scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayWorld]:
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "tickets",
        gateways={"main": {"GATEWAY_TICKET_KEYS": KEYS}, "off": {}},
        GATEWAY_UNKNOWN_SESSION_WAIT=str(WAIT),
        GATEWAY_TOKEN_COOKIE=COOKIE,
        GATEWAY_CORS_ORIGINS=ORIGIN,
        GATEWAY_JWT_LEEWAY="1",
    ) as world:
        yield world


def token(world: GatewayWorld, tenant: str | None = TENANT_A, **claims: Any) -> str:
    minted = world.token(tenant, **claims)
    SECRETS_SEEN.add(minted)
    return minted


async def publish(world: GatewayWorld, session_id: str, tenant: str, status: str = "active") -> None:
    await produce(world.bootstrap, world.topic, [(session_id.encode(), event_bytes(session_id, tenant, status))])


async def ask(
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    session_id: str,
    bearer: str | None,
    body: bytes | None = None,
    **kwargs: Any,
) -> httpx.Response:
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    headers.update(kwargs.pop("headers", {}))
    url = f"{gateway.url}/session/{session_id}/ticket"
    response = await client.post(url, content=body, headers=headers, **kwargs)
    if response.status_code == 201:
        SECRETS_SEEN.add(response.json()["ticket"])
    return response


async def ticket_for(client: httpx.AsyncClient, gateway: GatewayProcess, session_id: str, bearer: str) -> str:
    response = await ask(client, gateway, session_id, bearer)
    assert response.status_code == 201, response.text
    ticket: str = response.json()["ticket"]
    return ticket


async def stream_status(
    client: httpx.AsyncClient, world: GatewayWorld, session_id: str, params: dict[str, str], **kwargs: Any
) -> tuple[int, bytes, httpx.Headers]:
    async with sse(client, world.url(session_id, world["main"]), params=params, **kwargs) as stream:
        if stream.status == 200:
            return 200, b"", stream.headers
        return stream.status, stream.response.content, stream.headers


async def visible(client: httpx.AsyncClient, world: GatewayWorld, session_id: str, bearer: str) -> None:
    async def streams() -> bool:
        status, _, _ = await stream_status(client, world, session_id, {"token": bearer})
        return status == 200

    await wait_until(streams, 30, f"{session_id} never streamed")


def mint_with_example(kid: str, secret: str, tenant: str, session_id: str, ttl: int) -> str:
    output = subprocess.run(
        [sys.executable, str(EXAMPLES / "mint_ticket.py"), kid, secret, tenant, session_id, str(ttl)],
        check=True,
        capture_output=True,
        text=True,
    )
    ticket = output.stdout.strip()
    SECRETS_SEEN.add(ticket)
    return ticket


# --------------------------------------------------------------------------------------------------
# The flow


async def test_a_backend_trades_its_token_for_a_ticket_and_a_browser_streams_with_it(
    world: GatewayWorld, client: httpx.AsyncClient
) -> None:
    session_id = new_session("flow")
    await publish(world, session_id, TENANT_A)
    tenant_token = token(world)
    await visible(client, world, session_id, tenant_token)
    before = time.time()
    response = await ask(client, world["main"], session_id, tenant_token, headers={"origin": ORIGIN})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["access-control-allow-origin"] == ORIGIN
    document = response.json()
    assert set(document) == {"ticket", "expiresAt"}
    ticket = document["ticket"]
    assert ticket.startswith("v1.") and tenant_token not in ticket
    expires = datetime.strptime(document["expiresAt"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert expires.tzinfo == UTC and document["expiresAt"].endswith(".000Z")
    assert before + 900 - 2 <= expires.timestamp() <= time.time() + 900  # GATEWAY_TICKET_TTL's default

    async with sse(client, world.url(session_id, world["main"]), params={"ticket": ticket}) as stream:
        assert stream.status == 200
        first = await stream.next_event()
        assert first is not None and first.json()["status"] == "active"
        await publish(world, session_id, TENANT_A, "completed")
        events = await stream.events_until_end()
        assert [event.json()["status"] for event in events] == ["completed"]
        assert events[-1].id is not None and events[-1].id.endswith("-end")
    # The same URL again (an EventSource reconnecting) with the last id: the session has ended, 204.
    last = {"last-event-id": events[-1].id}
    status, _, _ = await stream_status(client, world, session_id, {"ticket": ticket}, headers=last)
    assert status == 204
    spec = (await client.get(f"{world['main'].internal_url}/openapi.json")).json()
    assert spec["paths"]["/session/{id}/ticket"]["post"]["operationId"] == "session_ticket"


async def test_a_shorter_lifetime_may_be_asked_for_never_a_longer_one(
    world: GatewayWorld, client: httpx.AsyncClient
) -> None:
    bearer = token(world)
    shorter = await ask(client, world["main"], "s-ttl", bearer, b'{"ttl": 60}')
    longer = await ask(client, world["main"], "s-ttl", bearer, b'{"ttl": 86400}')
    assert shorter.status_code == longer.status_code == 201
    now = time.time()
    assert now + 55 <= datetime.fromisoformat(shorter.json()["expiresAt"]).timestamp() <= now + 61
    assert datetime.fromisoformat(longer.json()["expiresAt"]).timestamp() <= now + 901
    for bad in (b'{"ttl": -1}', b'{"ttl": "60"}', b'{"ttl": 60, "sid": "other"}', b"not json", b"[1]"):
        refused = await ask(client, world["main"], "s-ttl", bearer, bad)
        assert refused.status_code == 400, bad
        assert refused.json()["error"] == "Bad Request"
    too_big = await ask(client, world["main"], "s-ttl", bearer, b'{"ttl": 60}' + b" " * 2048)
    assert too_big.status_code == 413


async def test_the_ticket_route_takes_the_authorization_header_only(
    world: GatewayWorld, client: httpx.AsyncClient
) -> None:
    bearer = token(world)
    main = world["main"]
    url = f"{main.url}/session/s-csrf/ticket"
    for params in ({"token": bearer}, {"access_token": bearer}, {"anything": "1"}):
        refused = await client.post(url, params=params, headers={"authorization": f"Bearer {bearer}"})
        assert refused.status_code == 400, params
        assert "Authorization header" in refused.json()["message"]
    assert (await client.post(url, params={"token": bearer})).status_code == 400
    # A cookie is what a browser adds to any site's request by itself: it never mints a ticket.
    cookie = await client.post(url, headers={"cookie": f"{COOKIE}={bearer}", "origin": main.url})
    assert cookie.status_code == 401 and cookie.json() == MISSING
    assert (await client.get(url, headers={"authorization": f"Bearer {bearer}"})).status_code == 405
    # A ticket is not a token: it cannot mint another one.
    ticket = await ticket_for(client, main, "s-csrf", bearer)
    again = await ask(client, main, "s-csrf", ticket)
    assert again.status_code == 401 and again.json() == INVALID
    # A token naming one session (its session claim) gets tickets for that session only, else 404.
    scoped = token(world, session="s-mine")
    assert (await ask(client, main, "s-mine", scoped)).status_code == 201
    other = await ask(client, main, "s-other", scoped)
    assert other.status_code == 404 and other.json()["message"] == "Session s-other not found"


async def test_the_preflight_allows_post_with_the_authorization_header_for_listed_origins(
    world: GatewayWorld, client: httpx.AsyncClient
) -> None:
    url = f"{world['main'].url}/session/s-pre/ticket"
    asked = {"origin": ORIGIN, "access-control-request-method": "POST"}
    allowed = await client.options(url, headers={**asked, "access-control-request-headers": "authorization"})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert allowed.headers["access-control-allow-methods"] == "POST"
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    foreign = await client.options(url, headers={**asked, "origin": "https://evil.example"})
    assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers
    wrong_method = await client.options(url, headers={**asked, "access-control-request-method": "GET"})
    assert wrong_method.status_code == 400


# --------------------------------------------------------------------------------------------------
# What a ticket may not do


async def test_a_ticket_for_another_session_or_tenant_is_answered_like_an_unknown_session(
    world: GatewayWorld, client: httpx.AsyncClient
) -> None:
    mine, neighbour, theirs, unknown = (new_session(label) for label in ("mine", "neighbour", "theirs", "unknown"))
    await publish(world, mine, TENANT_A)
    await publish(world, neighbour, TENANT_A)
    await publish(world, theirs, TENANT_B)
    await visible(client, world, theirs, token(world, TENANT_B))
    await visible(client, world, neighbour, token(world))
    bearer = token(world)
    ticket = await ticket_for(client, world["main"], mine, bearer)
    # tenant-a's backend asks for a ticket for tenant-b's session: it is issued (nothing is revealed), useless.
    foreign = await ticket_for(client, world["main"], theirs, bearer)

    async def answer(session_id: str, params: dict[str, str]) -> tuple[int, Any, set[str], float]:
        started = time.monotonic()
        status, body, headers = await stream_status(client, world, session_id, params)
        names = set(headers) - {"date", "x-request-id", "content-length"}
        return status, json.loads(body.decode().replace(session_id, "ID")), names, time.monotonic() - started

    reference = await answer(unknown, {"token": bearer})
    assert reference[0] == 404 and reference[1]["message"] == "Session ID not found"
    for session_id, params in (
        (neighbour, {"ticket": ticket}),
        (theirs, {"ticket": ticket}),
        (unknown, {"ticket": ticket}),
        (theirs, {"ticket": foreign}),
    ):
        status, body, names, took = await answer(session_id, params)
        assert (status, body, names) == reference[:3], session_id
        assert took >= WAIT * 0.9, "answered before the unknown-session wait: it would reveal the session"
    assert reference[3] >= WAIT * 0.9


async def test_a_ticket_reads_its_own_sessions_status_and_no_other(
    world: GatewayWorld, client: httpx.AsyncClient
) -> None:
    """The status read (GET /session/{id}) takes tickets through the same step as the stream: its one
    session answers 200, a neighbour of the same tenant and another tenant's session answer the unknown
    session's 404 (no 304 either, whatever If-None-Match says)."""
    mine, neighbour, theirs = (new_session(label) for label in ("read-mine", "read-neighbour", "read-theirs"))
    await publish(world, mine, TENANT_A)
    await publish(world, neighbour, TENANT_A)
    await publish(world, theirs, TENANT_B)
    bearer = token(world)
    await visible(client, world, neighbour, bearer)
    await visible(client, world, theirs, token(world, TENANT_B))
    ticket = await ticket_for(client, world["main"], mine, bearer)
    base = world["main"].url
    own = await client.get(f"{base}/session/{mine}", params={"ticket": ticket})
    assert own.status_code == 200, own.text
    assert own.json()["id"] == mine and own.json()["status"] == "active"
    etag = own.headers["etag"]
    unknown = await client.get(f"{base}/session/{new_session('read-unknown')}", params={"token": bearer})
    for session_id in (neighbour, theirs):
        for headers in ({}, {"if-none-match": etag}, {"if-none-match": "*"}):
            other = await client.get(f"{base}/session/{session_id}", params={"ticket": ticket}, headers=headers)
            assert other.status_code == 404, (session_id, headers, other.status_code)
            assert other.json()["message"] == f"Session {session_id} not found"
            assert other.json().keys() == unknown.json().keys()


async def test_expired_retired_and_tampered_tickets_answer_401(world: GatewayWorld, client: httpx.AsyncClient) -> None:
    session_id = new_session("bad")
    await publish(world, session_id, TENANT_A)
    await visible(client, world, session_id, token(world))
    good = mint_with_example("new", NEW_SECRET, TENANT_A, session_id, 300)
    assert (await stream_status(client, world, session_id, {"ticket": good}))[0] == 200
    expired = mint_with_example("new", NEW_SECRET, TENANT_A, session_id, -5)  # past the 1 s leeway
    retired = mint_with_example("gone", secrets.token_urlsafe(32), TENANT_A, session_id, 300)
    flipped = [good[:n] + chr(ord(good[n]) ^ 1) + good[n + 1 :] for n in (0, 3, 20, len(good) // 2, len(good) - 1)]
    for bad in (expired, retired, *flipped, good + "A", good[:-1]):
        status, body, headers = await stream_status(client, world, session_id, {"ticket": bad})
        assert (status, json.loads(body)) == (401, INVALID), bad
        assert headers["www-authenticate"] == 'Bearer error="invalid_token"'
    metrics = (await client.get(f"{world['main'].internal_url}/metrics")).text
    for reason in ("expired", "unknown_key", "bad_signature", "malformed"):
        assert f'gateway_tickets_refused_total{{reason="{reason}"}}' in metrics, reason
    assert "gateway_tickets_issued_total" in metrics


async def test_tickets_and_tokens_are_never_taken_for_each_other(
    world: GatewayWorld, client: httpx.AsyncClient
) -> None:
    session_id = new_session("types")
    await publish(world, session_id, TENANT_A)
    bearer = token(world)
    await visible(client, world, session_id, bearer)
    ticket = await ticket_for(client, world["main"], session_id, bearer)
    # A ticket where a token is expected: the query names, the header, the cookie.
    for params, headers in (
        ({"token": ticket}, {}),
        ({"access_token": ticket}, {}),
        ({}, {"authorization": f"Bearer {ticket}"}),
        ({}, {"cookie": f"{COOKIE}={ticket}"}),
    ):
        status, body, _ = await stream_status(client, world, session_id, params, headers=headers)
        assert (status, json.loads(body)) == (401, INVALID), (params, headers)
    # A token where a ticket is expected.
    status, body, _ = await stream_status(client, world, session_id, {"ticket": bearer})
    assert (status, json.loads(body)) == (401, INVALID)
    # An HMAC-signed JWT (what a ticket key could sign) stays refused as a token.
    from joserfc import jwt
    from joserfc.jwk import OctKey

    hmac_token = jwt.encode(
        {"alg": "HS256", "kid": "new"},
        {"sub": "x", "tenant_id": TENANT_A, "exp": int(time.time()) + 60, "iss": "https://issuer.test"},
        OctKey.import_key(base64.urlsafe_b64decode(NEW_SECRET + "=")),
        algorithms=["HS256"],
    )
    SECRETS_SEEN.add(hmac_token)
    for params in ({"token": hmac_token}, {"ticket": hmac_token}):
        status, body, _ = await stream_status(client, world, session_id, params)
        assert (status, json.loads(body)) == (401, INVALID), params


async def test_without_ticket_keys_the_route_is_unknown_and_tickets_are_refused(
    world: GatewayWorld, client: httpx.AsyncClient
) -> None:
    off = world["off"]
    bearer = token(world)
    response = await ask(client, off, "s-off", bearer)
    assert response.status_code == 404
    ticket = await ticket_for(client, world["main"], "s-off", bearer)
    async with sse(client, world.url("s-off", off), params={"ticket": ticket}) as stream:
        assert stream.status == 401 and stream.response.json() == INVALID
    assert off.logs().count("stream tickets are off") == 1
    assert "stream tickets are off" not in world["main"].logs()


# --------------------------------------------------------------------------------------------------
# Keys every replica shares: rotation, restarts, minting outside the gateway


async def test_rotation_and_restart_keep_the_same_url_working(
    world: GatewayWorld, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    session_id = new_session("rotate")
    await publish(world, session_id, TENANT_A)
    bearer = token(world)

    async def gateway(keys: str, port: int | None = None, name: str = "g") -> GatewayProcess:
        env = world.env(GATEWAY_TICKET_KEYS=keys, GATEWAY_JWT_LEEWAY="1")
        log = tmp_path / f"{name}.log"
        process = GatewayProcess(env, log) if port is None else GatewayProcess(env, log, port=port)
        process.start()
        await process.wait_ready()
        return process

    first = await gateway(f"old:{OLD_SECRET}", name="before")
    try:
        old_ticket = await ticket_for(client, first, session_id, bearer)
        url = f"{first.url}/session/{session_id}/events"
        async with sse(client, url, params={"ticket": old_ticket}) as stream:
            assert stream.status == 200
            seen = await stream.next_event()
            assert seen is not None and seen.id is not None
    finally:
        first.stop()
    # The new key signs, the old one still verifies: the browser's URL (and its Last-Event-ID) still works.
    rotated = await gateway(KEYS, port=first.port, name="rotated")
    try:
        async with sse(client, url, params={"ticket": old_ticket}, headers={"last-event-id": seen.id}) as stream:
            assert stream.status == 200
            await publish(world, session_id, TENANT_A, "fetched")
            resumed = await stream.next_event()
            assert resumed is not None and resumed.json()["status"] == "fetched"
        new_ticket = await ticket_for(client, rotated, session_id, bearer)
        assert '"kid":"new"' in base64.urlsafe_b64decode(new_ticket.split(".")[1] + "==").decode()
    finally:
        rotated.stop()
    # The old key removed: its tickets are refused, the new ones still work.
    retired = await gateway(f"new:{NEW_SECRET}", port=first.port, name="retired")
    try:
        async with sse(client, url, params={"ticket": old_ticket}) as stream:
            assert stream.status == 401 and stream.response.json() == INVALID
        async with sse(client, url, params={"ticket": new_ticket}) as stream:
            assert stream.status == 200
        logs = "".join(process.logs() for process in (first, rotated, retired))
        for secret in (old_ticket, new_ticket, bearer, OLD_SECRET, NEW_SECRET):
            assert secret not in logs
    finally:
        retired.stop()


async def test_the_python_example_mints_tickets_the_gateway_accepts(
    world: GatewayWorld, client: httpx.AsyncClient
) -> None:
    session_id = new_session("py-example")
    await publish(world, session_id, TENANT_A)
    await visible(client, world, session_id, token(world))
    ticket = mint_with_example("old", OLD_SECRET, TENANT_A, session_id, 120)
    assert (await stream_status(client, world, session_id, {"ticket": ticket}))[0] == 200


def _compiled_typescript_example(directory: Path) -> Path:
    """``docs/examples/mint-ticket.ts`` type-checked (strict) and compiled by tsc, cached like the broker jars."""
    tools = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "session-events-gateway"
        / "tools"
        / "ts-examples"
    )
    tsc = tools / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        tools.mkdir(parents=True, exist_ok=True)
        print(f"\n[tickets] installing typescript and @types/node into {tools} (once)", file=sys.stderr)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "typescript@5.6", "@types/node@20"],
            cwd=tools,
            check=True,
            timeout=600,
        )
    command = [str(tsc), "--strict", "--target", "es2022", "--module", "commonjs", "--types", "node"]
    command += ["--typeRoots", str(tools / "node_modules" / "@types"), "--outDir", str(directory)]
    subprocess.run([*command, str(EXAMPLES / "mint-ticket.ts")], check=True, timeout=300)
    return directory / "mint-ticket.js"


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="needs Node.js and npm")
async def test_the_typescript_example_mints_tickets_the_gateway_accepts(
    world: GatewayWorld, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    session_id = new_session("ts-example")
    await publish(world, session_id, TENANT_A)
    await visible(client, world, session_id, token(world))
    script = await asyncio.to_thread(_compiled_typescript_example, tmp_path)
    command = ["node", str(script), "new", NEW_SECRET, TENANT_A, session_id, "120"]
    ticket = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
    SECRETS_SEEN.add(ticket)
    assert (await stream_status(client, world, session_id, {"ticket": ticket}))[0] == 200


# --------------------------------------------------------------------------------------------------
# Last: nothing any test sent is in any log


async def test_no_ticket_token_or_key_appears_in_any_log(world: GatewayWorld) -> None:
    logs = "".join(process.logs() for process in world.gateways.values())
    assert "/ticket" in logs and "ticket=" in logs  # the access lines are there, redacted
    leaked = [secret[:12] for secret in SECRETS_SEEN if secret in logs]
    assert not leaked
