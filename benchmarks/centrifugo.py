"""Centrifugo v6.9.1 as a peer in ``python -m benchmarks``: its binary, its config, its records, its streams.

Centrifugo is the fastest peer we know that consumes Kafka and serves SSE. It is built from its Go module
and cached by ``scripts/deploy-tools.sh path centrifugo`` (like helm for the deployment tests), and
configured as a platform team would to serve our use case: its Kafka consumer in publication-data mode
(the record value is published as is, the channel comes from the ``centrifugo-channels`` header), the
unidirectional SSE transport (``uni_sse``), RS256 tokens verified against the same JWKS endpoint, and a
server-side subscription from the token's ``channels`` claim (one channel per session id). See
benchmarks/README.md ("Centrifugo").
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from benchmarks.common import AUDIENCE, ISSUER, REPO, http_get, log

VERSION = "v6.9.1"
CHANNELS_HEADER = "centrifugo-channels"
HANDLER = "/connection/uni_sse"
HEALTH = "/health"
PROCESSED_METRIC = "centrifugo_consumers_messages_processed_total"
# App-level pings (``data: {}``) every 25 s by default would be counted as deliveries by the load
# processes; no benchmark keeps a server longer than this, so none is sent while measuring.
PING_INTERVAL = "600s"


def binary() -> Path:
    """The centrifugo binary, built from its Go module on first use (a few minutes) and cached."""
    completed = subprocess.run(
        ["bash", str(REPO / "scripts" / "deploy-tools.sh"), "path", "centrifugo"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={"CENTRIFUGO_VERSION": VERSION, **_path_env()},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"could not build centrifugo {VERSION}:\n{completed.stderr[-3000:]}")
    path = Path(completed.stdout.strip().splitlines()[-1])
    version = subprocess.run([str(path), "version"], capture_output=True, text=True, timeout=30, check=False)
    log(f"centrifugo: {path} ({version.stdout.strip() or version.stderr.strip()})")
    return path


def _path_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    if "/usr/local/go/bin" not in env.get("PATH", ""):
        env["PATH"] = env.get("PATH", "") + ":/usr/local/go/bin"
    return env


def config(port: int, bootstrap: str, topic: str, jwks_url: str, group: str) -> dict[str, Any]:
    """Centrifugo's configuration for one benchmark server (v6 keys; defaults wherever they do the job)."""
    return {
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "info"},
        "client": {
            "token": {"jwks_public_endpoint": jwks_url, "issuer": ISSUER, "audience": AUDIENCE},
            "ping_interval": PING_INTERVAL,
        },
        "http_api": {"key": secrets.token_hex(16)},
        "uni_sse": {"enabled": True},
        "health": {"enabled": True},
        "prometheus": {"enabled": True},
        "consumers": [
            {
                "name": "sessions",
                "enabled": True,
                "type": "kafka",
                "kafka": {
                    "brokers": [bootstrap],
                    "topics": [topic],
                    "consumer_group": group,
                    "publication_data_mode": {"enabled": True, "channels_header": CHANNELS_HEADER},
                },
            }
        ],
    }


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")
    return path


def channel(session_id: str) -> str:
    """The channel of a session: its id (Centrifugo's default namespace; a record header names it)."""
    return session_id


def record_headers(session_id: str) -> list[tuple[str, bytes]]:
    """The headers publication-data mode needs on a status record of ``session_id``."""
    return [(CHANNELS_HEADER, channel(session_id).encode())]


def request(session_id: str, token: str, host: str, port: int) -> bytes:
    """What an ``EventSource`` sends to uni_sse: the connect command (with the token) in ``cf_connect``."""
    connect = urllib.parse.quote(json.dumps({"token": token}, separators=(",", ":")), safe="")
    return (
        f"GET {HANDLER}?cf_connect={connect} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Accept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n"
        "User-Agent: session-events-bench/1\r\n"
        "\r\n"
    ).encode()


def processed(port: int) -> int:
    """Records the Kafka consumer has handled so far (its Prometheus counter)."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        return -1
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(PROCESSED_METRIC):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def wait_caught_up(port: int, records: int, timeout: float = 120.0) -> float:
    """Waits until the consumer joined its group and handled the ``records`` already in the topic.

    Before that, records produced by a benchmark could be read late (group join, rebalance) and the
    first window would measure Kafka's group protocol, not the server.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if processed(port) >= records:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"centrifugo's Kafka consumer did not reach {records} records in {timeout:.0f}s")
