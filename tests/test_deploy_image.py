"""The image contract, without a container engine.

hadolint checks the Dockerfile. Then the build stage's own COPY and RUN instructions are carried out on
this machine (same commands, the image's folders mapped to a scratch folder), and the result is started
the way the chart runs the image: as UID/GID 10001 with no capabilities, with the root filesystem
mounted read-only and only a fresh tmpfs at /tmp (a private mount namespace), working directory ``/``
and an absent HOME. It must serve a stream end to end against the real broker and a real JWKS server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.settings import GatewaySettings
from tests.deploy_support import DOCKERFILE, REPO, Stage, dockerfile_stages, env_pairs, run, tool, unknown_settings
from tests.gateway_support import AUDIENCE, ISSUER, JwksServer, free_port, mint, rsa_key, sse
from tests.kafka_support import create_topic, event_bytes, produce, unique_topic

pytestmark = pytest.mark.timeout(1800)

IMAGE_UID = 10001
# Where the image keeps things; mapped under a scratch folder on this machine.
IMAGE_PATHS = ("/src", "/wheels", "/opt/gateway")


def _stages() -> tuple[Stage, Stage]:
    _, stages = dockerfile_stages()
    assert [stage.name for stage in stages] == ["build", "runtime"], [stage.name for stage in stages]
    return stages[0], stages[1]


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


# --- static checks ---------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint(pytestconfig: pytest.Config) -> None:
    hadolint = tool("hadolint", pytestconfig)
    completed = run([hadolint, "--no-color", "--failure-threshold", "info", DOCKERFILE])
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_hadolint_reports_a_bad_dockerfile(pytestconfig: pytest.Config, tmp_path: Path) -> None:
    """hadolint really lints: the mistakes the Dockerfile avoids are reported."""
    hadolint = tool("hadolint", pytestconfig)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install session-events-gateway\nCMD session-gateway serve\n")
    completed = run([hadolint, "--no-color", "--format", "json", bad])
    assert completed.returncode != 0
    codes = {finding["code"] for finding in json.loads(completed.stdout)}
    assert {"DL3007", "DL3013", "DL3042", "DL3025"} <= codes, codes


def test_dockerfile_contract() -> None:
    build, runtime = _stages()
    # Slim Python >= 3.11, the same base in both stages (so the virtualenv's interpreter path holds).
    assert build.base == runtime.base
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", runtime.base)
    assert match and int(match.group(1)) >= 11, runtime.base
    # Wheels are built in the first stage, and the runtime only copies the virtualenv from it.
    assert any("pip wheel" in line and "--wheel-dir /wheels" in line for line in build.of("RUN"))
    assert runtime.of("COPY") == ["--from=build /opt/gateway /opt/gateway"]
    # No build tools, package managers or pip installs in the final stage: only the user is created.
    for line in runtime.of("RUN"):
        assert not re.search(r"\b(apt-get|apt|pip|gcc|make|curl|wget)\b", line), line
        assert "useradd" in line or "groupadd" in line, line
    assert runtime.of("USER") == [f"{IMAGE_UID}:{IMAGE_UID}"]
    assert runtime.of("WORKDIR") == ["/"]
    assert _exec_form(runtime.of("ENTRYPOINT")[-1]) == ["session-gateway", "serve"]
    assert runtime.of("EXPOSE") == ["8080 9090"]
    env: dict[str, str] = {}
    for line in runtime.of("ENV"):
        env.update(env_pairs(line))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing may write .pyc files on a read-only root
    assert env["GATEWAY_INTERNAL_PORT"] == "9090"
    assert unknown_settings(set(env)) == set()
    (healthcheck,) = runtime.of("HEALTHCHECK")
    command = _exec_form(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]  # the image has no curl or wget
    assert "/livez" in command[2] and "GATEWAY_INTERNAL_PORT" in command[2] and "'9090'" in command[2]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the .dockerignore starts by excluding everything"
    included = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    build, _ = _stages()
    sources = [src for line in build.of("COPY") for src in shlex.split(line)[:-1] if not src.startswith("--")]
    assert sources and set(sources) == included, (sources, included)
    assert {"**/__pycache__", "**/*.egg-info"} <= set(patterns)


# --- the same install as the Dockerfile's build stage ---------------------------------------------------


def _map_paths(text: str, root: Path) -> str:
    """``text`` with the image's paths (``/src``, ``/src[extra]``, ``/wheels/...``) under ``root``."""
    for image_path in IMAGE_PATHS:
        text = re.sub(rf"(?<![\w./-]){re.escape(image_path)}(?=[/\s:\[]|$)", str(root) + image_path, text)
    return text


@dataclass
class Installed:
    root: Path

    @property
    def venv(self) -> Path:
        return self.root / "opt" / "gateway"


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """The build stage carried out here: its COPY lines copy from the repository, its RUN lines run in sh."""
    # Not under /tmp (the gateway gets a fresh tmpfs there) and readable by the image's user.
    root = Path(tempfile.mkdtemp(prefix="seg-image-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        build, _ = _stages()
        env = {name: value for name, value in os.environ.items() if not name.startswith(("GATEWAY_", "PIP_"))}
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"  # `python` >= 3.11
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        for instruction in build.instructions:
            if instruction.keyword == "ENV":
                env.update(env_pairs(instruction.arguments))
            elif instruction.keyword == "COPY":
                *sources, destination = shlex.split(instruction.arguments)
                target = Path(_map_paths(destination, root))
                for source in sources:
                    origin = REPO / source
                    into = target / origin.name if destination.endswith("/") else target
                    into.parent.mkdir(parents=True, exist_ok=True)
                    if origin.is_dir():
                        shutil.copytree(origin, into, ignore=ignore)
                    else:
                        shutil.copy2(origin, into)
            elif instruction.keyword == "RUN":
                command = _map_paths(instruction.arguments, root)
                print(f"[image] RUN {command}", flush=True)
                completed = subprocess.run(
                    ["sh", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=1200, check=False
                )
                assert completed.returncode == 0, f"RUN {command} failed:\n{completed.stdout}\n{completed.stderr}"
            else:
                raise AssertionError(f"the build stage uses {instruction.keyword}, which this test cannot replay")
        assert (root / "opt" / "gateway" / "bin" / "session-gateway").exists()
        yield Installed(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_build_stage_leaves_only_wheels_and_the_virtualenv(installed: Installed) -> None:
    wheels = sorted(path.name for path in (installed.root / "wheels").iterdir())
    assert any(name.startswith("session_events_gateway-") and name.endswith(".whl") for name in wheels)
    assert all(name.endswith(".whl") for name in wheels), wheels
    # The project is installed from its wheel (not as an editable checkout), with its package data.
    site = next((installed.venv / "lib").glob("python3.*/site-packages"))
    assert (site / "gateway" / "dev" / "static" / "demo.html").exists()
    assert (site / "schemas" / "session-status.schema.json").exists()
    assert not list(site.glob("__editable__*"))
    assert list((site / "gateway" / "__pycache__").glob("*.pyc")), "bytecode must be compiled at build time"


# --- running it as the pod would -------------------------------------------------------------------


def _sandbox(command: list[str]) -> list[str]:
    """``command`` as the chart's securityContext runs the image: UID/GID 10001, no capabilities, no
    new privileges, root filesystem read-only, a fresh writable tmpfs at /tmp (the emptyDir)."""
    for binary in ("unshare", "setpriv", "mount"):
        assert shutil.which(binary), f"{binary} (util-linux) is needed to run the image contract test"
    setup = (
        "mount -o bind,remount,ro / && mount -t tmpfs -o mode=1777,size=64m tmpfs /tmp && "
        f'exec setpriv --reuid={IMAGE_UID} --regid={IMAGE_UID} --clear-groups --no-new-privs --inh-caps=-all -- "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sandbox", *command]


def _runtime_env(installed: Installed, **overrides: str) -> dict[str, str]:
    _, runtime = _stages()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    for line in runtime.of("ENV"):
        for name, value in env_pairs(line).items():
            env[name] = _map_paths(value.replace("$PATH", env["PATH"]), installed.root)
    env.update(overrides)
    return env


def test_sandbox_is_read_only_except_tmp(installed: Installed) -> None:
    probe = (
        "import os, sys\n"
        "results = {}\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        open(os.path.join(path, 'probe'), 'w').close()\n"
        "        results[path] = 'written'\n"
        "    except OSError as error:\n"
        "        results[path] = error.strerror\n"
        "print(os.getuid(), os.getgid(), os.getcwd(), results)\n"
    )
    venv_python = str(installed.venv / "bin" / "python")
    targets = ["/", "/tmp", str(installed.venv), str(REPO), "/var/tmp"]
    completed = subprocess.run(
        _sandbox([venv_python, "-c", probe, *targets]),
        cwd="/",
        env=_runtime_env(installed),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    uid, gid, cwd, results = completed.stdout.split(" ", 3)
    assert (uid, gid, cwd) == (str(IMAGE_UID), str(IMAGE_UID), "/")
    assert "'/tmp': 'written'" in results
    for target in ("/", str(installed.venv), "/var/tmp"):
        assert f"'{target}': 'Read-only file system'" in results, results
    # The checkout is read-only too, or not there at all when it lives under /tmp (the fresh tmpfs hides it).
    hidden = "No such file or directory" if str(REPO).startswith("/tmp/") else "Read-only file system"
    assert f"'{REPO}': '{hidden}'" in results, results


async def _wait_http(url: str, status: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the gateway exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                response = await client.get(url)
                last = (response.status_code, response.text[:200])
                if response.status_code == status:
                    return
            except httpx.HTTPError as error:
                last = error
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never answered {status}; last: {last}\n{log.read_text()[-4000:]}")


async def test_installed_image_serves_a_stream_unprivileged_on_a_read_only_root(
    installed: Installed, kafka_bootstrap: str, tmp_path: Path
) -> None:
    key = rsa_key("image-key")
    jwks = JwksServer(keys=[key]).start()
    topic = unique_topic()
    await create_topic(kafka_bootstrap, topic, partitions=3, compacted=True)
    session_id = f"image-{uuid.uuid4().hex[:10]}"
    await produce(kafka_bootstrap, topic, [(session_id.encode(), event_bytes(session_id, "tenant-a", "active"))])

    public_port, internal_port = free_port(), free_port()
    env = _runtime_env(
        installed,
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(public_port),
        GATEWAY_INTERNAL_HOST="127.0.0.1",
        GATEWAY_INTERNAL_PORT=str(internal_port),
        GATEWAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        GATEWAY_KAFKA_TOPIC=topic,
        GATEWAY_JWKS_URL=jwks.url,
        GATEWAY_JWT_ISSUER=ISSUER,
        GATEWAY_JWT_AUDIENCE=AUDIENCE,
        GATEWAY_KAFKA_HEALTH_INTERVAL="1",
        GATEWAY_DRAIN_SECONDS="1",
        GATEWAY_LOG_FORMAT="text",
    )
    _, runtime = _stages()
    entrypoint = _exec_form(runtime.of("ENTRYPOINT")[-1])
    log = tmp_path / "gateway.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            _sandbox(entrypoint), cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    public = f"http://127.0.0.1:{public_port}"
    try:
        await _wait_http(f"{public}/livez", 200, process, log, timeout=60)
        # Ready = replayed and keys loaded: /readyz is on the internal port once it exists (this round).
        has_internal_port = "internal_port" in GatewaySettings.model_fields
        readyz = f"http://127.0.0.1:{internal_port}/readyz" if has_internal_port else f"{public}/readyz"
        await _wait_http(readyz, 200, process, log, timeout=60)
        token = mint(key, tenant="tenant-a", session=session_id)
        stream_url = f"{public}/session/{session_id}/events"
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0)) as client,
            sse(client, stream_url, params={"token": token}) as stream,
        ):
            assert stream.status == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            first = await stream.next_event()
            assert first is not None and first.json()["status"] == "active"
            await produce(
                kafka_bootstrap, topic, [(session_id.encode(), event_bytes(session_id, "tenant-a", "completed"))]
            )
            second = await stream.next_event(timeout=20)
            assert second is not None
            assert (second.json()["id"], second.json()["status"]) == (session_id, "completed")
            assert await stream.next_event(timeout=20) is None  # ends after a terminal status
        if has_internal_port:
            # The image's HEALTHCHECK asks the internal port's /livez (added this round).
            (healthcheck,) = runtime.of("HEALTHCHECK")
            check = _exec_form(healthcheck.split(" CMD ", 1)[1])
            completed = subprocess.run(
                _sandbox(check), cwd="/", env=env, capture_output=True, text=True, timeout=30, check=False
            )
            assert completed.returncode == 0, completed.stderr
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        jwks.stop()
    logs = log.read_text(errors="replace")
    assert process.returncode == 0, logs[-4000:]
    assert "Read-only file system" not in logs and "Permission denied" not in logs, logs[-4000:]


def test_every_package_is_in_the_distribution() -> None:
    """pyproject.toml lists the packages explicitly; a package missing there is missing from the image and
    every installed copy (the source checkout would still work, so only this catches it early)."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for top in ("gateway", "consumers", "schemas")
        for init in (root / top).rglob("__init__.py")
    }
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
