"""The demo page in a real browser: headless Chromium against a dev-mode gateway, dev issuer and broker.

Chromium is driven over the Chrome DevTools Protocol with a small client on ``websockets`` (already
installed with ``uvicorn[standard]``), so nothing is downloaded at test time. Clicks are real mouse
events at the buttons' positions; the page talks to the gateway exactly as a user's browser does
(``fetch`` to the dev endpoints, ``EventSource`` for the stream, polling ``/metrics``).

Chromium must be installed (Debian/Ubuntu: ``apt-get install -y chromium``); set ``CHROMIUM`` to use
another binary. Without it this test fails: it is never skipped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect

from tests.gateway_support import GatewayProcess, dev_mode_gateway
from tests.kafka_support import create_topic, unique_topic

pytestmark = pytest.mark.timeout(180)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "install it with: apt-get update && apt-get install -y chromium chromium-driver (or set CHROMIUM=/path)"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def find_chromium() -> str:
    configured = os.environ.get("CHROMIUM")
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            pytest.fail(f"CHROMIUM={configured} is not an executable file; {INSTALL_HINT}", pytrace=False)
        return configured
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"Chromium not found (looked for {', '.join(BROWSERS)} on PATH); {INSTALL_HINT}", pytrace=False)


# --------------------------------------------------------------------------------------------------
# A minimal Chrome DevTools Protocol client


class CdpError(AssertionError):
    pass


class Page:
    """One page target: send commands, receive their results, collect events."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self.exceptions: list[str] = []
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    async def _read(self) -> None:
        async for raw in self._socket:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                self.exceptions.append(
                    str(details.get("exception", {}).get("description") or details.get("text", details))
                )
            elif method == "Runtime.consoleAPICalled":
                args = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
                self.console.append(f"{params.get('type')}: {args}")
            for name, waiter in list(self._listeners):
                if name == method and not waiter.done():
                    waiter.set_result(params)
                    self._listeners.remove((name, waiter))

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        if self._reader.done():
            raise CdpError(f"the DevTools connection is closed ({self._reader!r})")
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        await self._socket.send(json.dumps({"id": command_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise CdpError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``method`` event; call before the action that causes it."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._listeners.append((method, waiter))
        return waiter

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True, userGesture=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str, timeout: float = 30.0) -> None:
        loaded = self.expect("Page.loadEventFired")
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def wait_for(self, expression: str, timeout: float = 20.0, what: str = "") -> Any:
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                state = await self.evaluate("document.body ? document.body.innerText.slice(0, 3000) : ''")
                raise AssertionError(
                    f"page never satisfied {what or expression} within {timeout}s\n--- page text ---\n{state}\n"
                    f"--- exceptions ---\n{self.exceptions}\n--- console ---\n{self.console}"
                )
            await asyncio.sleep(0.1)

    async def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (which must be visible and enabled)."""
        box = await self.evaluate(
            f"""(() => {{
                const element = document.querySelector({json.dumps(selector)});
                if (!element) return null;
                element.scrollIntoView({{block: "center"}});
                const r = element.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2, disabled: !!element.disabled}};
            }})()"""
        )
        if box is None:
            raise AssertionError(f"no element matches {selector!r}")
        if box["disabled"]:
            raise AssertionError(f"{selector!r} is disabled")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            extra: dict[str, Any] = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
            await self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], **extra)

    async def screenshot(self) -> bytes:
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._socket.close()


@contextlib.asynccontextmanager
async def chromium_page(binary: str, profile: Path, log_path: Path) -> AsyncIterator[Page]:
    """Headless Chromium on a fresh profile; yields its first page."""
    args = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--mute-audio",
        "--window-size=1280,1000",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = await _devtools_port(profile, process, log_path)
        async with httpx.AsyncClient(timeout=5.0) as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        pages = [target for target in targets if target.get("type") == "page"]
        assert pages, f"Chromium has no page target: {targets}"
        socket = await connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10)
        page = Page(socket)
        try:
            await page.send("Page.enable")
            await page.send("Runtime.enable")
            await page.send(
                "Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False
            )
            yield page
        finally:
            await page.close()
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


async def _devtools_port(profile: Path, process: subprocess.Popen[bytes], log_path: Path) -> int:
    """Chromium writes the port it chose (``--remote-debugging-port=0``) to DevToolsActivePort."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"Chromium exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(marker.read_text().splitlines()[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"Chromium did not open its DevTools port:\n{log_path.read_text(errors='replace')}")


# --------------------------------------------------------------------------------------------------
# The stack the page talks to


@pytest_asyncio.fixture
async def dev_gateway(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    topic = unique_topic("browser")
    await create_topic(kafka_bootstrap, topic, partitions=6, compacted=True)
    async with dev_mode_gateway(kafka_bootstrap, topic, tmp_path) as (_, gateway):
        yield gateway


def rows_js() -> str:
    return """Array.from(document.querySelectorAll('#events tr[data-status]')).map(row => ({
        status: row.dataset.status,
        cells: Array.from(row.cells).map(cell => cell.textContent.trim()),
    }))"""


def has_row(status: str) -> str:
    return f"document.querySelector('#events tr[data-status=\"{status}\"]') !== null"


async def test_demo_page_follows_a_session_live(dev_gateway: GatewayProcess, tmp_path: Path) -> None:
    chromium = find_chromium()  # a missing browser fails the test (never skips it)
    # The profile lives in the test's tmp_path: Chromium's helper processes may still write to it for a
    # moment after the browser exited, which made removing a TemporaryDirectory fail (ENOTEMPTY).
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    async with chromium_page(chromium, profile, tmp_path / "chromium.log") as page:
        await page.navigate(f"{dev_gateway.url}/")  # redirects to /demo
        assert await page.evaluate("location.pathname") == "/demo"
        assert "session-events-gateway" in await page.evaluate("document.title")
        await page.wait_for("/^\\d/.test(document.getElementById('m-consumed').textContent)", what="the metrics panel")
        assert await page.evaluate("document.getElementById('connection').dataset.state") == "idle"
        assert "new EventSource" in await page.evaluate("document.getElementById('snippet').textContent")

        await page.click("#create")
        await page.wait_for(has_row("active"), what="the 'active' transition")
        session_id = await page.evaluate("document.getElementById('session-id').textContent")
        assert len(session_id) == 36, session_id
        await page.wait_for("document.getElementById('connection').dataset.state === 'open'", what="the open stream")
        await page.wait_for(
            "document.getElementById('m-open-streams').textContent === '1'", what="1 open stream in the metrics"
        )
        assert session_id in await page.evaluate("document.getElementById('snippet').textContent")
        # The page streams with a ticket its backend part got for it; no tenant token reaches the page.
        assert (await page.evaluate("document.getElementById('token').textContent")).startswith("v1.")
        jwt_shape = "/eyJ[A-Za-z0-9_-]+\\.eyJ/"  # a JWT's header and claims (a ticket has one eyJ part)
        assert not await page.evaluate(f"{jwt_shape}.test(document.documentElement.outerHTML)")

        await page.click('.status-btn[data-status="fetched"]')
        await page.wait_for(has_row("fetched"), what="the 'fetched' transition")
        await page.wait_for(
            "!document.querySelector('.status-btn[data-status=\"completed\"]').disabled", what="buttons re-enabled"
        )
        await page.click('.status-btn[data-status="completed"]')
        await page.wait_for(has_row("completed"), what="the 'completed' transition")
        await page.wait_for("document.getElementById('connection').dataset.state === 'ended'", what="the closed stream")
        await page.wait_for(
            "Number(document.getElementById('m-delivered').textContent) >= 3", what="3 delivered events"
        )

        # A stream's resource timing entry appears once it has ended.
        urls: list[str] = await page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        assert any(f"/session/{session_id}/events?ticket=v1." in url for url in urls), urls
        assert not any("token=" in url or re.search(r"eyJ[\w-]+\.eyJ", url) for url in urls), urls

        rows: list[dict[str, Any]] = await page.evaluate(rows_js())
        assert [row["status"] for row in rows] == ["active", "fetched", "completed"]
        event_ids = [row["cells"][3] for row in rows]
        partition = event_ids[0].split("-")[0]
        assert all(event_id.startswith(f"{partition}-") for event_id in event_ids), event_ids
        assert event_ids[-1].endswith("-end"), event_ids
        assert all(row["cells"][2].endswith("Z") for row in rows), rows
        assert await page.evaluate("document.getElementById('current-status').textContent") == "completed"
        assert await page.evaluate("Array.from(document.querySelectorAll('.status-btn')).every(b => b.disabled)"), (
            "the status buttons stay enabled after a terminal status"
        )
        assert await page.evaluate("document.getElementById('message').hidden")
        assert page.exceptions == [], page.exceptions

        png = await page.screenshot()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    (tmp_path / "demo.png").write_bytes(png)  # kept in the test's tmp_path, for a look after a failure
    assert "DEV MODE" in dev_gateway.logs()
