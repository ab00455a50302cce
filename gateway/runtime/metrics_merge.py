"""One pod-wide exposition from the expositions of its workers (``serve --workers N``).

Counters and histograms add up over workers (a restarted worker starts at zero, as a restarted pod
does: ``rate()`` copes). A gauge is aggregated as it means: open streams and sockets add up, "caught
up" and "broker reachable" hold only if they hold in every worker (minimum), ages and lag are the
worst worker's (maximum); any other gauge is kept per worker with a ``worker`` label, because each
worker is a whole replica (its store size is not the pod's sum). See docs/operations.md ("Scaling").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Aggregation = Literal["sum", "min", "max"]

GAUGES: dict[str, Aggregation] = {
    "gateway_open_streams": "sum",
    "gateway_open_sockets": "sum",
    "gateway_waiting_requests": "sum",
    "gateway_jwks_waiting_requests": "sum",
    "gateway_dlq_queued_records": "sum",
    "gateway_store_caught_up": "min",
    "gateway_broker_reachable": "min",
    "gateway_kafka_last_fetch_age_seconds": "max",
    "gateway_jwks_last_refresh_age_seconds": "max",
    "gateway_consumer_lag_records": "max",
    "gateway_build_info": "max",  # the same build in every worker: one series for the pod
}
WORKERS_METRIC = "gateway_metrics_workers"
_COMBINE: dict[Aggregation, Callable[[float, float], float]] = {"sum": lambda a, b: a + b, "min": min, "max": max}

LabelKey = tuple[tuple[str, str], ...]


class _Family:
    def __init__(self, name: str, documentation: str, kind: str) -> None:
        self.name, self.documentation, self.kind = name, documentation, kind
        self.samples: dict[tuple[str, LabelKey], float] = {}  # insertion order: first worker's order

    def add(self, sample: str, labels: LabelKey, value: float, how: Aggregation) -> None:
        key = (sample, labels)
        known = self.samples.get(key)
        self.samples[key] = value if known is None else _COMBINE[how](known, value)

    def metric(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.kind)
        for (sample, labels), value in self.samples.items():
            metric.add_sample(sample, dict(labels), value)
        return metric


def merge(expositions: Sequence[tuple[int, str]], missing: Iterable[int] = ()) -> bytes:
    """The pod's exposition from ``(worker index, exposition text)`` pairs; ``missing``: workers that did
    not answer (counted in ``gateway_metrics_workers{state="missing"}``, their series absent)."""
    families: dict[str, _Family] = {}
    for worker, text in expositions:
        for parsed in text_string_to_metric_families(text):
            family = families.get(parsed.name)
            if family is None:
                family = families[parsed.name] = _Family(parsed.name, parsed.documentation, parsed.type)
            how = GAUGES.get(parsed.name) if parsed.type == "gauge" else "sum"
            for sample in parsed.samples:
                labels = dict(sample.labels)
                if sample.name.endswith("_created"):
                    sample_how: Aggregation = "min"  # when the first worker's series began
                elif how is None:  # a gauge of one replica: kept per worker
                    labels["worker"] = str(worker)
                    sample_how = "sum"  # never combined: each worker's series is its own
                else:
                    sample_how = how
                family.add(sample.name, tuple(sorted(labels.items())), sample.value, sample_how)
    workers = _Family(WORKERS_METRIC, "Workers whose metrics this scrape holds (answered) or lacks (missing).", "gauge")
    workers.add(WORKERS_METRIC, (("state", "answered"),), float(len(expositions)), "sum")
    workers.add(WORKERS_METRIC, (("state", "missing"),), float(len(list(missing))), "sum")
    families[WORKERS_METRIC] = workers
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([family.metric() for family in families.values()]))
    return generate_latest(registry)


class _Fixed:
    """A collector that yields metrics already collected elsewhere."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics
