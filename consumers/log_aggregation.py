"""Folds log lines whose number others choose: the Kafka client's repeats, and lines per skipped record.

During a broker outage aiokafka logs the same connection error for every node and retry, thousands
of ERROR lines a minute, which buries everything else and costs log storage. The first line of a
kind (logger, level and message template) passes; repeats within the interval are counted, and the
next line of that kind after the interval (or ``flush()``, called periodically) reports the count
(``RepeatedLogFilter``, on every handler). Lines about skipped records are folded per reject reason
where they are written (``ReasonFolding``, used by the consumer).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter

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


RECORD_LOG_SUPPRESSED = Counter(
    "gateway_record_log_lines_suppressed_total",
    "Per-record log lines (skipped records) folded into one summary line per reason and interval, by reason.",
    ["reason"],
)


_FOLDINGS: weakref.WeakSet[ReasonFolding] = weakref.WeakSet()


class _Window:
    __slots__ = ("level", "logged", "started", "suppressed", "suppressed_total")

    def __init__(self, started: float, suppressed_total: Any) -> None:
        self.started = started
        self.logged = 0
        self.suppressed = 0
        self.level = logging.NOTSET
        self.suppressed_total = suppressed_total  # the metric's child of this reason


def flush_all() -> None:
    """Summary lines of every folding whose interval is over (the runtime's log-summary task calls this)."""
    for folding in list(_FOLDINGS):
        folding.flush()


class ReasonFolding:
    """Per-record (or per-request) log lines folded per reason, with counts.

    The producers choose how many bad records there are, so one line per record let them choose the log
    volume too: 300,000 tiny bad records wrote 300,055 lines (66 MB), and every new replica wrote them
    again during its replay. Per reason and ``interval``, the first ``lines`` lines are logged in full
    (enough to find the producer: topic, partition, offset); the rest are counted in
    ``gateway_record_log_lines_suppressed_total{reason}`` and reported in one summary line per reason when
    the interval is over (``flush()``, which the consumer calls on every poll). Every record stays counted
    in the record metrics (``gateway_records_rejected_total{reason}``).
    """

    def __init__(
        self,
        logger: logging.Logger,
        lines: int = 10,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        suppressed: Counter = RECORD_LOG_SUPPRESSED,
        what: str = "skipped records",
    ) -> None:
        self.logger = logger
        self.lines = lines
        self.interval = interval
        self.clock = clock
        self.what = what  # what the lines are about, for the summary line
        self._suppressed = suppressed  # a counter labelled by reason
        self._windows: dict[str, _Window] = {}
        _FOLDINGS.add(self)

    def log(
        self,
        level: int,
        reason: str,
        msg: str,
        *args: object,
        logger: logging.Logger | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Logs ``msg % args`` (on ``logger``, else this folding's; ``extra``: ``consumers.log_fields.fields``)
        unless this reason already had its lines in this interval; True when logged."""
        now = self.clock()
        window = self._windows.get(reason)
        if window is not None and now - window.started >= self.interval:
            del self._windows[reason]
            self._summarise(reason, window, now)
            window = None
        if window is None:
            window = self._windows[reason] = _Window(now, self._suppressed.labels(reason))
        if window.logged < self.lines:
            window.logged += 1
            (logger or self.logger).log(level, msg, *args, stacklevel=2, extra=extra)  # names the caller's line
            return True
        window.suppressed += 1
        window.level = max(window.level, level)
        window.suppressed_total.inc()
        return False

    def flush(self, everything: bool = False) -> None:
        """One summary line per reason whose interval is over (every reason with ``everything``, e.g. at stop)."""
        if not self._windows:
            return
        now = self.clock()
        for reason, window in list(self._windows.items()):
            if everything or now - window.started >= self.interval:
                del self._windows[reason]
                self._summarise(reason, window, now)

    def _summarise(self, reason: str, window: _Window, now: float) -> None:
        if window.suppressed:
            self.logger.log(
                window.level,
                "suppressed %d more log lines of %s reason=%s in the last %.0fs "
                "(%d logged in full; every one is counted in the metrics)",
                window.suppressed,
                self.what,
                reason,
                now - window.started,
                window.logged,
            )
