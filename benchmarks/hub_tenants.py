"""The hub's cost per record for session streams, with and without tenant streams of other tenants.

``python -m benchmarks.hub_tenants`` drives ``consumers.hub.Hub.publish`` in this process (no sockets,
no Kafka): 100 sessions x 100 subscribers that only count, records of those sessions, and 0 or N
tenant subscribers (``GET /tenant/events``) of other tenants. It reports deliveries per CPU-second
(``time.process_time``), alternating the two set-ups over several rounds so that the machine's load
hits both alike. It isolates what the tenant index adds to the hot path, one dict lookup per record,
which the fan-out benchmark (``--tenant-streams``) measures end to end under much more noise.
"""

from __future__ import annotations

import argparse
import statistics
import time

from consumers.hub import Hub
from consumers.store import Transition
from gateway.streams.sse import encode_transition
from schemas import SessionStatus


class Counting:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def deliver(self, frame: bytes, record_timestamp_ms: int, terminal: bool) -> None:
        self.count += 1

    def session_deleted(self) -> None:
        return None

    def close(self, reason: str) -> None:
        return None


class Watching:
    """A tenant subscriber that must never be called (its tenant has no records here)."""

    def transition(self, transition: Transition, record_timestamp_ms: int) -> None:
        raise AssertionError("a tenant subscriber got another tenant's record")

    def deleted(self, session_id: str, partition: int, offset: int, record_timestamp_ms: int) -> None:
        raise AssertionError("a tenant subscriber got another tenant's deletion")

    def close(self, reason: str) -> None:
        return None


def run(tenant_streams: int, sessions: int, subscribers: int, records: int) -> float:
    hub = Hub(encode_transition)
    counters = [Counting() for _ in range(subscribers)]
    ids = [f"session-{index}" for index in range(sessions)]
    for session_id in ids:
        for counter in counters:
            hub.subscribe(session_id, counter)
    for index in range(tenant_streams):
        hub.subscribe_tenant(f"other-{index}", Watching())
    transitions = [Transition(ids[i % sessions], SessionStatus.FETCHED, 1, i % 12, i) for i in range(records)]
    start = time.process_time()
    delivered = 0
    for transition in transitions:
        delivered += hub.publish(transition, 0, "bench-tenant")
    spent = time.process_time() - start
    assert delivered == records * subscribers == sum(c.count for c in counters)
    return delivered / spent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hub_tenants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenant-streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--subscribers", type=int, default=100, help="session subscribers per session")
    args = parser.parse_args()
    results: dict[int, list[float]] = {0: [], args.tenant_streams: []}
    for _ in range(args.rounds):
        for count, rates in results.items():
            rates.append(run(count, 100, args.subscribers, args.records))
    for count, rates in results.items():
        print(
            f"{count:>4} tenant streams: median {statistics.median(rates):,.0f} deliveries per CPU-second "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {len(rates)} rounds of {args.records:,} records x "
            f"{args.subscribers} subscribers)"
        )
    before, after = (statistics.median(results[c]) for c in results)
    print(f"ratio with/without: {after / before:.3f}")


if __name__ == "__main__":
    main()
