"""``python -m benchmarks.tracing_cost``: CPU per applied record and delivery with tracing off and on, in process.

The worst case for tracing's share: each record reaches one stream (in the fan-out benchmark one record
reaches 100, so a per-record cost is spread over 100 deliveries). Records are applied by the real
``BatchApplier`` (decode, store, hub, the SSE encoding) in batches of 500, delivered to a subscriber that
keeps nothing; tracing "on" is the SDK from ``OTEL_*`` as the gateway builds it, exporting over OTLP/HTTP
to ``benchmarks.otlp_sink``. Reports process CPU time per record (best of the rounds, interleaved), also
with every record carrying a ``traceparent`` (the producer's context is read from its headers).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from aiokafka.structs import ConsumerRecord

from benchmarks.otlp_sink import OtlpSink
from consumers.consuming.batch import BatchApplier
from consumers.hub import Hub
from consumers.log_aggregation import ReasonFolding
from consumers.progress import PartitionProgress
from consumers.settings import ConsumerSettings
from consumers.store import SessionStore
from consumers.tracing import from_environment
from consumers.tracing.otel import Tracing
from gateway.streams.sse import encode_transition

BATCH = 500


class NullSubscriber:
    __slots__ = ()

    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        pass

    def session_deleted(self) -> None:
        pass

    def close(self, reason: str) -> None:
        pass


def records(count: int, round_index: int, traceparent: bool) -> list[ConsumerRecord[bytes, bytes]]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    made = []
    for index in range(count):
        session = f"r{round_index}-s{index}"
        value = json.dumps({"id": session, "tenantId": "t", "status": "active", "updatedAt": now}).encode()
        headers = (
            [("traceparent", f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00".encode())] if traceparent else []
        )
        made.append(ConsumerRecord("bench", 0, index, 0, 0, session.encode(), value, None, 0, len(value), headers))
    return made


def run_round(tracing: Tracing | None, count: int, round_index: int, traceparent: bool) -> float:
    settings = ConsumerSettings(kafka_topic="bench")
    store = SessionStore(3_600_000, 3_600_000, 10_000_000)
    hub = Hub(encode_transition)
    applier = BatchApplier(
        settings, ("bench",), store, hub, PartitionProgress(), None, ReasonFolding(logging.getLogger("bench")), tracing
    )
    batch = records(count, round_index, traceparent)
    subscriber = NullSubscriber()
    for record in batch:
        hub.subscribe(record.key.decode(), subscriber)
    gc.collect()
    started = time.process_time()
    for start in range(0, count, BATCH):
        applier.apply("bench", batch[start : start + BATCH])
    return (time.process_time() - started) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracing_cost")
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=0.01)
    args = parser.parse_args()
    sink = OtlpSink().start()
    os.environ.update(sink.gateway_env(args.ratio))
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    tracing = from_environment()
    assert tracing is not None
    modes: dict[str, tuple[Tracing | None, bool]] = {
        "off": (None, False),
        f"on, ratio {args.ratio}": (tracing, False),
        "off, records with traceparent": (None, True),
        f"on, ratio {args.ratio}, records with an unsampled traceparent": (tracing, True),
    }
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_index in range(args.rounds):
        for mode, (made, traceparent) in modes.items():
            results[mode].append(run_round(made, args.records, round_index, traceparent))
    tracing.shutdown()
    sink.stop()
    base = min(results["off"])
    report: dict[str, Any] = {}
    for mode, values in results.items():
        best = min(values)
        report[mode] = {"us_per_record_best": round(best, 2), "vs_off": f"{(best / base - 1) * 100:+.1f}%"}
        print(f"{mode:60s} {best:7.2f} us/record (best of {len(values)})  {(best / base - 1) * 100:+.1f}% vs off")
    print(f"spans exported: {sink.requests} requests, {sink.bytes} bytes; load avg {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
