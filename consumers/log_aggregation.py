"""Folds repeated log lines of the Kafka client into one line per kind and interval.

During a broker outage aiokafka logs the same connection error for every node and retry, thousands
of ERROR lines a minute, which buries everything else and costs log storage. The first line of a
kind (logger, level and message template) passes; repeats within the interval are counted, and the
next line of that kind after the interval (or ``flush()``, called periodically) reports the count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from consumers import metrics

_PREFIXES = ("aiokafka", "kafka")


class RepeatedLogFilter(logging.Filter):
    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._windows: dict[tuple[str, int, str], tuple[float, int, logging.LogRecord]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(_PREFIXES):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.interval:
            repeated = window[1] if window is not None else 0
            self._windows[key] = (now, 0, record)
            if repeated:
                record.msg = f"{record.msg} (repeated {repeated} more times in the last {self.interval:.0f}s)"
            return True
        self._windows[key] = (window[0], window[1] + 1, record)
        metrics.KAFKA_LOG_SUPPRESSED.inc()
        return False

    def flush(self) -> None:
        """Logs one summary line per kind whose repeats were held back for a whole interval."""
        now = self._clock()
        for key, (started, repeated, record) in list(self._windows.items()):
            if now - started < self.interval:
                continue
            del self._windows[key]
            if repeated:
                logging.getLogger(record.name).log(
                    record.levelno,
                    "%s (repeated %d more times in the last %.0fs)",
                    record.getMessage(),
                    repeated,
                    now - started,
                )


def install(interval: float = 60.0) -> RepeatedLogFilter:
    """Attaches one filter to every handler of the root logger (child loggers' records pass through them)."""
    root = logging.getLogger()
    for handler in root.handlers:
        for existing in handler.filters:
            if isinstance(existing, RepeatedLogFilter):
                return existing
    aggregator = RepeatedLogFilter(interval)
    for handler in root.handlers:
        handler.addFilter(aggregator)
    return aggregator
