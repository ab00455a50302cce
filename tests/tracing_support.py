"""A real trace collector for the tracing tests: Jaeger all-in-one (in-memory storage), on free loopback ports.

The binary is built from Jaeger's Go module by ``scripts/deploy-tools.sh path jaeger`` (like helm, cached
under ``~/.cache/session-events-gateway/tools``; a fresh clone builds it on first use). It receives OTLP over
HTTP and gRPC and answers Jaeger's query API, through which the tests read what the gateway exported.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.kafka_support import free_ports

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    enable_tracing: false  # Jaeger traces itself to localhost:4317 otherwise: that port may be anybody's
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@dataclass
class Jaeger:
    binary: Path
    directory: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def otlp_http(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp_http']}"

    @property
    def otlp_grpc(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp_grpc']}"

    @property
    def query(self) -> str:
        return f"http://127.0.0.1:{self.ports['query']}"

    @property
    def log_path(self) -> Path:
        return self.directory / "jaeger.log"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Jaeger:
        names = ("query", "query_grpc", "otlp_grpc", "otlp_http")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        config = self.directory / "jaeger.yaml"
        config.write_text(CONFIG.format(**self.ports))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(self.binary), "--config", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"jaeger exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
                try:
                    response = await client.get(f"{self.query}/api/services")
                    if response.status_code == 200:
                        return
                    last = response.status_code
                except httpx.HTTPError as error:
                    last = error
                await asyncio.sleep(0.2)
        raise AssertionError(f"jaeger's query API never answered; last: {last}\n{self.logs()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as Jaeger's query API gives it (spans, processes), or None if it has none (yet)."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{self.query}/api/traces/{trace_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        data = response.json().get("data") or []
        return data[0] if data else None

    async def find_traces(self, service: str, operation: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"service": service, "limit": limit, "lookback": "1h"}
        if operation:
            params["operation"] = operation
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{self.query}/api/traces", params=params)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        traces: list[dict[str, Any]] = response.json().get("data") or []
        return traces


def tags(span: dict[str, Any]) -> dict[str, Any]:
    """A Jaeger span's tags (attributes) by name."""
    return {tag["key"]: tag["value"] for tag in span.get("tags", [])}


def parent_span_id(span: dict[str, Any]) -> str | None:
    for reference in span.get("references", []):
        if reference.get("refType") == "CHILD_OF":
            value: str = reference["spanID"]
            return value
    return None


async def wait_for_spans(jaeger: Jaeger, trace_id: str, operations: set[str], timeout: float = 30.0) -> dict[str, Any]:
    """The trace once it holds a span of each of ``operations`` (spans arrive in batches)."""
    deadline = time.monotonic() + timeout
    found: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        found = await jaeger.trace(trace_id)
        if found is not None and operations <= {span["operationName"] for span in found["spans"]}:
            return found
        await asyncio.sleep(0.3)
    seen = sorted({span["operationName"] for span in found["spans"]}) if found else []
    raise AssertionError(f"trace {trace_id} never held {sorted(operations)}; it holds {seen}\n{jaeger.logs()[-2000:]}")
