"""Issue 25.10: the start-up scripts as a new user meets them, run for real.

- ``scripts/kafka.sh`` (and so ``make run``/``make test``) without Java or Maven on PATH says how to
  install the missing tool on this system (from /etc/os-release; other systems through
  ``INSTALL_HINTS_OS_RELEASE``), and checks Java before downloading anything;
- ``make run`` (``scripts/run.sh``) says the first start downloads the broker only when its jars are not
  cached, and its banner's ``watch`` command runs as printed, from any directory, without the
  virtualenv on PATH (the demo page's own command: tests/test_first_hour.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.gateway_support import REPO, clean_env
from tests.kafka_support import free_ports

pytestmark = pytest.mark.timeout(300)

KAFKA_SH = REPO / "scripts" / "kafka.sh"
RUN_SH = REPO / "scripts" / "run.sh"
VENV_BIN = Path(sys.executable).parent


def path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH with every program of /usr/bin and /bin except ``missing`` (and nothing of the virtualenv)."""
    directory = tmp_path / "bin"
    directory.mkdir(exist_ok=True)
    for source in (Path("/usr/local/bin"), Path("/usr/bin"), Path("/bin")):
        if not source.is_dir():
            continue
        for program in source.iterdir():
            target = directory / program.name
            if program.name in missing or target.exists() or target.is_symlink():
                continue
            target.symlink_to(program)
    return str(directory)


def script_env(tmp_path: Path, *missing: str, **overrides: str) -> dict[str, str]:
    env = clean_env(PATH=path_without(tmp_path, *missing))
    env.pop("JAVA_HOME", None)
    env.pop("INSTALL_HINTS_OS_RELEASE", None)
    return {**env, **overrides}


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)


def kafka_env(tmp_path: Path, env: dict[str, str], cache: Path | None = None) -> dict[str, str]:
    port, controller = free_ports(2)
    return {
        **env,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_STATE_DIR": str(tmp_path / "state"),
        "KAFKA_CACHE_DIR": str(cache or tmp_path / "cache"),
    }


OS_RELEASES = {
    "fedora": ('ID=fedora\nVERSION_ID=41\n', "sudo dnf install java-17-openjdk-headless", "sudo dnf install maven"),
    "rocky": ('ID="rocky"\nID_LIKE="rhel fedora"\n', "dnf install java-17-openjdk-headless", "dnf install maven"),
    "ubuntu": ("ID=ubuntu\nID_LIKE=debian\n", "sudo apt-get install openjdk-17-jre-headless", "apt-get install maven"),
    "alpine": ("ID=alpine\n", "sudo apk add openjdk17-jre-headless", "sudo apk add maven"),
    "arch": ("ID=arch\n", "sudo pacman -S jre17-openjdk-headless", "sudo pacman -S maven"),
    "opensuse": ('ID="opensuse-tumbleweed"\nID_LIKE="opensuse suse"\n', "zypper install java-17-openjdk-headless",
                 "zypper install maven"),
    "unknown": ("ID=plan9\n", "https://adoptium.net", "https://maven.apache.org/install.html"),
}  # fmt: skip


def test_without_java_kafka_sh_says_how_to_install_it_here_and_downloads_nothing(tmp_path: Path) -> None:
    env = kafka_env(tmp_path, script_env(tmp_path, "java"))
    result = run(["bash", str(KAFKA_SH), "start"], env)
    assert result.returncode == 1, result
    [line] = result.stderr.splitlines()
    assert line.startswith("[kafka] ERROR: java not found (nor JAVA_HOME): Kafka 4.1.1 needs Java 17 or newer; "), line
    if Path("/etc/os-release").read_text().count("debian"):  # this machine's own system, read as shipped
        assert line.endswith("; install it with: sudo apt-get install openjdk-17-jre-headless"), line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # Java comes first


@pytest.mark.parametrize("system", sorted(OS_RELEASES))
def test_install_hints_per_distribution(tmp_path: Path, system: str) -> None:
    text, java_hint, maven_hint = OS_RELEASES[system]
    (tmp_path / "os-release").write_text(text)
    env = script_env(tmp_path, "java", "mvn", INSTALL_HINTS_OS_RELEASE=str(tmp_path / "os-release"))
    java = run(["bash", str(KAFKA_SH), "start"], kafka_env(tmp_path, env))
    assert java.returncode == 1 and java_hint in java.stderr, java.stderr
    maven = run(["bash", str(KAFKA_SH), "fetch"], kafka_env(tmp_path, env))
    assert maven.returncode == 1, maven
    assert maven.stderr.startswith("[kafka] ERROR: mvn (Maven) not found: it is needed once to download the Kafka "
                                   "broker jars; "), maven.stderr  # fmt: skip
    assert maven_hint in maven.stderr, maven.stderr


def test_kafka_sh_says_whether_the_jars_are_cached(tmp_path: Path) -> None:
    env = clean_env()
    fetched = run(["bash", str(KAFKA_SH), "fetch"], env, timeout=600)  # a no-op when cached, as on every later run
    assert fetched.returncode == 0, fetched.stderr
    assert run(["bash", str(KAFKA_SH), "cached"], env).returncode == 0
    assert run(["bash", str(KAFKA_SH), "cached"], {**env, "KAFKA_CACHE_DIR": str(tmp_path)}).returncode == 1


def run_env(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    gateway, internal, issuer = free_ports(3)
    return {
        **kafka_env(tmp_path, env, Path(env["KAFKA_CACHE_DIR"]) if "KAFKA_CACHE_DIR" in env else None),
        "RUN_GATEWAY_PORT": str(gateway),
        "RUN_INTERNAL_PORT": str(internal),
        "RUN_ISSUER_PORT": str(issuer),
    }


def test_make_run_without_cached_jars_says_the_first_start_downloads_them(tmp_path: Path) -> None:
    env = run_env(tmp_path, script_env(tmp_path, "mvn"))
    result = run(["bash", str(RUN_SH)], env)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    starting = f"[run] starting a local Kafka broker on 127.0.0.1:{env['KAFKA_PORT']}"
    assert f"{starting} (its jars are not cached yet: this first start downloads them)" in lines, lines
    assert any(line.startswith("[kafka] ERROR: mvn (Maven) not found") and "install" in line for line in lines), lines


def test_make_run_with_cached_jars_starts_without_the_download_note_and_its_watch_command_runs(
    tmp_path: Path,
) -> None:
    cache = Path(os.environ.get("KAFKA_CACHE_DIR") or Path.home() / ".cache" / "session-events-gateway")
    assert run(["bash", str(KAFKA_SH), "fetch"], clean_env(), timeout=600).returncode == 0
    env = run_env(tmp_path, script_env(tmp_path, KAFKA_CACHE_DIR=str(cache)))
    stderr_path = tmp_path / "run.stderr"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [*INTERRUPTIBLE, "bash", str(RUN_SH)], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
            cwd=REPO, start_new_session=True,
        )  # fmt: skip
        try:
            banner = read_banner(process, 240, stderr_path)
            starting = [
                line for line in stderr_path.read_text().splitlines() if "starting a local Kafka broker" in line
            ]
            assert starting == [f"[run] starting a local Kafka broker on 127.0.0.1:{env['KAFKA_PORT']}"], starting

            # The watch command as printed: two lines joined by a backslash, an absolute path to the CLI.
            start = next(i for i, line in enumerate(banner) if " watch SESSION_ID " in line)
            assert banner[start].endswith(" \\"), banner[start]
            assert banner[start + 1].lstrip().startswith('--token "$('), banner[start + 1]
            command = banner[start].strip() + "\n" + banner[start + 1]
            program = command.split(" ", 1)[0]
            assert Path(program).is_absolute() and Path(program).name == "session-gateway", command

            session = f"banner-{uuid.uuid4().hex[:8]}"
            bootstrap = f"127.0.0.1:{env['KAFKA_PORT']}"
            publish = [program, "publish", session, "completed", "--tenant", "demo-tenant"]
            published = run(publish, {**clean_env(), "GATEWAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap})
            assert published.returncode == 0, published.stderr
            shell_env = clean_env(PATH=env["PATH"])  # no virtualenv on PATH
            watched = subprocess.run(
                ["bash", "-c", command.replace("SESSION_ID", session)], env=shell_env, cwd=tmp_path,
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert watched.returncode == 0, (watched.stdout, watched.stderr)
            assert "completed" in watched.stdout, watched.stdout
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: run.sh stops what it started
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    assert "[run] stopped" in stderr_path.read_text()


# As from a terminal: Ctrl-C's signal not ignored. (A test runner's worker may ignore SIGINT, and a shell started
# with a signal ignored cannot trap it, so run.sh would never see the Ctrl-C the test sends.)
INTERRUPTIBLE = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])",
]


def read_banner(process: subprocess.Popen[str], timeout: float, stderr_path: Path) -> list[str]:
    """run.sh's stdout up to the banner's last line."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"run.sh ended before its banner:\n{stderr_path.read_text()[-3000:]}")
        lines.append(line.rstrip("\n"))
        if re.search(r"Ctrl-C stops everything", line):
            return lines
    raise AssertionError(f"no banner within {timeout:.0f}s:\n{stderr_path.read_text()[-3000:]}")


def test_keycloak_sh_without_maven_says_how_to_install_it(tmp_path: Path) -> None:
    (tmp_path / "os-release").write_text("ID=fedora\n")
    env = script_env(
        tmp_path,
        "mvn",
        KEYCLOAK_CACHE_DIR=str(tmp_path / "cache"),
        INSTALL_HINTS_OS_RELEASE=str(tmp_path / "os-release"),
    )
    result = run(["bash", str(REPO / "scripts" / "keycloak.sh"), "fetch"], env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "[keycloak] ERROR: mvn (Maven) not found: it is needed once to download Keycloak; "
        "install it with: sudo dnf install maven"
    ]


@pytest.mark.parametrize(
    ("os_release", "hint"),
    [
        ("ID=debian\nVERSION_ID=12\n", "sudo apt-get install openjdk-21-jre-headless (Debian 13 or newer; on Debian 12 "
                                       "use Eclipse Temurin: https://adoptium.net/installation/linux/)"),
        ("ID=ubuntu\nID_LIKE=debian\n", "sudo apt-get install openjdk-21-jre-headless"),
        ('ID="linuxmint"\nID_LIKE="ubuntu debian"\n', "sudo apt-get install openjdk-21-jre-headless"),
    ],
)  # fmt: skip
def test_the_java_21_hint_is_true_to_the_release(tmp_path: Path, os_release: str, hint: str) -> None:
    """Keycloak needs Java 21, which Debian 12 does not package (this machine has one, so the function is run)."""
    (tmp_path / "os-release").write_text(os_release)
    script = f"source {REPO / 'scripts' / 'install-hints.sh'}; install_hint java21"
    result = run(["bash", "-c", script], {**clean_env(), "INSTALL_HINTS_OS_RELEASE": str(tmp_path / "os-release")})
    assert result.stdout == f"install it with: {hint}\n"
