"""``serve --workers 2``: two worker processes on the same ports, both serving streams, both draining on SIGTERM.

Which worker served a stream is read from the JSON logs: each worker logs with its own instance id
(``<GATEWAY_INSTANCE_ID>-w<index>``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

from tests.gateway_support import GatewayProcess, JwksServer, gateway_env, mint, rsa_key, sample, scrape
from tests.kafka_support import create_topic, event_bytes, produce, unique_topic, wait_until
from tests.support import new_session

pytestmark = pytest.mark.timeout(150)

TENANT = "tenant-a"
STREAMS = 40
DRAIN = 2.0


@pytest.fixture(scope="module")
def jwks() -> Iterable[JwksServer]:
    server = JwksServer(keys=[rsa_key("workers")]).start()
    yield server
    server.stop()


def worker_children(pid: int) -> list[int]:
    """The worker processes of the supervising parent (spawned multiprocessing children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(int(child))
    return found


def log_entries(gateway: GatewayProcess) -> list[dict[str, object]]:
    entries = []
    for line in gateway.logs().splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def caught_up(gateway: GatewayProcess) -> set[str]:
    return {str(e.get("instance")) for e in log_entries(gateway) if "store caught up" in str(e.get("message", ""))}


async def read_stream(client: httpx.AsyncClient, url: str, token: str, first: asyncio.Event) -> tuple[int, list[str]]:
    """Opens a stream (retrying while a worker still replays) and reads it to its end; returns status and data lines."""
    for _ in range(100):
        async with client.stream("GET", url, params={"token": token}) as response:
            if response.status_code == 503:
                await asyncio.sleep(0.1)
                continue
            data: list[str] = []
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data.append(line)
                    first.set()
            return response.status_code, data
    return 503, []


def two_workers(kafka_bootstrap: str, topic: str, jwks: JwksServer, log: Path, **env: str) -> GatewayProcess:
    """A ``serve --workers 2`` gateway process (not started yet)."""
    return GatewayProcess(gateway_env(kafka_bootstrap, topic, jwks, GATEWAY_WORKERS="2", **env), log)


async def ready_workers(gateway: GatewayProcess) -> list[int]:
    """Waits until the started gateway is ready; its two worker pids."""
    await gateway.wait_ready()
    assert gateway.process is not None
    workers = worker_children(gateway.process.pid)
    assert len(workers) == 2, f"worker processes: {workers}\n{gateway.logs()[-3000:]}"
    return workers


async def open_streams(
    client: httpx.AsyncClient, gateway: GatewayProcess, sessions: list[str], token: str
) -> list[asyncio.Task[tuple[int, list[str]]]]:
    """Opens one stream per session; returns once every stream got its first event (tasks read on to the end)."""
    firsts = [asyncio.Event() for _ in sessions]
    reads = [
        asyncio.create_task(read_stream(client, f"{gateway.url}/session/{s}/events", token, first))
        for s, first in zip(sessions, firsts, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*(first.wait() for first in firsts)), 30)
    return reads


async def active_sessions_on_two_workers(
    kafka_bootstrap: str, jwks: JwksServer, tmp_path: Path, instance: str
) -> tuple[str, list[str], GatewayProcess, str]:
    """A topic with STREAMS active sessions, a two-worker gateway for it (not started yet; workers log as
    ``<instance>-w<i>``) and a token that may open all of them."""
    topic = unique_topic(instance)
    await create_topic(kafka_bootstrap, topic, partitions=3)
    sessions = [new_session(f"{instance}-{i}") for i in range(STREAMS)]
    await produce(kafka_bootstrap, topic, [(s.encode(), event_bytes(s, TENANT, "active")) for s in sessions])
    gateway = two_workers(
        kafka_bootstrap,
        topic,
        jwks,
        tmp_path / "workers.log",
        GATEWAY_INSTANCE_ID=instance,
        GATEWAY_DRAIN_SECONDS=str(DRAIN),
        GATEWAY_MAX_CONNECTIONS_PER_SUBJECT="1000",
    )
    return topic, sessions, gateway, mint(jwks.keys[0])


async def test_two_workers_serve_streams_and_drain_on_sigterm(
    kafka_bootstrap: str, jwks: JwksServer, tmp_path: Path
) -> None:
    _, sessions, gateway, token = await active_sessions_on_two_workers(kafka_bootstrap, jwks, tmp_path, "wtest")
    gateway.start()
    try:
        workers = await ready_workers(gateway)
        assert gateway.process is not None
        # /readyz answers from whichever worker the kernel picks, yet is 200 only once both workers caught up
        # (before, the first worker's 200 came while the second was still starting, and every stream went
        # to the first). Each worker logs "store caught up" before it reports itself ready.
        assert caught_up(gateway) == {"wtest-w0", "wtest-w1"}, gateway.logs()[-3000:]
        async with httpx.AsyncClient(timeout=5.0) as probe:
            for _ in range(6):  # a few probes, so that both workers are likely to answer one
                report = (await probe.get(f"{gateway.internal_url}/readyz")).json()
                assert report["checks"]["all_workers_ready"] is True, report
        limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), limits=limits) as client:
            reads = await open_streams(client, gateway, sessions, token)
            signalled = time.monotonic()
            gateway.signal(signal.SIGTERM)
            results = await asyncio.wait_for(asyncio.gather(*reads), DRAIN + 10)
        await wait_until(
            lambda: gateway.process is not None and gateway.process.poll() is not None,
            DRAIN + 10,
            lambda: f"the server did not exit after its drain:\n{gateway.logs()[-4000:]}",
        )
        exited_after = time.monotonic() - signalled
        code = gateway.process.returncode
    finally:
        gateway.stop()
    entries = log_entries(gateway)
    closed = Counter(
        str(entry.get("instance"))
        for entry in entries
        if str(entry.get("message", "")).startswith("stream closed") and "reason=draining" in str(entry["message"])
    )
    drained = {str(entry.get("instance")) for entry in entries if "drain finished" in str(entry.get("message", ""))}
    print(f"\n{STREAMS} streams drained per worker: {dict(closed)}; parent exited {code} after {exited_after:.2f}s")
    assert all(status == 200 and data for status, data in results), results
    assert set(closed) == {"wtest-w0", "wtest-w1"}, f"streams per worker: {closed}"
    assert sum(closed.values()) == STREAMS
    assert drained == {"wtest-w0", "wtest-w1"}
    assert code == 0, gateway.logs()[-3000:]
    assert exited_after < DRAIN + 8
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()


async def test_one_scrape_shows_the_whole_pod_whichever_worker_answers(
    kafka_bootstrap: str, jwks: JwksServer, tmp_path: Path
) -> None:
    """With two workers, every scrape of /metrics (whichever worker the kernel hands it to) holds what both
    served: streams opened and ended, events delivered, streams open now; each worker's share is read from
    its own access lines, and both must have served some."""
    topic, sessions, gateway, token = await active_sessions_on_two_workers(kafka_bootstrap, jwks, tmp_path, "mtest")
    gateway.start()
    try:
        await ready_workers(gateway)
        await wait_until(lambda: caught_up(gateway) == {"mtest-w0", "mtest-w1"}, 30, "both workers caught up")
        limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), limits=limits) as client,
            httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)) as probe,
        ):
            reads = await open_streams(client, gateway, sessions, token)
            for _ in range(6):  # new connections: the kernel spreads them over both workers
                now = await scrape(probe, gateway)
                assert sample(now, "gateway_metrics_workers", state="answered") == 2, now
                assert sample(now, "gateway_metrics_workers", state="missing") == 0
                assert sample(now, "gateway_open_streams") == STREAMS
            await produce(kafka_bootstrap, topic, [(s.encode(), event_bytes(s, TENANT, "completed")) for s in sessions])
            results = await asyncio.wait_for(asyncio.gather(*reads), 30)
            delivered = sum(len(data) for _, data in results)
            assert all(status == 200 for status, _ in results), results
            for _ in range(6):
                now = await scrape(probe, gateway)
                assert sample(now, "gateway_streams_opened_total") == STREAMS
                assert sample(now, "gateway_streams_closed_total", reason="terminal") == STREAMS
                assert sample(now, "gateway_events_delivered_total") == delivered
                assert sample(now, "gateway_open_streams") == 0
                assert sample(now, "gateway_store_caught_up") == 1
                assert {sample(now, "gateway_store_sessions", worker=w) for w in ("0", "1")} == {STREAMS}
    finally:
        gateway.stop()
    served = Counter(  # the access line of each stream that got its 200, by the worker that wrote it
        str(entry.get("instance"))
        for entry in log_entries(gateway)
        if entry.get("logger") == "uvicorn.access"
        and "/events?" in str(entry.get("message", ""))
        and str(entry.get("message", "")).endswith(" 200")
    )
    print(f"\nstreams per worker: {dict(served)}")
    assert set(served) == {"mtest-w0", "mtest-w1"} and sum(served.values()) == STREAMS, served


async def test_the_server_is_unready_while_any_worker_cannot_serve(
    kafka_bootstrap: str, jwks: JwksServer, tmp_path: Path
) -> None:
    """One worker drains (SIGTERM to it alone, streams open): the other worker's /readyz turns 503 and says why."""
    topic = unique_topic("workers-ready")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    sessions = [new_session(f"r{i}") for i in range(20)]
    await produce(kafka_bootstrap, topic, [(s.encode(), event_bytes(s, TENANT, "active")) for s in sessions])
    gateway = two_workers(
        kafka_bootstrap,
        topic,
        jwks,
        tmp_path / "ready.log",
        GATEWAY_INSTANCE_ID="wready",
        GATEWAY_DRAIN_SECONDS="8",  # the drained worker stays up (and unready) for a while
        GATEWAY_MAX_CONNECTIONS_PER_SUBJECT="1000",
    )
    token = mint(jwks.keys[0])
    gateway.start()
    try:
        workers = await ready_workers(gateway)
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), limits=limits) as client,
            httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)) as probe,
        ):
            reads = await open_streams(client, gateway, sessions, token)
            os.kill(workers[1], signal.SIGTERM)
            answers: list[tuple[int, object]] = []
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                response = await probe.get(f"{gateway.internal_url}/readyz", headers={"connection": "close"})
                report = response.json()
                answers.append((response.status_code, report.get("reasons")))
                reasons = report.get("reasons") or []
                if response.status_code == 503 and len(reasons) == 1 and "of this server not ready yet" in reasons[0]:
                    break  # the worker that still serves answered: its sibling is not ready
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no worker reported its draining sibling: {answers}")
            assert all(status == 503 for status, _ in answers[-1:]), answers
            # Done: hang up (the draining worker would take its 8 s to close its share of the streams).
            for read in reads:
                read.cancel()
            await asyncio.gather(*reads, return_exceptions=True)
    finally:
        gateway.stop()


READY_STARTS = 4
PROBES_AFTER_READY = 200


async def readyz_status(probe: httpx.AsyncClient, url: str) -> int:
    """One /readyz on a fresh connection: whichever worker the kernel picks answers (0: nobody listens yet)."""
    try:
        response = await probe.get(url, headers={"connection": "close"})
    except httpx.ConnectError:
        await asyncio.sleep(0.05)  # the workers have not bound the port yet
        return 0
    return response.status_code


async def test_readiness_does_not_flap_right_after_the_first_200(
    kafka_bootstrap: str, jwks: JwksServer, tmp_path: Path
) -> None:
    """Right after the pod's first 200, every probe on a fresh connection (either worker) is 200 too.

    A worker used to answer 200 from its own checks as soon as it could serve, but to write its shared slot
    only at its next renewal (up to 0.5 s later); a probe reaching its sibling meanwhile got 503 ("worker 1
    of this server not ready yet"). Probed in a tight loop, that window shows on most starts.
    """
    topic = unique_topic("workers-flap")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    sessions = [new_session(f"f{i}") for i in range(10)]
    await produce(kafka_bootstrap, topic, [(s.encode(), event_bytes(s, TENANT, "active")) for s in sessions])
    flapped: list[dict[int, int]] = []
    for start in range(READY_STARTS):
        gateway = two_workers(
            kafka_bootstrap, topic, jwks, tmp_path / f"flap-{start}.log", GATEWAY_INSTANCE_ID=f"wflap{start}"
        )
        gateway.start()
        try:
            async with httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)) as probe:
                url = f"{gateway.internal_url}/readyz"
                deadline = time.monotonic() + 90
                while await readyz_status(probe, url) != 200:
                    assert gateway.process is not None and gateway.process.poll() is None, gateway.logs()[-3000:]
                    assert time.monotonic() < deadline, f"never ready:\n{gateway.logs()[-3000:]}"
                answers = Counter([await readyz_status(probe, url) for _ in range(PROBES_AFTER_READY)])
        finally:
            gateway.stop()
        probed = Counter(
            str(entry.get("instance"))
            for entry in log_entries(gateway)
            if "/readyz" in str(entry.get("message", "")) and entry.get("logger") == "uvicorn.access"
        )
        assert set(probed) == {f"wflap{start}-w0", f"wflap{start}-w1"}, f"probes per worker: {probed}"
        flapped.append({code: count for code, count in answers.items() if code != 200})
    print(f"\nanswers other than 200 among {PROBES_AFTER_READY} probes right after the first 200, per start: {flapped}")
    assert not any(flapped), f"readiness flapped after the first 200 (status: count, per start): {flapped}"


def _catches(pid: int, sig: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


async def test_a_sigterm_while_the_workers_start_stops_them_cleanly(
    kafka_bootstrap: str, jwks: JwksServer, tmp_path: Path
) -> None:
    """SIGTERM right after the parent installed its handler (it is still starting workers): exit 0, none left.

    It used to reach no worker (the parent then served on, until killed at the end of the grace period), or
    to reach workers that had not set up their own handling yet, whose exit by the signal counted as failed.
    """
    topic = unique_topic("workers-term")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    gateway = two_workers(kafka_bootstrap, topic, jwks, tmp_path / "term.log", GATEWAY_DRAIN_SECONDS="1")
    gateway.start()
    try:
        assert gateway.process is not None
        pid = gateway.process.pid
        deadline = time.monotonic() + 30
        while not _catches(pid, signal.SIGTERM):
            assert gateway.process.poll() is None and time.monotonic() < deadline, gateway.logs()[-3000:]
            time.sleep(0.0005)
        gateway.signal(signal.SIGTERM)
        await wait_until(lambda: gateway.process is not None and gateway.process.poll() is not None, 30)
        assert gateway.process.returncode == 0, gateway.logs()[-3000:]
        # No worker outlived it: nothing listens on its ports any more.
        for url in (gateway.url, gateway.internal_url):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/livez", timeout=2.0)
    finally:
        gateway.stop()


async def test_a_frozen_worker_stops_counting_as_ready(kafka_bootstrap: str, jwks: JwksServer, tmp_path: Path) -> None:
    """SIGSTOP one worker: the other one's /readyz turns 503 naming it; after SIGCONT both are ready again."""
    topic = unique_topic("workers-frozen")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    gateway = two_workers(kafka_bootstrap, topic, jwks, tmp_path / "frozen.log", GATEWAY_INSTANCE_ID="wfrozen")
    gateway.start()
    frozen: int | None = None
    try:
        frozen = (await ready_workers(gateway))[1]
        os.kill(frozen, signal.SIGSTOP)
        async with httpx.AsyncClient(timeout=1.0, limits=httpx.Limits(max_keepalive_connections=0)) as probe:

            async def answer() -> tuple[int, list[str]] | None:
                """One probe on a fresh connection; None when it reached the frozen worker (no answer)."""
                try:
                    response = await probe.get(f"{gateway.internal_url}/readyz", headers={"connection": "close"})
                except httpx.TimeoutException:
                    return None
                return response.status_code, list(response.json().get("reasons") or [])

            answers: list[tuple[int, list[str]] | None] = []
            deadline = time.monotonic() + 15
            while not any(a and a[0] == 503 and "not ready yet" in " ".join(a[1]) for a in answers):
                assert time.monotonic() < deadline, f"the frozen worker still counts as ready: {answers}"
                answers.append(await answer())
            os.kill(frozen, signal.SIGCONT)
            frozen = None
            statuses: list[int | None] = []
            deadline = time.monotonic() + 15
            while statuses[-8:] != [200] * 8:
                assert time.monotonic() < deadline, f"not ready again after SIGCONT: {statuses}"
                result = await answer()
                statuses.append(None if result is None else result[0])
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        gateway.stop()
