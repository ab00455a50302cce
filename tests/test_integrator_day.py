"""An integrator's first day (issue 25): what a wrong setting looks like from outside, against real processes.

- Keys: a gateway whose JWKS endpoint never answered (or answers with an OpenID discovery document)
  says so with ``503`` and ``Retry-After``, not ``401``; its warnings are folded and carry no httpx
  documentation links; a discovery document gets the hint ``GATEWAY_OIDC_ISSUER=...``.
- CORS: a page of an origin that may not read the stream gets one log line per origin and interval that
  names ``GATEWAY_CORS_ORIGINS``; clients choose origins, so the remembered ones are bounded.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from gateway.edge.cors import RefusedOrigins
from tests.gateway_support import JwksServer, gateway_world, rsa_key

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
