"""Fixtures of the end-to-end group: Keycloak, headless Chromium (Playwright), a second-origin page server.

Every component is real and started here, once per session; one that cannot start fails the tests that need
it with a message saying why (never a skip). Downloads and start-ups print progress to the terminal even
though pytest captures output, so `make test` is not silent for minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.gateway_support import REPO, free_port
from tests.support import on_the_terminal as to_terminal

HERE = Path(__file__).resolve().parent
KEYCLOAK_SCRIPT = REPO / "scripts" / "keycloak.sh"
REALM_FILE = REPO / "deploy" / "keycloak" / "realm.json"
REALM = "session-gateway"
# The committed realm's clients (deploy/keycloak/realm.json): client id -> (secret, tenant_id claim).
CLIENTS = {
    "wallet-backend": ("wallet-backend-secret", "tenant-a"),
    "wallet-backend-b": ("wallet-backend-b-secret", "tenant-b"),
}
AUDIENCE = "session-events-gateway"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def say(config: pytest.Config, message: str) -> None:
    with to_terminal(config):
        print(f"[e2e] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Keycloak


@dataclass
class Keycloak:
    """A Keycloak started by scripts/keycloak.sh with the committed realm; admin is admin/admin."""

    port: int
    management_port: int
    state_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/realms/{REALM}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KEYCLOAK_PORT": str(self.port),
            "KEYCLOAK_MANAGEMENT_PORT": str(self.management_port),
            "KEYCLOAK_STATE_DIR": str(self.state_dir),
            "KEYCLOAK_REALM_FILE": str(REALM_FILE),
        }

    def run(self, command: str, timeout: float) -> int:
        try:
            return subprocess.run(
                ["bash", str(KEYCLOAK_SCRIPT), command],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            return -1

    def log_tail(self, lines: int = 40) -> str:
        log = self.state_dir / "keycloak.log"
        text = log.read_text(errors="replace").splitlines() if log.exists() else ["(no log)"]
        return "\n".join(text[-lines:])

    async def token(self, client_id: str = "wallet-backend") -> str:
        """An access token from the client-credentials grant, as the wallet backend gets one."""
        secret, _ = CLIENTS[client_id]
        async with httpx.AsyncClient(timeout=30.0) as client:
            response = await client.post(
                f"{self.issuer}/protocol/openid-connect/token",
                data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
            )
        assert response.status_code == 200, f"token request for {client_id} failed: {response.text}"
        token: str = response.json()["access_token"]
        return token

    async def admin(self) -> httpx.AsyncClient:
        """An HTTP client on the admin REST API, authenticated as the bootstrap admin (caller closes it)."""
        async with httpx.AsyncClient(timeout=30.0) as client:
            response = await client.post(
                f"{self.url}/realms/master/protocol/openid-connect/token",
                data={"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": "admin"},
            )
        assert response.status_code == 200, f"admin login failed: {response.text}"
        return httpx.AsyncClient(
            base_url=f"{self.url}/admin/realms/{REALM}",
            headers={"authorization": f"Bearer {response.json()['access_token']}"},
            timeout=30.0,
        )


@pytest.fixture(scope="session")
def keycloak(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keycloak]:
    """One Keycloak for the whole session (the first start also downloads it, ~180 MB, cached)."""
    port, management_port = free_port(), free_port()
    while management_port == port:
        management_port = free_port()
    server = Keycloak(port, management_port, tmp_path_factory.mktemp("keycloak"))
    started = time.monotonic()
    with to_terminal(pytestconfig):
        print("\n[e2e] starting Keycloak with scripts/keycloak.sh (Java 21+, download on first use)", file=sys.stderr)
        code = server.run("start", timeout=900)
    if code != 0:
        server.run("stop", timeout=60)
        pytest.fail(
            f"Keycloak could not be started by scripts/keycloak.sh (exit code {code}; -1 means it timed out). "
            f"It needs Java 21+ (KEYCLOAK_JAVA_HOME or /usr/lib/jvm) and Maven Central for the first download. "
            f"State and log: {server.state_dir}\n--- keycloak.log ---\n{server.log_tail()}",
            pytrace=False,
        )
    say(pytestconfig, f"Keycloak ready in {time.monotonic() - started:.0f}s at {server.issuer}")
    try:
        yield server
    finally:
        server.run("stop", timeout=60)


# --------------------------------------------------------------------------------------------------
# A page on another origin


@dataclass
class PageServer:
    port: int

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_url(self, gateway: str, session_id: str, token: str, credential: str = "token") -> str:
        """The reference client following ``session_id`` with ``token`` as ``?token=`` (or ``?ticket=``)."""
        fragment = httpx.QueryParams({"gateway": gateway, "session": session_id, credential: token})
        return f"{self.origin}/reference-client.html#{fragment}"


@pytest.fixture(scope="session")
def page_server() -> Iterator[PageServer]:
    """Serves tests/e2e/reference-client.html on its own port: an origin other than any gateway's."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(HERE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield PageServer(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------------
# Chromium through Playwright (the system's Chromium; Playwright downloads no browser)


@pytest_asyncio.fixture(scope="session")
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    from tests.test_browser import find_chromium

    executable = find_chromium()  # fails the test with an install hint when there is none
    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, timeout=60_000)
        except Exception as error:
            pytest.fail(f"Playwright could not launch {executable}: {error}", pytrace=False)
        try:
            yield browser
        finally:
            await browser.close()
