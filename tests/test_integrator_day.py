"""An integrator's first day (issue 25): what a wrong setting looks like from outside, against real processes.

- Keys: a gateway whose JWKS endpoint never answered (or answers with an OpenID discovery document)
  says so with ``503`` and ``Retry-After``, not ``401``; its warnings are folded and carry no httpx
  documentation links; a discovery document gets the hint ``GATEWAY_OIDC_ISSUER=...``.
- CORS: a page of an origin that may not read the stream gets one log line per origin and interval that
  names ``GATEWAY_CORS_ORIGINS``; clients choose origins, so the remembered ones are bounded.
- The demo page's raw links reach metrics, readiness and the docs; ``openapi.json`` names the public port
  for the routes it serves; the AsyncAPI document is served on the internal port and linked.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import yaml

from gateway.edge.cors import RefusedOrigins
from tests.gateway_support import REPO, JwksServer, dev_mode_gateway, gateway_world, rsa_key
from tests.kafka_support import create_topic, unique_topic

pytestmark = pytest.mark.timeout(180)


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# --- Keys ------------------------------------------------------------------------------------------


async def test_no_key_set_yet_answers_503_until_the_keys_come(
    kafka_bootstrap: str, client: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    key = rsa_key("day-keys")
    jwks = JwksServer(keys=[key], failing=True).start()
    try:
        async with gateway_world(
            kafka_bootstrap, tmp_path_factory, "day-keys", keys=[key], jwks=jwks, ready=False
        ) as world:
            gateway = world.gateway
            for _ in range(4):  # GATEWAY_JWKS_MIN_REFRESH=1: a fetch (and a failure) per request
                response = await client.get(world.url("s-1"), params={"token": world.token()})
                assert response.status_code == 503, response.text
                assert response.json() == {
                    "statusCode": 503,
                    "message": "Signing keys are not loaded yet: the gateway cannot verify tokens. Retry later",
                    "error": "Service Unavailable",
                }
                assert int(response.headers["retry-after"]) >= 1
                await asyncio.sleep(1.1)
            # A token that is bad whatever the keys are is still a 401.
            garbage = await client.get(world.url("s-1"), params={"token": "not.a.token"})
            assert garbage.status_code == 401
            assert jwks.fetches >= 4
            metrics = (await client.get(f"{gateway.internal_url}/metrics")).text
            assert _metric(metrics, "gateway_jwks_fetch_failures_total") >= 4
            assert _metric(metrics, "gateway_jwks_log_lines_suppressed_total", '{reason="http_503"}') >= 3
            logs = gateway.logs()
            failures = [line for line in logs.splitlines() if "JWKS fetch failed" in line]
            assert len(failures) == 1, failures  # folded: one line per kind and minute
            assert f"JWKS fetch failed: HTTP 503 Service Unavailable from {jwks.url}" in failures[0]
            assert "developer.mozilla.org" not in logs
            assert "For more information" not in logs

            jwks.failing = False
            await gateway.wait_ready(timeout=30)
            response = await client.get(world.url("s-1"), params={"token": world.token()})
            assert response.status_code == 404, response.text  # verified now; the session does not exist
    finally:
        jwks.stop()


async def test_a_discovery_document_at_the_jwks_url_names_the_setting_to_use(
    kafka_bootstrap: str, client: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    key = rsa_key("day-discovery")
    jwks = JwksServer(keys=[key]).start()
    try:
        async with gateway_world(
            kafka_bootstrap,
            tmp_path_factory,
            "day-discovery",
            keys=[key],
            jwks=jwks,
            ready=False,
            GATEWAY_JWKS_URL=f"{jwks.issuer_url}/.well-known/openid-configuration",
        ) as world:
            response = await client.get(world.url("s-1"), params={"token": world.token()})
            assert response.status_code == 503, response.text
            readiness = (await client.get(f"{world.gateway.internal_url}/readyz")).json()
            hint = (
                "GATEWAY_JWKS_URL names an OpenID discovery document, not a JWKS: "
                f"set GATEWAY_OIDC_ISSUER='{jwks.issuer_url}' instead of GATEWAY_JWKS_URL, "
                f"or GATEWAY_JWKS_URL to its jwks_uri '{jwks.url}'"
            )
            assert hint in json.dumps(readiness)
            assert hint in world.gateway.logs()
            assert "ValueError: not a JWKS document" not in world.gateway.logs()
    finally:
        jwks.stop()


# --- CORS ------------------------------------------------------------------------------------------


async def test_a_refused_origin_is_logged_once_with_the_setting_to_change(
    kafka_bootstrap: str, client: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async with gateway_world(
        kafka_bootstrap,
        tmp_path_factory,
        "day-cors",
        GATEWAY_CORS_ORIGINS="http://app.test",
        GATEWAY_UNKNOWN_SESSION_WAIT="0.2",
    ) as world:
        gateway = world.gateway
        token = world.token()
        for _ in range(3):
            response = await client.get(
                world.url("s-1"), params={"token": token}, headers={"origin": "http://other.test"}
            )
            assert response.status_code == 404
            assert "access-control-allow-origin" not in response.headers
        preflight = await client.options(
            world.url("s-1"), headers={"origin": "http://other.test", "access-control-request-method": "GET"}
        )
        assert preflight.status_code == 400
        # Allowed, same-origin and origin-less requests say nothing.
        await client.get(world.url("s-1"), headers={"origin": "http://app.test"})
        await client.get(world.url("s-1"), headers={"origin": gateway.url})
        await client.get(world.url("s-1"))
        # An attacker's stream of new origins: logged for a bounded number of them only.
        for number in range(80):
            await client.get(world.url("s-1"), headers={"origin": f"http://o{number}.test"})

        lines = [line for line in gateway.logs().splitlines() if "GATEWAY_CORS_ORIGINS" in line]
        expected = (
            "origin 'http://other.test' may not read this answer (its browser reports a CORS error): "
            "add it to GATEWAY_CORS_ORIGINS (now http://app.test); logged once per origin and 60s"
        )
        assert sum(expected in line for line in lines) == 1, lines
        assert not any("app.test'" in line or gateway.url in line for line in lines)
        assert len(lines) == 64, len(lines)  # other.test and 63 of the 80
        metrics = (await client.get(f"{gateway.internal_url}/metrics")).text
        suppressed = _metric(metrics, "gateway_request_log_lines_suppressed_total", '{reason="origin_not_allowed"}')
        assert suppressed == 3 + 80 - 63  # other.test's repeats (2 GETs and the preflight) and 17 new origins


def test_refused_origins_are_forgotten_after_the_interval_and_bounded() -> None:
    now = [0.0]
    origins = RefusedOrigins(interval=60, capacity=2, clock=lambda: now[0])
    assert origins.first_time("http://a.test")
    assert not origins.first_time("http://a.test")
    assert origins.first_time("http://b.test")
    assert not origins.first_time("http://c.test")  # full: counted, not remembered
    assert origins.overflow == 1 and len(origins) == 2
    huge = "http://" + "x" * 100_000
    now[0] = 60.0
    assert origins.first_time("http://a.test")  # a new interval
    assert origins.first_time(huge)
    assert not origins.first_time(huge + "y")  # remembered by its first characters only
    assert len(origins) == 2


# --- The demo's links, the API contracts --------------------------------------------------------


def _resolve(server: dict[str, Any]) -> str:
    url: str = server["url"]
    for name, variable in server.get("variables", {}).items():
        url = url.replace("{" + name + "}", variable["default"])
    return url


async def test_the_demo_pages_links_reach_metrics_readiness_and_docs(
    kafka_bootstrap: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The page is on the public port; its "/metrics · /readyz · API docs" links must not 404 there."""
    topic = unique_topic("day-demo")
    await create_topic(kafka_bootstrap, topic)
    async with dev_mode_gateway(kafka_bootstrap, topic, tmp_path) as (_, gateway):
        page = (await client.get(f"{gateway.url}/demo")).text
        raw = re.search(r'<p[^>]*id="raw-links"[^>]*>(.*?)</p>', page, re.DOTALL)
        assert raw is not None, page
        links = dict((text, href) for href, text in re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', raw.group(1)))
        assert set(links) == {"/metrics", "/readyz", "API docs"}, links
        answers = {}
        for text, href in links.items():
            response = await client.get(urljoin(f"{gateway.url}/demo", href), follow_redirects=True)
            assert response.status_code == 200, (text, href, response.status_code)
            answers[text] = response
        assert "gateway_open_streams" in answers["/metrics"].text
        assert answers["/readyz"].json()["status"] == "ready"
        assert answers["API docs"].url == httpx.URL(f"{gateway.internal_url}/docs")
        assert "swagger-ui" in answers["API docs"].text

        # The dev routes are documented with the public port as their server, the internal ones without.
        spec = (await client.get(f"{gateway.internal_url}/openapi.json")).json()
        for path, item in spec["paths"].items():
            if path.startswith(("/dev/", "/demo", "/session/")):
                assert [_resolve(server) for server in item["servers"]] == [gateway.url], path
            else:
                assert "servers" not in item, path


async def test_openapi_names_the_public_port_for_the_stream_and_serves_the_asyncapi_document(
    kafka_bootstrap: str, client: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async with gateway_world(kafka_bootstrap, tmp_path_factory, "day-openapi") as world:
        gateway = world.gateway
        spec = (await client.get(f"{gateway.internal_url}/openapi.json")).json()
        stream = spec["paths"]["/session/{id}/events"]
        [server] = stream["servers"]
        assert _resolve(server) == gateway.url
        assert "GATEWAY_PORT" in server["description"]
        for path in ("/readyz", "/metrics", "/livez"):
            assert "servers" not in spec["paths"][path], path  # the document's own port
        # "Try it out" on the stream route reaches the route (401 without a token), not the internal 404.
        tried = await client.get(_resolve(server) + "/session/s-1/events")
        assert tried.status_code == 401, tried.text
        assert (await client.get(f"{gateway.internal_url}/session/s-1/events")).status_code == 404

        # The Kafka contract next to it, linked from the description /docs shows.
        asyncapi = await client.get(f"{gateway.internal_url}/asyncapi.yaml")
        assert asyncapi.status_code == 200
        assert asyncapi.headers["content-type"].startswith("application/yaml")
        assert asyncapi.content == (REPO / "schemas" / "asyncapi.yaml").read_bytes()
        assert yaml.safe_load(asyncapi.text)["asyncapi"] == "3.0.0"
        link = re.search(r"\[AsyncAPI document\]\(([^)]+)\)", spec["info"]["description"])
        assert link is not None, spec["info"]["description"]
        assert urljoin(f"{gateway.internal_url}/docs", link.group(1)) == f"{gateway.internal_url}/asyncapi.yaml"
        assert (await client.get(f"{gateway.url}/asyncapi.yaml")).status_code == 404  # not on the public port

    readme = (REPO / "README.md").read_text()
    assert "/asyncapi.yaml" in readme and "schemas/asyncapi.yaml" in readme


def test_key_fetch_failures_read_as_one_line_without_httpx_links() -> None:
    from gateway.auth.jwks import _parse_keys
    from gateway.auth.key_errors import JwksFetchError, describe_failure, error_text

    request = httpx.Request("GET", "https://idp.example.com/jwks.json")
    status_error = httpx.HTTPStatusError("x", request=request, response=httpx.Response(404, request=request))
    try:
        httpx.Response(404, request=request).raise_for_status()
    except httpx.HTTPStatusError as raised:
        assert "developer.mozilla.org" in str(raised)  # what httpx says (the reason for error_text)
        assert "developer.mozilla.org" not in error_text(raised)
        status_error = raised
    assert describe_failure(status_error) == (
        "http_404",
        "JWKS fetch failed: HTTP 404 Not Found from https://idp.example.com/jwks.json",
    )
    assert describe_failure(httpx.ConnectError("All connection attempts failed")) == (
        "ConnectError",
        "JWKS fetch failed: ConnectError: All connection attempts failed",
    )
    # A hostile discovery document: its values are quoted, cut, and cannot add lines.
    with pytest.raises(JwksFetchError) as caught:
        _parse_keys({"issuer": "https://idp\n" + "x" * 10_000, "jwks_uri": 7})
    assert caught.value.kind == "discovery_document"
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    assert "GATEWAY_OIDC_ISSUER='https://idp\\n" in message
    with pytest.raises(JwksFetchError, match="not a JWKS document") as not_jwks:
        _parse_keys(["keys"])
    assert not_jwks.value.kind == "not_jwks"
