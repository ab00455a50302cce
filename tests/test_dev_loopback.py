"""Dev mode runs on loopback only: ``serve`` refuses it on another host, and the dev routes refuse other peers.

Dev mode publishes statuses without authentication and (with ``serve --dev``) hands out tokens for any
tenant, so on a network address anyone could cancel anyone's session. ``serve`` stops with one line when
dev mode meets a non-loopback ``GATEWAY_HOST``/``--host``; a gateway started some other way (here: uvicorn
on ``0.0.0.0``) still answers 403 on every dev route to a request whose peer is not a loopback address.

The peer check is a pure function (unit tests below). Against a real process it is exercised twice: a
loopback proxy relaying a remote client (``X-Forwarded-For``, works on any machine), and a real TCP peer
that is not loopback: this machine's own non-loopback address, when it has one (the test is skipped,
saying so, on a machine with loopback only).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.dev.loopback import loopback_peer, refusal
from tests.gateway_support import REPO, JwksServer, clean_env, gateway_env, rsa_key
from tests.kafka_support import create_topic, event_bytes, produce, read_all, unique_topic
from tests.support import free_port, new_session, wait_until
from tests.test_cli import assert_user_error, run_cli

pytestmark = pytest.mark.timeout(120)

TENANT = "tenant-a"

# --------------------------------------------------------------------------------------------------
# The peer check


@pytest.mark.parametrize(
    "client",
    [("127.0.0.1", 50000), ("127.10.20.30", 1), ("::1", 2), ("::ffff:127.0.0.1", 3), ("::1%lo", 4), ["127.0.0.1", 5]],
)
def test_loopback_peers_are_served(client: object) -> None:
    assert loopback_peer(client)
    assert refusal(client) is None


@pytest.mark.parametrize(
    "client",
    [
        ("192.0.2.7", 50000),
        ("10.0.0.1", 1),
        ("0.0.0.0", 1),
        ("::", 1),
        ("2001:db8::1", 1),
        ("::ffff:10.0.0.1", 1),
        ("localhost", 1),  # a peer is an address; a name is whatever a header said
        ("", 0),
        ("not-an-address", 1),
        None,
        (),
        (None, 1),
        "127.0.0.1",
    ],
)
def test_other_peers_are_refused(client: object) -> None:
    assert not loopback_peer(client)
    reason = refusal(client)
    assert reason is not None and "loopback" in reason


def test_the_refusal_names_the_peer_and_the_way_out() -> None:
    reason = refusal(("192.0.2.7", 50000))
    assert reason is not None
    assert "192.0.2.7" in reason and "127.0.0.1" in reason and "port-forward" in reason


# --------------------------------------------------------------------------------------------------
# serve refuses dev mode on a non-loopback host


def _dev_env(**overrides: str) -> dict[str, str]:
    """Free ports and an unreachable broker: were serve to start anyway, it would disturb nothing."""
    return clean_env(
        GATEWAY_PORT=str(free_port()),
        GATEWAY_INTERNAL_PORT=str(free_port()),
        GATEWAY_DEV_ISSUER_URL=f"http://127.0.0.1:{free_port()}",
        GATEWAY_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        **overrides,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
async def test_serve_dev_on_a_network_host_is_refused_in_one_line(host: str) -> None:
    result = await run_cli("serve", "--dev", "--host", host, env=_dev_env(), timeout=30)
    assert_user_error(result, "dev mode", "loopback", repr(host), "127.0.0.1")
    assert result.code == 1
    assert "DEV TOKEN ISSUER" not in result.stderr, "nothing may start before the refusal"


async def test_dev_mode_setting_with_real_keys_on_a_network_host_is_refused_in_one_line() -> None:
    """The issue's set-up: GATEWAY_DEV_MODE=true next to a real JWKS URL and GATEWAY_HOST=0.0.0.0."""
    env = _dev_env(
        GATEWAY_DEV_MODE="true", GATEWAY_HOST="0.0.0.0", GATEWAY_JWKS_URL="https://idp.example.com/jwks.json"
    )
    result = await run_cli("serve", env=env, timeout=30)
    assert_user_error(result, "GATEWAY_DEV_MODE", "GATEWAY_HOST", "'0.0.0.0'", "loopback")
    assert result.code == 1


# --------------------------------------------------------------------------------------------------
# The dev routes refuse non-loopback peers, however the gateway was started


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (the source of a route out), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1; a UDP connect sends nothing, it only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0" else address


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    server = JwksServer(keys=[rsa_key("dev-loopback")]).start()
    yield server
    server.stop()


async def test_dev_routes_refuse_peers_that_are_not_loopback(
    kafka_bootstrap: str, jwks: JwksServer, tmp_path: Path
) -> None:
    """uvicorn serves the app on 0.0.0.0 in dev mode (no serve, so no start-up check): only loopback may publish."""
    topic = unique_topic("dev-loopback")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    victim = new_session("victim")
    await produce(kafka_bootstrap, topic, [(victim.encode(), event_bytes(victim, TENANT, "active"))])
    port = free_port()
    env = gateway_env(
        kafka_bootstrap,
        topic,
        jwks,
        GATEWAY_DEV_MODE="true",
        GATEWAY_PORT=str(port),
        GATEWAY_INTERNAL_PORT=str(free_port()),  # not bound: uvicorn serves one port, the public one
        GATEWAY_LOG_FORMAT="text",
    )
    env = {**clean_env(), **env}
    command = [sys.executable, "-m", "uvicorn", "gateway.runtime.app:create_app", "--factory", "--interface", "asgi3"]
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("wb") as log:
        command += ["--host", "0.0.0.0", "--port", str(port)]
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO)
    local = f"http://127.0.0.1:{port}"
    status_path = f"/dev/sessions/{victim}/status"
    cancel = {"status": "cancelled", "tenant": TENANT}
    address = non_loopback_address()
    answers: list[tuple[str, str, str, int, str]] = []  # (peer, method, path, status, body) of every refusal case
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:

            async def serving() -> bool:
                assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
                try:
                    return (await client.get(f"{local}/livez")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(serving, 60, lambda: log_path.read_text(errors="replace")[-3000:])
            assert (await client.get(f"{local}/demo")).status_code == 200

            # A proxy on this machine relaying a remote client says so in X-Forwarded-For: refused.
            relayed = {"x-forwarded-for": "203.0.113.9"}
            for method, path, body in (
                ("GET", "/demo", None),
                ("POST", status_path, cancel),
                ("GET", "/dev/metrics", None),
                ("GET", "/dev/docs", None),
            ):
                response = await client.request(method, f"{local}{path}", json=body, headers=relayed)
                answers.append(("203.0.113.9", method, path, response.status_code, response.text))

            # A real TCP peer that is not loopback: this machine's own network address.
            if address is not None:
                remote = f"http://{address}:{port}"
                attempts: list[tuple[str, str, dict[str, str], object]] = [
                    ("POST", status_path, {}, cancel),
                    ("POST", status_path, {"x-forwarded-for": "127.0.0.1"}, cancel),  # not trusted from there
                    ("POST", "/dev/sessions", {}, {"tenant": TENANT}),
                    ("GET", "/demo", {}, None),
                    ("GET", "/", {}, None),
                    ("GET", "/demo/static/demo.js", {}, None),
                    ("GET", "/dev/metrics", {}, None),
                    ("GET", "/dev/readyz", {}, None),
                    ("GET", "/dev/docs", {}, None),
                ]
                for method, path, headers, payload in attempts:
                    response = await client.request(method, f"{remote}{path}", json=payload, headers=headers)
                    answers.append((address, method, path, response.status_code, response.text))
                malformed = {"content-type": "application/json"}  # refused before the body is read, not a 422
                response = await client.post(f"{remote}{status_path}", content=b"{", headers=malformed)
                answers.append(
                    (address, "POST", f"{status_path} (malformed body)", response.status_code, response.text)
                )
                assert (await client.get(f"{remote}/livez")).status_code == 200, "only the dev routes are refused"

            # The same publication from loopback works (so the refusals were the peer check's doing).
            async def published_from_loopback() -> bool:
                response = await client.post(f"{local}{status_path}", json={"status": "fetched", "tenant": TENANT})
                return response.status_code == 200

            await wait_until(published_from_loopback, 30, "a loopback publication through the dev route")
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    records = [record.value for record in await read_all(kafka_bootstrap, topic) if record.value is not None]
    published = [json.loads(value)["status"] for value in records]
    summary = [(peer, method, path, status) for peer, method, path, status, _ in answers]
    print(f"\nnon-loopback peer {address}; answers {summary}; statuses on the topic {published}")
    allowed = [(peer, method, path, status) for peer, method, path, status in summary if status != 403]
    assert not allowed, f"dev routes answered non-loopback peers: {allowed}"
    for peer, _, _, _, text in answers:
        detail = json.loads(text)["detail"]
        assert peer in detail and "loopback" in detail, detail
    assert published == ["active", "fetched"], "only the loopback publication may reach the topic"
    if address is None:
        pytest.skip("this machine has no non-loopback address: the real non-loopback peer was not tried")
