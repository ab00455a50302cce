"""The pod-wide exposition of ``serve --workers N`` (pure merge logic; the real two-worker scrape is in
tests/test_workers.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.runtime.metrics_merge import merge


def worker(opened: int, open_now: int, caught_up: int, sessions: int, delays: list[float], lag: float) -> str:
    registry = CollectorRegistry()
    Counter("gateway_streams_opened_total", "opened", registry=registry).inc(opened)
    Counter("gateway_streams_closed_total", "closed", ["reason"], registry=registry).labels("terminal").inc(opened)
    Gauge("gateway_open_streams", "open", registry=registry).set(open_now)
    Gauge("gateway_store_caught_up", "caught up", registry=registry).set(caught_up)
    Gauge("gateway_store_sessions", "sessions", registry=registry).set(sessions)
    Gauge("gateway_consumer_lag_records", "lag", ["partition"], registry=registry).labels("0").set(lag)
    histogram = Histogram("gateway_delivery_delay_seconds", "delay", buckets=(0.01, 1.0), registry=registry)
    for delay in delays:
        histogram.observe(delay)
    return generate_latest(registry).decode()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_counters_and_histograms_add_up_and_gauges_aggregate_as_they_mean() -> None:
    merged = samples(merge([(0, worker(3, 2, 1, 100, [0.005, 0.5], 4.0)), (1, worker(5, 1, 0, 90, [2.0], 7.0))]))
    assert merged[("gateway_streams_opened_total", ())] == 8
    assert merged[("gateway_streams_closed_total", (("reason", "terminal"),))] == 8
    assert merged[("gateway_delivery_delay_seconds_count", ())] == 3
    assert merged[("gateway_delivery_delay_seconds_sum", ())] == 2.505
    assert merged[("gateway_delivery_delay_seconds_bucket", (("le", "0.01"),))] == 1
    assert merged[("gateway_delivery_delay_seconds_bucket", (("le", "1.0"),))] == 2
    assert merged[("gateway_delivery_delay_seconds_bucket", (("le", "+Inf"),))] == 3
    assert merged[("gateway_open_streams", ())] == 3  # summed
    assert merged[("gateway_store_caught_up", ())] == 0  # the pod is caught up only if every worker is
    assert merged[("gateway_consumer_lag_records", (("partition", "0"),))] == 7  # the worst worker
    # A replica's own gauge stays per worker: two stores of 100 and 90 sessions are not 190 sessions.
    assert merged[("gateway_store_sessions", (("worker", "0"),))] == 100
    assert merged[("gateway_store_sessions", (("worker", "1"),))] == 90
    assert ("gateway_store_sessions", ()) not in merged
    assert merged[("gateway_metrics_workers", (("state", "answered"),))] == 2
    assert merged[("gateway_metrics_workers", (("state", "missing"),))] == 0


def test_a_worker_that_did_not_answer_is_counted_missing_and_the_rest_still_add_up() -> None:
    merged = samples(merge([(0, worker(3, 2, 1, 100, [], 0.0))], missing=[1]))
    assert merged[("gateway_streams_opened_total", ())] == 3
    assert merged[("gateway_metrics_workers", (("state", "missing"),))] == 1


def test_the_merge_keeps_help_and_type_lines_a_scraper_reads() -> None:
    text = merge([(0, worker(1, 1, 1, 1, [0.1], 0.0)), (1, worker(1, 1, 1, 1, [0.1], 0.0))]).decode()
    assert "# TYPE gateway_streams_opened_total counter" in text
    assert "# TYPE gateway_delivery_delay_seconds histogram" in text
    assert "# TYPE gateway_open_streams gauge" in text
    assert "# HELP gateway_open_streams open" in text
