"""A browser's own EventSource against the gateway, from a page on another origin.

Headless Chromium (the system's, driven by Playwright) opens tests/e2e/reference-client.html, which does
exactly what the README tells front-end developers: ``new EventSource(gateway + "/session/<id>/events?token=")``.
Nothing in the page reconnects or resumes by hand: the reconnects, their timing and the ``Last-Event-ID`` header
are the browser's own. The gateway's access log tells how many requests it saw.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
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


@dataclass
class Stack:
    bootstrap: str
    topic: str
    jwks: JwksServer
    key: Any
    logs: Path

    def gateway(self, page: PageServer, name: str, *, port: int | None = None, **overrides: str) -> GatewayProcess:
        settings = {
            "GATEWAY_CORS_ORIGINS": page.origin,
            "GATEWAY_LOG_FORMAT": "text",
            "GATEWAY_UNKNOWN_SESSION_WAIT": "1",
            "GATEWAY_RETRY_MS": "500",
            "GATEWAY_RETRY_JITTER": "0",
            **overrides,
        }
        env = clean_env(**gateway_env(self.bootstrap, self.topic, self.jwks, **settings))
        if port is None:
            return GatewayProcess(env, self.logs / f"{name}.log")
        return GatewayProcess(env, self.logs / f"{name}.log", port=port)

    def token(self) -> str:
        return mint(self.key, tenant=TENANT)


@pytest_asyncio.fixture(scope="module")
async def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    topic = unique_topic("e2e-browser")
    await create_topic(kafka_bootstrap, topic, partitions=3, compacted=True)
    key = rsa_key("e2e-browser")
    jwks = JwksServer(keys=[key]).start()
    try:
        yield Stack(kafka_bootstrap, topic, jwks, key, tmp_path_factory.mktemp("e2e-browser"))
    finally:
        jwks.stop()


@pytest_asyncio.fixture(scope="module")
async def gateway(stack: Stack, page_server: PageServer) -> AsyncIterator[GatewayProcess]:
    process = stack.gateway(page_server, "gateway").start()
    try:
        await process.wait_ready(timeout=90)
        yield process
    finally:
        process.stop()


@dataclass
class BrowserPage:
    """One page of the reference client, plus every EventSource request the browser made and its answer."""

    page: Any
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def seen(self) -> dict[str, Any]:
        value: dict[str, Any] = await self.page.evaluate("window.seen")
        return value

    async def ready_state(self) -> int:
        value: int = await self.page.evaluate("window.source.readyState")
        return value

    async def wait_for(self, what: str, predicate: str, timeout: float = 60.0) -> None:
        """Polls a JavaScript expression over ``window.seen`` / ``window.source`` until it holds."""
        deadline = time.monotonic() + timeout
        while not await self.page.evaluate(predicate):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the page never reached: {what} ({predicate}) within {timeout}s; "
                    f"seen={await self.seen()} readyState={await self.ready_state()} requests={self.requests}"
                )
            await asyncio.sleep(0.1)

    async def wait_events(self, count: int, timeout: float = 60.0) -> None:
        await self.wait_for(f"{count} events", f"window.seen.events.length >= {count}", timeout)

    async def wait_closed(self, timeout: float = 60.0) -> None:
        await self.wait_for("readyState CLOSED", "window.source.readyState === EventSource.CLOSED", timeout)

    async def wait_answers(self, count: int, timeout: float = 10.0) -> None:
        """Waits until ``count`` answered requests are recorded: ``on_response`` appends only after a driver
        round trip (``all_headers()``, the only place Last-Event-ID shows), so it may lag behind the page."""

        def answered() -> int:
            return sum(request["status"] is not None for request in self.requests)

        await wait_until(lambda: answered() >= count, timeout, lambda: f"requests={self.requests}")


async def open_client(chromium: Any, url: str) -> tuple[Any, BrowserPage]:
    context = await chromium.new_context()
    page = await context.new_page()
    client = BrowserPage(page)

    # EventSource requests that got a response, noted synchronously: an async handler runs a loop turn later,
    # after a ``requestfailed`` of the same request dispatched right behind the response.
    answered: list[Any] = []

    def note_answered(response: Any) -> None:
        if response.request.resource_type == "eventsource":
            answered.append(response.request)

    async def on_response(response: Any) -> None:
        request = response.request
        if request.resource_type == "eventsource":
            headers = await request.all_headers()
            client.requests.append(
                {"status": response.status, "last_event_id": headers.get("last-event-id"), "url": request.url}
            )

    page.on("response", note_answered)
    page.on("response", on_response)

    def on_failed(request: Any) -> None:
        # Only EventSource requests (not the page's own resources, e.g. a favicon aborted at close), and not one
        # that was answered: EventSource abandons the body of an error answer, which Chromium reports as aborted.
        if request.resource_type == "eventsource" and not any(request is seen for seen in answered):
            client.requests.append({"status": None, "failure": request.failure, "url": request.url})

    page.on("requestfailed", on_failed)
    await page.goto(url)
    return context, client


@pytest.fixture
def session_id() -> Iterator[str]:
    yield f"e2e-{uuid.uuid4()}"


async def test_three_events_in_order_then_closed_without_a_reconnect_loop(
    stack: Stack, gateway: GatewayProcess, page_server: PageServer, chromium: Any, session_id: str
) -> None:
    token = stack.token()
    await publish(stack.bootstrap, stack.topic, session_id, TENANT, "active")
    # The gateway waits 1 s for an unknown session, and its 404 would end the EventSource for good.
    await wait_applied(gateway, session_id, token)
    context, client = await open_client(chromium, page_server.client_url(gateway.url, session_id, token))
    try:
        await client.wait_events(1)
        await publish(stack.bootstrap, stack.topic, session_id, TENANT, "fetched")
        await client.wait_events(2)
        await publish(stack.bootstrap, stack.topic, session_id, TENANT, "completed")
        await client.wait_events(3)
        await client.wait_closed()
        seen = await client.seen()
        await client.wait_answers(2)
    finally:
        await context.close()

    assert [event["status"] for event in seen["events"]] == ["active", "fetched", "completed"], seen
    assert all(event["id"] == session_id for event in seen["events"])
    assert seen["events"][-1]["eventId"].endswith("-end"), seen
    assert seen["states"][0] == "open" and seen["states"][-1] == "closed", seen
    # The stream ended after `completed`; the browser reconnected once with that event's id and got 204, which
    # stops EventSource for good: exactly two requests, however long one waits. The access line is written as
    # the answer goes out: wait for it rather than race it.
    await wait_until(lambda: stream_requests(gateway, session_id) == [200, 204], 10, lambda: gateway.logs()[-3000:])
    assert [request["status"] for request in client.requests] == [200, 204], client.requests
    assert client.requests[1]["last_event_id"] == seen["events"][-1]["eventId"], client.requests


@pytest.mark.parametrize(("case", "expected"), [("bad_token", 401), ("unknown_session", 404)])
async def test_an_error_status_ends_in_closed_after_exactly_one_request(
    stack: Stack,
    gateway: GatewayProcess,
    page_server: PageServer,
    chromium: Any,
    session_id: str,
    case: str,
    expected: int,
) -> None:
    if case == "bad_token":
        await publish(stack.bootstrap, stack.topic, session_id, TENANT, "active")
        token = mint(rsa_key("not-published"), tenant=TENANT)  # a key the JWKS does not have
    else:
        token = stack.token()  # a valid token, for a session nobody published
    context, client = await open_client(chromium, page_server.client_url(gateway.url, session_id, token))
    try:
        await client.wait_closed()
        seen = await client.seen()
        await client.wait_answers(1)
    finally:
        await context.close()
    assert seen["events"] == [] and seen["states"] == ["closed"], seen
    # The access line is written as the answer goes out: wait for it rather than race it.
    await wait_until(lambda: stream_requests(gateway, session_id) == [expected], 10, lambda: gateway.logs()[-3000:])
    assert [request["status"] for request in client.requests] == [expected], client.requests


@pytest.mark.parametrize("credential", ["token", "ticket"])
async def test_gateway_restart_mid_stream_browser_resumes_by_itself(
    stack: Stack, page_server: PageServer, chromium: Any, session_id: str, credential: str
) -> None:
    """SIGTERM, drain, a new process on the same port: the browser's own reconnect with its own Last-Event-ID.

    With ``ticket``, the page holds only a stream ticket its backend (the test) got from the gateway with the
    tenant token (``POST /session/{id}/ticket``); both processes share the ticket key, so the browser's same URL
    works on the new process, and the tenant token is in no request of the page and no line of either log.

    The first process tells the browser to wait 10 s before reconnecting (``retry:``), which leaves time for it
    to drain and exit and for the new one to replay the topic: a request reaching a replica that is still
    replaying gets 503, and any error status closes an EventSource for good (a load balancer's readiness check
    does this job in production).
    """
    keys = f"e2e:{secrets.token_urlsafe(32)}" if credential == "ticket" else ""  # empty: tickets off
    first = stack.gateway(
        page_server,
        f"restart-first-{credential}",
        GATEWAY_RETRY_MS="10000",
        GATEWAY_DRAIN_SECONDS="1",
        GATEWAY_SHUTDOWN_GRACE_SECONDS="1",
        GATEWAY_TICKET_KEYS=keys,
    ).start()
    second: GatewayProcess | None = None
    try:
        await first.wait_ready(timeout=90)
        await publish(stack.bootstrap, stack.topic, session_id, TENANT, "active")
        tenant_token = stack.token()
        # The gateway waits 1 s for an unknown session, and its 404 would end the EventSource for good.
        await wait_applied(first, session_id, tenant_token)
        given = tenant_token
        if credential == "ticket":  # the backend's part: its token stays here, the page gets a ticket
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.post(
                    f"{first.url}/session/{session_id}/ticket", headers={"authorization": f"Bearer {tenant_token}"}
                )
            assert answer.status_code == 201, answer.text
            given = answer.json()["ticket"]
        url = page_server.client_url(first.url, session_id, given, credential)
        context, client = await open_client(chromium, url)
        try:
            await client.wait_events(1)
            first_event = (await client.seen())["events"][0]

            first.signal(signal.SIGTERM)
            assert first.process is not None
            exit_code = await asyncio.to_thread(first.process.wait, 60)
            assert exit_code == 0, f"the first gateway exited with {exit_code}:\n{first.logs()[-3000:]}"
            await client.wait_for("the browser noticed the end of the stream", "window.seen.errors >= 1", 30)
            assert await client.ready_state() == 0, "EventSource must be reconnecting (CONNECTING), not CLOSED"
            # A transition while no gateway runs at all: the resumed stream must deliver it.
            await publish(stack.bootstrap, stack.topic, session_id, TENANT, "fetched")

            second = stack.gateway(
                page_server, f"restart-second-{credential}", port=first.port, GATEWAY_TICKET_KEYS=keys
            ).start()
            await second.wait_ready(timeout=90)
            await client.wait_events(2, timeout=90)
            await publish(stack.bootstrap, stack.topic, session_id, TENANT, "completed")
            await client.wait_events(3)
            await client.wait_closed()
            seen = await client.seen()
            await client.wait_answers(3)
        finally:
            await context.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()

    statuses = [event["status"] for event in seen["events"]]
    assert statuses == ["active", "fetched", "completed"], f"lost or repeated transitions: {seen}"
    assert seen["events"][0] == first_event
    assert len({event["eventId"] for event in seen["events"]}) == 3, seen
    assert second is not None
    assert stream_requests(first, session_id) == [200], first.logs()[-3000:]
    assert stream_requests(second, session_id) == [200, 204], second.logs()[-3000:]
    answered = [request for request in client.requests if request["status"] is not None]
    assert [request["status"] for request in answered] == [200, 200, 204], client.requests
    # The browser resumed with the id of the last event it had, each time, without help from the page.
    assert answered[0]["last_event_id"] is None
    assert answered[1]["last_event_id"] == first_event["eventId"], client.requests
    assert answered[2]["last_event_id"] == seen["events"][2]["eventId"], client.requests
    assert "draining" in first.logs(), first.logs()[-3000:]
    if credential == "ticket":
        assert all(request["url"].count("ticket=v1.") == 1 for request in client.requests), client.requests
        assert not any(tenant_token in request["url"] for request in client.requests), client.requests
        assert tenant_token not in first.logs() + second.logs()
        assert given not in first.logs() + second.logs()
