"""``/metrics`` for the whole pod when it runs several workers (``serve --workers N``).

The workers share the internal port, so a scrape reaches whichever worker the kernel picks. Each
worker therefore also serves its own exposition on a Unix socket in a directory the supervising
parent creates (owner-only); the worker that takes a scrape asks its siblings there, all at once and
each for at most ``TIMEOUT`` seconds, and answers with the merge (``metrics_merge``). Nothing is added
to the hot path: the merge happens at scrape time only. See docs/operations.md ("Scaling").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from prometheus_client import generate_latest

from gateway.runtime.metrics_merge import merge

log = logging.getLogger("gateway.runtime.pod_metrics")

TIMEOUT = 1.0  # seconds a scrape waits for a sibling; a frozen worker must not stall the scrape
MAX_EXPOSITION_BYTES = 16 * 1024 * 1024


def socket_path(directory: Path, index: int) -> Path:
    return directory / f"worker-{index}.sock"


class PodMetrics:
    """This worker's part: its socket for the siblings, and the merged answer to a scrape."""

    def __init__(self, directory: Path, index: int, count: int) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = socket_path(self.directory, self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by this worker's predecessor
        self._server = await asyncio.start_unix_server(self._answer, path=str(path))
        path.chmod(0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(generate_latest())
            await writer.drain()
        finally:
            writer.close()

    async def exposition(self) -> bytes:
        """The pod's metrics: this worker's own and every sibling's that answered in time, merged."""
        siblings = [index for index in range(self.count) if index != self.index]
        answers = await asyncio.gather(*(self._ask(index) for index in siblings))
        texts = [(self.index, generate_latest().decode())]
        missing = []
        for index, text in zip(siblings, answers, strict=True):
            if text is None:
                missing.append(index)
            else:
                texts.append((index, text))
        return merge(sorted(texts), missing)

    async def _ask(self, index: int) -> str | None:
        try:
            async with asyncio.timeout(TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(str(socket_path(self.directory, index)))
                try:
                    data = await reader.read(MAX_EXPOSITION_BYTES)
                    while data and not reader.at_eof() and len(data) < MAX_EXPOSITION_BYTES:
                        data += await reader.read(MAX_EXPOSITION_BYTES - len(data))
                finally:
                    writer.close()
            return data.decode()
        except (OSError, TimeoutError, UnicodeDecodeError) as error:
            log.warning("worker %d did not answer for the pod's metrics: %s", index, type(error).__name__)
            return None
