"""Real parts for gateway tests: a JWKS server over HTTP, token minting, a gateway process, an SSE client.

Nothing here fakes Kafka or HTTP: the JWKS server is a real HTTP server on its own port, the
gateway is a real ``session-gateway serve`` process (uvicorn on a socket), and the SSE client
reads the bytes the server wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tests.kafka_support import create_topic, produce, unique_topic
from tests.support import free_port, wait_until

__all__ = ["free_port"]  # re-exported: one definition, in tests/support.py

REPO = Path(__file__).resolve().parent.parent


# --- keys and tokens ----------------------------------------------------------------------------

SigningKey = RSAKey | ECKey | OKPKey


def rsa_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"})


def ec_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig"})


def ed_key(kid: str) -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig"})


ISSUER = "https://issuer.test"
AUDIENCE = "session-events"


def mint(
    key: SigningKey,
    *,
    alg: str = "RS256",
    tenant: str | None = "tenant-a",
    session: str | None = None,
    sub: str | None = "user-1",
    ttl: float = 600,
    kid: str | bool | None = True,
    extra: dict[str, Any] | None = None,
    iss: str | None = ISSUER,
    aud: str | list[str] | None = AUDIENCE,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "exp": int(now + ttl)}
    if sub is not None:
        claims["sub"] = sub
    if iss is not None:
        claims["iss"] = iss
    if aud is not None:
        claims["aud"] = aud
    if tenant is not None:
        claims["tenant_id"] = tenant
    if session is not None:
        claims["session_id"] = session
    claims.update(extra or {})
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is True:
        header["kid"] = key.kid
    elif isinstance(kid, str):
        header["kid"] = kid
    return jwt.encode(header, claims, key, algorithms=[alg])


# --- JWKS server --------------------------------------------------------------------------------


@dataclass
class JwksServer:
    """A real HTTP JWKS endpoint on its own port; tests swap keys, fail it, and count fetches."""

    keys: list[SigningKey] = field(default_factory=list)
    cache_control: str | None = "max-age=300"
    failing: bool = False
    fetches: int = 0
    last_fetch: float = 0.0  # time.monotonic() of the last request for the JWKS (0: none yet)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    @property
    def issuer_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> JwksServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": owner.issuer_url, "jwks_uri": owner.url}).encode()
                elif self.path == "/jwks.json":
                    owner.fetches += 1
                    owner.last_fetch = time.monotonic()
                    if owner.failing:
                        self.send_response(503)
                        self.end_headers()
                        return
                    body = json.dumps({"keys": [k.as_dict(private=False) for k in owner.keys]}).encode()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                if owner.cache_control:
                    self.send_header("cache-control", owner.cache_control)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def idle_for(self, seconds: float) -> bool:
        """No JWKS request for at least ``seconds`` (a gateway's minimum refresh interval or key lifetime ran out)."""
        return time.monotonic() - self.last_fetch >= seconds


# --- gateway process ----------------------------------------------------------------------------


INTERNAL_PATHS = frozenset({"/readyz", "/metrics", "/docs", "/openapi.json"})


class _ServedProcess:
    """What the gateway and dev-issuer subprocesses share: a loopback port, a log file, readiness, stop."""

    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None
    stop_signal: int = signal.SIGINT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], env: dict[str, str]) -> None:
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=REPO
        )

    @property
    def internal_url(self) -> str:
        """Where health, metrics and docs are served (the gateway's internal port)."""
        port = getattr(self, "internal_port", None)
        return f"http://127.0.0.1:{port}" if port else self.url

    async def wait_status(self, path: str, status: int, timeout: float = 60.0) -> httpx.Response:
        base = self.internal_url if path.split("?", maxsplit=1)[0] in INTERNAL_PATHS else self.url
        deadline = time.monotonic() + timeout
        last: object = None
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    name = type(self).__name__
                    raise AssertionError(f"{name} exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
                try:
                    response = await client.get(base + path)
                    last = (response.status_code, response.text)
                    if response.status_code == status:
                        return response
                except httpx.HTTPError as error:
                    last = error
                await asyncio.sleep(0.1)
        raise AssertionError(f"{path} never answered {status}; last: {last}\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


@dataclass
class GatewayProcess(_ServedProcess):
    """``session-gateway serve`` in a subprocess; logs go to a file the test can read."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    internal_port: int = field(default_factory=free_port)

    def start(self) -> GatewayProcess:
        env = {
            **os.environ,
            "GATEWAY_INTERNAL_PORT": str(self.internal_port),
            **self.env,
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_HOST": "127.0.0.1",
        }
        if env["GATEWAY_INTERNAL_PORT"] != str(self.internal_port):
            self.internal_port = int(env["GATEWAY_INTERNAL_PORT"])
        self._spawn([sys.executable, "-m", "gateway", "serve"], env)
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        await self.wait_status("/readyz", 200, timeout)


def gateway_env(bootstrap: str, topic: str, jwks: JwksServer, **overrides: str) -> dict[str, str]:
    env = {
        "GATEWAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "GATEWAY_KAFKA_TOPIC": topic,
        "GATEWAY_JWKS_URL": jwks.url,
        "GATEWAY_JWT_ISSUER": ISSUER,
        "GATEWAY_JWT_AUDIENCE": AUDIENCE,
        "GATEWAY_KAFKA_HEALTH_INTERVAL": "1",
        "GATEWAY_STORE_EVICTION_INTERVAL": "1",
        "GATEWAY_JWKS_MIN_REFRESH": "1",
        "GATEWAY_LOG_LEVEL": "INFO",
        # Tests read refusal lines; folding them (10 per reason and minute by default) has its own test.
        "GATEWAY_REQUEST_LOG_LINES": "100000",
    }
    env.update(overrides)
    return env


# --- SSE client ---------------------------------------------------------------------------------


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: str

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


@dataclass
class SseStream:
    status: int
    headers: httpx.Headers
    response: httpx.Response
    retry: int | None = None
    comments: int = 0
    _lines: AsyncIterator[str] | None = None

    async def next_event(self, timeout: float = 10.0) -> SseEvent | None:
        """The next event, or None when the server ended the stream."""
        return await asyncio.wait_for(self._next_event(), timeout)

    async def _next_event(self) -> SseEvent | None:
        assert self._lines is not None
        fields: dict[str, str] = {}
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if data:
                    return SseEvent(fields.get("id"), fields.get("event"), "\n".join(data))
                fields = {}
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "retry":
                self.retry = int(value)
            else:
                fields[name] = value
        return None

    async def events_until_end(self, timeout: float = 30.0) -> list[SseEvent]:
        events: list[SseEvent] = []
        deadline = time.monotonic() + timeout
        while (event := await self.next_event(max(0.1, deadline - time.monotonic()))) is not None:
            events.append(event)
        return events


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> AsyncIterator[SseStream]:
    async with client.stream("GET", url, params=params, headers=headers) as response:
        stream = SseStream(response.status_code, response.headers, response)
        if response.status_code == 200:
            stream._lines = response.aiter_lines()
        else:
            await response.aread()
        yield stream


async def wait_applied(gateway: GatewayProcess, session_id: str, token: str, timeout: float = 30.0) -> None:
    """Waits until ``gateway`` has applied ``session_id`` (the consumer is asynchronous to the producer).

    Asks the status read (``GET /session/{id}``, the token as a bearer header) until it answers 200: it answers
    an unknown session at once, and adds no stream request to the access log. For a client that must not meet
    the unknown-session wait's 404 (an EventSource gives up for good on it).
    """
    url = f"{gateway.url}/session/{session_id}"
    answers: list[int] = []
    async with httpx.AsyncClient(timeout=10.0, headers={"authorization": f"Bearer {token}"}) as client:

        async def applied() -> bool:
            answers.append((await client.get(url)).status_code)
            return answers[-1] == 200

        await wait_until(applied, timeout, lambda: f"{url} answered {answers[-1:]}", interval=0.1)


# --- dev token issuer process ----------------------------------------------------------------------


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any GATEWAY_* setting a developer's shell may carry, plus ``overrides``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env.update(overrides)
    return env


@dataclass
class DevIssuerProcess(_ServedProcess):
    """``python -m gateway dev-issuer`` in a subprocess, on a free loopback port; output goes to a file."""

    log_path: Path
    audience: str | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    stop_signal: int = signal.SIGTERM

    def start(self) -> DevIssuerProcess:
        args = [sys.executable, "-m", "gateway", "dev-issuer", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.audience:
            args += ["--audience", self.audience]
        self._spawn(args, clean_env())
        return self

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await self.wait_status("/jwks.json", 200, timeout)

    async def token(self, tenant: str, session: str | None = None) -> str:
        params = {"tenant": tenant}
        if session:
            params["session"] = session
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{self.url}/token", params=params)
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token


def dev_issuer_gateway_env(bootstrap: str, topic: str, issuer: DevIssuerProcess, **overrides: str) -> dict[str, str]:
    """Gateway settings that trust the dev issuer (as ``make run`` configures them)."""
    env = {
        **clean_env(),
        "GATEWAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "GATEWAY_KAFKA_TOPIC": topic,
        "GATEWAY_JWKS_URL": f"{issuer.url}/jwks.json",
        "GATEWAY_JWT_ISSUER": issuer.url,
        "GATEWAY_DEV_ISSUER_URL": issuer.url,
        "GATEWAY_KAFKA_HEALTH_INTERVAL": "1",
        "GATEWAY_STORE_EVICTION_INTERVAL": "1",
        "GATEWAY_LOG_LEVEL": "INFO",
    }
    if issuer.audience:
        env["GATEWAY_JWT_AUDIENCE"] = issuer.audience
    env.update(overrides)
    return env


@asynccontextmanager
async def dev_mode_gateway(
    bootstrap: str, topic: str, logs: Path, **overrides: str
) -> AsyncIterator[tuple[DevIssuerProcess, GatewayProcess]]:
    """A dev issuer and a gateway in dev mode trusting it, as ``make run`` starts them; both ready."""
    issuer = DevIssuerProcess(logs / "issuer.log").start()
    env = dev_issuer_gateway_env(bootstrap, topic, issuer, GATEWAY_DEV_MODE="true", GATEWAY_LOG_FORMAT="text")
    gateway = GatewayProcess({**env, **overrides}, logs / "gateway.log")
    with stopping(gateway, issuer):
        await issuer.wait_ready()
        gateway.start()
        await gateway.wait_ready()
        yield issuer, gateway


@contextlib.contextmanager
def stopping(*processes: GatewayProcess | DevIssuerProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.stop()


async def stop_all(processes: Iterable[GatewayProcess | DevIssuerProcess]) -> None:
    """Stops the processes at the same time (each stop waits for its process to exit)."""
    await asyncio.gather(*(asyncio.to_thread(process.stop) for process in processes))


async def start_all(gateways: Iterable[GatewayProcess], *, ready: bool = True, timeout: float = 60.0) -> None:
    """Starts the gateways at once and waits for all of them (``/readyz``, or ``/livez`` with ``ready=False``).

    On a failure every one of them is stopped before the error propagates.
    """
    started = list(gateways)
    try:
        for gateway in started:
            gateway.start()
        if ready:
            await asyncio.gather(*(gateway.wait_ready(timeout) for gateway in started))
        else:
            await asyncio.gather(*(gateway.wait_status("/livez", 200, timeout) for gateway in started))
    except BaseException:
        await stop_all(started)
        raise


# --------------------------------------------------------------------------------------------------
# The world of a gateway test: a topic, a key and its JWKS server, gateways reading and trusting them


@dataclass
class GatewayWorld:
    """What ``gateway_world`` made: the broker and topic, the signing key and the JWKS server publishing it,
    and the gateway processes (by name) reading that topic and trusting that server; logs under ``logs``."""

    bootstrap: str
    topic: str
    key: SigningKey
    jwks: JwksServer
    gateways: dict[str, GatewayProcess]
    logs: Path

    @property
    def gateway(self) -> GatewayProcess:
        """The gateway of a world that has one (the first one named otherwise)."""
        return next(iter(self.gateways.values()))

    def __getitem__(self, name: str) -> GatewayProcess:
        return self.gateways[name]

    def token(self, tenant: str | None = "tenant-a", **claims: Any) -> str:
        """A token signed by the world's key (see ``mint`` for ``claims``)."""
        return mint(self.key, tenant=tenant, **claims)

    def url(self, session_id: str, gateway: GatewayProcess | None = None) -> str:
        """The events URL of ``session_id`` on ``gateway`` (the world's gateway by default)."""
        return f"{(gateway or self.gateway).url}/session/{session_id}/events"

    def env(self, **overrides: str) -> dict[str, str]:
        """The settings of one more gateway on this world's topic and JWKS server (``gateway_env``)."""
        return gateway_env(self.bootstrap, self.topic, self.jwks, **overrides)


GatewaySettingsOverrides = Mapping[str, str | None]


@asynccontextmanager
async def gateway_world(
    bootstrap: str,
    logs: Path | pytest.TempPathFactory,
    name: str,
    *,
    partitions: int = 1,
    compacted: bool = False,
    topic: str | None = None,
    create: bool = True,
    records: Sequence[tuple[bytes | None, bytes | None]] = (),
    keys: Sequence[SigningKey] | None = None,
    jwks: JwksServer | None = None,
    gateways: Mapping[str, GatewaySettingsOverrides] | None = None,
    common: Mapping[str, str] | None = None,
    ready: bool = True,
    **settings: str,
) -> AsyncIterator[GatewayWorld]:
    """A gateway against the broker and a key server, ready; everything it started is stopped at the end.

    - the topic: ``topic``, or a new one named after ``name``; created (``partitions``, ``compacted``)
      unless ``create=False`` (a test that creates it later), with ``records`` written before any gateway
      starts;
    - the key: ``keys[0]`` (``keys`` are all published), or a new RSA key named ``name``;
    - the JWKS server: ``jwks`` (left running), or a new one that publishes ``keys``;
    - the gateways: one named ``name`` with ``settings`` (and ``common``, the same as a mapping) on top of
      ``gateway_env``, or one per entry of ``gateways`` with its own settings on top of those (a value
      ``None`` removes that variable); started at once and awaited together (``/readyz``, or only
      ``/livez`` with ``ready=False``).

    ``logs`` is a directory, or pytest's ``tmp_path_factory`` (a new directory named ``name``).
    """
    directory = logs.mktemp(name) if isinstance(logs, pytest.TempPathFactory) else logs
    signing = list(keys) if keys else [rsa_key(name)]
    server = jwks if jwks is not None else JwksServer(keys=list(signing)).start()
    processes: dict[str, GatewayProcess] = {}
    try:
        topic = topic or unique_topic(name)
        if create:
            await create_topic(bootstrap, topic, partitions=partitions, compacted=compacted)
        if records:
            await produce(bootstrap, topic, records)
        for gateway_name, own in (gateways or {name: {}}).items():
            env = gateway_env(bootstrap, topic, server, **(common or {}), **settings)
            for variable, value in own.items():
                if value is None:
                    env.pop(variable, None)
                else:
                    env[variable] = value
            processes[gateway_name] = GatewayProcess(env, directory / f"{gateway_name}.log")
        await start_all(processes.values(), ready=ready)
        try:
            yield GatewayWorld(bootstrap, topic, signing[0], server, processes, directory)
        finally:
            await stop_all(processes.values())
    finally:
        if jwks is None:
            server.stop()


# --------------------------------------------------------------------------------------------------
# Fixtures


# --- Metrics as a scraper sees them ---------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient, gateway: GatewayProcess) -> Samples:
    """Every sample of one scrape of the gateway's internal port, by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    response = await client.get(gateway.internal_url + "/metrics")
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for found in family.samples:
            samples[(found.name, tuple(sorted(found.labels.items())))] = float(found.value)
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent, as for a counter never incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
