"""A header-only client in a browser: ``fetch`` with ``Authorization: Bearer`` from another origin.

Headless Chromium opens tests/e2e/fetch-client.html on the page server's origin, which reads the stream as
the README's header-only snippet does (and as EUDIPLO's SDK does): ``fetch`` with the token in the
``Authorization`` header, so the browser preflights (OPTIONS) first, then reads the events from a
``ReadableStream`` and reconnects with ``Last-Event-ID`` until the gateway answers 204. The gateway runs with
``GATEWAY_ALLOW_QUERY_TOKENS=false``: the same browser's EventSource with ``?token=`` (the seed's client,
tests/e2e/reference-client.html) is refused with one 401 and stops. The gateway's access log tells what it saw.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.e2e.conftest import PageServer
from tests.e2e.support import publish, stream_requests
from tests.gateway_support import GatewayProcess, JwksServer, clean_env, gateway_env, mint, rsa_key, wait_applied
from tests.kafka_support import create_topic, unique_topic
from tests.support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TENANT = "tenant-a"


@pytest_asyncio.fixture(scope="module")
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer(keys=[rsa_key("e2e-fetch")]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module")
async def topic(kafka_bootstrap: str) -> str:
    name = unique_topic("e2e-fetch")
    await create_topic(kafka_bootstrap, name, partitions=2, compacted=True)
    return name


@pytest_asyncio.fixture(scope="module")
async def gateway(
    kafka_bootstrap: str,
    topic: str,
    jwks: JwksServer,
    page_server: PageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[GatewayProcess]:
    settings = {
        "GATEWAY_CORS_ORIGINS": page_server.origin,
        "GATEWAY_ALLOW_QUERY_TOKENS": "false",
        "GATEWAY_LOG_FORMAT": "text",
        "GATEWAY_UNKNOWN_SESSION_WAIT": "1",
        "GATEWAY_RETRY_MS": "500",
        "GATEWAY_RETRY_JITTER": "0",
    }
    env = clean_env(**gateway_env(kafka_bootstrap, topic, jwks, **settings))
    process = GatewayProcess(env, Path(tmp_path_factory.mktemp("e2e-fetch")) / "gateway.log").start()
    try:
        await process.wait_ready(timeout=90)
        yield process
    finally:
        process.stop()


def page_url(page_server: PageServer, page: str, gateway: GatewayProcess, session_id: str, token: str) -> str:
    fragment = httpx.QueryParams({"gateway": gateway.url, "session": session_id, "token": token})
    return f"{page_server.origin}/{page}#{fragment}"


async def wait_for(page: Any, predicate: str, what: str, timeout: float = 60.0) -> None:
    async def holds() -> bool:
        return bool(await page.evaluate(predicate))

    await wait_until(holds, timeout, what)


def preflights(gateway: GatewayProcess, session_id: str) -> list[int]:
    pattern = re.compile(rf'"OPTIONS /session/{re.escape(session_id)}/events HTTP/1\.1" (\d{{3}})')
    return [int(match.group(1)) for match in pattern.finditer(gateway.logs())]


async def test_fetch_with_a_bearer_header_from_another_origin_reads_the_session_to_its_end(
    kafka_bootstrap: str, topic: str, jwks: JwksServer, gateway: GatewayProcess, page_server: PageServer, chromium: Any
) -> None:
    session_id = f"e2e-fetch-{uuid.uuid4()}"
    token = mint(jwks.keys[0], tenant=TENANT)
    await publish(kafka_bootstrap, topic, session_id, TENANT, "active")
    # The gateway waits 1 s for an unknown session: a 404 would end the page's reading for good.
    await wait_applied(gateway, session_id, token)
    context = await chromium.new_context()
    urls: list[str] = []
    try:
        page = await context.new_page()
        page.on("request", lambda request: urls.append(request.url))
        await page.goto(page_url(page_server, "fetch-client.html", gateway, session_id, token))
        await wait_for(page, "window.seen.events.length >= 1", "the first event")
        await publish(kafka_bootstrap, topic, session_id, TENANT, "fetched")
        await wait_for(page, "window.seen.events.length >= 2", "the second event")
        await publish(kafka_bootstrap, topic, session_id, TENANT, "completed")
        await wait_for(page, "window.seen.done || window.seen.error !== null", "the end of the session")
        seen = await page.evaluate("window.seen")
    finally:
        await context.close()

    assert seen["error"] is None, seen
    assert [event["status"] for event in seen["events"]] == ["active", "fetched", "completed"], seen
    assert all(event["id"] == session_id for event in seen["events"]), seen
    assert seen["events"][-1]["eventId"].endswith("-end"), seen
    # One stream to the end, then the reconnect with Last-Event-ID of the last event: 204, the client stops.
    assert seen["answers"] == [200, 204], seen
    await wait_until(lambda: stream_requests(gateway, session_id) == [200, 204], 10, lambda: gateway.logs()[-3000:])
    # The Authorization header is not CORS-safelisted: the browser asked first, and was allowed.
    assert preflights(gateway, session_id) and set(preflights(gateway, session_id)) == {204}, gateway.logs()[-3000:]
    # The token went in a header only: not in any URL the page asked for, not in the gateway's logs.
    stream_urls = [url for url in urls if "/events" in url]
    assert stream_urls and all("token" not in url and token not in url for url in stream_urls), stream_urls
    assert token not in gateway.logs() and token.split(".")[2] not in gateway.logs()


async def test_eventsource_with_a_query_token_gets_one_clear_401_when_query_tokens_are_off(
    kafka_bootstrap: str, topic: str, jwks: JwksServer, gateway: GatewayProcess, page_server: PageServer, chromium: Any
) -> None:
    session_id = f"e2e-query-{uuid.uuid4()}"
    token = mint(jwks.keys[0], tenant=TENANT)
    await publish(kafka_bootstrap, topic, session_id, TENANT, "active")
    context = await chromium.new_context()
    try:
        page = await context.new_page()
        await page.goto(page_url(page_server, "reference-client.html", gateway, session_id, token))
        await wait_for(page, "window.source.readyState === EventSource.CLOSED", "EventSource closed")
        seen = await page.evaluate("window.seen")
    finally:
        await context.close()
    assert seen["events"] == [] and seen["states"] == ["closed"], seen
    await wait_until(lambda: stream_requests(gateway, session_id) == [401], 10, lambda: gateway.logs()[-3000:])
    assert "reason=query_token_refused" in gateway.logs()
    assert token not in gateway.logs()
    # What a developer trying it with curl (or the browser's network panel) reads.
    async with httpx.AsyncClient(timeout=10.0) as client:
        answer = await client.get(f"{gateway.url}/session/{session_id}/events", params={"token": token})
    assert answer.status_code == 401 and "Authorization: Bearer" in answer.json()["message"], answer.text
