"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import re

import httpx

from tests.gateway_support import GatewayProcess
from tests.kafka_support import event_bytes, produce


def stream_requests(gateway: GatewayProcess, session_id: str) -> list[int]:
    """Status of every request for ``session_id``'s stream, in order, from the gateway's own access log."""
    pattern = re.compile(rf'"GET /session/{re.escape(session_id)}/events\S* HTTP/1\.1" (\d{{3}})')
    return [int(match.group(1)) for match in pattern.finditer(gateway.logs())]


async def publish(bootstrap: str, topic: str, session_id: str, tenant: str, status: str) -> None:
    await produce(bootstrap, topic, [(session_id.encode(), event_bytes(session_id, tenant, status))])


async def metrics_text(gateway: GatewayProcess) -> str:
    """The gateway's Prometheus text (the internal port when the gateway has one, else the public one)."""
    base = getattr(gateway, "internal_url", None) or gateway.url
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"{base}/metrics")
    assert response.status_code == 200, f"/metrics answered {response.status_code}"
    return response.text


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        if metric == (f"{name}{{{wanted}}}" if wanted else name):
            return float(value)
    return 0.0
