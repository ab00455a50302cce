"""The first hour of a newcomer, run for real: every mistake gets one clear line, and ``serve --dev`` just works.

Everything runs the installed ``session-gateway`` command as a subprocess (like a user in a shell):
unknown and invalid settings, ports in use, the dev mode with its own token issuer, getting a token
for ``watch``, the demo page at a phone's width and the offline API docs in headless Chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.gateway_support import REPO, clean_env
from tests.kafka_support import create_topic, event_bytes, produce, unique_topic
from tests.support import free_port, new_session, wait_until
from tests.test_browser import chromium_page, find_chromium, has_row
from tests.test_cli import assert_user_error, cli_command, run_cli

pytestmark = pytest.mark.timeout(240)

NO_KEYS_NEEDED = {"GATEWAY_JWKS_URL": "http://127.0.0.1:9/jwks.json"}  # never fetched: start-up stops first


@contextlib.contextmanager
def listening_port() -> Iterator[int]:
    """A loopback port something else listens on, for the port-in-use checks."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def only_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


# --------------------------------------------------------------------------------------------------
# Unknown and invalid settings


async def test_serve_refuses_a_misspelt_setting_and_names_the_right_one() -> None:
    env = clean_env(GATEWAY_DEV_MOD="true", **NO_KEYS_NEEDED)
    result = await run_cli("serve", "--port", str(free_port()), env=env, timeout=30)
    line = assert_user_error(result, "unknown setting GATEWAY_DEV_MOD", "did you mean GATEWAY_DEV_MODE?")
    assert "GATEWAY_ALLOW_UNKNOWN_SETTINGS=true" in line
    assert result.code == 2
    assert only_line(result.stderr) == line, "nothing else may start or print"


async def test_allow_unknown_settings_turns_the_refusal_into_a_warning() -> None:
    env = clean_env(GATEWAY_KAFKA_TOPC="orders", GATEWAY_ALLOW_UNKNOWN_SETTINGS="true")
    result = await run_cli("serve", "--port", str(free_port()), env=env, timeout=30)
    # It went on to the next check: without keys (and without --dev) serve cannot verify tokens.
    assert_user_error(result, "GATEWAY_JWKS_URL", "serve --dev")
    warning = next(line for line in result.stderr.splitlines() if "warning:" in line)
    assert "unknown setting GATEWAY_KAFKA_TOPC: did you mean GATEWAY_KAFKA_TOPIC?" in warning
    assert result.code == 1


async def test_create_topic_only_warns_about_a_misspelt_setting(kafka_bootstrap: str) -> None:
    name = unique_topic("first-hour")
    env = clean_env(GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, GATEWAY_JWKS_ULR="http://idp/jwks.json")
    result = await run_cli("create-topic", "--topic", name, "--partitions", "1", env=env, timeout=60)
    assert result.code == 0, result.describe()
    assert result.stdout.strip() == f"topic {name} created"
    assert only_line(result.stderr) == (
        "session-gateway: warning: unknown setting GATEWAY_JWKS_ULR: did you mean GATEWAY_JWKS_URL? (ignored)"
    )


@pytest.mark.parametrize(
    ("variable", "value", "example"),
    [
        ("GATEWAY_REPLAY_WINDOW", "6 hours", "6h"),
        ("GATEWAY_HEARTBEAT_INTERVAL", "often", "90s"),
        ("GATEWAY_MAX_CONNECTIONS", "lots", "e.g. 16000"),
        ("GATEWAY_KAFKA_SECURITY_PROTOCOL", "TLS", "SASL_SSL"),
    ],
)
async def test_a_bad_value_names_the_variable_the_value_and_an_example(variable: str, value: str, example: str) -> None:
    result = await run_cli("serve", "--port", str(free_port()), env=clean_env(**{variable: value}), timeout=30)
    line = assert_user_error(result, f"invalid setting {variable}={value!r}", example)
    assert "timedelta" not in line and "pydantic" not in line, line
    assert result.code == 2


async def test_durations_with_units_are_accepted_by_serve() -> None:
    env = clean_env(GATEWAY_REPLAY_WINDOW="6h", GATEWAY_DRAIN_SECONDS="500ms", GATEWAY_RETRY_MS="3s")
    result = await run_cli("serve", "--port", str(free_port()), env=env, timeout=30)
    # Past the settings checks: the only complaint left is the missing keys.
    assert_user_error(result, "GATEWAY_JWKS_URL")
    assert result.code == 1


# --------------------------------------------------------------------------------------------------
# Ports in use


@pytest.mark.parametrize("how", ["flag", "environment"])
async def test_serve_on_a_port_in_use_is_one_line_naming_what_to_change(how: str) -> None:
    with listening_port() as port:
        if how == "flag":
            result = await run_cli("serve", "--port", str(port), env=clean_env(**NO_KEYS_NEEDED), timeout=30)
        else:
            result = await run_cli("serve", env=clean_env(GATEWAY_PORT=str(port), **NO_KEYS_NEEDED), timeout=30)
    line = assert_user_error(result, f"port {port}", "already in use", "--port or GATEWAY_PORT")
    assert only_line(result.stderr) == line
    assert result.code == 1


async def test_serve_on_an_internal_port_in_use_names_its_setting() -> None:
    with listening_port() as port:
        env = clean_env(GATEWAY_INTERNAL_PORT=str(port), **NO_KEYS_NEEDED)
        result = await run_cli("serve", "--port", str(free_port()), env=env, timeout=30)
    line = assert_user_error(result, f"port {port}", "already in use", "GATEWAY_INTERNAL_PORT")
    assert only_line(result.stderr) == line
    assert result.code == 1


async def test_dev_issuer_on_a_port_in_use_is_one_line_naming_the_flag() -> None:
    with listening_port() as port:
        result = await run_cli("dev-issuer", "--port", str(port), timeout=30)
    line = assert_user_error(result, f"port {port}", "already in use", "--port")
    assert only_line(result.stderr) == line
    assert result.code == 1


# --------------------------------------------------------------------------------------------------
# serve --dev alone: its own token issuer, a token for watch, the demo page, offline docs


@dataclass
class DevServe:
    process: subprocess.Popen[bytes]
    port: int
    issuer_url: str
    log_path: Path
    topic: str
    internal_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


OPEN_FILES = 1024  # set as the hard limit too: the gateway cannot lift it
MAX_SOCKETS = 2000


@pytest_asyncio.fixture(scope="module")
async def dev_serve(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServe]:
    """``session-gateway serve --dev`` and nothing else: no JWKS, no issuer process, a low open-files limit."""
    topic = unique_topic("first-hour")
    await create_topic(kafka_bootstrap, topic, partitions=3, compacted=True)
    port, issuer_port, internal_port = free_port(), free_port(), free_port()
    log_path = tmp_path_factory.mktemp("first-hour") / "serve-dev.log"
    env = clean_env(
        GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        GATEWAY_KAFKA_TOPIC=topic,
        GATEWAY_DEV_ISSUER_URL=f"http://127.0.0.1:{issuer_port}",
        GATEWAY_MAX_SOCKETS=str(MAX_SOCKETS),
        GATEWAY_LOG_FORMAT="text",
        GATEWAY_INTERNAL_PORT=str(internal_port),
    )
    command = shlex.join([*cli_command(), "serve", "--dev", "--port", str(port)])
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["bash", "-c", f"ulimit -n {OPEN_FILES} && exec {command}"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    served = DevServe(process, port, f"http://127.0.0.1:{issuer_port}", log_path, topic, internal_port)
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:

            async def ready() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"serve --dev exited with {process.returncode}:\n{served.logs()}")
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get(f"http://127.0.0.1:{internal_port}/readyz")).status_code == 200
                return False

            await wait_until(ready, 90, lambda: f"serve --dev never became ready:\n{served.logs()[-3000:]}")
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


async def test_serve_dev_alone_starts_its_issuer_and_says_how_to_get_a_token(dev_serve: DevServe) -> None:
    logs = dev_serve.logs()
    assert f"started a DEV token issuer on {dev_serve.issuer_url}" in logs, logs
    assert f"curl '{dev_serve.issuer_url}/token?tenant=demo-tenant'" in logs
    assert f"session-gateway dev-token --tenant demo-tenant --issuer {dev_serve.issuer_url}" in logs
    assert f"{dev_serve.url}/demo" in logs
    assert "DEV TOKEN ISSUER - FOR LOCAL DEVELOPMENT ONLY" in logs
    assert "Traceback" not in logs


async def test_the_open_files_warning_says_what_it_checks(dev_serve: DevServe) -> None:
    (line,) = [line for line in dev_serve.logs().splitlines() if line.startswith("session-gateway: warning: open")]
    needed = MAX_SOCKETS + 100
    assert f"open-files limit (ulimit -n) is {OPEN_FILES}" in line, line
    assert f"GATEWAY_MAX_SOCKETS={MAX_SOCKETS} plus 100" in line and f"= {needed}" in line, line
    assert f"Raise the limit to at least {needed}" in line, line
    assert f"lower GATEWAY_MAX_SOCKETS to {OPEN_FILES - 100}" in line, line


async def test_watch_with_a_token_from_dev_token(dev_serve: DevServe, kafka_bootstrap: str) -> None:
    session = new_session("first-watch")
    await produce(kafka_bootstrap, dev_serve.topic, [(session.encode(), event_bytes(session, "demo-tenant", "active"))])
    # docs/cli.md's command line: watch SESSION --token "$(session-gateway dev-token --tenant demo-tenant)".
    command = (
        f"{shlex.join(cli_command())} watch {session} --url {dev_serve.url} --token "
        f'"$({shlex.join(cli_command())} dev-token --tenant demo-tenant --issuer {dev_serve.issuer_url})"'
    )
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env=clean_env(), stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        first = await asyncio.wait_for(process.stdout.readline(), 30)
        assert first.decode().split()[1:] == [session, "active"], (first, await process.stderr.read())
        await produce(
            kafka_bootstrap, dev_serve.topic, [(session.encode(), event_bytes(session, "demo-tenant", "completed"))]
        )
        second = await asyncio.wait_for(process.stdout.readline(), 30)
        assert second.decode().split()[1:] == [session, "completed"], second
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_dev_token_without_an_issuer_is_one_line() -> None:
    issuer = f"http://127.0.0.1:{free_port()}"
    result = await run_cli("dev-token", "--tenant", "t", "--issuer", issuer, timeout=30)
    assert_user_error(result, f"the dev issuer at {issuer}", "session-gateway serve --dev")
    assert result.code == 1


async def test_publishing_a_status_the_store_ignores_says_why(dev_serve: DevServe) -> None:
    async with httpx.AsyncClient(base_url=dev_serve.url, timeout=20.0) as client:
        created = (await client.post("/dev/sessions", json={"tenant": "demo-tenant"})).json()
        status_url = f"/dev/sessions/{created['id']}/status"
        first = await client.post(status_url, json={"status": "fetched"})
        again = await client.post(status_url, json={"status": "fetched"})
        backward = await client.post(status_url, json={"status": "active"})
        done = await client.post(status_url, json={"status": "completed"})
        after = await client.post(status_url, json={"status": "failed"})
        blank = await client.post("/dev/sessions", json={"tenant": "   "})
    outcomes = [r.json()["outcome"] for r in (first, again, backward, done, after)]
    assert outcomes == [
        "applied",
        "ignored: repeated status",
        "ignored: status would move backward",
        "applied",
        "ignored: the session already ended",
    ]
    assert blank.status_code == 422, blank.text
    assert "blank" in blank.text


async def test_the_demo_assets_load_one_after_another_on_one_keep_alive_connection(dev_serve: DevServe) -> None:
    """A browser fetches the page, its stylesheet and its script over one connection; each answer is whole
    (a file answer is streamed by the app while it listens for a disconnect: the listener of one request
    being cancelled must not end the next request's answer)."""
    static = Path(__file__).resolve().parent.parent / "gateway" / "dev" / "static"
    async with httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=1)) as client:
        for _ in range(2):
            for path, name in (
                ("/demo", "demo.html"),
                ("/demo/static/demo.css", "demo.css"),
                ("/demo/static/demo.js", "demo.js"),
            ):
                response = await client.get(f"{dev_serve.url}{path}")
                assert response.status_code == 200, (path, response.status_code)
                assert response.content == (static / name).read_bytes(), path
                assert response.headers.get("connection") != "close", path


async def test_demo_page_at_420px_shows_the_token_and_never_scrolls_sideways(
    dev_serve: DevServe, tmp_path: Path
) -> None:
    chromium = find_chromium()
    # The profile lives in tmp_path: Chromium may still write to it while it exits.
    async with chromium_page(chromium, tmp_path / "profile", tmp_path / "chromium.log") as page:
        await page.send("Emulation.setDeviceMetricsOverride", width=420, height=900, deviceScaleFactor=1, mobile=True)
        await page.navigate(f"{dev_serve.url}/demo")
        width = "document.documentElement.scrollWidth"
        assert await page.evaluate(width) <= 420, await page.evaluate(width)

        # A blank tenant is an error on the page, not a silent 'demo-tenant'.
        await page.evaluate("document.getElementById('tenant').value = '  '")
        await page.click("#create")
        await page.wait_for("!document.getElementById('message').hidden", what="the blank-tenant message")
        assert "must not be blank" in await page.evaluate("document.getElementById('message').textContent")
        assert (
            await page.evaluate("document.getElementById('session-id').textContent") == "\u2013"
        )  # the placeholder dash

        await page.evaluate("document.getElementById('tenant').value = 'demo-tenant'")
        await page.click("#create")
        await page.wait_for(has_row("active"), what="the 'active' transition")
        token = await page.evaluate("document.getElementById('token').textContent")
        session_id = await page.evaluate("document.getElementById('session-id').textContent")
        # Dev mode streams with a stream ticket (docs/tickets.md): the page never holds the tenant token.
        assert re.fullmatch(r"v1\.[\w-]+\.[\w-]{43}", token), token
        events = f"{dev_serve.url}/session/{session_id}/events"
        async with (  # the shown ticket opens this session's stream
            httpx.AsyncClient(timeout=10.0) as client,
            client.stream("GET", events, params={"ticket": token}) as response,
        ):
            assert response.status_code == 200
        assert not await page.evaluate("document.getElementById('copy-token').disabled")
        watch = await page.evaluate("document.getElementById('watch-command').textContent")
        # Issue 25.10: the command names this installation's CLI by absolute path, so it runs as printed
        # from any directory without the virtualenv on PATH (checked below, once the session has ended).
        program = shlex.split(watch)[0]
        assert Path(program).is_absolute() and Path(program).name == "session-gateway", watch
        assert watch.startswith(f"{program} watch {session_id} --url ") and watch.endswith(f"--ticket {token}"), watch

        await page.click('.status-btn[data-status="fetched"]')
        await page.wait_for(has_row("fetched"), what="the 'fetched' transition")
        await page.wait_for("!document.querySelector('.status-btn[data-status=\"fetched\"]').disabled")
        await page.click('.status-btn[data-status="fetched"]')  # again: the store ignores it
        notice = await page.wait_for(
            "!document.getElementById('notice').hidden && document.getElementById('notice').textContent",
            what="the 'ignored' notice",
        )
        assert "ignored: repeated status" in notice, notice

        await page.click('.status-btn[data-status="completed"]')
        await page.wait_for(has_row("completed"), what="the 'completed' transition")
        bare_path = ":".join(part for part in clean_env()["PATH"].split(":") if ".venv" not in part)
        watched = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", watch],
            env=clean_env(PATH=bare_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert watched.returncode == 0 and "completed" in watched.stdout, (watched.stdout, watched.stderr)

        # Filled with a session, a token and transitions, the page still fits 420 px.
        assert await page.evaluate(width) <= 420, await page.evaluate(width)
        (tmp_path / "demo-420px.png").write_bytes(await page.screenshot())
        assert page.exceptions == [], page.exceptions


async def test_api_docs_render_offline_under_a_strict_csp(dev_serve: DevServe, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=dev_serve.internal_url, timeout=10.0) as client:
        page = await client.get("/docs")
        asset = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/docs/assets/") for source in sources), sources
    assert "<script>" not in page.text, "an inline script would be blocked by the CSP"
    assert asset.status_code == 200 and len(asset.content) > 500_000

    chromium = find_chromium()
    # The profile lives in tmp_path: Chromium may still write to it while it exits.
    async with chromium_page(chromium, tmp_path / "profile", tmp_path / "chromium.log") as browser:
        await browser.navigate(f"{dev_serve.internal_url}/docs")
        title = await browser.wait_for(
            "document.querySelector('.swagger-ui .info .title') && "
            "document.querySelector('.swagger-ui .info .title').textContent",
            timeout=30,
            what="Swagger UI's title",
        )
        assert "session-events-gateway" in title
        assert await browser.evaluate("document.body.innerText.includes('/session/{id}/events')")
        assert browser.exceptions == [], browser.exceptions


def test_the_test_broker_variable_is_the_gateways_own() -> None:
    """One name for the broker: the fixture prefers GATEWAY_KAFKA_BOOTSTRAP_SERVERS, like the gateway."""
    from tests.conftest import configured_broker

    assert configured_broker({"GATEWAY_KAFKA_BOOTSTRAP_SERVERS": "a:1", "KAFKA_BOOTSTRAP_SERVERS": "b:2"}) == (
        "a:1",
        None,
    )
    bootstrap, notice = configured_broker({"KAFKA_BOOTSTRAP_SERVERS": "b:2"})
    assert bootstrap == "b:2" and notice is not None and "GATEWAY_KAFKA_BOOTSTRAP_SERVERS=b:2" in notice
    assert configured_broker({}) == ("", None)
