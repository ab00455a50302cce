"""The stream route and the two ports, against a real gateway process (run on both HTTP engines by scripts/test.sh).

- The public port carries the streams and a bare ``/livez``; health details, metrics and docs are on
  the internal port only.
- ``/session/{id}/events`` is matched once, on the raw path: percent-encoded ids (``/`` included)
  stream, and behind ``GATEWAY_ROOT_PATH`` the route answers with and without the prefix, with the
  NestJS-shaped errors (never FastAPI's 422).
- One CORS policy answers both the stream and its preflight.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.gateway_support import GatewayWorld, gateway_world, sse
from tests.kafka_support import event_bytes, produce
from tests.support import new_session

pytestmark = pytest.mark.timeout(180)

TENANT = "tenant-a"
ORIGIN = "https://wallet.example"


Edge = GatewayWorld


@pytest_asyncio.fixture(scope="module")
async def edge(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "edge-routes",
        partitions=2,
        GATEWAY_ROOT_PATH="/v1",
        GATEWAY_CORS_ORIGINS=ORIGIN,
        GATEWAY_UNKNOWN_SESSION_WAIT="0",
    ) as world:
        yield world


async def test_the_public_port_serves_streams_and_a_bare_liveness_only(edge: Edge, client: httpx.AsyncClient) -> None:
    public, internal = edge.gateway.url, edge.gateway.internal_url
    live = await client.get(f"{public}/livez")
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    for path in ("/metrics", "/readyz", "/docs", "/openapi.json", "/redoc", "/session"):
        response = await client.get(public + path)
        assert response.status_code == 404, (path, response.status_code)
        assert "gateway_" not in response.text and "broker" not in response.text.lower()
    for path in ("/livez", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert (await client.get(internal + path)).status_code == 200, path
    detail = (await client.get(f"{internal}/livez")).json()
    assert detail["status"] == "alive"


async def test_openapi_documents_the_stream_route_from_its_one_definition(
    edge: Edge, client: httpx.AsyncClient
) -> None:
    spec = (await client.get(f"{edge.gateway.internal_url}/openapi.json")).json()
    operation = spec["paths"]["/session/{id}/events"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"id", "token", "access_token", "lastEventId"}
    assert set(operation["responses"]) >= {"200", "204", "401", "404", "429", "503"}
    assert "text/event-stream" in operation["responses"]["200"]["content"]


@pytest.mark.parametrize(
    "session_id",
    ["with/slash", "a b%c?d#e", "ünïcødé-ß", "x" * 256],
    ids=["slash", "reserved-characters", "unicode", "longest"],
)
async def test_percent_encoded_ids_stream(edge: Edge, client: httpx.AsyncClient, session_id: str) -> None:
    await produce(
        edge.gateway.env["GATEWAY_KAFKA_BOOTSTRAP_SERVERS"],
        edge.topic,
        [(session_id.encode(), event_bytes(session_id, TENANT, "active"))],
    )
    url = f"{edge.gateway.url}/session/{urllib.parse.quote(session_id, safe='')}/events"
    for _ in range(150):  # up to ~30 s: the record may still be on its way to the store
        async with sse(client, url, params={"token": edge.token()}) as stream:
            if stream.status == 404:
                await asyncio.sleep(0.2)
                continue
            assert stream.status == 200, stream.response.text
            event = await stream.next_event()
            assert event is not None and event.json()["id"] == session_id
            return
    raise AssertionError(f"{session_id!r} never streamed")


async def test_the_route_answers_with_and_without_the_root_path(edge: Edge, client: httpx.AsyncClient) -> None:
    session = new_session("rooted")
    await produce(
        edge.gateway.env["GATEWAY_KAFKA_BOOTSTRAP_SERVERS"],
        edge.topic,
        [(session.encode(), event_bytes(session, TENANT, "active"))],
    )
    for prefix in ("/v1", ""):
        url = f"{edge.gateway.url}{prefix}/session/{session}/events"
        for _ in range(150):  # up to ~30 s: the record may still be on its way to the store
            async with sse(client, url, params={"token": edge.token()}) as stream:
                if stream.status == 404:
                    await asyncio.sleep(0.2)
                    continue
                assert stream.status == 200
                event = await stream.next_event()
                assert event is not None and event.json()["status"] == "active"
                break
        else:
            raise AssertionError(f"{prefix or '(no prefix)'}: never streamed")


@pytest.mark.parametrize("prefix", ["/v1", ""])
async def test_a_long_id_without_a_token_gets_the_nestjs_401(
    edge: Edge, client: httpx.AsyncClient, prefix: str
) -> None:
    response = await client.get(f"{edge.gateway.url}{prefix}/session/{'x' * 300}/events")
    assert response.status_code == 401
    assert response.json() == {
        "statusCode": 401,
        "message": "Authentication required. Provide a valid JWT token via the 'token' query parameter.",
        "error": "Unauthorized",
    }


async def test_one_cors_policy_for_the_stream_and_its_preflight(edge: Edge, client: httpx.AsyncClient) -> None:
    url = f"{edge.gateway.url}/session/{new_session('cors')}/events"
    preflight = await client.options(
        url,
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "GET",
            "access-control-request-headers": "authorization, last-event-id",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "last-event-id" in preflight.headers["access-control-allow-headers"]
    refused = await client.options(
        url, headers={"origin": "https://evil.example", "access-control-request-method": "GET"}
    )
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    answer = await client.get(url, headers={"origin": ORIGIN})
    assert answer.status_code == 401 and answer.headers["access-control-allow-origin"] == ORIGIN
    other = await client.get(url, headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    # Health and metrics are not for other origins.
    livez = await client.get(f"{edge.gateway.url}/livez", headers={"origin": ORIGIN})
    assert "access-control-allow-origin" not in livez.headers


@pytest.mark.parametrize(
    ("offered", "echoed"),
    [("trace-1234.abc_def:9", True), ("q" * 65, False), ("bad id", False), ("a\u00e9b", False), ("z" * 5000, False)],
    ids=["plain", "too-long", "space", "non-ascii", "5kb"],
)
async def test_x_request_id_is_echoed_only_when_short_and_plain(
    edge: Edge, client: httpx.AsyncClient, offered: str, echoed: bool
) -> None:
    response = await client.get(
        f"{edge.gateway.url}/session/{new_session('rid')}/events",
        headers=[(b"x-request-id", offered.encode("utf-8"))],
    )
    assert response.status_code == 401
    rid = response.headers["x-request-id"]
    if echoed:
        assert rid == offered
    else:
        assert rid != offered and len(rid) == 32 and rid.isalnum()
        assert offered.encode("utf-8") not in Path(edge.gateway.log_path).read_bytes()


async def test_a_stream_request_with_a_body_or_another_method_is_not_a_stream(
    edge: Edge, client: httpx.AsyncClient
) -> None:
    url = f"{edge.gateway.url}/session/{new_session('method')}/events"
    assert (await client.post(url, content=b"{}")).status_code in (404, 405)
    assert json.loads((await client.get(url)).content)["statusCode"] == 401
