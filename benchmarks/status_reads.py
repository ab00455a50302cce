"""Benchmark 7's load: status reads (``GET /session/{id}``) as fast as keep-alive connections answer them.

``python -m benchmarks.status_reads PORT PATH TOKEN CONNECTIONS SECONDS`` runs one load process: each of
CONNECTIONS connections (uvloop, raw streams, no HTTP client library) sends one read, reads its whole answer
(head and ``content-length`` body), and sends the next, until SECONDS have passed; then it prints one JSON
line: answers by status, reconnects, and the seconds it ran. The orchestrator (``benchmarks.run``,
``bench_status``) runs these beside the server and divides the answers by the server's CPU time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

_LENGTH = b"content-length:"


async def _connection(port: int, request: bytes, deadline: float, counts: Counter[int], stats: Counter[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            start = lower.find(_LENGTH)
            if start >= 0:
                end = lower.index(b"\r\n", start)
                length = int(lower[start + len(_LENGTH) : end])
                if length:
                    await reader.readexactly(length)
            counts[int(head[9:12])] += 1
            if b"connection: close" in lower:
                stats["reconnects"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def run(port: int, path: str, token: str, connections: int, seconds: float) -> dict[str, object]:
    request = f"GET {path}?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n".encode()
    counts: Counter[int] = Counter()
    stats: Counter[str] = Counter()
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(_connection(port, request, deadline, counts, stats) for _ in range(connections)))
    return {"statuses": dict(counts), "reconnects": stats["reconnects"], "seconds": time.monotonic() - started}


def main(argv: list[str]) -> None:
    import uvloop

    port, path, token, connections, seconds = argv
    result = uvloop.run(run(int(port), path, token, int(connections), float(seconds)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
